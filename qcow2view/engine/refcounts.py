"""Refcount table and refcount blocks (spec: "Cluster refcounts")."""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .clusters import REFT_OFFSET_MASK, be_u64
from .fileio import pread_into

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


def read_zero_filled(file, offset: int, length: int) -> bytes:
    """Read like QEMU's block layer does: bytes past the end of file are zeros."""
    if offset >= file.size or length <= 0:
        return bytes(max(length, 0))
    data = file.pread(offset, length)
    if len(data) < length:
        data += bytes(length - len(data))
    return data


def refcount_dtype(refcount_order: int) -> np.dtype:
    """The narrowest unsigned dtype that holds one refcount (uint8 below 8 bits)."""
    return np.dtype(np.uint8 if refcount_order <= 3 else np.uint16 if refcount_order == 4
                    else np.uint32 if refcount_order == 5 else np.uint64)


FEW_PER_BLOCK = 16   # refcounts looked up in one block below which it is not read whole


class DiskRefcounts:
    """The refcounts on disk, read one refcount block at a time when asked.

    Never one array for the whole file: a check streams them (:meth:`range`) and
    looks single ones up (:meth:`get`, :meth:`lookup`) through a few cached blocks,
    decoded into the image's own refcount width, so their cost is the cache (about
    :data:`CACHE_BYTES`) whatever the image's size.  Clusters past the last
    refcount block (:attr:`covered_end`) have refcount 0.

    A host map keeps one for its hover texts and pictures after the image that
    built it is closed (a window re-reading a saved file): then the blocks are
    read through a duplicate of the file descriptor, kept as long as this is.
    The cache is shared by threads (a picture worker, the GUI thread) under a lock.
    """

    CACHE_BYTES = 8 << 20

    def __init__(self, image, nclusters: int, cancel=None) -> None:
        self.file = image.file
        self.order = image.header.refcount_order
        self.cs = image.cluster_size
        self.per_block = image.refcount_block_entries
        self.table = image.refcount_table
        self.dtype = refcount_dtype(self.order)
        self.n = nclusters
        offs = self.table & np.uint64(REFT_OFFSET_MASK)
        used = np.flatnonzero(offs != 0)
        # refcount table indices whose block offset is misaligned: QEMU's
        # qcow2_get_refcount fails for every cluster they cover
        bad = used[(offs[used] & np.uint64(self.cs - 1)) != 0]
        self.bad_blocks: set[int] = set(bad.tolist())
        self.covered_end = (int(used[-1]) + 1) * self.per_block if len(used) else 0
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._cache_max = max(4, self.CACHE_BYTES // (self.per_block * self.dtype.itemsize))
        self._lock = threading.Lock()
        self._size = self.file.size
        self._fd = os.dup(self.file.fd) if self.file.fd >= 0 else -1
        if self._fd >= 0:
            weakref.finalize(self, os.close, self._fd)

    def _read(self, offset: int, length: int) -> bytes:
        """Bytes of the file (zeros past its end), through the image while it is open."""
        if self.file.fd >= 0 or self._fd < 0:
            return read_zero_filled(self.file, offset, length)
        data = os.pread(self._fd, length, offset) if offset < self._size else b""
        return data + bytes(length - len(data))

    def _read_into(self, dst: np.ndarray, offset: int) -> None:
        """:meth:`_read` straight into ``dst``'s bytes (no copies on the way)."""
        mv = memoryview(dst).cast("B")
        if self.file.fd >= 0 or self._fd < 0:
            self.file.pread_into(offset, mv)
        else:
            pread_into(self._fd, offset, mv, self._size)

    def _block(self, rti: int) -> np.ndarray | None:
        """Refcount block ``rti`` decoded (None: no block, or a misaligned one)."""
        off = int(self.table[rti]) & REFT_OFFSET_MASK if rti < len(self.table) else 0
        if not off or off & (self.cs - 1):
            return None
        buf = self._read(off, self.cs)
        if self.order >= 3:
            return np.frombuffer(buf, dtype=self.dtype.newbyteorder(">")).astype(self.dtype)
        return decode_refcount_block(buf, self.order).astype(self.dtype)

    def _entry(self, rti: int, i: int) -> int:
        """Entry ``i`` of refcount block ``rti``, read alone (0 where no block)."""
        off = int(self.table[rti]) & REFT_OFFSET_MASK if rti < len(self.table) else 0
        if not off or off & (self.cs - 1):
            return 0
        bits = 1 << self.order
        pos = off + (i * bits) // 8
        raw = self._read(pos, max(1, bits // 8))
        if bits >= 8:
            return int.from_bytes(raw, "big")
        return (raw[0] >> ((i * bits) % 8)) & ((1 << bits) - 1)

    def block(self, rti: int) -> np.ndarray | None:
        """:meth:`_block` through the cache of recently used blocks (do not modify)."""
        with self._lock:
            if rti in self._cache:
                self._cache.move_to_end(rti)
                return self._cache[rti]
        blk = self._block(rti)
        with self._lock:
            self._cache[rti] = blk
            while len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return blk

    def forget(self, rtis=None) -> None:
        """Drop cached blocks (all, or those of ``rtis``) after they were rewritten."""
        with self._lock:
            if rtis is None:
                self._cache.clear()
            else:
                for rti in rtis:
                    self._cache.pop(int(rti), None)

    def error(self, cluster: int) -> bool:
        return (cluster // self.per_block) in self.bad_blocks

    def get(self, cluster: int) -> int:
        blk = self.block(cluster // self.per_block)
        return 0 if blk is None else int(blk[cluster % self.per_block])

    def range(self, lo: int, hi: int, keep: bool = True) -> np.ndarray:
        """Refcounts of clusters ``lo..hi-1`` (misaligned blocks read as 0).  Inside
        one block this may be a view of the cache: do not modify.  ``keep=False``
        streams past the cache (a whole-file pass)."""
        if not keep and self.order >= 3:
            out = self._stream(lo, hi)
            if self.dtype.itemsize > 1:
                out.byteswap(inplace=True)           # (big-endian on disk; zeros stay)
            return out
        per = self.per_block
        end = min(hi, self.covered_end)
        first = lo // per
        if lo < end and first == (hi - 1) // per:
            blk = self.block(first) if keep else self._block(first)
            if blk is not None:
                return blk[lo - first * per:hi - first * per]
        out = np.zeros(max(0, hi - lo), dtype=self.dtype)
        for rti in range(first, -(-end // per)) if lo < end else ():
            blk = self.block(rti) if keep else self._block(rti)
            if blk is None:
                continue
            a, b = max(lo, rti * per), min(hi, (rti + 1) * per)
            out[a - lo:b - lo] = blk[a - rti * per:b - rti * per]
        return out

    def ones(self, lo: int, hi: int) -> np.ndarray:
        """Whether the refcount of each cluster ``lo..hi-1`` is exactly 1 (what a
        COPIED flag says), streamed past the cache; compared as stored, undecoded."""
        if self.order < 3:
            return self.range(lo, hi, keep=False) == 1
        return self._stream(lo, hi) == self.dtype.type(1).byteswap()  # (big-endian 1)

    def _stream(self, lo: int, hi: int) -> np.ndarray:
        """Refcounts ``lo..hi-1`` as stored (big-endian, entries of a byte or more),
        read straight into one array, only the bytes asked for: no block copies
        (what a check's passes over the whole file want)."""
        per = self.per_block
        end = min(hi, self.covered_end)
        out = np.zeros(max(0, hi - lo), dtype=self.dtype)
        for rti in range(lo // per, -(-end // per)) if lo < end else ():
            off = int(self.table[rti]) & REFT_OFFSET_MASK if rti < len(self.table) else 0
            if off and not off & (self.cs - 1):          # (misaligned: read as 0)
                a, b = max(lo, rti * per), min(hi, (rti + 1) * per)
                self._read_into(out[a - lo:b - lo], off + (a - rti * per) * self.dtype.itemsize)
        return out

    def lookup(self, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(refcounts as uint64, ok) for an array of cluster indices; ok is False
        where QEMU could not read the refcount (misaligned refcount block)."""
        c = np.asarray(clusters).astype(np.int64, copy=False)
        ok = np.ones(len(c), dtype=bool)
        if len(c) == 0:
            return np.zeros(0, dtype=np.uint64), ok
        per = self.per_block
        lo, hi = int(c.min()), int(c.max()) + 1
        if hi - lo <= max(4 * len(c), per):      # one span read covers them
            out = self.range(lo, hi)[c - lo].astype(np.uint64)
        else:
            out = np.zeros(len(c), dtype=np.uint64)
            rti = c // per
            order = np.argsort(rti, kind="stable")
            srt = rti[order]
            starts = np.flatnonzero(np.r_[True, srt[1:] != srt[:-1]])
            for a, b in zip(starts.tolist(), np.r_[starts[1:], len(c)].tolist()):
                t = int(srt[a])
                sel = order[a:b]
                if b - a <= FEW_PER_BLOCK and t not in self._cache:   # (a peek: no lock)
                    # a few refcounts of a block (L2 tables spread over a huge
                    # image): read those bytes, not the block
                    out[sel] = [self._entry(t, int(x) - t * per) for x in c[sel].tolist()]
                    continue
                blk = self.block(t)
                if blk is not None:
                    out[sel] = blk[c[sel] - t * per]
        if self.bad_blocks:
            ok = ~np.isin(c // per, np.fromiter(self.bad_blocks, dtype=np.int64))
        return out, ok

    @property
    def counts(self) -> np.ndarray:
        """All refcounts of clusters 0..n-1 as one array (tests and small images)."""
        return self.range(0, self.n, keep=False).copy()
