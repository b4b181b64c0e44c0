"""Numbers as people read them: sizes in binary units, offsets in hex, "16M" parsing."""

from __future__ import annotations

import re
from fractions import Fraction

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
#: no disk is larger than this (QEMU's limit is 2^63 bytes)
MAX_OFFSET = (1 << 63) - 1
EXPECTED_OFFSET = "expected an offset such as 0x7e00, 1M, LBA 2048"
_SUFFIX = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``count(1, "leak")`` -> ``1 leak``; ``count(6, "leaked cluster")`` -> ``6 leaked clusters``."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def human_size(n: int) -> str:
    """``65536`` -> ``64 KiB``; ``1536`` -> ``1.5 KiB``; exact values stay integral."""
    if n < 1024:
        return f"{n} byte" + ("" if n == 1 else "s")
    v = float(n)
    i = 0
    while v >= 1024 and i < len(_UNITS) - 1:
        v /= 1024
        i += 1
    text = f"{v:.0f}" if v == int(v) else f"{v:.1f}" if v < 100 else f"{v:.0f}"
    return f"{text} {_UNITS[i]}"


def hex_offset(n: int) -> str:
    return f"{n:#x}"


def parse_offset(text: str) -> int:
    """``0x1000000``, ``16M``, ``16MiB``, ``4096``, ``1.5G`` -> bytes; ValueError otherwise."""
    t = text.strip().replace("_", "").replace(",", "")
    if not t:
        raise ValueError("empty offset")
    if len(t) > 40:     # int() of thousands of digits is slow, a float of them inf
        raise ValueError(f"{EXPECTED_OFFSET} (that number is larger than any disk)")
    if t.lower().startswith("0x"):
        try:
            value = int(t, 16)
        except ValueError:
            raise ValueError(f"not an offset: {text!r} (try 0x1000, 4096 or 16M)") from None
    else:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgtpeb]?)(?:i?b)?", t, re.IGNORECASE)
        if not m:
            raise ValueError(f"not an offset: {text!r} (try 0x1000, 4096 or 16M)")
        num, unit = m.groups()
        value = int(Fraction(num) * (1 << _SUFFIX[unit.lower()]))    # exact, never inf
    if value > MAX_OFFSET:
        raise ValueError(f"{EXPECTED_OFFSET} (that number is larger than any disk)")
    return value
