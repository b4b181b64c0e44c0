"""The internal snapshot table (spec: "Snapshots")."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import CorruptImageError

QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024
SNAPSHOT_FIXED_SIZE = 40


@dataclass(frozen=True)
class Snapshot:
    index: int
    offset: int                  # file offset of this table entry
    entry_size: int              # bytes, including padding
    l1_table_offset: int
    l1_size: int
    id_str: str
    name: str
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int           # the 64-bit value when the extra data has it
    extra_data_size: int
    disk_size: int | None        # None for old snapshots without the field
    icount: int | None
    extra_data: bytes = b""


def parse_snapshot_table(data: bytes, base: int, count: int) -> list[Snapshot]:
    """Parse ``count`` entries from ``data`` read at file offset ``base``."""
    snaps: list[Snapshot] = []
    off = 0
    for i in range(count):
        off = (off + 7) & ~7
        where = base + off
        if off + SNAPSHOT_FIXED_SIZE > len(data):
            raise CorruptImageError(f"snapshot {i} runs past the snapshot table",
                                    structure="snapshot table entry", offset=where)
        (l1_off, l1_size, id_len, name_len, date_sec, date_nsec, vm_clock, vm_state,
         extra_size) = struct.unpack_from(">QIHHIIQII", data, off)
        if extra_size > QCOW_MAX_SNAPSHOT_EXTRA_DATA:
            raise CorruptImageError(f"snapshot {i} has {extra_size} bytes of extra data "
                                    f"(at most {QCOW_MAX_SNAPSHOT_EXTRA_DATA})",
                                    structure="snapshot extra_data_size", offset=where + 36)
        p = off + SNAPSHOT_FIXED_SIZE
        end = p + extra_size + id_len + name_len
        if end > len(data):
            raise CorruptImageError(f"snapshot {i} runs past the snapshot table",
                                    structure="snapshot table entry", offset=where)
        extra = bytes(data[p:p + extra_size])
        disk_size = icount = None
        if extra_size >= 8:
            vm_state = struct.unpack_from(">Q", extra, 0)[0]
        if extra_size >= 16:
            disk_size = struct.unpack_from(">Q", extra, 8)[0]
        if extra_size >= 24:
            icount = struct.unpack_from(">Q", extra, 16)[0]
        p += extra_size
        id_str = data[p:p + id_len].decode("utf-8", "replace")
        p += id_len
        name = data[p:p + name_len].decode("utf-8", "replace")
        p += name_len
        entry_size = ((p - off) + 7) & ~7
        snaps.append(Snapshot(i, where, entry_size, l1_off, l1_size, id_str, name, date_sec,
                              date_nsec, vm_clock, vm_state, extra_size, disk_size, icount, extra))
        off = p
    return snaps


#: the extra data a v3 entry must have: vm_state_size_large and disk_size
SNAPSHOT_EXTRA_MIN_V3 = 16
#: what qcow2_write_snapshots writes (QEMU 7.2): vm_state_size_large, disk_size, icount
SNAPSHOT_EXTRA_KNOWN = 24


def incomplete_snapshots(snapshots: list[Snapshot], version: int) -> list[Snapshot]:
    """v3 entries with less than 16 bytes of extra data, which ``qemu-img check``
    reports as "snapshot table entry N is incomplete" (a corruption)."""
    if version < 3:
        return []
    return [s for s in snapshots if s.extra_data_size < SNAPSHOT_EXTRA_MIN_V3]


def repack_snapshot_entry(entry: bytes, s: Snapshot, disk_size: int) -> bytes:
    """Entry ``s`` (its bytes ``entry`` as on disk) as qcow2_write_snapshots writes it:
    the 24 bytes of extra data QEMU knows (the disk size it was taken at defaults to
    ``disk_size``, the image's, and icount to -1), extra data beyond them kept, id and
    name bytes as they were; not padded."""
    (l1_off, l1_size, id_len, name_len, date_sec, date_nsec, vm_clock, _vm32,
     extra_size) = struct.unpack_from(">QIHHIIQII", entry, 0)
    names = entry[SNAPSHOT_FIXED_SIZE + extra_size:
                  SNAPSHOT_FIXED_SIZE + extra_size + id_len + name_len]
    icount = (1 << 64) - 1 if s.icount is None else s.icount
    extra = struct.pack(">QQQ", s.vm_state_size,
                        disk_size if s.disk_size is None else s.disk_size,
                        icount) + s.extra_data[SNAPSHOT_EXTRA_KNOWN:]
    vm32 = s.vm_state_size if s.vm_state_size <= 0xFFFFFFFF else 0
    return struct.pack(">QIHHIIQII", l1_off, l1_size, id_len, name_len, date_sec, date_nsec,
                       vm_clock, vm32, len(extra)) + extra + bytes(names)
