"""How the hex view looks: the tint of each kind of byte, the boundary lines, the
grid font, and how bytes read as text (shared by the view, its legend and editor)."""

from __future__ import annotations

import math

from PySide6.QtGui import QColor, QFont, QFontMetricsF

from ..model.extents import GuestKind

#: background and text colour of each GuestKind (light theme)
KIND_STYLE: dict[int, tuple[str, str, str]] = {
    GuestKind.DATA: ("#ffffff", "#111111", "Data"),
    GuestKind.COMPRESSED: ("#eadcf8", "#3a1760", "Compressed"),
    GuestKind.BACKING: ("#fff1cc", "#5a4300", "Backing file"),
    GuestKind.ZERO: ("#e3ebf5", "#7a8aa0", "Zero"),
    GuestKind.UNALLOCATED: ("#f1f1f1", "#a0a0a0", "Unallocated"),
    GuestKind.FILE: ("#ffffff", "#111111", "Image file"),
    GuestKind.ERROR: ("#f8d0d0", "#900000", "Unreadable"),
}
PENDING_STYLE = ("#ffb86b", "#5c1a00", "Pending edit")
SELECTION = QColor(30, 100, 230, 80)
CLUSTER_LINE = QColor("#2f6fce")
SECTOR_LINE = QColor("#c8c8c8")

OFFSET_MODES = (("Byte offset (hex)", 0), ("LBA, 512-byte sectors", 512),
                ("LBA, 4 KiB sectors", 4096))


# non-printable bytes show as a middle dot (latin-1 0xB7)
_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0xB7 for b in range(256))


def printable(data: bytes) -> str:
    return data.translate(_PRINTABLE).decode("latin-1")


# bytes that could not be read show as ?? (not as the zeros the buffer holds)
UNKNOWN = str.maketrans("0123456789abcdef", "?" * 16)
ERROR_KEY = int(GuestKind.ERROR) * 2


def grid_font(font: QFont) -> QFont:
    """``font`` with a whole-pixel character advance, so column ``i`` of a row
    drawn as one string is exactly at ``i * advance`` (fractional advances
    drift by several characters over a 32-byte row)."""
    font = QFont(font)
    font.setHintingPreference(QFont.PreferFullHinting)
    adv = QFontMetricsF(font).horizontalAdvance("0")
    if adv != int(adv):
        font.setLetterSpacing(QFont.AbsoluteSpacing, math.ceil(adv) - adv)
    return font


def style_of(key: int) -> tuple[QColor | None, QColor]:
    """(background or None for white, text colour) of a kind*2+pending key."""
    kind, pending = divmod(key, 2)
    bg, fg, _ = PENDING_STYLE if pending else KIND_STYLE.get(kind, KIND_STYLE[GuestKind.DATA])
    return (None if bg == "#ffffff" else QColor(bg)), QColor(fg)


#: style_of results by key, made once each (painting asks for them on every row)
STYLES: dict[int, tuple[QColor | None, QColor]] = {}
