"""L1 and L2 tables: entry layouts and their decoding (spec: "Cluster mapping").

Scalar helpers serve the read fast path; the ``decode_*`` functions work on
whole tables as numpy arrays for maps and views.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

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


def subcluster_type(entry: int, bitmap: int, sc_index: int,
                    has_data_file: bool = False) -> ClusterType:
    """Type of sub-cluster ``sc_index`` of an extended L2 entry."""
    if entry & QCOW_OFLAG_COMPRESSED:
        return ClusterType.COMPRESSED
    normal = bool(entry & L2E_OFFSET_MASK) or (has_data_file and bool(entry & QCOW_OFLAG_COPIED))
    if normal:
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


def decode_l2_entry(index: int, raw: int, bitmap: int | None, file_offset: int,
                    layout: CompressionLayout, has_data_file: bool) -> L2Entry:
    t = cluster_type(raw, has_data_file)
    if bitmap is not None and t != ClusterType.COMPRESSED:
        # summarise the sub-clusters: a single type if they all agree
        types = {subcluster_type(raw, bitmap, i, has_data_file) for i in range(SUBCLUSTERS)}
        t = types.pop() if len(types) == 1 else (
            ClusterType.INVALID if ClusterType.INVALID in types else ClusterType.NORMAL
            if ClusterType.NORMAL in types else t)
    if t == ClusterType.COMPRESSED:
        coff, csize = layout.decode(raw)
        return L2Entry(index, raw, bitmap, file_offset, t, coff, csize)
    return L2Entry(index, raw, bitmap, file_offset, t, raw & L2E_OFFSET_MASK)


def be_u64(buf: bytes) -> np.ndarray:
    """Big-endian 64-bit table -> native uint64 array."""
    return np.frombuffer(buf, dtype=">u8").astype(np.uint64)


def decode_l2_types(raw: np.ndarray, bitmap: np.ndarray | None,
                    has_data_file: bool = False) -> np.ndarray:
    """Vectorised cluster types (uint8, :class:`ClusterType` values) of a whole table.

    For extended L2 an entry whose sub-clusters differ is reported as NORMAL if
    any sub-cluster holds data, else by its cluster-level type.
    """
    raw = raw.astype(np.uint64, copy=False)
    out = np.zeros(raw.shape, dtype=np.uint8)
    comp = (raw & np.uint64(QCOW_OFLAG_COMPRESSED)) != 0
    off = (raw & np.uint64(L2E_OFFSET_MASK)) != 0
    if has_data_file:
        off |= (raw & np.uint64(QCOW_OFLAG_COPIED)) != 0
    if bitmap is None:
        zero = ((raw & np.uint64(QCOW_OFLAG_ZERO)) != 0) & ~comp
        out[off] = ClusterType.NORMAL
        out[zero & ~off] = ClusterType.ZERO_PLAIN
        out[zero & off] = ClusterType.ZERO_ALLOC
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
