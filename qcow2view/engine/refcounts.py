"""Refcount table and refcount blocks (spec: "Cluster refcounts")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .clusters import REFT_OFFSET_MASK, be_u64

REFT_RESERVED_MASK = 0x1FF


@dataclass(frozen=True)
class RefcountTableEntry:
    index: int
    raw: int
    offset: int          # file offset of this entry

    @property
    def block_offset(self) -> int:
        return self.raw & REFT_OFFSET_MASK


def block_entries(cluster_bits: int, refcount_order: int) -> int:
    """Refcounts per refcount block."""
    return 1 << (cluster_bits + 3 - refcount_order)


def decode_refcount_block(buf: bytes, refcount_order: int) -> np.ndarray:
    """A refcount block as a uint64 array of counts (bit fields LSB first below 8 bits)."""
    if refcount_order == 6:
        return be_u64(buf)
    if refcount_order == 5:
        return np.frombuffer(buf, dtype=">u4").astype(np.uint64)
    if refcount_order == 4:
        return np.frombuffer(buf, dtype=">u2").astype(np.uint64)
    b = np.frombuffer(buf, dtype=np.uint8)
    if refcount_order == 3:
        return b.astype(np.uint64)
    bits = 1 << refcount_order
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return ((b[:, None] >> shifts[None, :]) & mask).reshape(-1).astype(np.uint64)


def encode_refcount_block(counts: np.ndarray, refcount_order: int) -> bytes:
    """Inverse of :func:`decode_refcount_block`."""
    counts = np.asarray(counts, dtype=np.uint64)
    if refcount_order == 6:
        return counts.astype(">u8").tobytes()
    if refcount_order == 5:
        return counts.astype(">u4").tobytes()
    if refcount_order == 4:
        return counts.astype(">u2").tobytes()
    if refcount_order == 3:
        return counts.astype(np.uint8).tobytes()
    bits = 1 << refcount_order
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    c = counts.astype(np.uint8).reshape(-1, per_byte)
    return np.bitwise_or.reduce(c << shifts[None, :], axis=1).astype(np.uint8).tobytes()


def max_refcount(refcount_order: int) -> int:
    return (1 << (1 << refcount_order)) - 1
