"""Cluster allocation and refcount updates (QEMU's qcow2-refcount.c, in miniature).

Part of the metadata store (:mod:`~qcow2view.engine.metadata`, which owns the
refcount table): the allocator keeps the refcount blocks it has touched in
memory and records what changed; the store's writers decide when the changes
reach the file, so that a refcount is raised (and flushed) before any table
points to the cluster and lowered only after the last reference is gone.

Allocation is first fit from the refcounts, so freed clusters are reused.  A
cluster no refcount block covers counts as free; covering it creates a block,
placed like ``alloc_refcount_block`` places it (the first free cluster; a block
that lands in its own range counts itself).  A full refcount table is replaced
by a larger one placed past everything the old one covers, together with the
blocks that count it (``qcow2_refcount_area``).
"""

from __future__ import annotations

import itertools

import numpy as np

from .clusters import REFT_OFFSET_MASK
from .errors import CorruptImageError, Qcow2Error
from .header import QCOW_MAX_REFTABLE_SIZE
from .refcounts import block_entries, decode_refcount_block, encode_refcount_block, max_refcount


_GENERATIONS = itertools.count(1)


class RefcountAllocator:
    """The refcount blocks of a :class:`~qcow2view.engine.metadata.MetadataStore`
    (which owns the refcount table) and the allocation of clusters."""

    def __init__(self, store) -> None:
        self.store = store
        self.file = store.file
        self.cs = store.cluster_size
        self.cb = store.cluster_bits
        self.order = store.header.refcount_order
        self.per = block_entries(self.cb, self.order)
        self.max_rc = max_refcount(self.order)
        self.blocks: dict[int, np.ndarray] = {}
        self.dirty_blocks: set[int] = set()
        self.new_blocks: set[int] = set()      # written, but no reftable entry on disk yet
        self.dirty_rt: set[int] = set()
        self.free_hint = 0
        self.generation = next(_GENERATIONS)   # changes when blocks or the table move

    @property
    def reftable(self) -> np.ndarray:
        return self.store.reftable

    # -- reading -----------------------------------------------------------------------
    def block(self, rti: int) -> np.ndarray | None:
        """Counts of refcount block ``rti`` (None where no block covers it)."""
        counts = self.blocks.get(rti)
        if counts is not None:
            return counts
        if rti >= len(self.reftable):
            return None
        off = int(self.reftable[rti]) & REFT_OFFSET_MASK
        if not off:
            return None
        where = self.store.header.refcount_table_offset + 8 * rti
        if off & (self.cs - 1):
            raise CorruptImageError(f"refcount block offset {off:#x} is not cluster aligned",
                                    structure="refcount table entry", offset=where)
        buf = self.file.pread_exact(off, self.cs, f"refcount block {rti}")
        counts = np.array(decode_refcount_block(buf, self.order), dtype=np.uint64)
        self.blocks[rti] = counts
        return counts

    def refcount(self, cluster: int) -> int:
        rti, index = divmod(cluster, self.per)
        counts = self.block(rti)
        return 0 if counts is None else int(counts[index])

    # -- finding free clusters ---------------------------------------------------------
    def find_free(self, count: int) -> int:
        """First cluster of the first run of ``count`` free clusters at or after the hint."""
        per = self.per
        cluster = self.free_hint
        run_start, run = cluster, 0
        while True:
            rti, bi = divmod(cluster, per)
            counts = self.block(rti)
            if counts is None:
                if run == 0:
                    run_start = cluster
                run += per - bi
                if run >= count:
                    return run_start
                cluster += per - bi
                continue
            seg = counts[bi:]
            used = np.flatnonzero(seg != 0)
            if used.size == 0:
                if run == 0:
                    run_start = cluster
                run += len(seg)
                if run >= count:
                    return run_start
                cluster += len(seg)
                continue
            first = int(used[0])
            if run == 0:
                run_start = cluster
            if run + first >= count:
                return run_start
            if count == 1:
                gaps = np.flatnonzero(np.diff(used) > 1)
                if gaps.size:
                    return cluster + int(used[gaps[0]]) + 1
            else:
                gaps = np.flatnonzero(np.diff(used) - 1 >= count)
                if gaps.size:
                    return cluster + int(used[gaps[0]]) + 1
            last = int(used[-1])
            run = len(seg) - last - 1
            run_start = cluster + last + 1
            cluster += len(seg)
            if run >= count:
                return run_start

    # -- allocating --------------------------------------------------------------------
    def alloc(self, count: int) -> int:
        """Allocate ``count`` contiguous clusters (refcount 1, in memory); returns the first."""
        per = self.per
        while True:
            start = self.find_free(count)
            for rti in range(start // per, (start + count - 1) // per + 1):
                if self.block(rti) is None:
                    self._create_block(rti)
                    break
            else:
                for rti in range(start // per, (start + count - 1) // per + 1):
                    lo = max(start, rti * per) - rti * per
                    hi = min(start + count, (rti + 1) * per) - rti * per
                    self.blocks[rti][lo:hi] += 1
                    self.dirty_blocks.add(rti)
                if count == 1 or start == self.free_hint:
                    self.free_hint = start + count
                return start

    def _create_block(self, rti: int) -> None:
        if rti >= len(self.reftable):
            self._grow_table(rti + 1)
            return
        at = self.find_free(1)
        brti = at // self.per
        if brti != rti and self.block(brti) is None:
            self._create_block(brti)
            return
        counts = np.zeros(self.per, dtype=np.uint64)
        self.blocks[rti] = counts
        if brti == rti:
            counts[at % self.per] = 1          # the block counts itself
        else:
            self.blocks[brti][at % self.per] += 1
            self.dirty_blocks.add(brti)
        self.reftable[rti] = at * self.cs
        self.generation = next(_GENERATIONS)
        self.new_blocks.add(rti)
        self.dirty_rt.add(rti)
        self.dirty_blocks.add(rti)

    def change(self, offset: int, length: int, delta: int) -> None:
        """Add ``delta`` to the refcount of every cluster in ``offset..offset+length``."""
        first = offset >> self.cb
        last = (offset + length - 1) >> self.cb
        for cluster in range(first, last + 1):
            rti, index = divmod(cluster, self.per)
            counts = self.block(rti)
            if counts is None:
                raise CorruptImageError(f"cluster {cluster:#x} has no refcount block",
                                        structure="refcount table", offset=offset)
            value = int(counts[index]) + delta
            if value < 0 or value > self.max_rc:
                raise CorruptImageError(
                    f"refcount of cluster at {cluster << self.cb:#x} would become {value}",
                    structure="refcount block", offset=int(self.reftable[rti]) & REFT_OFFSET_MASK)
            counts[index] = value
            self.dirty_blocks.add(rti)
            if value == 0 and cluster < self.free_hint:
                self.free_hint = cluster

    def change_many(self, clusters: np.ndarray, delta: int) -> None:
        """Add ``delta`` to the refcount of each cluster index in ``clusters`` (a
        cluster listed twice changes twice), block by block."""
        clusters = np.asarray(clusters, dtype=np.int64)
        if clusters.size == 0 or delta == 0:
            return
        # np.unique(return_counts=True) by hand: see counts_of
        srt = np.sort(clusters)
        first = np.flatnonzero(np.r_[True, srt[1:] != srt[:-1]])
        uniq, counts = srt[first], np.diff(np.r_[first, srt.size])
        per = self.per
        bounds = np.flatnonzero(np.diff(uniq // per)) + 1
        for part_c, part_n in zip(np.split(uniq, bounds), np.split(counts, bounds)):
            rti = int(part_c[0] // per)
            block = self.block(rti)
            if block is None:
                raise CorruptImageError(f"cluster {int(part_c[0]):#x} has no refcount block",
                                        structure="refcount table", offset=int(part_c[0]))
            idx = part_c - rti * per
            new = block[idx].astype(np.int64) + part_n * delta
            bad = np.flatnonzero((new < 0) | (new > self.max_rc))
            if bad.size:
                cluster = int(part_c[bad[0]])
                raise CorruptImageError(
                    f"refcount of cluster at {cluster << self.cb:#x} would become "
                    f"{int(new[bad[0]])}", structure="refcount block",
                    offset=int(self.reftable[rti]) & REFT_OFFSET_MASK)
            block[idx] = new.astype(np.uint64)
            self.dirty_blocks.add(rti)
            if delta < 0:
                zero = part_c[new == 0]
                if zero.size and int(zero[0]) < self.free_hint:
                    self.free_hint = int(zero[0])

    def counts_of(self, clusters: np.ndarray) -> np.ndarray:
        """Refcounts (as they are in memory now) of the given cluster indices."""
        clusters = np.asarray(clusters, dtype=np.int64)
        out = np.zeros(clusters.size, dtype=np.uint64)
        rtis = clusters // self.per
        # sorted and deduplicated by hand: numpy 2.4's np.unique loads numpy.ma
        # (~25 ms) on its first call
        srt = np.sort(rtis)
        for rti in srt[np.r_[True, srt[1:] != srt[:-1]]].tolist() if srt.size else ():
            block = self.block(rti)
            if block is not None:
                sel = rtis == rti
                out[sel] = block[clusters[sel] - rti * self.per]
        return out

    def last_used(self) -> int:
        """Index of the last host cluster with a nonzero refcount (-1 if none)."""
        for rti in range(len(self.reftable) - 1, -1, -1):
            block = self.block(rti)
            if block is None:
                continue
            used = np.flatnonzero(block != 0)
            if used.size:
                return rti * self.per + int(used[-1])
        return -1

    # -- growing the refcount table ----------------------------------------------------
    def _grow_table(self, min_entries: int) -> None:
        """Replace the refcount table by a larger one (written and committed at once).

        Memory follows the file: it switches to the new table only once the
        header points at it, so a failure before leaves the old table in use
        (the new area is unreferenced), and one after leaks the old table."""
        cs, per = self.cs, self.per
        old = self.reftable
        old_n = len(old)
        file_clusters = -(-self.file.size // cs)
        area = max(old_n * per, file_clusters)
        entries = max(min_entries, old_n + old_n // 2 + 1)
        nblocks, tclusters = 1, 1
        while True:
            tclusters = -(-entries * 8 // cs)
            last_rti = (area + nblocks + tclusters - 1) // per
            need_blocks = last_rti - area // per + 1
            need_entries = max(entries, last_rti + 1)
            if need_blocks == nblocks and need_entries == entries:
                break
            nblocks, entries = max(nblocks, need_blocks), need_entries
        if tclusters * cs > QCOW_MAX_REFTABLE_SIZE:
            raise Qcow2Error("the refcount table would exceed QEMU's limit of 8 MiB")
        first_rti = area // per
        table = np.zeros(tclusters * cs // 8, dtype=np.uint64)
        table[:old_n] = old
        area_end = area + nblocks + tclusters
        file = self.file
        # blocks that count the new area (including themselves and the table)
        area_blocks: dict[int, np.ndarray] = {}
        for block_no in range(nblocks):
            rti = first_rti + block_no
            counts = np.zeros(per, dtype=np.uint64)
            lo, hi = max(area, rti * per), min(area_end, (rti + 1) * per)
            if hi > lo:
                counts[lo - rti * per:hi - rti * per] = 1
            area_blocks[rti] = counts
            table[rti] = (area + block_no) * cs
            file.pwrite((area + block_no) * cs, encode_refcount_block(counts, self.order))
        # blocks changed earlier in this request (raised counts only), among them
        # those counting blocks the new table points to: on disk before the table
        for rti in sorted(self.dirty_blocks):
            file.pwrite(int(self.reftable[rti]) & REFT_OFFSET_MASK,
                        encode_refcount_block(self.blocks[rti], self.order))
        file.pwrite((area + nblocks) * cs, table.astype(">u8").tobytes())
        file.fsync()
        # switch the header to the new table in one write, then free the old one
        header = self.store.header
        self.store.write_header(sync=False, refcount_table_offset=(area + nblocks) * cs,
                                refcount_table_clusters=tclusters)
        self.blocks.update(area_blocks)
        self.store.reftable = table
        self.dirty_blocks.clear()
        self.new_blocks.clear()
        self.dirty_rt.clear()
        self.generation = next(_GENERATIONS)
        file.fsync()
        self.change(header.refcount_table_offset, header.refcount_table_clusters * cs, -1)

    # -- writing back ------------------------------------------------------------------
    def write_new_blocks(self) -> bool:
        """When new blocks await a reftable entry: write them and every changed
        block (one of which counts each new block), so the caller can flush
        before the reftable points at them.  True if anything was written."""
        if not self.new_blocks:
            return False
        for rti in sorted(self.dirty_blocks | self.new_blocks):
            self.file.pwrite(int(self.reftable[rti]) & REFT_OFFSET_MASK,
                             encode_refcount_block(self.blocks[rti], self.order))
        self.dirty_blocks.clear()
        return True

    def write_dirty(self) -> bool:
        """Write changed blocks and reftable entries (new blocks must be durable first)."""
        wrote = False
        for rti in sorted(self.dirty_blocks):
            self.file.pwrite(int(self.reftable[rti]) & REFT_OFFSET_MASK,
                             encode_refcount_block(self.blocks[rti], self.order))
            wrote = True
        self.dirty_blocks.clear()
        if self.dirty_rt:
            rt_off = self.store.header.refcount_table_offset
            for lo, hi in runs_of(sorted(self.dirty_rt)):
                self.file.pwrite(rt_off + 8 * lo,
                                 self.reftable[lo:hi].astype(">u8").tobytes())
            wrote = True
        self.dirty_rt.clear()
        self.new_blocks.clear()
        return wrote

    def mark_all_dirty(self) -> None:
        """After a failed write-back: rewrite every cached block and table entry, each
        block durable before the table entry that points at it."""
        self.dirty_blocks |= set(self.blocks)
        self.new_blocks |= set(self.blocks)
        self.dirty_rt |= set(np.flatnonzero(self.reftable).tolist())

    def forget(self) -> None:
        """Drop cached blocks (the store re-reads the table): the file is the truth."""
        self.blocks.clear()
        self.dirty_blocks.clear()
        self.new_blocks.clear()
        self.dirty_rt.clear()
        self.free_hint = 0
        self.generation = next(_GENERATIONS)


def runs_of(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices -> [lo, hi) runs of consecutive values."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
