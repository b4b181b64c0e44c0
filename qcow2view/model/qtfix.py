"""A guard against a reference-count bug of PySide6 6.12 on CPython 3.11.

Every call of a void C++ method (``QPainter.fillRect``, ``QWidget.update``,
``QLabel.setText``...) drops one reference to ``None`` without taking it (the
generated code relies on None being immortal, which it is only from Python
3.12).  After some tens of thousands of calls, e.g. a few thousand repaints of
the hex view, Python aborts with "none_dealloc: deallocating None".

:func:`pin_none` checks for the bug and, if it is there, gives ``None`` more
references than any session can drop.  :mod:`qcow2view.model` imports it
(next to ``_pyside_fix``, which does the same for ``True`` and ``Signal.emit``);
it is harmless where the bug is absent.
"""

from __future__ import annotations

import sys

_PINNED = False


def _drops_none_refs() -> bool:
    from PySide6.QtCore import QObject
    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(8):
        probe.setObjectName("probe")
    return sys.getrefcount(None) < before


def pin_none() -> bool:
    """Make ``None`` effectively immortal if PySide6 leaks its references; True if done."""
    global _PINNED
    if _PINNED or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _PINNED
    if not _drops_none_refs():
        return False
    import ctypes
    ref = ctypes.c_ssize_t.from_address(id(None))     # PyObject.ob_refcnt
    ref.value += 1 << 48
    _PINNED = True
    return True


pin_none()
