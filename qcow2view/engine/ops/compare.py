"""Do two disks hold the same guest bytes? (qemu-img compare)

As img_compare: the common part first, then the longer disk's rest must read as
zeros.  A mismatch is reported at the start of its first differing 512-byte
sector (compare_buffers and find_nonzero work in sectors).  Ranges that read as
zeros on both sides without holding data (unallocated or zero clusters, holes of
a raw file) are not read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import metadata_ops as M
from ..backing import RawImage
from ..extents import extents
from ..kinds import GuestKind

SECTOR = 512
CHUNK = 2 << 20             # qemu-img's IO_BUF_SIZE
_ZERO_KINDS = (GuestKind.UNALLOCATED, GuestKind.ZERO)


@dataclass(frozen=True)
class Comparison:
    """``mismatch_at``: guest offset of the first differing sector (None: identical)."""
    mismatch_at: int | None
    size_mismatch: bool

    @property
    def identical(self) -> bool:
        return self.mismatch_at is None


def _reads_zero(src, start: int, end: int) -> bool:
    """Whether ``src`` holds no data in [start, end) (so it reads as zeros)."""
    if isinstance(src, RawImage):
        return src.is_hole(start, end)
    if not hasattr(src, "l1_table"):
        return False                            # several sources one after the other
    return all(kind in _ZERO_KINDS for _, _, kind in extents(src, start, end))


def _first_sector(mask: np.ndarray) -> int | None:
    hit = np.flatnonzero(mask)
    return None if hit.size == 0 else int(hit[0]) // SECTOR * SECTOR


def compare_sources(a, b, progress: M.Progress = None) -> Comparison:
    """Compare the guest disks of two open sources (``convert.open_source``)."""
    size_a, size_b = a.virtual_size, b.virtual_size
    common, total = min(size_a, size_b), max(size_a, size_b)
    for pos in range(0, common, CHUNK):
        n = min(CHUNK, common - pos)
        if not (_reads_zero(a, pos, pos + n) and _reads_zero(b, pos, pos + n)):
            da = np.frombuffer(a.read(pos, n), dtype=np.uint8)
            db = np.frombuffer(b.read(pos, n), dtype=np.uint8)
            at = _first_sector(da != db)
            if at is not None:
                return Comparison(pos + at, size_a != size_b)
        M.report(progress, pos + n, total)
    longer = a if size_a > size_b else b
    for pos in range(common, total, CHUNK):
        n = min(CHUNK, total - pos)
        if not _reads_zero(longer, pos, pos + n):
            at = _first_sector(np.frombuffer(longer.read(pos, n), dtype=np.uint8) != 0)
            if at is not None:
                return Comparison(pos + at, True)
        M.report(progress, pos + n, total)
    return Comparison(None, size_a != size_b)
