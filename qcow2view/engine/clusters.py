"""L1 and L2 tables: entry layouts and their decoding (spec: "Cluster mapping").

The one classifier of the engine, as QEMU's ``qcow2_get_subcluster_type``: what
backs an L2 entry or a sub-cluster (:func:`cluster_type`, :func:`subcluster_type`,
:func:`guest_kind`), where a compressed cluster lies
(:meth:`CompressionLayout.decode`) and whether entries continue a run of
contiguous host clusters (:func:`continues_run`).  Each scalar rule has a
vectorised twin over whole tables as numpy arrays (:func:`decode_l2_types`,
:func:`guest_kinds`, :meth:`CompressionLayout.decode_array`,
:func:`contiguous_rows`) for the walks, maps and views; tests/engine/
test_classifier.py holds them to each other and to qemu-img map.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from .kinds import GuestKind

U64 = np.uint64

QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1 << 0
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
SUBCLUSTERS = 32
L2_BITMAP_ALL_ALLOC = 0xFFFFFFFF
L2_BITMAP_ALL_ZERO = 0xFFFFFFFF << 32


class ClusterType(enum.IntEnum):
    """The type of a (sub)cluster as QEMU's qcow2_get_subcluster_type names it."""

    UNALLOCATED = 0          # reads from the backing file, or zeros
    ZERO_PLAIN = 1           # reads as zero, no host cluster
    ZERO_ALLOC = 2           # reads as zero, host cluster preallocated
    NORMAL = 3               # data in a host cluster
    COMPRESSED = 4           # data compressed somewhere in the file
    UNALLOCATED_ALLOC = 5    # extended L2: host cluster reserved, sub-cluster unallocated
    INVALID = 6              # extended L2: contradicting bitmap


