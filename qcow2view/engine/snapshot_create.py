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


def _share_tables(image, l1: np.ndarray) -> dict[int, np.ndarray]:
    """Raise (in memory) the refcount of every L2 table and data cluster that
    ``l1`` reaches; returns those tables with COPIED cleared, by offset."""
    cs = image.cluster_size
    alloc = image.meta.refcounts
    not_copied = np.uint64(~C.QCOW_OFLAG_COPIED & 0xFFFFFFFFFFFFFFFF)
    step = 2 if image.extended_l2 else 1
    tables: dict[int, np.ndarray] = {}
    for l1i, e in enumerate(l1.tolist()):
        l2off = e & C.L1E_OFFSET_MASK
        if not l2off:
            continue
        alloc.change(l2off, cs, +1)
        words = image.meta.l2_words(l2off, l1i)
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
    image.require_writable()
    if image.has_data_file:
        raise RequestError(f"Could not create snapshot '{name}': Operation not supported "
                           "(internal snapshots of images with an external data file)")
    if image.header.refcount_order == 0:
        raise RequestError("1-bit refcounts cannot count a snapshot's second reference")
    image.flush()                       # pending metadata first
    meta = image.meta
    cs = image.cluster_size

    # 1. the L1 copy
    l1 = image.l1_table.entries.copy()
    l1_bytes = max(8, len(l1) * 8)
    start = meta.refcounts.alloc(-(-l1_bytes // cs))
    meta.commit_refcounts()
    meta.write_table(start * cs, l1.astype(">u8").tobytes())

    # 2. everything the active L1 reaches is now shared by one more reference
    try:
        tables = _share_tables(image, l1)
    except CorruptImageError as e:
        meta.forget_refcounts()         # nothing of step 2 reached the disk
        raise RequestError(f"cannot take the snapshot: {e.reason}") from None
    meta.commit_refcounts()
    for l2off, words in tables.items():
        meta.write_l2(l2off, words)
    meta.write_l1(l1 & np.uint64(~C.QCOW_OFLAG_COPIED & 0xFFFFFFFFFFFFFFFF))

    # 3. the snapshot table
    old_n = meta.header.nb_snapshots
    old_bytes = meta.snapshot_table_bytes()
    ids = [int(s.id_str) for s in image.snapshots if s.id_str.isdigit()]
    id_str = str(max(ids, default=0) + 1)
    now = time.time_ns()
    entry = _pack_entry(start * cs, len(l1), id_str, name, now // 10**9, now % 10**9,
                        image.virtual_size)
    meta.write_snapshot_table(old_bytes + entry, old_n + 1)
    meta.reload()
    return image.snapshots[-1]
