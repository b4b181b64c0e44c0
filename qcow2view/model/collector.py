"""Python's cyclic garbage collector, run on the GUI thread only.

The collector runs on whichever thread allocates past its threshold.  With the
window's workers (the guest index, the maps, the pictures, a directory read) a
collection often ran on a worker thread, and the garbage of a closed tab is in
reference cycles (pyqtgraph's plots, their menus and pixmaps): their Qt
destructors then ran off the GUI thread (seen in the Files pane tests: 8 QMenu
and 8 QPixmap freed on an index worker), which Qt does not allow and which can
end the process with a native crash and no traceback.  So, once there is a GUI
thread to collect on, automatic collection is off and a timer there collects
generation by generation as the thresholds say (the pattern of calibre's and
spyder's GarbageCollector).  A guest index build pauses it (see
:func:`paused`): a full collection walking the index it makes held the window.
"""

from __future__ import annotations

import contextlib
import gc
import threading

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer

INTERVAL_MS = 500           # a tick reads three counters; a collection is due rarely

_lock = threading.Lock()
_pauses = 0
_collector: "_Collector | None" = None


class _Collector(QObject):
    def __init__(self, app: QCoreApplication) -> None:
        super().__init__(app)
        self.timer = QTimer(self)
        self.timer.setInterval(INTERVAL_MS)
        self.timer.timeout.connect(self.tick)
        gc.disable()
        self.timer.start()

    def tick(self) -> None:
        if gc.isenabled():      # turned back on (a test, a library): off again
            gc.disable()
        if _pauses:
            return
        l0, l1, l2 = gc.get_count()
        t0, t1, t2 = gc.get_threshold()
        if l0 > t0:
            gen = 2 if l1 > t1 and l2 > t2 else 1 if l1 > t1 else 0
            gc.collect(gen)


def install() -> bool:
    """Collect on the GUI thread from now on (once per process; from the GUI thread,
    with a QCoreApplication).  True when the collector runs."""
    global _collector
    if _collector is not None:
        return True
    app = QCoreApplication.instance()
    if app is None or QThread.currentThread() is not app.thread():
        return False
    _collector = _Collector(app)
    return True


def installed() -> bool:
    return _collector is not None


@contextlib.contextmanager
def paused():
    """No collection while this runs (a worker building many long-lived objects)."""
    global _pauses
    with _lock:
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