class CompressionLayout:
    """Bit layout of compressed cluster descriptors for one cluster size."""

    def __init__(self, cluster_bits: int) -> None:
        self.csize_shift = 62 - (cluster_bits - 8)
        self.csize_mask = (1 << (cluster_bits - 8)) - 1
        self.offset_mask = (1 << self.csize_shift) - 1

    def decode(self, entry: int) -> tuple[int, int]:
        """(host byte offset, number of bytes to read) of a compressed descriptor."""
        coffset = entry & self.offset_mask
        nb_csectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        return coffset, nb_csectors * 512 - (coffset & 511)

    def decode_array(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`decode` of an array of descriptors: (uint64 host byte offsets,
        uint64 numbers of bytes to read)."""
        raw = raw.astype(U64, copy=False)
        coffset = raw & U64(self.offset_mask)
        nb_csectors = ((raw >> U64(self.csize_shift)) & U64(self.csize_mask)) + U64(1)
        return coffset, nb_csectors * U64(512) - (coffset & U64(511))

    def encode(self, coffset: int, nbytes: int) -> int:
        nb_csectors = ((coffset + nbytes - 1) >> 9) - (coffset >> 9)
        return QCOW_OFLAG_COMPRESSED | (nb_csectors << self.csize_shift) | coffset


def cluster_type(entry: int, has_data_file: bool = False) -> ClusterType:
    """Type of a standard (64-bit) L2 entry, ignoring sub-clusters."""
    if entry & QCOW_OFLAG_COMPRESSED:
        return ClusterType.COMPRESSED
    if entry & QCOW_OFLAG_ZERO:
        return ClusterType.ZERO_ALLOC if entry & L2E_OFFSET_MASK else ClusterType.ZERO_PLAIN
    if not entry & L2E_OFFSET_MASK:
        # offset 0 is valid in an external data file; COPIED tells it apart
        if has_data_file and entry & QCOW_OFLAG_COPIED:
            return ClusterType.NORMAL
        return ClusterType.UNALLOCATED
    return ClusterType.NORMAL


def has_host_cluster(entry: int, has_data_file: bool = False) -> bool:
    """Whether an L2 entry owns a whole host cluster (not compressed; an offset,
    or in an external data file COPIED at offset 0)."""
    if entry & QCOW_OFLAG_COMPRESSED:
        return False
    return bool(entry & L2E_OFFSET_MASK) or (has_data_file and bool(entry & QCOW_OFLAG_COPIED))


def subcluster_type(entry: int, bitmap: int, sc_index: int,
                    has_data_file: bool = False) -> ClusterType:
    """Type of sub-cluster ``sc_index`` of an extended L2 entry."""
    if entry & QCOW_OFLAG_COMPRESSED:
        return ClusterType.COMPRESSED
    if has_host_cluster(entry, has_data_file):
        if (bitmap >> 32) & bitmap & L2_BITMAP_ALL_ALLOC:
            return ClusterType.INVALID
        if bitmap >> (32 + sc_index) & 1:
            return ClusterType.ZERO_ALLOC
        if bitmap >> sc_index & 1:
            return ClusterType.NORMAL
        return ClusterType.UNALLOCATED_ALLOC
    if bitmap & L2_BITMAP_ALL_ALLOC:
        return ClusterType.INVALID
    if bitmap >> (32 + sc_index) & 1:
        return ClusterType.ZERO_PLAIN
    return ClusterType.UNALLOCATED


# what backs a guest range for each spec-level type (INVALID reads fail: MIXED,
# so a search reads it and meets the error)
TYPE_GUEST_KIND = np.full(8, GuestKind.MIXED, dtype=np.uint8)
TYPE_GUEST_KIND[ClusterType.UNALLOCATED] = GuestKind.UNALLOCATED
TYPE_GUEST_KIND[ClusterType.UNALLOCATED_ALLOC] = GuestKind.UNALLOCATED
TYPE_GUEST_KIND[ClusterType.ZERO_PLAIN] = GuestKind.ZERO
TYPE_GUEST_KIND[ClusterType.ZERO_ALLOC] = GuestKind.ZERO
TYPE_GUEST_KIND[ClusterType.NORMAL] = GuestKind.DATA
TYPE_GUEST_KIND[ClusterType.COMPRESSED] = GuestKind.COMPRESSED


def guest_kind(entry: int, bitmap: int | None = None, has_data_file: bool = False) -> GuestKind:
    """What backs the guest cluster of one L2 entry: the kind of its (sub-)clusters
    if they all agree, else MIXED (an invalid bitmap is MIXED too)."""
    if bitmap is None or entry & QCOW_OFLAG_COMPRESSED:
        return GuestKind(int(TYPE_GUEST_KIND[cluster_type(entry, has_data_file)]))
    kinds = {int(TYPE_GUEST_KIND[subcluster_type(entry, bitmap, i, has_data_file)])
             for i in range(SUBCLUSTERS)}
    return GuestKind(kinds.pop()) if len(kinds) == 1 else GuestKind.MIXED


def continues_run(entry: int, host: int) -> bool:
    """Whether a standard L2 entry maps plain data at host offset ``host`` (the
    next cluster of a contiguous run the read path extends over)."""
    return not entry & (QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_ZERO) \
        and (entry & L2E_OFFSET_MASK) == host


@dataclass(frozen=True)
class L1Entry:
    index: int
    raw: int
    offset: int          # file offset of this entry

    @property
    def l2_offset(self) -> int:
        return self.raw & L1E_OFFSET_MASK

    @property
    def copied(self) -> bool:
        return bool(self.raw & QCOW_OFLAG_COPIED)


@dataclass(frozen=True)
class L2Entry:
    """One decoded L2 entry, with the file offset of its bytes."""

    index: int
    raw: int
    bitmap: int | None   # extended L2 only
    offset: int          # file offset of this entry
    type: ClusterType
    host_offset: int     # data cluster offset, or compressed byte offset
    compressed_size: int = 0

    @property
    def copied(self) -> bool:
        return bool(self.raw & QCOW_OFLAG_COPIED)

    @property
    def compressed(self) -> bool:
        return self.type == ClusterType.COMPRESSED

    @property
    def zero_flag(self) -> bool:
        return bool(self.raw & QCOW_OFLAG_ZERO) and self.bitmap is None


def entry_type(raw: int, bitmap: int | None, has_data_file: bool = False) -> ClusterType:
    """One type for a whole L2 entry: its :func:`cluster_type`, or for extended L2
    the type its sub-clusters share; sub-clusters that differ make it NORMAL if
    any holds data, else ZERO_* if any reads as zero (the rest are unallocated)."""
    t = cluster_type(raw, has_data_file)
    if bitmap is None or t == ClusterType.COMPRESSED:
        return t
    types = {subcluster_type(raw, bitmap, i, has_data_file) for i in range(SUBCLUSTERS)}
    if len(types) == 1:
        return types.pop()
    for summary in (ClusterType.INVALID, ClusterType.NORMAL, ClusterType.ZERO_ALLOC,
                    ClusterType.ZERO_PLAIN):
        if summary in types:
            return summary
    return t


def decode_l2_entry(index: int, raw: int, bitmap: int | None, file_offset: int,
                    layout: CompressionLayout, has_data_file: bool) -> L2Entry:
    t = entry_type(raw, bitmap, has_data_file)
    if t == ClusterType.COMPRESSED:
        coff, csize = layout.decode(raw)
        return L2Entry(index, raw, bitmap, file_offset, t, coff, csize)
    return L2Entry(index, raw, bitmap, file_offset, t, raw & L2E_OFFSET_MASK)


def be_u64(buf: bytes) -> np.ndarray:
    """Big-endian 64-bit table -> native uint64 array."""
    return np.frombuffer(buf, dtype=">u8").astype(np.uint64)


def decode_l2_types(raw: np.ndarray, bitmap: np.ndarray | None,
                    has_data_file: bool = False) -> np.ndarray:
    """Vectorised :func:`entry_type` (uint8 :class:`ClusterType` values) of a table."""
    raw = raw.astype(np.uint64, copy=False)
    out = np.zeros(raw.shape, dtype=np.uint8)
    comp = (raw & np.uint64(QCOW_OFLAG_COMPRESSED)) != 0
    host = (raw & np.uint64(L2E_OFFSET_MASK)) != 0
    off = host | ((raw & np.uint64(QCOW_OFLAG_COPIED)) != 0) if has_data_file else host
    if bitmap is None:
        # a zero entry is preallocated by its offset alone (an external data
        # file's cluster 0 is plain zero, as in QEMU's qcow2_get_cluster_type)
        zero = ((raw & np.uint64(QCOW_OFLAG_ZERO)) != 0) & ~comp
        out[off] = ClusterType.NORMAL
        out[zero & ~host] = ClusterType.ZERO_PLAIN
        out[zero & host] = ClusterType.ZERO_ALLOC
    else:
        bitmap = bitmap.astype(np.uint64, copy=False)
        alloc = bitmap & np.uint64(L2_BITMAP_ALL_ALLOC)
        zero = bitmap >> np.uint64(32)
        invalid = np.where(off, (alloc & zero) != 0, alloc != 0)
        out[~off & (zero != 0)] = ClusterType.ZERO_PLAIN
        out[off & (zero != 0)] = ClusterType.ZERO_ALLOC
        out[off & (alloc != 0)] = ClusterType.NORMAL
        out[off & (alloc == 0) & (zero == 0)] = ClusterType.UNALLOCATED_ALLOC
        out[invalid & ~comp] = ClusterType.INVALID
    out[comp] = ClusterType.COMPRESSED
    return out


def decode_subcluster_types(raw: np.ndarray, bitmap: np.ndarray | None,
                            has_data_file: bool = False) -> np.ndarray:
    """Vectorised :func:`subcluster_type` of every sub-cluster of a table: (entries,
    32) uint8 :class:`ClusterType` values with sub-cluster bitmaps, (entries, 1)
    without (a cluster is its one sub-cluster: :func:`decode_l2_types`)."""
    if bitmap is None:
        return decode_l2_types(raw, None, has_data_file)[:, None]
    raw = raw.astype(np.uint64, copy=False)
    bitmap = bitmap.astype(np.uint64, copy=False)
    off = (raw & np.uint64(L2E_OFFSET_MASK)) != 0
    if has_data_file:       # offset 0 is a cluster of the data file when COPIED
        off |= (raw & np.uint64(QCOW_OFLAG_COPIED)) != 0
    bits = np.arange(32, dtype=np.uint64)
    sub_alloc = ((bitmap[:, None] >> bits) & np.uint64(1)) != 0
    sub_zero = ((bitmap[:, None] >> (bits + np.uint64(32))) & np.uint64(1)) != 0
    on_alloc = np.where(sub_zero, ClusterType.ZERO_ALLOC,
                        np.where(sub_alloc, ClusterType.NORMAL, ClusterType.UNALLOCATED_ALLOC))
    on_unalloc = np.where(sub_zero, ClusterType.ZERO_PLAIN, ClusterType.UNALLOCATED)
    out = np.where(off[:, None], on_alloc, on_unalloc).astype(np.uint8)
    alloc = bitmap & np.uint64(L2_BITMAP_ALL_ALLOC)
    out[np.where(off, (alloc & (bitmap >> np.uint64(32))) != 0, alloc != 0)] = ClusterType.INVALID
    out[(raw & np.uint64(QCOW_OFLAG_COMPRESSED)) != 0] = ClusterType.COMPRESSED
    return out


def has_host_clusters(raw: np.ndarray, has_data_file: bool = False) -> np.ndarray:
    """Vectorised :func:`has_host_cluster` (bool per entry)."""
    owned = (raw & U64(L2E_OFFSET_MASK)) != 0
    if has_data_file:
        owned |= (raw & U64(QCOW_OFLAG_COPIED)) != 0
    return owned & ((raw & U64(QCOW_OFLAG_COMPRESSED)) == 0)


def guest_kinds(raw: np.ndarray, bitmap: np.ndarray | None,
                has_data_file: bool = False) -> np.ndarray:
    """Vectorised :func:`guest_kind` (uint8 :class:`GuestKind` values) of entries."""
    comp = (raw & U64(QCOW_OFLAG_COMPRESSED)) != 0
    has_off = (raw & U64(L2E_OFFSET_MASK)) != 0
    if has_data_file:
        has_off |= (raw & U64(QCOW_OFLAG_COPIED)) != 0
    out = np.full(raw.shape, GuestKind.UNALLOCATED, dtype=np.uint8)
    if bitmap is None:
        zero = ((raw & U64(QCOW_OFLAG_ZERO)) != 0) & ~comp
        out[zero] = GuestKind.ZERO
        out[has_off & ~zero & ~comp] = GuestKind.DATA
    else:
        full = U64(L2_BITMAP_ALL_ALLOC)
        alloc = bitmap & full
        zero = bitmap >> U64(32)
        a = has_off & ~comp
        u = ~has_off & ~comp
        out[a | u] = GuestKind.MIXED
        out[(a | u) & (alloc == 0) & (zero == 0)] = GuestKind.UNALLOCATED
        out[(a | (u & (alloc == 0))) & (zero == full) & ((alloc & zero) == 0)] = GuestKind.ZERO
        out[a & (alloc == full) & (zero == 0)] = GuestKind.DATA
    out[comp] = GuestKind.COMPRESSED
    return out


def is_contiguous_row(entries, cs: int) -> bool:
    """Scalar twin of :func:`contiguous_rows` for one table: every entry maps the
    next cluster of one run of aligned, plain data clusters, all with the same
    flags (none, or COPIED only)."""
    first = int(entries[0])
    flags = first & ~L2E_OFFSET_MASK
    host = first & L2E_OFFSET_MASK
    if flags not in (0, QCOW_OFLAG_COPIED) or not host or host & (cs - 1):
        return False
    if host + (len(entries) - 1) * cs > L2E_OFFSET_MASK:
        return False
    return all(int(e) == first + i * cs for i, e in enumerate(entries))


def run_candidates(base: np.ndarray, cs: int, L: int) -> np.ndarray:
    """The tests of :func:`contiguous_rows` that a table's first entry (``base``, one
    per table) decides: plain or COPIED data, aligned, a run of ``L`` that fits."""
    flags = base & ~U64(L2E_OFFSET_MASK)
    boff = base & U64(L2E_OFFSET_MASK)
    return (((flags == 0) | (flags == U64(QCOW_OFLAG_COPIED))) & (boff != 0)
            & ((boff & U64(cs - 1)) == 0)
            & (boff + U64((L - 1) * cs) <= U64(L2E_OFFSET_MASK)))


def contiguous_rows(raw: np.ndarray, cs: int, ramp: np.ndarray | None = None,
                    tmp: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``raw`` (L2 tables without sub-clusters) that map one run of
    contiguous, aligned, plain data clusters: what preallocation and sequential
    writes make, and what both walks handle with slices instead of per entry.
    ``raw`` is left as it was; ``tmp``, an array of its shape, saves it a pass."""
    n, L = raw.shape
    base = raw[:, 0].copy()
    cand = run_candidates(base, cs, L)
    ci = np.flatnonzero(cand)
    if not len(ci):
        return cand
    ramp = np.arange(L, dtype=U64) * U64(cs) if ramp is None else ramp
    if 2 * len(ci) > n and tmp is not None:
        # a run less its ramp is its first entry repeated
        np.subtract(raw, ramp, out=tmp)
        cand &= ~np.not_equal(tmp, tmp[:, :1]).any(axis=1)
    elif 2 * len(ci) > n:
        # most rows may qualify: test in place (raw -= base), then put raw back
        np.subtract(raw, base[:, None], out=raw)
        cand &= ~np.not_equal(raw, ramp).any(axis=1)
        raw += base[:, None]
    else:
        # a few candidates (sparse tables): test copies of those rows only
        sub = raw[ci]
        np.subtract(sub, base[ci, None], out=sub)
        cand[ci] = ~np.not_equal(sub, ramp).any(axis=1)
    return cand
