"""What backs each guest range, one L2 table at a time.

Search and "next allocated cluster" must cross a 2 TiB disk without reading it:
they walk the L1 table (skipping unallocated L2 ranges whole) and decode each
L2 table's entry types with numpy, descending into the backing file only for
the unallocated runs.  Only the engine's public table API is used.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import numpy as np

from ..engine.clusters import L1E_OFFSET_MASK, L2_BITMAP_ALL_ALLOC, ClusterType


class ByteKind(enum.IntEnum):
    """What a guest byte reads from (the hex view's tint)."""

    UNALLOCATED = 0   # nothing backs it: reads as zeros
    ZERO = 1          # zero cluster (or a zero range of the backing file)
    BACKING = 2       # data from a backing file
    COMPRESSED = 3    # data in a compressed cluster of this image
    DATA = 4          # data in a standard cluster of this image
    FILE = 5          # raw bytes of the image file itself (no mapping)
    ERROR = 6         # the read failed (corrupt table, missing backing file)
    MIXED = 7         # extended L2 cluster whose sub-clusters differ (extents only)


#: kinds whose bytes may be non-zero: the ones a search has to read
CONTENT_KINDS = frozenset({ByteKind.DATA, ByteKind.COMPRESSED, ByteKind.BACKING,
                           ByteKind.MIXED, ByteKind.ERROR, ByteKind.FILE})

_TYPE_KIND = np.full(8, ByteKind.MIXED, dtype=np.uint8)
_TYPE_KIND[ClusterType.UNALLOCATED] = ByteKind.UNALLOCATED
_TYPE_KIND[ClusterType.UNALLOCATED_ALLOC] = ByteKind.UNALLOCATED
_TYPE_KIND[ClusterType.ZERO_PLAIN] = ByteKind.ZERO
_TYPE_KIND[ClusterType.ZERO_ALLOC] = ByteKind.ZERO
_TYPE_KIND[ClusterType.NORMAL] = ByteKind.DATA
_TYPE_KIND[ClusterType.COMPRESSED] = ByteKind.COMPRESSED


def _table_kinds(image, l2_offset: int, l1_index: int) -> np.ndarray:
    t = image.l2_table(l2_offset, l1_index)
    kinds = _TYPE_KIND[t.types()]
    if t.bitmap is not None:
        # a cluster is only UNALLOCATED/ZERO as a whole if every sub-cluster agrees
        bm = t.bitmap.astype(np.uint64)
        alloc = bm & np.uint64(L2_BITMAP_ALL_ALLOC)
        zero = bm >> np.uint64(32)
        all_zero = zero == np.uint64(L2_BITMAP_ALL_ALLOC)
        none = (alloc == 0) & (zero == 0)
        mixed = ~all_zero & ~none & (kinds != ByteKind.COMPRESSED)
        kinds[mixed] = ByteKind.MIXED
        kinds[all_zero & (kinds != ByteKind.COMPRESSED)] = ByteKind.ZERO
    return kinds


def extents(image, start: int, end: int) -> Iterator[tuple[int, int, ByteKind]]:
    """Runs ``(start, end, kind)`` covering guest ``start..end`` in order.

    ``image`` is an engine Image or RawImage.  Unallocated runs are resolved
    through the backing chain; runs are at least cluster-granular, so MIXED
    marks extended-L2 clusters that need a closer look.
    """
    end = min(end, image.virtual_size)
    if start >= end:
        return
    if not hasattr(image, "l1_table"):        # raw backing file
        yield start, end, ByteKind.DATA
        return
    cb, l2b = image.cluster_bits, image.l2_bits
    span_bits = cb + l2b
    l1 = image.l1_table
    pos = start
    while pos < end:
        l1i = pos >> span_bits
        table_end = min(end, (l1i + 1) << span_bits)
        l1e = int(l1.entries[l1i]) if l1i < l1.size else 0
        l2off = l1e & L1E_OFFSET_MASK
        if not l2off:
            yield from _unallocated(image, pos, table_end)
            pos = table_end
            continue
        kinds = _table_kinds(image, l2off, l1i)
        base = l1i << span_bits
        i0 = (pos - base) >> cb
        i1 = ((table_end - 1 - base) >> cb) + 1
        k = kinds[i0:i1]
        cuts = np.flatnonzero(np.diff(k)) + 1
        bounds = [0, *cuts.tolist(), len(k)]
        for a, b in zip(bounds, bounds[1:]):
            s = max(pos, base + ((i0 + a) << cb))
            e = min(table_end, base + ((i0 + b) << cb))
            kind = ByteKind(int(k[a]))
            if kind == ByteKind.UNALLOCATED:
                yield from _unallocated(image, s, e)
            else:
                yield s, e, kind
        pos = table_end


def _unallocated(image, start: int, end: int) -> Iterator[tuple[int, int, ByteKind]]:
    b = getattr(image, "backing", None)
    if b is None:
        yield start, end, ByteKind.UNALLOCATED
        return
    stop = min(end, b.virtual_size)
    if start < stop:
        for s, e, kind in extents(b, start, stop):
            yield s, e, (ByteKind.BACKING if kind in (ByteKind.DATA, ByteKind.COMPRESSED)
                         else kind)
    if stop < end:
        yield max(start, stop), end, ByteKind.UNALLOCATED


def find_content(image, offset: int, forward: bool, granule: int) -> int | None:
    """Start of the next (or previous) ``granule``-aligned unit after (before) the
    one holding ``offset`` that may hold non-zero data, or None."""
    size = image.virtual_size
    if forward:
        start = (offset // granule + 1) * granule
        if start >= size:
            return None
        for s, e, kind in extents(image, start, size):
            if kind in CONTENT_KINDS:
                return s // granule * granule if s > start else start
        return None
    # backward: walk one L2 range at a time from the unit before offset's
    unit = offset // granule * granule
    if unit == 0:
        return None
    span = image.cluster_size << image.l2_bits if hasattr(image, "l2_bits") else 1 << 30
    hi = unit
    while hi > 0:
        lo = (hi - 1) // span * span
        last = None
        for s, e, kind in extents(image, lo, hi):
            if kind in CONTENT_KINDS:
                last = (s, e)
        if last is not None:
            return (last[1] - 1) // granule * granule
        hi = lo
    return None
