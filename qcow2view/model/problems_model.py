"""Everything wrong with an image as a table: header bits, backing chain, check findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor

from .rows_model import RowsModel
from .units import count

if TYPE_CHECKING:       # the document owns this model: no import cycle at run time
    from .document import ImageDocument

EntryOffsetRole = Qt.UserRole + 1
ClusterRole = Qt.UserRole + 2

#: how the Severity column words qemu-img check's three counts and our own notes
_SEVERITY_TEXT = {"corruption": "corruption", "leak": "leak", "check_error": "check error",
                  "image": "image", "note": "note"}
#: finding kinds whose identifier reads badly as text
_KIND_TEXT = {"leak": "unreferenced cluster", "refcount_zero": "refcount 0 but in use",
              "refcount_too_low": "refcount too low", "check_error": "unreadable"}

_SEVERITY_COLOURS = {"corruption": "#b71c1c", "leak": "#e65100", "check_error": "#6a1b9a",
                     "image": "#b71c1c", "note": "#455a64"}


@dataclass(frozen=True)
class Problem:
    severity: str
    kind: str
    message: str
    cluster: int | None = None
    entry_offset: int | None = None


class ProblemsModel(RowsModel):
    COLUMNS = ("Severity", "Kind", "Cluster", "Entry at", "Message")

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._rows: list[Problem] = []
        self._notes: dict[int, str] = {}    # set_notes: what a leaked cluster once held
        self.checked = False        # the structure check has run (so no rows means none)

    def set_document(self, doc: ImageDocument | None) -> None:
        self.beginResetModel()
        self._rows = [] if doc is None else self._collect(doc)
        self.checked = doc is not None and doc.check_result is not None
        self.endResetModel()

    def set_notes(self, notes: dict[int, str]) -> None:
        """What each leaked host cluster once held ("leaked: looks like an old L2
        table") or a corrupt one holds, put before its row's message."""
        self._notes = dict(notes)
        if self._rows:
            self.dataChanged.emit(self.index(0, 4), self.index(len(self._rows) - 1, 4))

    def message(self, row: int) -> str:
        p = self._rows[row]
        note = self._notes.get(p.cluster) if p.cluster is not None else None
        return f"{note} — {p.message}" if note else p.message    # first: the column is narrow

    def summary(self) -> str:
        """One line saying what was checked and what it found."""
        n = len(self._rows)
        if n:
            return f"qcow2 structure: {count(n, 'problem')}. Double-click one to go to it."
        if not self.checked:
            return "qcow2 structure: not checked yet."
        return ("qcow2 structure: no problems found (header, backing chain, L1/L2 tables and "
                "refcounts, checked as qemu-img check does).")

    @staticmethod
    def _collect(doc: ImageDocument) -> list[Problem]:
        rows: list[Problem] = []
        img = doc.image
        if img is not None:
            if img.corrupt:
                rows.append(Problem("image", "corrupt bit", "the corrupt bit is set in "
                                    "incompatible_features", None, 72))
            if img.dirty:
                rows.append(Problem("image", "dirty bit", "the dirty bit is set: refcounts "
                                    "may be stale", None, 72))
            for b in img.backing_chain:
                if not b.found:
                    rows.append(Problem("image", "backing file", b.error or
                                        f"backing file {b.filename!r} not found"))
        if doc.analysis is not None:
            for msg in doc.analysis.errors:
                rows.append(Problem("check_error", "analysis", msg))
        c = doc.check_result
        for f in getattr(c, "findings", None) or ():
            rows.append(Problem(f.severity, f.kind, f.message, f.cluster, f.entry_offset))
        return rows

    def problem(self, row: int) -> Problem:
        return self._rows[row]

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        p = self._rows[index.row()]
        col = index.column()
        if role in (Qt.DisplayRole, Qt.ToolTipRole):
            if col == 0:
                return _SEVERITY_TEXT.get(p.severity, p.severity)
            if col == 1:
                return _KIND_TEXT.get(p.kind, p.kind.replace("_", " "))
            if col == 2:
                return "" if p.cluster is None else f"{p.cluster:,}"
            if col == 3:
                return "" if p.entry_offset is None else f"{p.entry_offset:#x}"
            if col == 4:
                return self.message(index.row())
        elif role == Qt.ForegroundRole and col == 0:
            return QBrush(QColor(_SEVERITY_COLOURS.get(p.severity, "#455a64")))
        elif role == EntryOffsetRole:
            return p.entry_offset
        elif role == ClusterRole:
            return p.cluster
        return None
