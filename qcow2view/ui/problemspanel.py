"""The Problems list: header bits, backing chain and every check finding."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Signal
from PySide6.QtWidgets import QAbstractItemView, QLabel, QTableView, QVBoxLayout, QWidget

from ..model.problems_model import ClusterRole, EntryOffsetRole, ProblemsModel


class ProblemsPanel(QWidget):
    entryRequested = Signal(object)      # file offset of a table entry
    clusterRequested = Signal(object)    # host cluster index

    def __init__(self, model: ProblemsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.view = QTableView()
        self.view.setObjectName("problemsTable")
        self.view.setModel(model)
        self.view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.view.verticalHeader().hide()
        self.view.verticalHeader().setDefaultSectionSize(self.view.fontMetrics().height() + 6)
        self.view.horizontalHeader().setStretchLastSection(True)
        self.view.setAlternatingRowColors(True)
        self.view.activated.connect(self._go)
        self.view.doubleClicked.connect(self._go)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.summary)
        lay.addWidget(self.view, 1)
        model.modelReset.connect(self._update)
        self._update()

    def _update(self) -> None:
        self.summary.setText(self.model.summary())
        self.view.resizeColumnsToContents()

    def _go(self, index: QModelIndex) -> None:
        entry = index.siblingAtColumn(0).data(EntryOffsetRole)
        cluster = index.siblingAtColumn(0).data(ClusterRole)
        if entry is not None:
            self.entryRequested.emit(entry)
        elif cluster is not None:
            self.clusterRequested.emit(cluster)
