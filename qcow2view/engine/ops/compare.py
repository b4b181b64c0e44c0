"""Do two disks hold the same guest bytes? (qemu-img compare)

As img_compare: the common part first, then the longer disk's rest must read as
zeros.  A mismatch is reported at the start of its first differing 512-byte
sector (compare_buffers and find_nonzero work in sectors).  Ranges that read as
zeros on both sides without holding data (unallocated or zero clusters, holes of
a raw file) are not read.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import numpy as np

from .. import clusters as C
from .. import metadata_ops as M
from ..backing import RawImage
from .block_status import ALLOCATED, ZERO, BlockStatus
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
    by_status: bool = False         # -s: the block status differs at ``mismatch_at``

    @property
    def identical(self) -> bool:
        return self.mismatch_at is None


def _reads_zero(src, start: int, end: int) -> bool:
    """Whether ``src`` holds no data in [start, end) (so it reads as zeros): no
    cluster or zero clusters, or clusters over holes of the file (as qemu-img, which
    asks the file for its holes too: a preallocated image is not read)."""
    if isinstance(src, RawImage):
        return src.is_hole(start, end)
    if not hasattr(src, "l1_table"):
        return False                            # several sources one after the other
    for lo, hi, kind in extents(src, start, end):
        if kind in _ZERO_KINDS:
            continue
        if kind != GuestKind.DATA or not _over_holes(src, lo, hi):
            return False
    return True


def _over_holes(image, start: int, end: int) -> bool:
    """Whether the host clusters of guest [start, end) (data clusters of ``image``
    itself, per its L2 entries) all lie in holes of the file holding them
    (SEEK_DATA, once per contiguous host run)."""
    cs, per = image.cluster_size, image.l2_size
    host_file = image.data_file if image.has_data_file else image.file
    first, last = start // cs, (end - 1) // cs
    if end <= start:
        return True
    for l1i in range(first // per, last // per + 1):
        l2off = (int(image.l1_table.entries[l1i]) & C.L1E_OFFSET_MASK
                 if l1i < image.l1_table.size else 0)
        if not l2off:
            return False
        lo, hi = max(first, l1i * per) - l1i * per, min(last, l1i * per + per - 1) - l1i * per
        host = (image.l2_table(l2off, l1i).raw[lo:hi + 1] & np.uint64(C.L2E_OFFSET_MASK)
                ).astype(np.int64)
        if not host.all():
            return False
        breaks = np.flatnonzero(np.diff(host) != cs) + 1
        for run in np.split(host, breaks):
            a, b = int(run[0]), int(run[-1]) + cs
            try:
                if os.lseek(host_file.fd, a, os.SEEK_DATA) < b:
                    return False
            except OSError as e:                # ENXIO: no data up to the end of the file
                if e.errno != errno.ENXIO:
                    return False
    return True


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
            da, db = a.read(pos, n), b.read(pos, n)
            if da != db:                        # memcmp first: equal chunks cost no array
                at = _first_sector(np.frombuffer(da, dtype=np.uint8)
                                   != np.frombuffer(db, dtype=np.uint8))
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


def compare_strict(a, b, progress: M.Progress = None) -> Comparison:
    """qemu-img compare -s on two sources of the same size: walk both block
    statuses chunk by chunk (the shorter run, reads capped at IO_BUF_SIZE); the
    first chunk whose flags differ is a mismatch, otherwise allocated data is
    compared as without -s."""
    sa, sb = BlockStatus(a), BlockStatus(b)
    total = a.virtual_size
    offset = 0
    while offset < total:
        fa, na = sa.status(offset)
        fb, nb = sb.status(offset)
        if fa != fb:
            return Comparison(offset, False, by_status=True)
        chunk = min(na, nb)
        if not fa & ZERO and fa & ALLOCATED:
            chunk = min(chunk, CHUNK)
            da, db = a.read(offset, chunk), b.read(offset, chunk)
            if da != db:
                at = _first_sector(np.frombuffer(da, dtype=np.uint8)
                                   != np.frombuffer(db, dtype=np.uint8))
                return Comparison(offset + at, False)
        offset += chunk
        M.report(progress, offset, total)
    return Comparison(None, False)
