"""Cyclic garbage is freed on the GUI thread, never on a worker's: Qt destroys an
object only on the thread it lives in (a closed tab's pyqtgraph menus and pixmaps,
freed by a collection that ran on an index worker, could crash the process)."""

from __future__ import annotations

import gc
import threading

from PySide6.QtCore import QObject, Qt

from qcow2view.model.workers import Worker


class _Cycle:
    """Garbage only the cyclic collector frees, holding a Qt object Python owns."""

    def __init__(self) -> None:
        self.me = self
        self.obj = QObject()


def test_a_qt_object_in_cyclic_garbage_is_freed_on_the_gui_thread(qtbot):
    died_on: list[int] = []
    # a worker that allocates far past the collector's threshold
    w = Worker("allocating", lambda _p, _c: len([[] for _ in range(100_000)]))
    c = _Cycle()
    c.obj.destroyed.connect(lambda: died_on.append(threading.get_ident()),
                            Qt.DirectConnection)
    del c
    w.start()
    assert w.wait(30000)
    # and some allocation here, so a collection is due on this thread too
    keep = [[] for _ in range(gc.get_threshold()[0] + 1)]
    qtbot.waitUntil(lambda: bool(died_on), timeout=10000)
    assert died_on == [threading.get_ident()]
    del keep
    w.deleteLater()
