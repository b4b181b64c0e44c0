"""The header, its extensions, the backing chain, snapshots and bitmaps as one table.

Columns: field, file offset, raw value (hex), meaning.  Section rows ("Header",
"Header extensions", ...) have no offset.  ``OffsetRole`` gives (offset,
length) so a click can show the bytes in the file hex view.
"""

from __future__ import annotations

import datetime as _dt
import struct
from dataclasses import dataclass

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QPalette, QGuiApplication

from ..engine.bitmaps import Bitmap
from ..engine.header import (CRYPT_METHODS, FEATURE_AUTOCLEAR, FEATURE_COMPATIBLE,
                             FEATURE_INCOMPATIBLE, HEADER_FIELDS, V3_HEADER_LENGTH,
                             feature_bit_names)
from ..engine.image import Image
from .rows_model import RowsModel
from .units import human_size

OffsetRole = Qt.UserRole + 1       # (offset, length) or None
SectionRole = Qt.UserRole + 2      # True on section rows
NameRole = Qt.UserRole + 3         # the spec's field name (for tests and lookups)


@dataclass(frozen=True)
class HeaderRow:
    field: str
    offset: int | None = None
    length: int = 0
    raw: str = ""
    meaning: str = ""
    section: bool = False
    name: str = ""                  # spec name / key; "" for section rows


def _raw_hex(data: bytes) -> str:
    if len(data) <= 8:
        return "0x" + data.hex() if data else ""
    return data[:16].hex(" ") + (" …" if len(data) > 16 else "")


def _features(kind: int, bits: int, table) -> str:
    names = feature_bit_names(kind, bits, table)
    return ", ".join(names) if names else "none"


def _header_meaning(img: Image, name: str, value) -> str:
    h = img.header
    cs = img.cluster_size
    if name == "magic":
        return "QFI\\xfb: a QCOW image" if value == b"QFI\xfb" else "bad magic"
    if name == "version":
        return f"version {value} (compat {h.compat})"
    if name == "backing_file_offset":
        return "no backing file" if not value else f"backing file name at {value:#x}"
    if name == "backing_file_size":
        return (f"{value} bytes: {img.backing_filename!r}" if img.backing_filename
                else "no backing file")
    if name == "cluster_bits":
        return f"{human_size(cs)} clusters"
    if name == "size":
        return f"virtual disk of {human_size(value)} ({value:,} bytes)"
    if name == "crypt_method":
        return f"encryption: {CRYPT_METHODS.get(value, 'unknown')}"
    if name == "l1_size":
        span = img.l2_size * cs
        return f"{value:,} entr{'y' if value == 1 else 'ies'}, each maps {human_size(span)}"
    if name in ("l1_table_offset", "refcount_table_offset", "snapshots_offset"):
        if not value:
            return "none"
        return f"cluster {value // cs:,}" + ("" if value % cs == 0 else " (NOT ALIGNED)")
    if name == "refcount_table_clusters":
        entries = value * cs // 8
        covers = entries * img.refcount_block_entries * cs
        return f"{entries:,} entries, covering {human_size(covers)} of file"
    if name == "nb_snapshots":
        return "no internal snapshots" if not value else f"{value} internal snapshot(s)"
    if name == "incompatible_features":
        return _features(FEATURE_INCOMPATIBLE, value, img.feature_names)
    if name == "compatible_features":
        return _features(FEATURE_COMPATIBLE, value, img.feature_names)
    if name == "autoclear_features":
        return _features(FEATURE_AUTOCLEAR, value, img.feature_names)
    if name == "refcount_order":
        return f"{h.refcount_bits}-bit refcounts"
    if name == "header_length":
        return f"{value} bytes"
    if name == "compression_type":
        return f"compression: {h.compression_type_name}"
    return ""


def _date(sec: int) -> str:
    try:
        return _dt.datetime.fromtimestamp(sec).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{sec} s"


