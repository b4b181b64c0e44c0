"""What QEMU's block layer says of a guest range (bdrv_block_status_above with
want_zero, as qemu-img compare -s asks it): flags and the length they hold for.

qemu-img compare -s compares these flags, EOF included, at the start of every
chunk, so the lengths must end where QEMU's do: a qcow2 run stops at the end of
its L2 table (the L2 slice), at a change of cluster type and, for clusters with
a host offset, where the host offsets stop being contiguous; a compressed
cluster is a run of its own; a raw file's runs are its data and holes
(SEEK_DATA / SEEK_HOLE, file-posix).  Images with a backing file, extended L2
entries, an external data file or encryption are not modelled (refused).
"""

from __future__ import annotations

import errno
import os

import numpy as np

from .. import clusters as C
from ..backing import RawImage
from ..errors import RequestError

# BDRV_BLOCK_* (include/block/block-common.h)
DATA, ZERO, OFFSET_VALID, ALLOCATED, EOF, RECURSE = 0x01, 0x02, 0x04, 0x10, 0x20, 0x40
_INT_MAX = (1 << 31) - 1
_NORMAL, _ZERO_ALLOC, _ZERO_PLAIN, _UNALLOCATED = 0, 1, 2, 3
#: qcow2_co_block_status's flags per cluster type (bdrv_co_block_status adds
#: ALLOCATED to DATA or ZERO, and ZERO where an image without backing has no cluster)
_FLAGS = {_NORMAL: DATA | OFFSET_VALID | ALLOCATED, _ZERO_ALLOC: ZERO | OFFSET_VALID | ALLOCATED,
          _ZERO_PLAIN: ZERO | ALLOCATED, _UNALLOCATED: ZERO}


class BlockStatus:
    """``status(offset)`` -> (flags, length) of one open source (qcow2 Image or RawImage)."""

    def __init__(self, src) -> None:
        self.src = src
        self.size = src.virtual_size
        if isinstance(src, RawImage):
            return
        if not hasattr(src, "l1_table"):
            raise RequestError("-s: block status of several sources is not supported here")
        for what, present in (("a backing file", src.backing is not None),
                              ("extended L2 entries", src.extended_l2),
                              ("an external data file", src.has_data_file),
                              ("encryption", src.encrypted)):
            if present:
                raise RequestError(f"-s: comparing the block status of an image with {what} "
                                   "is not supported here", path=src.path)
        self.prealloc = metadata_preallocated(src)

    def status(self, offset: int) -> tuple[int, int]:
        want = self.size - offset
        if isinstance(self.src, RawImage):
            flags, n = file_status(self.src.file.fd, offset, want)
        else:
            flags, n = self._qcow2(offset, want)
        return (flags | EOF if offset + n == self.size else flags), n

    def _qcow2(self, offset: int, want: int) -> tuple[int, int]:
        """qcow2_get_host_offset + qcow2_co_block_status (+ the file's status
        for a metadata-preallocated image's data clusters, BDRV_BLOCK_RECURSE)."""
        im = self.src
        cb, per = im.cluster_bits, im.l2_size
        cs = 1 << cb
        in_cluster = offset & (cs - 1)
        l1i, idx = offset >> (cb + im.l2_bits), (offset >> cb) & (per - 1)
        want = min(want, _INT_MAX, ((per - idx) << cb) - in_cluster)
        l2off = (int(im.l1_table.entries[l1i]) & C.L1E_OFFSET_MASK
                 if l1i < im.l1_table.size else 0)
        if not l2off:
            return _FLAGS[_UNALLOCATED], want
        raw = im.l2_table(l2off, l1i).raw[idx: idx + -(-(in_cluster + want) // cs)]
        entries = raw.astype(np.uint64)
        first = int(entries[0])
        if first & C.QCOW_OFLAG_COMPRESSED:          # one cluster at a time
            return DATA | ALLOCATED, min(want, cs - in_cluster)
        host = (entries & np.uint64(C.L2E_OFFSET_MASK)).astype(np.int64)
        zero = (entries & np.uint64(C.QCOW_OFLAG_ZERO)) != 0
        kinds = np.where(zero, np.where(host != 0, _ZERO_ALLOC, _ZERO_PLAIN),
                         np.where(host != 0, _NORMAL, _UNALLOCATED))
        kinds[(entries & np.uint64(C.QCOW_OFLAG_COMPRESSED)) != 0] = -1
        same = kinds == kinds[0]
        if kinds[0] in (_NORMAL, _ZERO_ALLOC):
            same &= host == host[0] + cs * np.arange(len(host))
        count = len(same) if same.all() else int(np.argmin(same))
        n = min(want, (count << cb) - in_cluster)
        flags = _FLAGS[int(kinds[0])]
        if self.prealloc and kinds[0] == _NORMAL:
            flags, n = self._recurse(flags | RECURSE, int(host[0]) + in_cluster, n)
        return flags, n

    def _recurse(self, flags: int, host: int, n: int) -> tuple[int, int]:
        fd = self.src.file.fd
        length = os.fstat(fd).st_size
        if host >= length:
            return flags | ZERO, n
        f2, fn = file_status(fd, host, min(n, length - host))
        if host + fn == length and f2 & ZERO:      # zeros up to and past the file's end
            return flags | ZERO, n
        return flags | (f2 & ZERO), fn


def file_status(fd: int, offset: int, want: int) -> tuple[int, int]:
    """file-posix's raw_co_block_status (find_allocation), ALLOCATED added."""
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:                  # a trailing hole
            return ZERO | OFFSET_VALID | ALLOCATED, want
        return DATA | OFFSET_VALID | ALLOCATED, want
    if data > offset:
        return ZERO | OFFSET_VALID | ALLOCATED, min(want, data - offset)
    hole = os.lseek(fd, offset, os.SEEK_HOLE)
    return DATA | OFFSET_VALID | ALLOCATED, min(want, hole - offset)


def metadata_preallocated(image) -> bool:
    """qcow2_detect_metadata_preallocation: more clusters referenced than the file
    has allocated (by a ninth, or two clusters)."""
    cs = image.cluster_size
    st = os.fstat(image.file.fd)
    real = st.st_blocks * 512 // cs
    threshold = max(real * 10 // 9, real + 2)
    end = -(-st.st_size // cs)
    per = image.refcount_block_entries
    count = 0
    for rti in range(min(-(-end // per), len(image.refcount_table))):
        blk = image.refcount_block(rti)
        if blk is not None:
            count += int(np.count_nonzero(blk[1][: end - rti * per]))
            if count >= threshold:
                return True
    return False
