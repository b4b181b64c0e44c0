"""What QEMU's block layer says of a guest range (bdrv_block_status_above with
want_zero, as qemu-img compare -s asks it): flags and the length they hold for.

qemu-img compare -s compares these flags, EOF included, at the start of every
chunk, so the lengths must end where QEMU's do: a qcow2 run stops at the end of
its L2 table (the L2 slice), at a change of cluster type and, for clusters with
a host offset, where the host offsets stop being contiguous; a compressed
cluster is a run of its own; a raw file's runs are its data and holes
(SEEK_DATA / SEEK_HOLE, file-posix); an unallocated run is asked of the
backing file.  Encrypted images are not modelled (refused).
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
T = C.ClusterType
#: qcow2_co_block_status's flags per sub-cluster type (compressed: handled apart)
_FLAGS = {T.NORMAL: DATA | OFFSET_VALID, T.ZERO_ALLOC: ZERO | OFFSET_VALID, T.ZERO_PLAIN: ZERO,
          T.UNALLOCATED: 0, T.UNALLOCATED_ALLOC: OFFSET_VALID}


class BlockStatus:
    """``status(offset)`` -> (flags, length) of one open source (qcow2 Image or
    RawImage), its backing chain followed (bdrv_co_common_block_status_above)."""

    def __init__(self, src) -> None:
        if not hasattr(src, "l1_table") and not isinstance(src, RawImage):
            raise RequestError("-s: block status of several sources is not supported here")
        self.layers = []
        while src is not None:
            self.layers.append(_Layer(src))
            src = getattr(src, "backing", None)
        self.size = self.layers[0].size

    def status(self, offset: int) -> tuple[int, int]:
        ret, n = self.layers[0].status(offset, self.size - offset)
        if n == 0 or ret & ALLOCATED or len(self.layers) == 1:
            return ret, n
        eof = offset + n if ret & EOF else None
        want = n
        for layer in self.layers[1:]:
            ret, n = layer.status(offset, want)
            if n == 0:          # past a short backing file's end: zeros, as if allocated
                ret, n = ZERO | ALLOCATED, want
                break
            if ret & ALLOCATED:
                ret &= ~EOF     # that layer's end, not the top's
                break
            want = n
        return (ret | EOF if offset + n == eof else ret), n


class _Layer:
    """One image of a chain: bdrv_co_block_status of its format node."""

    def __init__(self, src) -> None:
        self.src = src
        self.size = src.virtual_size
        self.raw = isinstance(src, RawImage)
        if self.raw:
            return
        if src.encrypted:
            raise RequestError("-s: comparing the block status of an encrypted image "
                               "is not supported here", path=src.path)
        self.backing_size = None if src.backing is None else src.backing.virtual_size
        self.prealloc = metadata_preallocated(src)
        self.host = 0               # host offset of the last data run (RECURSE)
        self._table_key: tuple[int, int] | None = None
        self._table = None

    def status(self, offset: int, want: int) -> tuple[int, int]:
        if offset >= self.size:
            return EOF, 0
        want = min(want, self.size - offset)
        if self.raw:                # the raw driver defers to its file
            flags, n = file_status(self.src.file.fd, offset, want)
        else:
            flags, n = self._qcow2(offset, want)
        if flags & (DATA | ZERO):
            flags |= ALLOCATED
        elif self.backing_size is None or offset >= self.backing_size:
            flags |= ZERO           # nothing below: reads as zeros
        if flags & RECURSE:         # asked of the file, the flag itself not reported
            flags &= ~RECURSE       # (qemu-img compare -s finds no mismatch on it)
            if flags & DATA and not flags & ZERO:
                flags, n = self._recurse(flags, self.host, n)
        return (flags | EOF if offset + n == self.size else flags), n

    def _qcow2(self, offset: int, want: int) -> tuple[int, int]:
        """qcow2_get_host_offset + qcow2_co_block_status, in sub-clusters (one per
        cluster without extended L2); RECURSE for a metadata-preallocated image's
        data clusters (the file's holes read as zeros)."""
        im = self.src
        cb, per = im.cluster_bits, im.l2_size
        span = per << cb
        l1i, in_table = offset >> (cb + im.l2_bits), offset & (span - 1)
        want = min(want, _INT_MAX, span - in_table)
        l2off = (int(im.l1_table.entries[l1i]) & C.L1E_OFFSET_MASK
                 if l1i < im.l1_table.size else 0)
        if not l2off:
            return _FLAGS[T.UNALLOCATED], want
        kinds, host, run_end, sc_bits = self._runs(l1i, l2off)
        sc = in_table >> sc_bits
        first = int(kinds[sc])
        if first == T.INVALID:
            raise RequestError(f"invalid L2 entry for guest offset {offset:#x}", path=im.path)
        n = min(want, (int(run_end[sc]) << sc_bits) - in_table)
        if first == T.COMPRESSED:
            return DATA, n
        flags = _FLAGS[first]
        if self.prealloc and first == T.NORMAL:
            flags |= RECURSE
            self.host = int(host[in_table >> cb]) + (offset & ((1 << cb) - 1))
        return flags, n

    def _runs(self, l1i: int, l2off: int):
        """Of one L2 table (the last one asked, kept): every sub-cluster's type and
        the sub-cluster where its run ends (count_contiguous_subclusters: the type
        changes, or for clusters with a host offset the offsets stop being
        contiguous; a compressed cluster alone)."""
        if self._table_key != (l1i, l2off):
            im = self.src
            table = im.l2_table(l2off, l1i)
            entries = table.raw.astype(np.uint64)
            host = (entries & np.uint64(C.L2E_OFFSET_MASK)).astype(np.int64)
            kinds = C.decode_subcluster_types(entries, table.bitmap, im.has_data_file)
            j = np.arange(len(host), dtype=np.int64)[:, None]
            own_offset = np.isin(kinds, (T.NORMAL, T.ZERO_ALLOC, T.UNALLOCATED_ALLOC))
            key = np.where(own_offset, host[:, None] - j * im.cluster_size,
                           np.where(kinds == T.COMPRESSED, j, 0)).reshape(-1)
            flat = kinds.reshape(-1)
            ends = np.append(np.flatnonzero((flat[1:] != flat[:-1]) | (key[1:] != key[:-1])) + 1,
                             len(flat))
            run_end = ends[np.searchsorted(ends, np.arange(len(flat)), side="right")]
            sc_bits = im.cluster_bits - (kinds.shape[1].bit_length() - 1)
            self._table_key = (l1i, l2off)
            self._table = (flat, host, run_end, sc_bits)
        return self._table

    def _recurse(self, flags: int, host: int, n: int) -> tuple[int, int]:
        """The status of the file holding the data (an external data file if any)."""
        im = self.src
        fd = (im.data_file if im.has_data_file else im.file).fd
        length = os.fstat(fd).st_size
        if host >= length:
            return flags | ZERO, n
        f2, fn = file_status(fd, host, min(n, length - host))
        if host + fn == length and f2 & ZERO:      # zeros up to and past the file's end
            return flags | ZERO, n
        return flags | (f2 & ZERO), fn


def file_status(fd: int, offset: int, want: int) -> tuple[int, int]:
    """file-posix's raw_co_block_status (find_allocation)."""
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:                  # a trailing hole
            return ZERO | OFFSET_VALID, want
        return DATA | OFFSET_VALID, want
    if data > offset:
        return ZERO | OFFSET_VALID, min(want, data - offset)
    hole = os.lseek(fd, offset, os.SEEK_HOLE)
    return DATA | OFFSET_VALID, min(want, hole - offset)


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
