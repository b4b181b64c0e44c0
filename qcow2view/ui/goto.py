"""Go to offset or sector: the parser and a small non-blocking dialog.

Accepted: ``4096``, ``0x1000``, ``1M``/``4KiB``/``2G``/``1T`` (binary units, as
qemu-img), ``LBA 2048``/``sector 2048``/``2048s`` (sectors of the view's sector
size), and ``+1M``/``-4K`` relative to the caret.
"""

from __future__ import annotations

import re
from fractions import Fraction

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QLineEdit, QVBoxLayout,
                               QWidget)

from ..model.units import EXPECTED_OFFSET as EXPECTED
from ..model.units import MAX_OFFSET

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "p": 1 << 50}
_RE = re.compile(
    r"^\s*(?P<lba>lba|sector|sec)?\s*(?P<sign>[+-])?\s*"
    r"(?P<num>0x[0-9a-f]+|[0-9]+(?:\.[0-9]+)?)\s*"
    r"(?P<unit>[kmgtp](?:i?b)?|b|s|sectors?)?\s*$", re.IGNORECASE)


def parse_goto(text: str, *, current: int = 0, size: int | None = None,
               sector_size: int = 512) -> int:
    """The byte offset ``text`` names; ValueError with a reason if none."""
    text = text.replace("_", "").replace(",", "")     # 16_777_216, 1,048,576
    m = _RE.match(text)
    if not m or not text.strip():
        raise ValueError("expected an offset such as 4096, 0x1000, 1M, LBA 2048 or +4K")
    num = m["num"].lower()
    if len(num) > 40:       # int() of thousands of digits is slow, a float of them inf
        raise ValueError(f"{EXPECTED} (that number is larger than any disk)")
    unit = (m["unit"] or "").lower()
    sectors = bool(m["lba"]) or unit.startswith("s")
    if num.startswith("0x"):
        value = int(num, 16)
        if "." in num:
            raise ValueError("hex numbers have no fraction")
    elif "." in num:
        if not unit or sectors:
            raise ValueError("a fraction needs a unit (e.g. 1.5M)")
        value = Fraction(num)      # exact: 1.5M is 1572864, and no float overflow
    else:
        value = int(num)
    if sectors:
        if unit and not unit.startswith("s"):
            raise ValueError("use either LBA/sector or a byte unit, not both")
        off = int(value) * sector_size
    else:
        off = int(value * _UNITS[unit[:1]])
    if m["sign"] == "+":
        off = current + off
    elif m["sign"] == "-":
        off = current - off
    if off < 0:
        raise ValueError("that is before the start of the disk")
    if off > MAX_OFFSET:
        raise ValueError(f"{EXPECTED} (that number is larger than any disk)")
    if size is not None and off >= size:
        raise ValueError(f"that is past the end of the disk ({size} bytes)")
    return off


class GotoDialog(QDialog):
    """Asks for an offset; :attr:`chosen` carries the byte offset.

    Shown with ``open()`` (non-blocking); invalid input is explained in a red
    label and OK stays disabled.
    """

    chosen = Signal(object)       # a byte offset (may exceed 2^31)

    def __init__(self, parent: QWidget | None, *, current: int, size: int,
                 sector_size: int) -> None:
        super().__init__(parent)
        self.setWindowTitle("Go to offset")
        self._current, self._size, self._sector = current, size, sector_size
        self.edit = QLineEdit(self)
        self.edit.setPlaceholderText("4096, 0x1000, 1M, LBA 2048, +4K, -1M")
        self.hint = QLabel(self)
        self.hint.setStyleSheet("color: #b00020")
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel, self)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"Offset or sector ({sector_size}-byte sectors; "
                             f"disk is {size} bytes):", self))
        lay.addWidget(self.edit)
        lay.addWidget(self.hint)
        lay.addWidget(self.buttons)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.edit.textChanged.connect(self._validate)
        self._validate("")

    def _validate(self, text: str) -> None:
        ok = True
        try:
            self.offset = parse_goto(text, current=self._current, size=self._size,
                                     sector_size=self._sector)
            self.hint.setText(f"= byte {self.offset:,} ({self.offset:#x}), "
                              f"sector {self.offset // self._sector}")
            self.hint.setStyleSheet("color: palette(text)")
        except ValueError as e:
            ok = False
            self.offset = None
            self.hint.setText(str(e) if text.strip() else "")
            self.hint.setStyleSheet("color: #b00020")
        self.buttons.button(QDialogButtonBox.Ok).setEnabled(ok)

    def accept(self) -> None:
        if self.offset is None:
            return
        super().accept()
        self.chosen.emit(self.offset)

    def keyPressEvent(self, e) -> None:  # noqa: N802
        if e.key() in (Qt.Key_Return, Qt.Key_Enter):
            self.accept()
            return
        super().keyPressEvent(e)
