"""The L1/L2 and refcount table tree with an allocated-only filter and a guest jump."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QHBoxLayout, QHeaderView, QLabel,
                               QLineEdit, QTreeView, QVBoxLayout, QWidget)

from ..model.table_tree_model import (COL_FLAGS, COL_GUEST, COL_HOST, COL_INDEX, COL_PROBLEM,
                                      COL_RAW, COL_REFCOUNT, EntryOffsetRole, GuestOffsetRole,
                                      HostOffsetRole, KindRole, TableTreeModel)
from ..model.units import parse_offset


class TablePanel(QWidget):
    showFileBytes = Signal(object, object)     # offset, length
    showGuestOffset = Signal(object)

    def __init__(self, model: TableTreeModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        model.set_paced(True)       # batches as the view scrolls, not on every relayout
        self.allocated = QCheckBox("Allocated entries only")
        self.allocated.setToolTip("Hide entries that map nothing (keeps loading lazy)")
        self.allocated.toggled.connect(self._filter)
        self.jump = QLineEdit()
        self.jump.setPlaceholderText("go to guest offset: 0x1000000, 16M")
        self.jump.setMinimumWidth(self.jump.fontMetrics().horizontalAdvance(
            "go to guest offset: 0x1000000") + 30)
        self.jump.setClearButtonEnabled(True)
        self.jump.setToolTip("Jump to the table entry that maps this guest offset (Ctrl+G)")
        self.jump.returnPressed.connect(self._jump)
        self.status = QLabel()
        self.status.setStyleSheet("color: #b71c1c")

        self.view = QTreeView(self)
        self.view.setObjectName("tableTree")
        self.view.setModel(model)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SingleSelection)
        fm = self.view.fontMetrics()
        cw = fm.horizontalAdvance("0")
        widths = {COL_INDEX: 18, COL_GUEST: 28, COL_RAW: 19, COL_HOST: 11, COL_FLAGS: 16,
                  COL_REFCOUNT: 8, COL_PROBLEM: 20}
        for col, n in widths.items():
            self.view.setColumnWidth(col, cw * n)
        hh = self.view.header()
        hh.setSectionResizeMode(QHeaderView.Interactive)
        hh.setStretchLastSection(True)
        # what an entry means first, its raw bits later
        for visual, col in enumerate((COL_INDEX, COL_FLAGS, COL_HOST, COL_GUEST, COL_REFCOUNT,
                                      COL_RAW, COL_PROBLEM)):
            hh.moveSection(hh.visualIndex(col), visual)
        self.view.clicked.connect(self._clicked)
        self.view.activated.connect(self._clicked)

        top = QHBoxLayout()
        top.addWidget(QLabel("<b>Tables</b>"))
        top.addStretch(1)
        top.addWidget(self.allocated)
        top.addWidget(self.jump, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(top)
        lay.addWidget(self.status)
        self.status.hide()
        lay.addWidget(self.view)
        model.modelReset.connect(self._expand_top)

    def _expand_top(self) -> None:
        """Open the active L1 table and its first L2 table: something to read at once."""
        root = self.model.index(0, 0)
        if not root.isValid():
            return
        self.view.expand(root)
        if self.model.canFetchMore(root):
            self.model.fetchMore(root)
        for r in range(min(self.model.rowCount(root), 64)):
            child = self.model.index(r, 0, root)
            if self.model.hasChildren(child):
                self.view.expand(child)
                break

    def _filter(self, on: bool) -> None:
        self.model.set_allocated_only(on)

    def _say(self, text: str) -> None:
        self.status.setText(text)
        self.status.setVisible(bool(text))

    def _jump(self) -> None:
        try:
            off = parse_offset(self.jump.text())
        except ValueError as e:
            self._say(str(e))
            return
        if not self.go_to_guest(off):
            self._say(f"{off:#x} is outside the disk")
        else:
            self._say("")

    def select(self, index: QModelIndex) -> bool:
        if not index.isValid():
            return False
        p = index.parent()
        while p.isValid():
            self.view.expand(p)
            p = p.parent()
        self.view.setCurrentIndex(index)
        self.view.scrollTo(index, QAbstractItemView.PositionAtCenter)
        return True

    def go_to_guest(self, offset: int) -> bool:
        return self.select(self.model.index_for_guest(offset))

    def go_to_entry(self, entry_offset: int) -> bool:
        return self.select(self.model.index_for_entry_offset(entry_offset))

    def go_to_table(self, host_offset: int) -> bool:
        return self.select(self.model.index_for_table(host_offset))

    def focus_jump(self) -> None:
        self.jump.setFocus(Qt.ShortcutFocusReason)
        self.jump.selectAll()

    def _clicked(self, index: QModelIndex) -> None:
        entry = index.data(EntryOffsetRole)
        kind = index.data(KindRole)
        if entry is None:
            return
        self.showFileBytes.emit(entry, self.model.entry_length(index))
        g = index.data(GuestOffsetRole)
        if g is not None and kind == "l2":
            self.showGuestOffset.emit(g)

    def host_offset_of_current(self):
        idx = self.view.currentIndex()
        return idx.data(HostOffsetRole) if idx.isValid() else None
