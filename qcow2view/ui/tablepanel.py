"""The L1/L2 and refcount table tree with an allocated-only filter and a guest jump."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QModelIndex, Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QHBoxLayout, QHeaderView, QLabel,
                               QLineEdit, QStyle, QStyledItemDelegate, QStyleOptionViewItem,
                               QToolTip, QTreeView, QVBoxLayout, QWidget)

from ..model.table_tree_model import (COL_FLAGS, COL_GUEST, COL_HOST, COL_INDEX, COL_PROBLEM,
                                      COL_RAW, COL_REFCOUNT, EntryOffsetRole, GuestOffsetRole,
                                      HostOffsetRole, KindRole, PAGE_KIND, TableTreeModel)
from .goto import parse_goto


class ElidedTipDelegate(QStyledItemDelegate):
    """A cell whose text is cut short shows it in full as its tooltip (when the model
    gives none)."""

    def helpEvent(self, event, view, option, index) -> bool:  # noqa: N802 - Qt API
        if event is not None and event.type() == QEvent.ToolTip and index.isValid() \
                and not index.data(Qt.ToolTipRole):
            text = index.data(Qt.DisplayRole)
            if text:
                opt = QStyleOptionViewItem(option)
                self.initStyleOption(opt, index)
                rect = view.visualRect(index)
                if opt.fontMetrics.horizontalAdvance(str(text)) > rect.width() - 8:
                    QToolTip.showText(event.globalPos(), str(text), view)
                    return True
        return super().helpEvent(event, view, option, index)


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
        # a narrow indent: three levels deep (root, L1 entry, L2 entry) on a narrow pane
        self.view.setIndentation(max(12, self.view.fontMetrics().height()))
        self.view.setTextElideMode(Qt.ElideRight)      # offsets and names read from the left
        self.view.setItemDelegate(ElidedTipDelegate(self.view))
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
        # the first four columns are fitted to the pane until the user sizes one
        self._extent: tuple[int, int, int] | None = None
        self._fitting = False
        self.user_sized = False
        hh.sectionResized.connect(self._section_resized)
        self.view.viewport().installEventFilter(self)
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
        self._expand_top()      # the document's model may be filled already

    # -- column widths ----------------------------------------------------------------------
    def set_extent(self, virtual_size: int, file_size: int, cluster_size: int,
                   l2_entries: int) -> None:
        """What the widest texts will be (last guest byte, last host byte, L2 indices):
        the columns are fitted to this image."""
        self._extent = (max(1, virtual_size), max(1, file_size), max(1, cluster_size),
                        max(1, l2_entries))
        self.fit_columns()

    def _section_resized(self, col: int, _old: int, _new: int) -> None:
        hh = self.view.header()
        if not self._fitting and hh.visualIndex(col) != hh.count() - 1:   # not the stretch
            self.user_sized = True

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802 - Qt API
        # the viewport, not the panel: it also narrows when the scroll bar appears
        if ev.type() == QEvent.Resize and obj is self.view.viewport():
            self.fit_columns()
        return False

    def fit_columns(self) -> None:
        """Entry, Flags, Host offset and Guest range side by side in the pane, with no
        horizontal scrolling when there is room for their short forms: an L2 index
        three levels deep, "data, COPIED", the file's last offset, then as much of the
        guest range as fits (all of it at the default size; a far-off range of a huge
        disk is cut at the end, keeping its start).  Room left over widens the entry
        column for the root names, then the flags.  Cut texts are whole in tooltips.
        Refcount, raw entry and problem follow to the right.  Left alone once the user
        has sized a column."""
        if self._extent is None or self.user_sized:
            return
        vs, fs, cs, l2 = self._extent
        v = self.view
        fm = v.fontMetrics()
        pad = 2 * (v.style().pixelMetric(QStyle.PM_FocusFrameHMargin, None, v) + 1) + 2

        def text(t: str) -> int:
            return fm.horizontalAdvance(t) + pad

        # the font is proportional: offsets as wide as their widest possible digits; a
        # guest range starts on a cluster (low digits 0) and ends before one (low digits f)
        wide = max("0123456789abcdef", key=fm.horizontalAdvance)

        def hexa(n: int, low: str = "", k: int = 0) -> str:
            digits = len(f"{n:x}")
            return "0x" + wide * (digits - min(k, digits - 1)) + low * min(k, digits - 1)

        k = (cs.bit_length() - 1) // 4

        ind = v.indentation()
        entry = 3 * ind + text(str(l2 - 1))
        entry_pref = max(entry, ind + text("Active L1 table"))
        flags = text("data, COPIED")
        flags_pref = text("zero, allocated, ZERO flag")
        host = max(text(hexa(fs - 1)), text("Host offset"))
        room = v.viewport().width() - entry - flags - host
        guest = max(text(f"{cs:#x} – {2 * cs - 1:#x}"),
                    min(text(f"{hexa(vs - 1, '0', k)} – {hexa(vs - 1, 'f', k)}"), room))
        extra = max(0, room - guest)
        grow = min(entry_pref - entry, extra)
        entry, extra = entry + grow, extra - grow
        flags += min(flags_pref - flags, extra)
        self._fitting = True
        try:
            for col, w in ((COL_INDEX, entry), (COL_FLAGS, flags), (COL_HOST, host),
                           (COL_GUEST, guest)):
                v.setColumnWidth(col, w)
        finally:
            self._fitting = False

    def _expand_top(self) -> None:
        """Open the active L1 table and its first L2 table (through the first page of a
        huge L1 table): something to read at once."""
        m = self.model
        parent = m.index(0, 0)
        if not parent.isValid():
            return
        for _ in range(4):      # root, up to two levels of pages, the L1 entry
            self.view.expand(parent)
            if m.canFetchMore(parent):
                m.fetchMore(parent)
            if parent.data(KindRole) not in ("l1_table", PAGE_KIND):
                return
            for r in range(min(m.rowCount(parent), 64)):
                child = m.index(r, 0, parent)
                if m.hasChildren(child):
                    parent = child
                    break
            else:
                return

    def _filter(self, on: bool) -> None:
        self.model.set_allocated_only(on)

    def _say(self, text: str) -> None:
        self.status.setText(text)
        self.status.setVisible(bool(text))

    def _jump(self) -> None:
        try:
            off = parse_goto(self.jump.text())     # as Ctrl+G and --goto read it
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
