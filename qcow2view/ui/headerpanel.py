"""The header panel: every header field, extension, backing file, snapshot and bitmap."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableView, QVBoxLayout, QWidget

from ..model.header_model import HeaderModel, NameRole, OffsetRole, SectionRole


class HeaderPanel(QWidget):
    """A table of the header model; clicking a field asks to show its bytes."""

    showFileBytes = Signal(object, object)     # offset, length
    rowClicked = Signal(str)                    # the row's name (NameRole): "guest:2:" ...

    def __init__(self, model: HeaderModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        title = QLabel("<b>Header</b>")
        self.view = QTableView(self)
        self.view.setObjectName("headerTable")
        self.view.setModel(model)
        self.view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SingleSelection)
        self.view.setAlternatingRowColors(True)
        self.view.setWordWrap(False)
        self.view.setTextElideMode(Qt.ElideRight)     # meanings read from the left
        self.view.verticalHeader().hide()
        self.view.verticalHeader().setDefaultSectionSize(
            self.view.fontMetrics().height() + 6)
        hh = self.view.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.Interactive)
        hh.setStretchLastSection(True)
        # meaning next to the field name: what a person reads first in a narrow panel
        hh.moveSection(3, 1)
        hh.setStretchLastSection(False)
        # the meaning takes what the field name, offset and raw bytes leave: all four
        # stay in view at the default width; elided meanings have the full text as tooltip
        hh.setSectionResizeMode(3, QHeaderView.Stretch)
        self.view.clicked.connect(self._clicked)
        self.view.activated.connect(self._clicked)
        model.modelReset.connect(self._fit)
        self._fit()      # the document's model may be filled already
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(title)
        lay.addWidget(self.view)

    def _fit(self) -> None:
        self.view.clearSpans()
        for r in range(self.model.rowCount()):
            if self.model.index(r, 0).data(SectionRole):
                self.view.setSpan(r, 0, 1, 4)
        fm = self.view.fontMetrics()
        self.view.setColumnWidth(0, fm.horizontalAdvance("refcount_table_clusters") + 14)
        self.view.setColumnWidth(1, fm.horizontalAdvance("0x3300000") + 12)
        self.view.setColumnWidth(2, fm.horizontalAdvance("0x0000000000000000") + 12)

    def _clicked(self, index: QModelIndex) -> None:
        where = index.data(OffsetRole)
        if where is not None:
            self.showFileBytes.emit(where[0], where[1])
        self.rowClicked.emit(index.data(NameRole) or "")

    def select_field(self, name: str) -> bool:
        row = self.model.find(name)
        if row < 0:
            return False
        self.view.selectRow(row)
        self.view.scrollTo(self.model.index(row, 0))
        return True
