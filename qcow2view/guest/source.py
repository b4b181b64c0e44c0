"""A file-like view of a guest disk (or a slice of it) for the filesystem libraries.

The libyal bindings read through any object with ``read``/``seek``/``tell``/
``get_size``.  :class:`GuestSource` serves them from :meth:`Image.read` in
aligned blocks kept in a small LRU cache: a compressed cluster is inflated once,
not once per 512-byte read of an inode table.  An engine error met while a
library reads is remembered and re-raised by :meth:`GuestSource.reraise` so the
caller sees our own :class:`Qcow2Error`, not the library's wrapped text.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from ..engine.errors import Qcow2Error

BLOCK = 64 * 1024          # cache granule: a multiple of every cluster size up to 64 KiB
CACHE_BLOCKS = 64          # 4 MiB at most


class BlockCache:
    """Aligned blocks of one reader (``read(offset, length) -> bytes``), LRU."""

    def __init__(self, read, size: int, block: int = BLOCK, blocks: int = CACHE_BLOCKS) -> None:
        self._read = read
        self.size = size
        self.block = block
        self.max_blocks = blocks
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, index: int) -> bytes:
        with self._lock:
            hit = self._cache.get(index)
            if hit is not None:
                self._cache.move_to_end(index)
                return hit
        start = index * self.block
        data = self._read(start, min(self.block, self.size - start))
        with self._lock:
            self._cache[index] = data
            while len(self._cache) > self.max_blocks:
                self._cache.popitem(last=False)
        return data

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``offset..offset+length`` clipped to the end of the disk."""
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        b = self.block
        first, last = offset // b, (end - 1) // b
        if first == last:
            o = offset - first * b
            return self._get(first)[o:o + end - offset]
        if end - offset >= 4 * b:
            # a large read (a whole file): straight through, without flooding the cache
            return self._read(offset, end - offset)
        parts = [self._get(i) for i in range(first, last + 1)]
        joined = b"".join(parts)
        o = offset - first * b
        return joined[o:o + end - offset]


class GuestSource(io.RawIOBase):
    """File-like object over guest bytes ``base..base+size`` of ``cache``."""

    def __init__(self, cache: BlockCache, base: int = 0, size: int | None = None,
                 pieces: tuple[tuple[int, int, int], ...] | None = None) -> None:
        super().__init__()
        self.cache = cache
        self.pieces = pieces      # (offset here, guest offset, length): an LVM volume
        self.base = base
        self.size = cache.size - base if size is None else size
        self.pos = 0
        self.error: Qcow2Error | None = None

    @classmethod
    def of_image(cls, image, base: int = 0, size: int | None = None) -> "GuestSource":
        return cls(BlockCache(image.read, image.virtual_size), base, size)

    def slice(self, base: int, size: int) -> "GuestSource":
        """A view of ``base..base+size`` of this source, sharing its cache."""
        size = max(0, min(size, self.size - base))
        return GuestSource(self.cache, self.base + base, size)

    def mapped(self, pieces, size: int) -> "GuestSource":
        """A volume made of ``pieces`` (offset in it, guest offset, length)."""
        return GuestSource(self.cache, 0, size, tuple(pieces))

    def _get(self, offset: int, length: int) -> bytes:
        if self.pieces is None:
            return self.cache.read(self.base + offset, length)
        out = bytearray(length)          # bytes no piece covers read as zeros
        for v, g, n in self.pieces:
            lo, hi = max(offset, v), min(offset + length, v + n)
            if lo < hi:
                out[lo - offset:hi - offset] = self.cache.read(g + lo - v, hi - lo)
        return bytes(out)

    # -- the file-object protocol the bindings use ----------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def get_size(self) -> int:
        return self.size

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self.pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise OSError("negative seek position")
        self.pos = pos
        return pos

    def read(self, size: int = -1) -> bytes:
        pos = self.pos
        if self.pieces is None and 0 < size <= self.size - pos:
            # the common case, kept short: a small read inside one cached block
            # (the libraries call this ~once per inode and directory block)
            c = self.cache
            at = self.base + pos
            i = at // c.block
            o = at - i * c.block
            if o + size <= c.block:
                hit = c._cache.get(i)
                if hit is not None and o + size <= len(hit):
                    self.pos = pos + size
                    return hit[o:o + size]
        if size is None or size < 0:
            size = self.size - self.pos
        size = max(0, min(size, self.size - self.pos))
        if size == 0:
            return b""
        try:
            data = self._get(self.pos, size)
        except Qcow2Error as e:
            self.error = e
            raise OSError(str(e)) from e
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def pread(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset`` of this view, clipped to its end (no position change)."""
        length = max(0, min(length, self.size - offset))
        if offset < 0 or length == 0:
            return b""
        try:
            return self._get(offset, length)
        except Qcow2Error as e:
            self.error = e
            raise

    def reraise(self) -> None:
        """Raise the engine error a library met while reading through us, if any."""
        if self.error is not None:
            e, self.error = self.error, None
            raise e

    def close(self) -> None:   # the bindings close their file object: keep the cache
        pass
