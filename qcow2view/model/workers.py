"""Background work off the GUI thread: a QThread running one Python callable.

The callable gets ``progress(done, total)`` and ``cancel() -> bool`` and its
result (or exception) comes back through queued signals.  Every worker is
registered so that tests can assert none outlives its document.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable

from PySide6.QtCore import QThread, Signal

from . import collector

_WORKERS: "weakref.WeakSet[Worker]" = weakref.WeakSet()
_ENDING: "set[Worker]" = set()      # deleted while running: kept until their thread ends
PROGRESS_INTERVAL = 0.05     # seconds between progress signals


class Worker(QThread):
    """Runs ``fn(progress, cancel)`` in its own thread."""

    progressed = Signal(str, int, int)      # task, done, total
    succeeded = Signal(object)
    failed = Signal(object)                 # the exception

    def __init__(self, task: str, fn: Callable[[Callable[[int, int], None],
                                                 Callable[[], bool]], Any],
                 parent=None) -> None:
        super().__init__(parent)
        collector.install()         # no cyclic collection on this thread: Qt objects
        self.task = task            # in the garbage must be freed on the GUI thread
        self._fn = fn
        self._cancel = threading.Event()
        self._last = 0.0
        _WORKERS.add(self)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def set_task(self, task: str) -> None:
        self.task = task
        self._last = 0.0

    def _progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL or done >= total:
            self._last = now
            self.progressed.emit(self.task, int(done), int(total))

    def run(self) -> None:  # noqa: D401 - QThread API
        try:
            result = self._fn(self._progress, self._cancel.is_set)
        except BaseException as e:  # handed to the GUI thread, which decides
            self.failed.emit(e)
        else:
            self.succeeded.emit(result)

    def detach(self, *signals) -> None:
        """Disconnect every slot of ``signals`` (its owner no longer wants its results;
        a signal with nothing connected is fine)."""
        for sig in signals:
            try:
                sig.disconnect()
            except (RuntimeError, TypeError):
                pass

    def stop(self, timeout_ms: int = 30000) -> None:
        """Cancel and join (at most ``timeout_ms``: a deleteLater after it is safe)."""
        self.cancel()
        if self.isRunning():
            self.wait(timeout_ms)

    def deleteLater(self) -> None:  # noqa: N802 - Qt API
        """Delete once the thread has ended: a QThread destroyed while it runs aborts
        the process ("QThread: Destroyed while thread is still running"), as one still
        in a call that does not look at cancel() when its owner stops waiting for it.
        Meanwhile no parent can take it down, and its results go nowhere they were
        not connected."""
        if not self.isRunning():
            super().deleteLater()
            return
        _ENDING.add(self)
        self.setParent(None)
        self.finished.connect(self._ended)
        if not self.isRunning():        # it ended just before the connection
            self._ended()

    def _ended(self) -> None:
        if self in _ENDING:
            _ENDING.discard(self)
            super().deleteLater()


def running_workers() -> list[Worker]:
    """Workers whose thread is still running (tests use this)."""
    out = []
    for w in list(_WORKERS):
        try:
            if w.isRunning():
                out.append(w)
        except RuntimeError:     # the C++ side is gone: it cannot be running
            _WORKERS.discard(w)
    return out
