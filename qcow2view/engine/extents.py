"""What backs each guest range, one L2 table at a time.

Search and "next allocated cluster" must cross a 2 TiB disk without reading it:
they walk the L1 table (skipping unallocated L2 ranges whole) and classify each
L2 table's entries with the classifier's :func:`~.clusters.guest_kinds`,
descending into the backing file only for the unallocated runs.
:func:`mapping_kind` says the same of one :class:`~.image.GuestMapping` (the hex
view's tint of the bytes it reads).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .clusters import L1E_OFFSET_MASK, ClusterType, guest_kinds
from .kinds import CONTENT_KINDS, GuestKind

__all__ = ["CONTENT_KINDS", "GuestKind", "extents", "find_content", "mapping_kind"]

_ZERO_TYPES = (ClusterType.ZERO_PLAIN, ClusterType.ZERO_ALLOC)
_DATA_TYPES = (ClusterType.NORMAL, ClusterType.COMPRESSED)


def mapping_kind(mapping) -> GuestKind:
    """What backs the bytes of one guest mapping (``Image.guest_mapping``)."""
    if mapping.depth < 0:
        return GuestKind.UNALLOCATED
    if mapping.type in _ZERO_TYPES:
        return GuestKind.ZERO
    if mapping.depth > 0:
        return GuestKind.BACKING if mapping.type in _DATA_TYPES else GuestKind.UNALLOCATED
    if mapping.type == ClusterType.COMPRESSED:
        return GuestKind.COMPRESSED
    if mapping.type == ClusterType.NORMAL:
        return GuestKind.DATA
    return GuestKind.UNALLOCATED


def _table_kinds(image, l2_offset: int, l1_index: int) -> np.ndarray:
    table = image.l2_table(l2_offset, l1_index)
    return guest_kinds(table.raw, table.bitmap, table.has_data_file)


def extents(image, start: int, end: int) -> Iterator[tuple[int, int, GuestKind]]:
    """Runs ``(start, end, kind)`` covering guest ``start..end`` in order.

    ``image`` is an engine Image or RawImage.  Unallocated runs are resolved
    through the backing chain; runs are at least cluster-granular, so MIXED
    marks extended-L2 clusters that need a closer look.
    """
    end = min(end, image.virtual_size)
    if start >= end:
        return
    if not hasattr(image, "l1_table"):        # raw backing file
        yield start, end, GuestKind.DATA
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
        cuts = np.flatnonzero(k[1:] != k[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(k)]
        for a, b in zip(bounds, bounds[1:]):
            s = max(pos, base + ((i0 + a) << cb))
            e = min(table_end, base + ((i0 + b) << cb))
            kind = GuestKind(int(k[a]))
            if kind == GuestKind.UNALLOCATED:
                yield from _unallocated(image, s, e)
            else:
                yield s, e, kind
        pos = table_end


def _unallocated(image, start: int, end: int) -> Iterator[tuple[int, int, GuestKind]]:
    b = getattr(image, "backing", None)
    if b is None:
        yield start, end, GuestKind.UNALLOCATED
        return
    stop = min(end, b.virtual_size)
    if start < stop:
        for s, e, kind in extents(b, start, stop):
            yield s, e, (GuestKind.BACKING if kind in (GuestKind.DATA, GuestKind.COMPRESSED)
                         else kind)
    if stop < end:
        yield max(start, stop), end, GuestKind.UNALLOCATED


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
