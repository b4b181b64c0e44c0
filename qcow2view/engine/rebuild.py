"""Rebuilding the refcount structure, as ``qemu-img check -r all`` does when the
refcounts on disk cannot be fixed in place (``rebuild_refcount_structure`` in
QEMU 7.2's block/qcow2-refcount.c).

The counts come from the reference walk (:mod:`refscan`), never from the old
refcount blocks.  New refcount blocks and a new refcount table go where QEMU
puts them: first fit among the clusters nothing references (holes, then past
the end of the file), each counting the new clusters themselves, so the result
is laid out as ``qemu-img check -r all`` lays it out.  Order of writes: blocks,
table, flush, then the header's ``refcount_table_offset``/``refcount_table_clusters``
in one write, flush.  Until that last write the old structure is in force and
only unreferenced clusters were written (at worst they stay leaks); after it,
the old table and blocks are leaks, which the caller frees with the new
structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UnsupportedFeatureError
from .header import QCOW_MAX_REFTABLE_SIZE


@dataclass
class RebuildPlan:
    """Where the new structure goes; all offsets are host cluster indices."""

    counts: np.ndarray           # refcount per host cluster, the new clusters included
    blocks: dict[int, int]       # refcount table index -> cluster of its new block
    table_cluster: int
    table_clusters: int


SCAN_CHUNK = 1 << 16             # clusters looked at per numpy pass when searching


class _Counts:
    """The walk's counts as QEMU's in-memory refcount array: grows on allocation."""

    def __init__(self, counts: np.ndarray) -> None:
        # the array is taken over (the caller's fresh copy), not copied again
        self.array = counts if counts.flags.owndata and counts.flags.writeable \
            else np.array(counts, copy=True)
        self.used_end = len(counts)

    def grow(self, size: int) -> None:
        have = len(self.array)
        if size > have:
            # resized in place (a realloc: the new tail is zero), not concatenated,
            # which held the old and the new array at once
            self.array.resize(max(size, have + (have >> 3) + 64), refcheck=False)
        self.used_end = max(self.used_end, size)

    def next_used(self, lo: int, hi: int) -> int | None:
        """First cluster in [lo, hi) with a non-zero count."""
        return self._first(lo, hi, used=True)

    def next_free(self, lo: int) -> int | None:
        """First cluster from ``lo`` with count 0 (None: none before the end)."""
        return self._first(lo, self.used_end, used=False)

    def _first(self, lo: int, hi: int, used: bool) -> int | None:
        hi = min(hi, self.used_end)
        while lo < hi:
            part = self.array[lo:min(hi, lo + SCAN_CHUNK)]
            hits = np.flatnonzero(part if used else part == 0)
            if len(hits):
                return lo + int(hits[0])
            lo += SCAN_CHUNK
        return None

    def alloc(self, count: int, first_free: int) -> tuple[int, int]:
        """alloc_clusters_imrt: the first run of ``count`` free clusters from
        ``first_free``, or one that the array's end cuts short, grown past it;
        returns (first cluster, new first_free: the first free cluster met)."""
        if count == 1:
            free_at = self.next_free(first_free)
            start = self.used_end if free_at is None else free_at
            first_free = first_free if free_at is None else free_at
        else:                             # the table
            run, met = self._free_run(count, first_free)
            start = self.used_end if run is None else run
            first_free = first_free if met is None else met
        self.grow(start + count)
        self.array[start:start + count] = 1
        return start, first_free

    def _free_run(self, count: int, lo: int) -> tuple[int | None, int | None]:
        """(first run of ``count`` free clusters from ``lo`` -- or the free run the
        array's end cuts short, or None --, first free cluster met or None), a chunk
        at a time: a repair that grew the file to a far refcount block has hundreds
        of millions of free clusters, whose indices at once took gigabytes."""
        met = None
        run = None                        # start of the free run open at lo
        end = self.used_end
        while lo < end:
            hi = min(end, lo + SCAN_CHUNK)
            free_at = np.flatnonzero(self.array[lo:hi] == 0) + lo
            if not len(free_at):
                run, lo = None, hi
                continue
            met = int(free_at[0]) if met is None else met
            cut = np.flatnonzero(np.diff(free_at) != 1)
            starts = free_at[np.r_[0, cut + 1]]
            ends = np.r_[free_at[cut], free_at[-1]] + 1
            if run is not None and starts[0] == lo:
                starts[0] = run           # the run open at the chunk's start goes on
            fits = np.flatnonzero(ends - starts >= count)
            if len(fits):
                return int(starts[fits[0]]), met
            run = int(starts[-1]) if ends[-1] == hi else None
            lo = hi
        return run, met


def plan_rebuild(counts: np.ndarray, per_block: int, cluster_size: int) -> RebuildPlan:
    """Place new refcount blocks and a table as QEMU 7.2 does: blocks first fit
    among the clusters nothing references, in cluster order, never in the range
    of a block already placed; then a table (first fit from the start), and
    blocks for its clusters; a table that turns out too small stays allocated
    (a leak, as in QEMU) and another is placed."""
    per = per_block
    refs = _Counts(counts)
    blocks: dict[int, int] = {}
    entries = 0                       # refcount table entries (whole clusters of them)
    per_table_cluster = cluster_size // 8

    def place_blocks(first: int, end: int) -> bool:
        """rebuild_refcounts_write_refblocks; True if the table had to grow."""
        nonlocal entries
        grown = False
        first_free = 0
        cluster = first
        while True:
            cluster = refs.next_used(cluster, end)
            if cluster is None:
                return grown
            rti = cluster // per
            start = rti * per
            if rti not in blocks:
                first_free = max(first_free, start)
                at, first_free = refs.alloc(1, first_free)
                end = max(end, at + 1)       # the block counting this block too
                if entries <= rti:
                    entries = -(-(rti + 1) // per_table_cluster) * per_table_cluster
                    grown = True
                blocks[rti] = at
            cluster = start + per

    place_blocks(0, refs.used_end)
    while True:
        table_clusters = -(-entries // per_table_cluster)
        table, _ = refs.alloc(table_clusters, 0)
        if not place_blocks(table, table + table_clusters):
            break
    return RebuildPlan(refs.array[:refs.used_end], blocks, table, table_clusters)


def rebuild_refcount_structure(image, counts: np.ndarray) -> RebuildPlan:
    """Write a new refcount structure holding ``counts`` and switch the header to it.

    ``counts`` are the walk's references per host cluster, already saturated at
    the image's refcount maximum (QEMU's in-memory refcount array).
    """
    file = image.file
    meta = image.meta
    cs = image.cluster_size
    per = image.refcount_block_entries
    plan = plan_rebuild(counts, per, cs)
    if plan.table_clusters * cs > QCOW_MAX_REFTABLE_SIZE:
        raise UnsupportedFeatureError(
            f"a rebuilt refcount table would need {plan.table_clusters} clusters, more "
            f"than QEMU's limit of {QCOW_MAX_REFTABLE_SIZE >> 20} MiB",
            structure="refcount table", offset=image.header.refcount_table_offset,
            path=image.path)
    planned = plan.counts
    table = np.zeros(plan.table_clusters * cs // 8, dtype=np.uint64)
    for rti, at in sorted(plan.blocks.items()):
        blk = np.zeros(per, dtype=np.uint64)
        part = planned[rti * per:(rti + 1) * per]
        blk[:len(part)] = part
        meta.put_refcount_block(at * cs, blk)
        table[rti] = at * cs
    meta.write_table(plan.table_cluster * cs, table.astype(">u8").tobytes())
    file.fsync()
    # one write switches both fields: the image uses the old or the new structure
    meta.switch_refcount_structure(plan.table_cluster * cs, plan.table_clusters)
    return plan
