"""The Find bar of the hex editor: hex bytes or text, forward/backward, in a
worker thread with progress and Cancel."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                               QToolButton, QWidget)

from ..model.hexdocument import HexDocument
from ..model.hexsearch import find, parse_pattern
from ..model.workers import Worker


class FindBar(QWidget):
    """Emits :attr:`found` (offset, length) when a match is found."""

    found = Signal(object, object)          # offset, length (offsets exceed 2^31)
    finished = Signal()

    def __init__(self, doc: HexDocument, caret: Callable[[], int],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.doc = doc
        self.caret = caret                # where a search starts: the editor's caret
        self.worker: Worker | None = None
        self._pattern = b""
        self.edit = QLineEdit(self)
        self.edit.setPlaceholderText("de ad be ef")
        self.mode = QComboBox(self)
        self.mode.addItems(["Hex", "Text"])
        self.prev_btn = QToolButton(self, text="\u25b2 Previous")
        self.next_btn = QToolButton(self, text="\u25bc Next")
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(160)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.cancel_btn = QToolButton(self, text="Cancel")
        self.cancel_btn.hide()
        self.status = QLabel(self)
        self.close_btn = QToolButton(self, text="\u2715")
        self.close_btn.setAutoRaise(True)
        self.close_btn.setToolTip("Close the find bar (Esc)")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        lay.addWidget(QLabel("Find:", self))
        lay.addWidget(self.mode)
        lay.addWidget(self.edit, 1)
        for w in (self.prev_btn, self.next_btn, self.progress, self.cancel_btn, self.status,
                  self.close_btn):
            lay.addWidget(w)
        self.edit.returnPressed.connect(lambda: self.start(True))
        self.next_btn.clicked.connect(lambda: self.start(True))
        self.prev_btn.clicked.connect(lambda: self.start(False))
        self.cancel_btn.clicked.connect(self.cancel)
        self.close_btn.clicked.connect(self.close_bar)
        self.mode.currentIndexChanged.connect(
            lambda i: self.edit.setPlaceholderText("de ad be ef" if i == 0 else "text"))

    @property
    def running(self) -> bool:
        return self.worker is not None

    def open_bar(self, mode: str | None = None) -> None:
        if mode is not None:
            self.mode.setCurrentIndex(1 if mode == "text" else 0)
        self.show()
        self.edit.setFocus(Qt.ShortcutFocusReason)
        self.edit.selectAll()

    def close_bar(self) -> None:
        self.cancel()
        self.hide()
        self.finished.emit()

    def keyPressEvent(self, e) -> None:  # noqa: N802
        if e.key() == Qt.Key_Escape:
            self.close_bar()
            return
        super().keyPressEvent(e)

    def start(self, forward: bool = True) -> bool:
        """Search from just after (before) the caret; False if the input is bad."""
        if self.running:
            return False
        try:
            pattern = parse_pattern(self.edit.text(),
                                    "text" if self.mode.currentIndex() == 1 else "hex")
        except ValueError as e:
            self._say(str(e), error=True)
            return False
        self._pattern = pattern
        caret = self.caret()
        start = caret + 1 if forward else caret - 1
        if start < 0 or start >= self.doc.size:
            self._say("not found", error=True)
            return False
        doc = self.doc
        def run(progress, cancel):
            # the worker's progress signal carries C ints: report per mille
            return find(doc, pattern, start, forward, cancel=cancel,
                        progress=lambda d, t: progress(d * 1000 // t if t else 0, 1000))

        worker = Worker("Finding", run, self)
        worker.progressed.connect(self._progress)
        worker.succeeded.connect(self._done)
        worker.failed.connect(self._failed)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.progress.setValue(0)
        self.progress.show()
        self.cancel_btn.show()
        self._say("searching\u2026")
        worker.start()
        return True

    def cancel(self) -> None:
        """Stop a running search and join its thread."""
        w = self.worker
        if w is not None:
            w.stop()
            self._finished()

    def _progress(self, task: str, done: int, total: int) -> None:
        self.progress.setValue(int(1000 * done / total) if total else 0)

    def _done(self, hit) -> None:
        if self.sender() is not self.worker:
            return
        if hit is None:
            self._say("not found", error=True)
        else:
            self._say(f"found at {hit:#x}")
            self.found.emit(hit, len(self._pattern))

    def _failed(self, exc) -> None:
        if self.sender() is not self.worker:
            return
        self._say("cancelled" if type(exc).__name__ == "CancelledError" else str(exc),
                  error=True)

    def _finished(self) -> None:
        w = self.worker
        if w is None:
            return
        if self.sender() is not None and self.sender() is not w and \
                isinstance(self.sender(), Worker):
            return
        self.worker = None
        w.wait()
        w.deleteLater()
        self.progress.hide()
        self.cancel_btn.hide()

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #b00020" if error else "")
