"""Find bytes across the whole guest disk without reading what cannot match.

Only ranges that may hold non-zero bytes are read (data, compressed and
backing clusters, and blocks with pending edits); unallocated and zero
clusters are skipped a whole L2 table at a time unless the pattern is all
zeros.  Runs in a :class:`~.workers.Worker`; engine access is serialised by the
document's lock, one chunk at a time, so the GUI stays responsive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import numpy as np

from ..engine import CancelledError
from .extents import CONTENT_KINDS
from .hexdocument import BLOCK_SIZE, HexDocument

CHUNK = 1 << 20


def parse_pattern(text: str, mode: str) -> bytes:
    """``mode`` 'hex' ("de ad be ef", "0xdead", "de:ad") or 'text' (UTF-8)."""
    if mode == "text":
        if not text:
            raise ValueError("nothing to find")
        return text.encode("utf-8")
    digits = re.sub(r"0x|[\s,:\-]", "", text, flags=re.IGNORECASE)
    if not digits:
        raise ValueError("nothing to find")
    if not re.fullmatch(r"[0-9a-fA-F]+", digits):
        raise ValueError("hex bytes only (0-9, a-f), e.g. 'de ad be ef'")
    if len(digits) % 2:
        raise ValueError("an odd number of hex digits")
    return bytes.fromhex(digits)


class _Source:
    """Reads guest bytes with a frozen copy of the pending edits applied."""

    def __init__(self, doc: HexDocument) -> None:
        self.doc = doc
        self.size = doc.size
        self.pending = {bi: (v.copy(), m.copy()) for bi, (v, m) in doc._pend.items()}
        self.span = (doc.image.cluster_size << doc.image.l2_bits
                     if hasattr(doc.image, "l2_bits") else 1 << 30)

    def read(self, offset: int, length: int) -> bytes:
        length = min(length, self.size - offset)
        with self.doc.lock:
            data = self.doc.read_source(offset, length)
        if not self.pending:
            return data
        buf = np.frombuffer(data, dtype=np.uint8).copy()
        for bi in range(offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1):
            p = self.pending.get(bi)
            if p is None:
                continue
            lo = max(offset, bi * BLOCK_SIZE)
            hi = min(offset + length, (bi + 1) * BLOCK_SIZE)
            o = lo - bi * BLOCK_SIZE
            seg = slice(lo - offset, hi - offset)
            buf[seg] = np.where(p[1][o:o + hi - lo], p[0][o:o + hi - lo], buf[seg])
        return buf.tobytes()

    def extents(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        with self.doc.lock:
            return list(self.doc.extents(lo, hi))

    def regions(self, lo: int, hi: int, all_kinds: bool) -> list[tuple[int, int]]:
        """Ranges inside lo..hi that have to be read."""
        out: list[tuple[int, int]] = []
        for s, e, kind in self.extents(lo, hi):
            if all_kinds or kind in CONTENT_KINDS:
                out.append((s, e))
                continue
            for bi in range(s // BLOCK_SIZE, (e - 1) // BLOCK_SIZE + 1):
                if bi in self.pending:
                    out.append((max(s, bi * BLOCK_SIZE), min(e, (bi + 1) * BLOCK_SIZE)))
        merged: list[tuple[int, int]] = []
        for s, e in out:
            if merged and merged[-1][1] == s:
                merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        return merged


def find(doc: HexDocument, pattern: bytes, start: int, forward: bool = True, *,
         progress: Callable[[int, int], None] | None = None,
         cancel: Callable[[], bool] | None = None) -> int | None:
    """Offset of the first match at or after ``start`` (forward) or the last
    match at or before ``start`` (backward); None if there is none.

    Raises the engine's CancelledError when ``cancel()`` turns true.
    """
    src = _Source(doc)
    m = len(pattern)
    size = src.size
    if m == 0 or m > size:
        return None
    start = max(0, min(start, size - 1))
    all_kinds = not any(pattern)
    total = (size - start) if forward else (start + 1)
    progress = progress or (lambda d, t: None)
    cancel = cancel or (lambda: False)

    def spans() -> Iterator[tuple[int, int]]:
        sp = src.span
        if forward:
            lo = start
            while lo < size:
                hi = min(size, (lo // sp + 1) * sp)
                yield lo, hi
                lo = hi
        else:
            hi = start + 1
            while hi > 0:
                lo = (hi - 1) // sp * sp
                yield lo, hi
                hi = lo

    for lo, hi in spans():
        if cancel():
            raise CancelledError("find cancelled")
        regions = src.regions(lo, hi, all_kinds)
        if not forward:
            regions.reverse()
        for s, e in regions:
            hit = _scan(src, pattern, s, e, start, forward, cancel, progress, total)
            if hit is not None:
                return hit
        progress((hi - start) if forward else (start + 1 - lo), total)
    return None


def _scan(src: _Source, pattern: bytes, s: int, e: int, start: int, forward: bool,
          cancel, progress, total) -> int | None:
    """First (last) match starting in s..e, reading up to len-1 bytes either side."""
    m = len(pattern)
    size = src.size
    if forward:
        a = max(0, s - (m - 1))
        while a < e:
            if cancel():
                raise CancelledError("find cancelled")
            b = min(size, a + CHUNK + m - 1, e + m - 1)
            buf = src.read(a, b - a)
            i = buf.find(pattern, max(0, start - a))
            if i >= 0 and a + i < e:
                return a + i
            a += CHUNK
            progress(min(a, e) - start, total)
        return None
    b = min(size, e + m - 1)
    while b > s:
        if cancel():
            raise CancelledError("find cancelled")
        a = max(0, s - (m - 1), b - CHUNK - (m - 1))
        buf = src.read(a, b - a)
        i = buf.rfind(pattern, 0, max(0, start - a + m))
        if i >= 0:
            return a + i
        b = a + m - 1 if a > max(0, s - (m - 1)) else s
        progress(start + 1 - b, total)
    return None
