"""Internal snapshots: list, create, apply and delete (qemu-img snapshot -l/-c/-a/-d;
QEMU's qcow2-snapshot.c).

Apply and delete follow qcow2_snapshot_goto and qcow2_snapshot_delete: refcounts
are raised before anything new points at a cluster and lowered only once the
last pointer is gone; the COPIED flags are brought in line with the refcounts at
the end.  A crash at any step leaves the image as before or as after, with
leaked clusters at most -- and, between the last two steps, COPIED flags
missing on clusters whose refcount just became 1 (``qemu-img check`` counts
those as repairable "OFLAG_COPIED" errors; a writer copies such a cluster once
more, it never overwrites shared data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import metadata_ops as M
from ..errors import RequestError
from ..refcounts import max_refcount
from ..snapshot_create import create_snapshot as _take_snapshot
from ..snapshots import Snapshot
from .resize import resize_image

__all__ = ["list_snapshots", "create_snapshot", "apply_snapshot", "delete_snapshot",
           "SnapshotDeletePreview", "preview_delete"]


def list_snapshots(image) -> list[Snapshot]:
    return list(image.snapshots)


def create_snapshot(image, name: str) -> Snapshot:
    """Take an internal snapshot (qemu-img snapshot -c).  A refcount that would
    overflow its width is refused before anything is written (the snapshot writer
    finds it only after allocating the L1 copy, which then leaked)."""
    if name and image.writable and not any(s.name == name for s in image.snapshots):
        _refuse_overflow(image)
    return _take_snapshot(image, name)


def _refuse_overflow(image) -> None:
    order = image.header.refcount_order
    if order == 0:
        return                          # the writer's own reason says it better
    tables, data = M.l1_references(image, image.l1_table.entries)
    refs = np.sort(np.concatenate([tables, data]))
    if not refs.size:
        return
    starts = np.flatnonzero(np.r_[True, refs[1:] != refs[:-1]])
    clusters = refs[starts]
    extra = np.diff(np.r_[starts, refs.size]).astype(np.uint64)
    after = image.meta.refcounts.counts_of(clusters) + extra
    over = np.flatnonzero(after > np.uint64(max_refcount(order)))
    if over.size:
        i = int(over[0])
        raise RequestError(f"cannot take the snapshot: refcount of cluster at "
                           f"{int(clusters[i]) * image.cluster_size:#x} would become "
                           f"{int(after[i])} (refcount_bits={1 << order})")


def _find(image, key: str, by_id: bool = True) -> Snapshot:
    # qemu-img -a looks a snapshot up by id first, then by name; -d by name only
    # (bdrv_snapshot_find), so "-d 2" never deletes the snapshot whose id is 2
    for s in image.snapshots if by_id else ():
        if s.id_str == key:
            return s
    for s in image.snapshots:
        if s.name == key:
            return s
    raise RequestError(f"snapshot {key!r} not found")


def _check_supported(image, what: str, key: str) -> None:
    # qemu-img's refusal (qcow2 returns -ENOTSUP), with the reason it leaves out
    if image.has_data_file:
        raise RequestError(f"Could not {what} snapshot '{key}': Operation not supported "
                           "(internal snapshots of images with an external data file)")


@M.operation
def apply_snapshot(image, key: str, progress=None) -> Snapshot:
    """Revert the disk of a writable ``image`` to snapshot ``key`` (qemu-img snapshot -a)."""
    _check_supported(image, "apply", key)           # before the look-up, as qemu-img
    sn = _find(image, key)
    image.require_writable()
    image.flush()
    if sn.disk_size is not None and sn.disk_size != image.virtual_size:
        resize_image(image, sn.disk_size, shrink=True)
    image.meta.grow_l1(sn.l1_size)
    cur = image.l1_table
    sn_l1 = np.zeros(cur.size, dtype=np.uint64)
    sn_l1[:sn.l1_size] = image.snapshot_l1_table(sn).entries
    old_active = cur.entries.copy()
    steps = 2 * cur.size + 2
    # what both disks reach, read first: a cancel (from progress) changes nothing
    tables, data = M.l1_references(image, sn_l1, lambda d, t: M.report(progress, d, steps))
    old_tables, old_data = M.l1_references(
        image, old_active, lambda d, t: M.report(progress, cur.size + d, steps))
    # 1. the snapshot's tables lose COPIED (refcount 1 without COPIED is safe; the
    #    reverse is not), then whatever it reaches gains the active disk's reference
    new_l1 = M.clear_copied_in_tables(image, sn_l1)
    M.change_refcounts(image, tables, +1)
    M.change_refcounts(image, data, +1)
    M.sync_refcounts(image)
    # 2. the active L1 becomes the snapshot's (in place, as QEMU)
    image.meta.write_l1(new_l1)
    # 3. the old active disk loses its reference
    M.change_refcounts(image, old_tables, -1)
    M.change_refcounts(image, old_data, -1)
    M.sync_refcounts(image)
    # 4. COPIED where the refcount is now 1
    M.reload(image)
    M.fix_copied_flags(image)
    M.reload(image)
    M.finish(progress, steps)
    return sn


@M.operation
def delete_snapshot(image, key: str, progress=None) -> Snapshot:
    """Delete snapshot ``key`` of a writable ``image`` (qemu-img snapshot -d)."""
    # qemu-img looks the name up first (a data-file image it made never has snapshots:
    # "snapshot not found"); one that has them anyway is refused, not guessed at
    sn = _find(image, key, by_id=False)
    _check_supported(image, "delete", key)
    image.require_writable()
    image.flush()
    sn_l1 = image.snapshot_l1_table(sn).entries.copy()
    tables, data = M.l1_references(image, sn_l1, progress)    # cancellable: nothing changed yet
    # 1. the entry leaves the snapshot table (a new table; the old one is freed)
    old = image.meta.snapshot_table_bytes()
    lo = sn.offset - image.header.snapshots_offset
    image.meta.write_snapshot_table(old[:lo] + old[lo + sn.entry_size:],
                                    len(image.snapshots) - 1)
    # 2. everything its L1 reaches loses one reference, then the L1 table goes
    M.change_refcounts(image, tables, -1)
    M.change_refcounts(image, data, -1)
    M.sync_refcounts(image)
    if sn.l1_size:
        M.free_spans(image, [(sn.l1_table_offset, sn.l1_size * 8)])
    # 3. COPIED where the refcount is now 1
    M.reload(image)
    M.fix_copied_flags(image)
    M.reload(image)
    return sn


@dataclass(frozen=True)
class SnapshotDeletePreview:
    snapshot: Snapshot
    freed_clusters: int
    freed_bytes: int


def preview_delete(image, key: str) -> SnapshotDeletePreview:
    """What deleting ``key`` would free: clusters only that snapshot references."""
    sn = _find(image, key, by_id=False)
    l1 = image.snapshot_l1_table(sn).entries
    tables, data = M.l1_references(image, l1)
    refs = np.concatenate([tables, data])
    uniq, counts = np.unique(refs, return_counts=True)
    counts_now = image.refcounts(int(uniq[-1]) + 1 if uniq.size else 0)
    rc = counts_now[uniq].astype(np.int64)
    freed = int(np.count_nonzero(rc == counts))
    freed += -(-sn.l1_size * 8 // image.cluster_size)
    if len(image.snapshots) == 1:        # the snapshot table goes with the last entry
        freed += -(-(sn.offset + sn.entry_size - image.header.snapshots_offset)
               // image.cluster_size)
    return SnapshotDeletePreview(sn, freed, freed * image.cluster_size)
