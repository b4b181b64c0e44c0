"""Guards against two reference-count bugs of PySide6 6.12.0 on CPython 3.11.

The generated bindings of 6.12.0 assume ``None`` and ``True`` are immortal,
which they are only from Python 3.12:

- every call of a void C++ method (``QPainter.fillRect``, ``QWidget.update``,
  ``QObject.setObjectName``...) drops one reference to ``None``;
- every ``Signal.emit()`` returns ``True`` without taking a reference to it.

After some tens of thousands of calls (a few thousand repaints of the hex view,
a long scan's progress signals) CPython frees the object and aborts
("none_dealloc" / "bool_dealloc").  pyproject pins ``PySide6-Essentials<6.12``;
this module is the second line of defence for environments that ignore the pin.

:func:`apply` probes for each bug and, only where one is found, gives the
object more references than any session can drop.  It runs when
:mod:`qcow2view.model` is imported, before any signal is emitted; where the
bugs are absent (6.11, Python 3.12+) it changes nothing.
"""

from __future__ import annotations

import ctypes
import sys

_PINNED: set[str] = set()
_PROBED = False


def _drops_none_refs() -> bool:
    from PySide6.QtCore import QObject
    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(8):
        probe.setObjectName("probe")
    return sys.getrefcount(None) < before


def _emit_steals_true() -> bool:
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.ping.emit()
    return sys.getrefcount(True) < before - 4


def _pin(obj: object) -> None:
    # PyObject.ob_refcnt is the first field of every object on CPython.
    ctypes.c_ssize_t.from_address(id(obj)).value += 1 << 48


def apply() -> frozenset[str]:
    """Probe once and pin what leaks; return the names pinned ("None", "True")."""
    global _PROBED
    if _PROBED or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return frozenset(_PINNED)
    _PROBED = True
    if _drops_none_refs():
        _pin(None)
        _PINNED.add("None")
    if _emit_steals_true():
        _pin(True)
        _PINNED.add("True")
    return frozenset(_PINNED)


apply()
