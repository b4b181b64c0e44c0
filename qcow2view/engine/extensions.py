"""Header extensions (spec: "Header extensions").

Each extension knows the file offset of its type field; :attr:`HeaderExtension.items`
gives every decoded value with its own offset and width.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import CorruptImageError
from .header import FEATURE_NAMES

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAME_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_FULL_DISK_ENCRYPTION = 0x0537BE77
EXT_DATA_FILE = 0x44415441

EXTENSION_NAMES = {
    EXT_BACKING_FORMAT: "Backing file format name",
    EXT_FEATURE_NAME_TABLE: "Feature name table",
    EXT_BITMAPS: "Bitmaps extension",
    EXT_FULL_DISK_ENCRYPTION: "Full disk encryption header pointer",
    EXT_DATA_FILE: "External data file name",
}


@dataclass(frozen=True)
class ExtensionItem:
    name: str
    value: object
    offset: int
    size: int


@dataclass(frozen=True)
class HeaderExtension:
    type: int
    offset: int          # file offset of the 4-byte type field
    length: int          # length of the data, without padding
    data: bytes
    items: tuple[ExtensionItem, ...] = field(default=())

    @property
    def name(self) -> str:
        return EXTENSION_NAMES.get(self.type, f"Unknown extension {self.type:#010x}")

    @property
    def known(self) -> bool:
        return self.type in EXTENSION_NAMES

    @property
    def data_offset(self) -> int:
        return self.offset + 8

    def item(self, name: str, default=None):
        for it in self.items:
            if it.name == name:
                return it.value
        return default

    # decoded views of the known extensions
    @property
    def text(self) -> str:
        return self.data.split(b"\0", 1)[0].decode("utf-8", "replace")


def _decode_items(ext_type: int, data: bytes, base: int) -> tuple[ExtensionItem, ...]:
    items: list[ExtensionItem] = []
    if ext_type in (EXT_BACKING_FORMAT, EXT_DATA_FILE):
        name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        items.append(ExtensionItem("name", name, base, len(data)))
    elif ext_type == EXT_FEATURE_NAME_TABLE:
        for i in range(len(data) // 48):
            o = i * 48
            kind, bit = data[o], data[o + 1]
            name = data[o + 2:o + 48].split(b"\0", 1)[0].decode("utf-8", "replace")
            kind_name = {0: "incompatible", 1: "compatible", 2: "autoclear"}.get(kind, f"type {kind}")
            items.append(ExtensionItem(f"{kind_name} bit {bit}", name, base + o, 48))
    elif ext_type == EXT_BITMAPS and len(data) >= 24:
        nb, _res, dsize, doff = struct.unpack_from(">IIQQ", data)
        items += [ExtensionItem("nb_bitmaps", nb, base, 4),
                  ExtensionItem("reserved", _res, base + 4, 4),
                  ExtensionItem("bitmap_directory_size", dsize, base + 8, 8),
                  ExtensionItem("bitmap_directory_offset", doff, base + 16, 8)]
    elif ext_type == EXT_FULL_DISK_ENCRYPTION and len(data) >= 16:
        off, length = struct.unpack_from(">QQ", data)
        items += [ExtensionItem("offset", off, base, 8),
                  ExtensionItem("length", length, base + 8, 8)]
    return tuple(items)


def parse_extensions(buf: bytes, start: int, end: int) -> list[HeaderExtension]:
    """Parse extensions in ``buf[start:end]`` (``buf`` begins at file offset 0)."""
    exts: list[HeaderExtension] = []
    off = start
    end = min(end, len(buf))
    while off + 8 <= end:
        ext_type, length = struct.unpack_from(">II", buf, off)
        if ext_type == EXT_END:
            break
        if length > end - off - 8:
            raise CorruptImageError(
                f"header extension {ext_type:#010x} of {length} bytes runs past the "
                f"header area (ends at {end:#x})", structure="header extension", offset=off)
        data = bytes(buf[off + 8:off + 8 + length])
        if ext_type == EXT_BITMAPS and length < 24:
            raise CorruptImageError("bitmaps extension shorter than 24 bytes",
                                    structure="bitmaps extension", offset=off)
        if ext_type == EXT_FULL_DISK_ENCRYPTION and length < 16:
            raise CorruptImageError("full disk encryption extension shorter than 16 bytes",
                                    structure="encryption extension", offset=off)
        exts.append(HeaderExtension(ext_type, off, length, data,
                                    _decode_items(ext_type, data, off + 8)))
        off += 8 + ((length + 7) & ~7)
    return exts


def feature_name_table(exts: list[HeaderExtension]) -> dict[tuple[int, int], str]:
    table: dict[tuple[int, int], str] = {}
    for e in exts:
        if e.type == EXT_FEATURE_NAME_TABLE:
            for i in range(len(e.data) // 48):
                o = i * 48
                name = e.data[o + 2:o + 48].split(b"\0", 1)[0].decode("utf-8", "replace")
                table[(e.data[o], e.data[o + 1])] = name
    return table


def pack_extension(ext_type: int, data: bytes) -> bytes:
    pad = (-len(data)) % 8
    return struct.pack(">II", ext_type, len(data)) + data + bytes(pad)


def pack_feature_name_table() -> bytes:
    """The feature name table QEMU writes: every feature it knows, 48 bytes each."""
    out = bytearray()
    for (kind, bit), name in sorted(FEATURE_NAMES.items()):
        out += struct.pack(">BB46s", kind, bit, name.encode())
    return bytes(out)
