"""Taking an internal snapshot (QEMU's qcow2_snapshot_create, qcow2-snapshot.c).

Order, so that a crash leaks clusters at worst:
1. copy the active L1 table to new clusters (refcounts raised and flushed first);
2. raise the refcount of every L2 table and data cluster the active L1 reaches,
   flush, then clear COPIED in the active L2 and L1 entries (they are shared now);
3. write a new snapshot table, flush, point the header at it in one write,
   flush, and only then free the old table.
"""

from __future__ import annotations

import struct
import time

import numpy as np

from . import clusters as C
from .errors import CorruptImageError, RequestError
from .snapshots import Snapshot

SNAPSHOT_EXTRA_DATA_SIZE = 24     # vm_state_size_large, disk_size, icount (QEMU 7.2)


def _pack_entry(l1_offset: int, l1_size: int, id_str: str, name: str, date_sec: int,
                date_nsec: int, disk_size: int) -> bytes:
    id_b, name_b = id_str.encode(), name.encode()
    # as qemu-img snapshot -c: vm_state_size, disk_size, icount 0 (its entry is zeroed)
    extra = struct.pack(">QQQ", 0, disk_size, 0)
    out = struct.pack(">QIHHIIQII", l1_offset, l1_size, len(id_b), len(name_b), date_sec,
                      date_nsec, 0, 0, len(extra)) + extra + id_b + name_b
    return out + bytes((-len(out)) % 8)


def _commit_refcounts(image, alloc) -> None:
    if alloc.write_new_blocks():
        image.file.fsync()
    alloc.write_dirty()
    image.file.fsync()


def _share_tables(image, alloc, l1: np.ndarray) -> dict[int, np.ndarray]:
    """Raise (in memory) the refcount of every L2 table and data cluster that
    ``l1`` reaches; returns those tables with COPIED cleared, by offset."""
    cs = image.cluster_size
    not_copied = np.uint64(~C.QCOW_OFLAG_COPIED & 0xFFFFFFFFFFFFFFFF)
    step = 2 if image.extended_l2 else 1
    tables: dict[int, np.ndarray] = {}
    for l1i, e in enumerate(l1.tolist()):
        l2off = e & C.L1E_OFFSET_MASK
        if not l2off:
            continue
        alloc.change(l2off, cs, +1)
        words = np.frombuffer(image.read_l2_bytes(l2off, l1i), dtype=">u8").astype(np.uint64)
        for entry in words[::step].tolist():
            if C.cluster_type(entry, image.has_data_file) == C.ClusterType.COMPRESSED:
                coff, csize = image.layout.decode(entry)
                alloc.change(coff, csize, +1)
            elif entry & C.L2E_OFFSET_MASK:
                alloc.change(entry & C.L2E_OFFSET_MASK, cs, +1)
        words[::step] &= not_copied
        tables[l2off] = words
    return tables


def create_snapshot(image, name: str) -> Snapshot:
    """Take an internal snapshot of the disk state of a writable ``image``."""
    if not name or len(name.encode()) > 0xFFFF:
        raise RequestError("a snapshot needs a name")
    if any(s.name == name for s in image.snapshots):
        raise RequestError(f"a snapshot named {name!r} exists already")
    writer = image._write_side()
    if image.has_data_file:
        raise RequestError("internal snapshots of images with an external data file are "
                           "not supported (as in QEMU)")
    if image.header.refcount_order == 0:
        raise RequestError("1-bit refcounts cannot count a snapshot's second reference")
    image.flush()                       # pending metadata first
    alloc = writer.alloc
    f = image.file
    h = image.header
    cs = image.cluster_size

    # 1. the L1 copy
    l1 = image.l1_table.entries.copy()
    l1_bytes = max(8, len(l1) * 8)
    n = -(-l1_bytes // cs)
    start = alloc.alloc(n)
    _commit_refcounts(image, alloc)
    f.pwrite(start * cs, l1.astype(">u8").tobytes())

    # 2. everything the active L1 reaches is now shared by one more reference
    try:
        tables = _share_tables(image, alloc, l1)
    except CorruptImageError as e:
        alloc.forget()                  # nothing of step 2 reached the disk
        raise RequestError(f"cannot take the snapshot: {e.reason}") from None
    _commit_refcounts(image, alloc)
    for l2off, words in tables.items():
        f.pwrite(l2off, words.astype(">u8").tobytes())
    new_l1 = l1 & np.uint64(~C.QCOW_OFLAG_COPIED & 0xFFFFFFFFFFFFFFFF)
    f.pwrite(image.l1_table.offset, new_l1.astype(">u8").tobytes())
    f.fsync()

    # 3. the snapshot table
    old_n = h.nb_snapshots
    old_bytes = snapshot_table_bytes(image)
    ids = [int(s.id_str) for s in image.snapshots if s.id_str.isdigit()]
    id_str = str(max(ids, default=0) + 1)
    now = time.time_ns()
    entry = _pack_entry(start * cs, len(l1), id_str, name, now // 10**9, now % 10**9,
                        image.virtual_size)
    write_snapshot_table(image, alloc, old_bytes + entry, old_n + 1)
    image.reload_metadata()
    return image.snapshots[-1]


def snapshot_table_bytes(image) -> bytes:
    """The snapshot table as it is, every entry padded to 8 bytes (qemu-img ends the
    file right after the last entry's name, without that padding)."""
    if not image.snapshots:
        return b""
    last = image.snapshots[-1]
    off = image.header.snapshots_offset
    n = last.offset + last.entry_size - off
    data = image.file.pread(off, n)
    if len(data) < n - 7:
        raise CorruptImageError(f"{n} bytes needed but the file ends at {image.file.size:#x}",
                                structure="snapshot table", offset=off)
    return data + bytes(n - len(data))


def write_snapshot_table(image, alloc, table: bytes, count: int) -> None:
    """Replace the snapshot table by ``table`` (``count`` packed entries), as
    qcow2_write_snapshots: the new table is written and flushed in new clusters,
    the header switched to it in one write (nb_snapshots and snapshots_offset
    are adjacent), flushed, and only then the old table freed."""
    f = image.file
    cs = image.cluster_size
    h = image.header
    old_off = h.snapshots_offset
    old_len = 0
    if image.snapshots:
        last = image.snapshots[-1]
        old_len = last.offset + last.entry_size - old_off
    new_off = 0
    if table:
        tn = -(-len(table) // cs)
        new_off = alloc.alloc(tn) * cs
        _commit_refcounts(image, alloc)
        f.pwrite(new_off, table + bytes(tn * cs - len(table)))
        f.fsync()
    f.pwrite(60, struct.pack(">IQ", count, new_off))
    f.fsync()
    image.header = h.replace(nb_snapshots=count, snapshots_offset=new_off)
    if old_len:
        alloc.change(old_off, old_len, -1)
        _commit_refcounts(image, alloc)
