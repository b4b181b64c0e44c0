"""pyqtgraph imported on the main thread, in short slices of the event loop.

Importing pyqtgraph takes about a quarter of a second, half of it making PySide6's
enum and class objects: its Qt shim reads every attribute of QtCore, QtGui and
QtWidgets, and shiboken creates each one lazily on first access. That creation is
not thread-safe, so the import must run on the main thread (importing it in a
background thread while the window built its widgets crashed the app at start-up
with SIGSEGV in shiboken's createPythonEnum). To keep the window responsive
meanwhile, the work is cut into steps and run a few milliseconds at a time, one
slice per event-loop pass: the Qt attributes in small batches, the standard-library
modules pyqtgraph pulls in, then pyqtgraph itself (about 65 ms once the rest is
done) and the picture views.

Use :func:`loader`: ``start()`` begins the slices (idempotent), ``ready`` says
whether all is imported, the ``finished`` signal says when, and ``finish()`` runs
what is left at once (for code that needs a picture view now).
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial

from PySide6.QtCore import QCoreApplication, QObject, QTimer, Signal

SLICE_S = 0.015         # work per event-loop pass
BATCH = 25              # Qt attributes touched per step

#: what pyqtgraph imports besides itself, imported one per step before it
_DEPENDENCIES = ("xml.etree.ElementTree", "multiprocessing", "pydoc")
_QT_MODULES = ("PySide6.QtCore", "PySide6.QtGui", "PySide6.QtWidgets")
_LAST = ("pyqtgraph", "qcow2view.ui.axes", "qcow2view.ui.heatmap",
         "qcow2view.ui.mappingplot")


def _touch(module_name: str, names: list[str]) -> None:
    module = importlib.import_module(module_name)
    for name in names:
        getattr(module, name, None)


def _steps() -> Iterator[Callable[[], None]]:
    for name in _DEPENDENCIES:
        yield partial(importlib.import_module, name)
    for module_name in _QT_MODULES:
        names = dir(importlib.import_module(module_name))
        for i in range(0, len(names), BATCH):
            yield partial(_touch, module_name, names[i:i + BATCH])
    for name in _LAST:
        yield partial(importlib.import_module, name)


class PyqtgraphLoader(QObject):
    """Imports pyqtgraph and the picture views in slices on the main thread."""

    finished = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._steps: Iterator[Callable[[], None]] | None = None
        self.ready = False

    def start(self) -> None:
        """Begin importing, a slice per event-loop pass (nothing if begun or done)."""
        _require_main_thread()
        if self.ready or self._steps is not None:
            return
        self._steps = _steps()
        QTimer.singleShot(0, self, self._slice)

    def finish(self) -> None:
        """Import whatever is left now."""
        _require_main_thread()
        if self.ready:
            return
        if self._steps is None:
            self._steps = _steps()
        for step in self._steps:
            step()
        self._done()

    def _slice(self) -> None:
        if self.ready:
            return
        deadline = time.perf_counter() + SLICE_S
        for step in self._steps:
            step()
            if time.perf_counter() >= deadline:
                QTimer.singleShot(0, self, self._slice)
                return
        self._done()

    def _done(self) -> None:
        self.ready = True
        self.finished.emit()


def _require_main_thread() -> None:
    app = QCoreApplication.instance()
    if app is None or threading.current_thread() is not threading.main_thread():
        raise RuntimeError("pyqtgraph must be imported on the main thread, with an application")


_loader: PyqtgraphLoader | None = None


def loader() -> PyqtgraphLoader:
    """The one loader of this process (made on first use, owned by the application)."""
    global _loader
    if _loader is None:
        _require_main_thread()
        _loader = PyqtgraphLoader(QCoreApplication.instance())
    return _loader
