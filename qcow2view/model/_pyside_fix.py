"""Work around a reference leak in PySide6 6.12 on CPython before 3.12.

``Signal.emit()`` returns ``True`` without taking a new reference, so every
emit steals one reference to ``True``; after a few thousand emits CPython frees
``True`` and aborts ("Fatal Python error: bool_dealloc").  CPython 3.12 made
``True`` immortal; before that we give it a reference count that no number of
emits can wear down.  Imported by :mod:`qcow2view.model`, which every Qt part
of qcow2view goes through.
"""

from __future__ import annotations

import ctypes
import sys


def _emit_steals_true() -> bool:
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    p = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        p.ping.emit()
    return sys.getrefcount(True) < before - 4


def apply() -> None:
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return
    if getattr(apply, "done", False):
        return
    apply.done = True  # type: ignore[attr-defined]
    if _emit_steals_true():
        ctypes.c_ssize_t.from_address(id(True)).value += 1 << 40


apply()
