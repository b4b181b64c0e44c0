"""Rebuilding the refcount structure, as ``qemu-img check -r all`` does when the
refcounts on disk cannot be fixed in place (``rebuild_refcount_structure`` in
QEMU 7.2's block/qcow2-refcount.c).

The counts come from the reference walk (:mod:`refscan`), never from the old
refcount blocks.  New refcount blocks and a new refcount table are placed past
the end of the file (QEMU also reuses holes; we do not, so nothing that exists
is overwritten before the header switches), each counting the new clusters
themselves.  Order of writes: blocks, table, flush, then the header's
``refcount_table_offset``/``refcount_table_clusters`` in one write, flush.  A
crash before that last write leaves the old image as it was; after it, the old
table and blocks are leaks, which the caller frees with the new structure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .errors import UnsupportedFeatureError
from .header import QCOW_MAX_REFTABLE_SIZE
from .refcounts import encode_refcount_block

HEADER_REFCOUNT_TABLE_OFFSET = 48     # refcount_table_offset (u64), then _clusters (u32)


@dataclass
class RebuildPlan:
    """Where the new structure goes; all offsets are host cluster indices."""

    counts: np.ndarray           # refcount per host cluster, the new clusters included
    blocks: dict[int, int]       # refcount table index -> cluster of its new block
    table_cluster: int
    table_clusters: int
    allocated: int               # clusters added past the end of the file


def plan_rebuild(counts: np.ndarray, per_block: int, cluster_size: int,
                 first_free: int) -> RebuildPlan:
    """Allocate blocks for every block range holding a non-zero count, then a table
    big enough for them, from cluster ``first_free`` on (alloc_clusters_imrt at the
    end of the image); repeated until the new clusters are covered themselves."""
    per = per_block
    first_free = max(first_free, len(counts))
    n = -(-first_free // per) * per
    grown = np.zeros(n, dtype=counts.dtype)
    grown[:len(counts)] = counts
    counts = grown
    nxt = first_free
    blocks: dict[int, int] = {}

    def alloc(k: int) -> int:
        nonlocal counts, nxt
        c = nxt
        nxt += k
        if nxt > len(counts):
            more = np.zeros(-(-(nxt - len(counts)) // per) * per, dtype=counts.dtype)
            counts = np.concatenate([counts, more])
        counts[c:nxt] = 1
        return c

    def cover(rtis: list[int]) -> None:
        """Blocks for ``rtis`` and, in turn, for the clusters those blocks take."""
        while rtis:
            c = alloc(len(rtis))
            blocks.update(zip(rtis, range(c, c + len(rtis))))
            rtis = [r for r in range(c // per, (c + len(rtis) - 1) // per + 1)
                    if r not in blocks]

    used = np.flatnonzero(counts.reshape(-1, per).any(axis=1)).tolist()
    cover(used)
    per_table_cluster = cluster_size // 8
    table, table_n = -1, 0
    while True:
        need = -(-(max(blocks) + 1) // per_table_cluster)
        if need <= table_n:
            break
        # a table that became too small stays allocated (a leak, as in QEMU)
        table, table_n = alloc(need), need
        cover([r for r in range(table // per, (table + need - 1) // per + 1)
               if r not in blocks])
    return RebuildPlan(counts[:nxt], blocks, table, table_n, nxt - first_free)


def rebuild_refcount_structure(image, counts: np.ndarray, first_free: int) -> RebuildPlan:
    """Write a new refcount structure holding ``counts`` and switch the header to it.

    ``counts`` are the walk's per-cluster references, already saturated at the
    image's refcount maximum; ``first_free`` is the first cluster past everything
    (the end of the file).
    """
    f = image.file
    cs = image.cluster_size
    order = image.header.refcount_order
    per = image.refcount_block_entries
    plan = plan_rebuild(counts, per, cs, first_free)
    if plan.table_clusters * cs > QCOW_MAX_REFTABLE_SIZE:
        raise UnsupportedFeatureError(
            f"a rebuilt refcount table would need {plan.table_clusters} clusters, more "
            f"than QEMU's limit of {QCOW_MAX_REFTABLE_SIZE >> 20} MiB",
            structure="refcount table", offset=image.header.refcount_table_offset,
            path=image.path)
    c = plan.counts
    table = np.zeros(plan.table_clusters * cs // 8, dtype=np.uint64)
    for rti, at in sorted(plan.blocks.items()):
        blk = np.zeros(per, dtype=np.uint64)
        part = c[rti * per:(rti + 1) * per]
        blk[:len(part)] = part
        f.pwrite(at * cs, encode_refcount_block(blk, order))
        table[rti] = at * cs
    f.pwrite(plan.table_cluster * cs, table.astype(">u8").tobytes())
    f.fsync()
    # one write switches both fields: the image uses the old or the new structure
    f.pwrite(HEADER_REFCOUNT_TABLE_OFFSET,
             struct.pack(">QI", plan.table_cluster * cs, plan.table_clusters))
    f.fsync()
    return plan