def header_rows(img: Image) -> list[HeaderRow]:
    h = img.header
    rows: list[HeaderRow] = [HeaderRow("Header", section=True)]
    head = img.file.pread(0, max(h.header_length, 72))
    for f in HEADER_FIELDS:
        if f.min_version > h.version:
            continue
        if f.name == "compression_type" and h.header_length <= V3_HEADER_LENGTH:
            continue
        raw = head[f.offset:f.offset + f.size]
        value = raw if f.fmt == "4s" else struct.unpack(f.fmt, raw)[0]
        rows.append(HeaderRow(f.name, f.offset, f.size, _raw_hex(raw),
                              _header_meaning(img, f.name, value), name=f.name))
    if img.backing_filename:
        rows.append(HeaderRow("backing file name", h.backing_file_offset,
                              h.backing_file_size, "", img.backing_filename,
                              name="backing_file"))

    rows.append(HeaderRow(f"Header extensions ({len(img.extensions)})", section=True))
    for e in img.extensions:
        rows.append(HeaderRow(e.name, e.offset, 8 + e.length, f"{e.type:#010x}",
                              f"{e.length} bytes of data", name=f"ext:{e.type:#010x}"))
        for it in e.items:
            v = it.value
            raw = f"{v:#x}" if isinstance(v, int) else ""
            meaning = (human_size(v) if isinstance(v, int) and "size" in it.name
                       else str(v))
            rows.append(HeaderRow("    " + it.name, it.offset, it.size, raw, meaning,
                                  name=it.name))

    rows.append(HeaderRow(f"Backing chain ({len(img.backing_chain)})", section=True))
    if not img.backing_chain:
        rows.append(HeaderRow("(none)", name=""))
    for b in img.backing_chain:
        state = "found" if b.found else "NOT FOUND"
        meaning = f"{b.format or 'unknown format'}, {state}"
        if b.virtual_size is not None:
            meaning += f", {human_size(b.virtual_size)}"
        if b.error:
            meaning += f": {b.error}"
        rows.append(HeaderRow(f"depth {b.depth}: {b.filename}", None, 0, "", meaning,
                              name=f"backing:{b.depth}"))

    rows.append(HeaderRow(f"Snapshots ({len(img.snapshots)})", section=True))
    for s in img.snapshots:
        parts = [_date(s.date_sec), f"VM state {human_size(s.vm_state_size)}"]
        if s.disk_size is not None:
            parts.append(f"disk {human_size(s.disk_size)}")
        parts.append(f"L1 at {s.l1_table_offset:#x} ({s.l1_size:,} entr{'y' if s.l1_size == 1 else 'ies'})")
        rows.append(HeaderRow(f"id {s.id_str}: {s.name}", s.offset, s.entry_size,
                              f"{s.l1_table_offset:#x}", ", ".join(parts),
                              name=f"snapshot:{s.id_str}"))

    rows.append(HeaderRow(f"Bitmaps ({len(img.bitmaps)})", section=True))
    for b in img.bitmaps:
        rows.append(HeaderRow(b.name, b.offset, 24, f"{b.bitmap_table_offset:#x}",
                              _bitmap_meaning(b), name=f"bitmap:{b.name}"))
    return rows


def _bitmap_meaning(b: Bitmap) -> str:
    flags = ", ".join(b.flag_names) or "no flags"
    return (f"granularity {human_size(b.granularity)}, {flags}, "
            f"table of {b.bitmap_table_size} entries")


class HeaderModel(RowsModel):
    COLUMNS = ("Field", "Offset", "Raw", "Meaning")

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._rows: list[HeaderRow] = []
        self._image_rows: list[HeaderRow] = []
        self._guest: list[HeaderRow] = []       # set_guest: the "Guest" section
        self._bold = QFont()
        self._bold.setBold(True)

    def set_image(self, img: Image | None) -> None:
        self.beginResetModel()
        self._image_rows = header_rows(img) if img is not None else []
        self._rows = self._image_rows + self._guest
        self.endResetModel()

    def set_guest(self, rows: list[HeaderRow]) -> None:
        """The "Guest" section (partition table, filesystems) after the image's rows."""
        self.beginResetModel()
        self._guest = list(rows)
        self._rows = self._image_rows + self._guest
        self.endResetModel()

    def row(self, i: int) -> HeaderRow:
        return self._rows[i]

    def find(self, name: str) -> int:
        """Row number of the row whose spec name is ``name`` (-1 if none)."""
        for i, r in enumerate(self._rows):
            if r.name == name:
                return i
        return -1

    # -- Qt API ---------------------------------------------------------------------
    def flags(self, index):
        if not index.isValid():
            return Qt.NoItemFlags
        r = self._rows[index.row()]
        return Qt.ItemIsEnabled if r.section else Qt.ItemIsEnabled | Qt.ItemIsSelectable

    def data(self, index: QModelIndex | QPersistentModelIndex, role=Qt.DisplayRole):
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        r = self._rows[index.row()]
        col = index.column()
        if role in (Qt.DisplayRole, Qt.ToolTipRole):
            if r.section:
                return r.field if col == 0 else ""
            if col == 0:
                return r.field
            if col == 1:
                return "" if r.offset is None else f"{r.offset:#x}"
            if col == 2:
                return r.raw
            if col == 3:
                return r.meaning
        elif role == Qt.FontRole:
            if r.section:
                return self._bold
        elif role == Qt.BackgroundRole:
            if r.section:
                return QBrush(QGuiApplication.palette().color(QPalette.AlternateBase)
                              .darker(108))
        elif role == Qt.ForegroundRole:
            if not r.section and ("NOT FOUND" in r.meaning or "NOT ALIGNED" in r.meaning
                                  or (r.name == "incompatible_features"
                                      and ("corrupt" in r.meaning or "dirty" in r.meaning))):
                return QBrush(QColor("#c0392b"))
        elif role == Qt.TextAlignmentRole:
            if col == 1:
                return int(Qt.AlignRight | Qt.AlignVCenter)
        elif role == OffsetRole:
            return None if r.offset is None else (r.offset, r.length)
        elif role == SectionRole:
            return r.section
        elif role == NameRole:
            return r.name
        return None
