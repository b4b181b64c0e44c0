"""Persistent dirty bitmaps (spec: "Bitmaps")."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import CorruptImageError

BME_FLAG_IN_USE = 1 << 0
BME_FLAG_AUTO = 1 << 1
BME_FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2
BME_TABLE_ENTRY_OFFSET_MASK = 0x00FFFFFFFFFFFE00
BME_TABLE_ENTRY_FLAG_ALL_ONES = 1
BITMAP_DIR_FIXED_SIZE = 24
BME_MAX_NAME_SIZE = 1023
BME_MAX_GRANULARITY_BITS = 31
BME_MIN_GRANULARITY_BITS = 9
BITMAP_FLAG_NAMES = {BME_FLAG_IN_USE: "in-use", BME_FLAG_AUTO: "auto",
                     BME_FLAG_EXTRA_DATA_COMPATIBLE: "extra-data-compatible"}


@dataclass(frozen=True)
class Bitmap:
    index: int
    offset: int                  # file offset of the directory entry
    bitmap_table_offset: int
    bitmap_table_size: int
    flags: int
    type: int
    granularity_bits: int
    name: str
    extra_data_size: int

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits

    @property
    def flag_names(self) -> list[str]:
        return [n for b, n in BITMAP_FLAG_NAMES.items() if self.flags & b]

    @property
    def in_use(self) -> bool:
        return bool(self.flags & BME_FLAG_IN_USE)


def parse_bitmap_directory(data: bytes, base: int, count: int) -> list[Bitmap]:
    out: list[Bitmap] = []
    off = 0
    for i in range(count):
        where = base + off
        if off + BITMAP_DIR_FIXED_SIZE > len(data):
            raise CorruptImageError(f"bitmap {i} runs past the bitmap directory",
                                    structure="bitmap directory entry", offset=where)
        (tbl_off, tbl_size, flags, btype, gbits, name_size,
         extra_size) = struct.unpack_from(">QIIBBHI", data, off)
        if name_size > BME_MAX_NAME_SIZE:
            raise CorruptImageError(f"bitmap name of {name_size} bytes",
                                    structure="bitmap directory entry", offset=where + 18)
        end = off + BITMAP_DIR_FIXED_SIZE + extra_size + name_size
        if end > len(data):
            raise CorruptImageError(f"bitmap {i} runs past the bitmap directory",
                                    structure="bitmap directory entry", offset=where)
        p = off + BITMAP_DIR_FIXED_SIZE + extra_size
        name = data[p:p + name_size].decode("utf-8", "replace")
        out.append(Bitmap(i, where, tbl_off, tbl_size, flags, btype, gbits, name, extra_size))
        off = (end + 7) & ~7
    return out
