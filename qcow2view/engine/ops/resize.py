"""Changing the virtual size (qemu-img resize; QEMU's qcow2_co_truncate).

Growing moves the L1 table to a larger place when the new size needs more
entries (qcow2_grow_l1_table), sets an external data file to the new size and
then writes the new size; ``preallocation=metadata`` then gives the new area L2
tables and host clusters without writing data (qcow2's preallocate_co).  Shrinking is
refused without ``shrink=True`` (qemu-img's ``--shrink``); with it the size is
written first, then the clusters past the new end are released: whole L2
tables leave the L1 table, the last table loses its tail entries (copied first
if a snapshot shares it), and the file is cut after the last used cluster.
"""

from __future__ import annotations

import errno
import os

import numpy as np

from .. import clusters as C
from .. import metadata_ops as M
from ..create import MAX_VIRTUAL_SIZE, parse_size
from ..errors import RequestError
from ..header import QCOW_MAX_L1_SIZE

#: qemu-img resize --preallocation for qcow2 (QEMU's PreallocMode names)
PREALLOCATION_MODES = ("off", "metadata", "falloc", "full")
SHRINK_REFUSED = "Use the --shrink option to perform a shrink operation."


def parse_resize(current: int, text: str) -> int:
    """qemu-img resize's SIZE: absolute, or relative with a leading + or -."""
    text = text.strip()
    if text[:1] in "+-":
        delta = parse_size(text[1:])
        new = current + delta if text[0] == "+" else current - delta
    else:
        new = parse_size(text)
    if new <= 0:    # qemu-img resize refuses a size of 0 as well
        raise RequestError("New image size must be positive")
    return new


def shrink_refusal(image, new_size: int) -> str | None:
    """Why this shrink is not done here (None: it is, or it is no shrink)."""
    if new_size < image.virtual_size and image.has_data_file:
        return ("shrinking an image with an external data file is not supported here (only "
                f"growing it): qemu-img resize --shrink cuts the data file "
                f"'{image.data_file_name}' too")
    return None


def resize_raw(path: str, text: str, *, shrink: bool = False,
               preallocation: str = "off") -> int:
    """qemu-img resize of a raw file: the file set to the new size (any byte count;
    the new area allocated on the host with falloc|full); returns it.  A file some
    process holds with QEMU's locks is refused."""
    M.refuse_if_in_use(path)
    old_size = os.path.getsize(path)
    new_size = parse_resize(old_size, text)
    if preallocation not in ("off", "falloc", "full"):
        raise RequestError(f"Unsupported preallocation mode: {preallocation}")
    if new_size <= old_size and preallocation != "off":   # checked first, as qemu-img
        raise RequestError("Preallocation can only be used for growing images")
    if new_size < old_size and not shrink:
        raise RequestError(SHRINK_REFUSED)
    if new_size > MAX_VIRTUAL_SIZE:
        raise RequestError("Image size is too large")
    with open(path, "r+b") as f:
        f.truncate(new_size)
        if preallocation != "off" and new_size > old_size:
            os.posix_fallocate(f.fileno(), old_size, new_size - old_size)
        os.fsync(f.fileno())
    return new_size


def l1_entries_for(image, size: int) -> int:
    return -(-(-(-size // image.cluster_size)) // image.l2_size)


@M.operation
def resize_image(image, new_size: int, *, shrink: bool = False, progress=None,
                 preallocation: str = "off") -> None:
    """Set the virtual size of a writable ``image`` to ``new_size`` bytes;
    ``preallocation`` metadata allocates the new area's clusters without writing
    them, falloc|full writes them (with zeros)."""
    if preallocation not in PREALLOCATION_MODES:
        raise RequestError(f"Invalid preallocation mode '{preallocation}'")
    if new_size % 512:
        raise RequestError("The new size must be a multiple of 512")
    if new_size > MAX_VIRTUAL_SIZE:
        raise RequestError("Image size is too large")
    if image.header.version < 3 and image.snapshots:
        # qcow2_co_truncate: a v2 snapshot entry may not record its disk size
        raise RequestError("Can't resize a v2 image which has snapshots")
    image.require_writable()
    image.flush()
    old_size = image.virtual_size
    if new_size <= old_size and preallocation != "off":    # qemu-img resize: the same size too
        raise RequestError("Preallocation can only be used for growing images")
    if new_size == old_size:
        return
    if new_size < old_size and not shrink:
        raise RequestError(SHRINK_REFUSED)
    why = shrink_refusal(image, new_size)
    if why is not None:
        raise RequestError(why)
    need = l1_entries_for(image, new_size)
    if need * 8 > QCOW_MAX_L1_SIZE:
        raise RequestError("The image size is too large for file format 'qcow2'")
    if new_size > old_size and image.header.version < 3 and image.backing is not None \
            and image.backing.virtual_size > old_size and preallocation in ("off", "metadata"):
        # the new area must not show the backing file, and v2 has no zero clusters
        # (qcow2_co_truncate -> qcow2_subcluster_zeroize: -ENOTSUP)
        raise RequestError("Failed to zero out new clusters: Operation not supported")
    if new_size > old_size:
        image.meta.grow_l1(need)
        _grow_data_file(image, new_size)
        image.meta.write_header(size=new_size)
        M.reload(image)
        if preallocation == "metadata":
            # qcow2_co_truncate: preallocate_co first, the zeroing over a longer
            # backing file after it (the new clusters then become zero-allocated)
            _preallocate_metadata(image, old_size, new_size, progress)
            _zero_over_backing(image, old_size, new_size)
        elif preallocation == "off":
            _zero_over_backing(image, old_size, new_size)
        else:
            # falloc|full write zeros over the whole new area: a backing file no
            # longer shows through (qemu-img resize allows it on v2 images too)
            _preallocate(image, old_size, new_size, progress)
    else:
        image.meta.write_header(size=new_size)
        M.reload(image)
        _discard_tail(image, new_size)
        _cut_file(image)
        M.reload(image)
    M.finish(progress, 1)


def _grow_data_file(image, new_size: int) -> None:
    """The external data file (guest offset = data file offset) follows the new size
    before it is written, as qemu-img resize leaves it: set to the new size, a longer
    one cut too -- unless data_file_raw, whose file is only ever grown (measured with
    qemu-img 7.2)."""
    f = image.data_file
    if f is None or (image.header.data_file_raw and f.size >= new_size):
        return
    f.truncate(new_size)
    f.fsync()


def _preallocate(image, old_size: int, new_size: int, progress) -> None:
    """--preallocation=falloc|full: the new area's clusters allocated and holding
    zeros, as qemu-img resize leaves them (data clusters, not zero clusters)."""
    chunk = 4 << 20
    for pos in range(old_size, new_size, chunk):
        n = min(chunk, new_size - pos)
        image.write(pos, bytes(n))
        M.report(progress, pos + n - old_size, new_size - old_size)
    image.flush()


def _preallocate_metadata(image, old_size: int, new_size: int, progress) -> None:
    """--preallocation=metadata (preallocate_co): L2 table by L2 table, from the
    cluster holding the old end, the table first (a table shared with a snapshot
    is copied, as get_cluster_table does), then one contiguous host run for each
    run of entries without a host cluster, entered as normal COPIED entries
    (extended L2: the sub-cluster bitmap untouched, as QEMU's prealloc leaves it).
    No data is written where the file grows (it is extended, sparse); clusters
    reused inside the file are zeroed (see :func:`_zero_reused`), and the head of
    a new cluster holding an unaligned old end is copied (:func:`_copy_head`).
    Entries that already hold a host cluster are kept as they are (QEMU would
    copy a compressed or shared one holding the old end: not done here)."""
    meta, cb, cs = image.meta, image.cluster_bits, image.cluster_size
    step = 2 if image.extended_l2 else 1
    target = image.data_file if image.has_data_file else image.file
    file_size = target.size
    pos, end = old_size >> cb, -(-new_size // cs)
    last_host = 0
    while pos < end:
        l1i, idx = divmod(pos, image.l2_size)
        n = min(end - pos, image.l2_size - idx)
        l2off, words = _writable_table(image, l1i)
        raw = words[::step]                     # a view: entries, not bitmaps
        part = raw[idx:idx + n]
        need = ~(C.has_host_clusters(part, image.has_data_file)
                 | ((part & M.COMPRESSED) != 0))
        reused, inside = [], target.size
        for lo, hi in M.runs(need):
            if image.has_data_file:             # guest offset = data file offset
                first = pos + lo
            else:
                first = meta.refcounts.alloc(hi - lo)
                if first << cb < inside:
                    reused.append((first << cb, min((first + hi - lo) << cb, inside)))
            raw[idx + lo:idx + hi] = ((np.arange(first, first + hi - lo, dtype=np.uint64)
                                       << np.uint64(cb)) | M.COPIED)
        if need.any():
            M.sync_refcounts(image)             # counted and durable before the entries
            # the file holds every cluster an entry maps before the entry is written
            # (QEMU extends it only at the end: a crash between would leave entries
            # past the end of the file, which qemu-img check calls corruption)
            top = int(((part[need] & M.OFFSET_MASK) >> np.uint64(cb)).max() + 1) << cb
            if top > target.size:
                target.truncate(top)
                target.fsync()
            _zero_reused(target, reused)
            if pos == old_size >> cb and need[0]:
                _copy_head(image, target, old_size, int(part[0] & M.OFFSET_MASK))
            meta.write_l2(l2off, words[idx * step:(idx + n) * step], first=idx * step)
            image.file.fsync()
        last_host = int(raw[idx + n - 1] & M.OFFSET_MASK)
        pos += n
        M.report(progress, (pos << cb) - old_size, new_size - old_size)
    M.reload(image)
    # QEMU's copy-on-write of the last new cluster's tail: past an unaligned new end
    # it writes zeros up to the end of the cluster (extended L2: of the sub-cluster),
    # and the file ends there (its host blocks allocated: qemu-img map calls them data)
    if not last_host or last_host + cs <= file_size:
        return                                  # the last cluster is not a new one
    tail = last_host + new_size - ((end - 1) << cb)
    unit = cs // 32 if image.extended_l2 else cs
    stop = last_host + -(-(tail - last_host) // unit) * unit
    if target.size == last_host + cs and stop < target.size:
        target.truncate(stop)                   # mapped past the end by less than a cluster
    if tail < stop:
        target.pwrite(tail, bytes(stop - tail))
    target.fsync()


def _zero_reused(target, spans: list[tuple[int, int]]) -> None:
    """Clusters the allocator found free inside the file (freed metadata or data)
    are zeroed before an entry maps them, so the new area reads as zeros.  QEMU's
    preallocate_co does not: its new area can show what such clusters held (an old
    refcount table, say) -- a difference kept on purpose."""
    wrote = False
    for start, end in spans:
        for lo, hi in _data_segments(target.fd, start, end):    # holes read as zeros
            for pos in range(lo, hi, 1 << 20):
                target.pwrite(pos, bytes(min(1 << 20, hi - pos)))
                wrote = True
    if wrote:
        target.fsync()


def _data_segments(fd: int, start: int, end: int):
    """The parts of [start, end) of a file that are not holes (SEEK_DATA/SEEK_HOLE)."""
    pos = start
    while pos < end:
        try:
            lo = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:          # no data from pos to the end of the file
                return
            raise
        if lo >= end:
            return
        hi = min(end, os.lseek(fd, lo, os.SEEK_HOLE))
        yield lo, hi
        pos = hi


def _copy_head(image, target, old_size: int, host: int) -> None:
    """A new cluster holding the old end gets the guest bytes before it (what the
    backing file shows there, else zeros), as QEMU's copy-on-write of the cluster's
    head: without it, those bytes would read from the new, empty cluster.
    (Extended L2: the head's sub-clusters stay unallocated and read as before.)"""
    head = old_size & (image.cluster_size - 1)
    if not head or image.extended_l2:
        return
    target.pwrite(host, image.read(old_size - head, head))
    target.fsync()


def _writable_table(image, l1i: int) -> tuple[int, np.ndarray]:
    """The active L2 table of L1 entry ``l1i``, ours alone: (file offset, its words).
    A missing table is allocated zeroed, one shared with a snapshot copied (the old
    one's reference dropped once the L1 entry points at the copy), as l2_allocate."""
    meta, cb = image.meta, image.cluster_bits
    entry = int(image.l1_table.entries[l1i])
    l2off = entry & C.L1E_OFFSET_MASK
    if l2off and entry & C.QCOW_OFLAG_COPIED and meta.refcounts.refcount(l2off >> cb) == 1:
        return l2off, M.read_l2_words(image, l2off, l1i).copy()
    if l2off:
        words = M.read_l2_words(image, l2off, l1i).copy()
    else:
        words = np.zeros(image.l2_size * (2 if image.extended_l2 else 1), dtype=np.uint64)
    new = meta.allocate_table(words.astype(">u8").tobytes())
    meta.write_l1(np.array([new | C.QCOW_OFLAG_COPIED], dtype=np.uint64), first=l1i)
    if l2off:
        M.change_refcounts(image, np.array([l2off >> cb]), -1)
        M.sync_refcounts(image)
    return new, words


def _zero_over_backing(image, old_size: int, new_size: int) -> None:
    """A backing file longer than the old disk must not show through the new area
    (the block layer's BDRV_REQ_ZERO_WRITE on truncate): qcow2_co_truncate then
    zeroes the whole new area, past the backing file's end too (zero clusters,
    as qemu-img map shows them)."""
    backing = image.backing
    if backing is None or backing.virtual_size <= old_size:
        return
    image.write_zeroes(old_size, new_size - old_size)
    image.flush()


def _discard_tail(image, new_size: int) -> None:
    cs, l2_size = image.cluster_size, image.l2_size
    keep_clusters = -(-new_size // cs)
    keep_l1 = -(-keep_clusters // l2_size)
    l1 = image.l1_table.entries.copy()
    step = 2 if image.extended_l2 else 1
    # the table that straddles the new end loses its tail entries
    first = keep_clusters - (keep_l1 - 1) * l2_size if keep_l1 else 0
    if keep_l1 and first < l2_size and l1[keep_l1 - 1] & np.uint64(C.L1E_OFFSET_MASK):
        _cut_table(image, keep_l1 - 1, first, step)
    # whole tables past the end leave the L1 table, then lose their references
    gone = l1[keep_l1:].copy()
    if (gone & np.uint64(C.L1E_OFFSET_MASK)).any():
        image.meta.write_l1(np.zeros(len(gone), dtype=np.uint64), first=keep_l1)
        tables, data = M.l1_references(image, np.concatenate([np.zeros(keep_l1, np.uint64),
                                                              gone]))
        M.change_refcounts(image, tables, -1)
        M.change_refcounts(image, data, -1)
        M.sync_refcounts(image)
    M.reload(image)


def _cut_table(image, l1i: int, first: int, step: int) -> None:
    """Zero the entries from ``first`` on in the L2 table of L1 entry ``l1i``."""
    meta = image.meta
    cb = image.cluster_bits
    l1_entry = int(image.l1_table.entries[l1i])
    l2off = l1_entry & C.L1E_OFFSET_MASK
    words = M.read_l2_words(image, l2off, l1i)
    tail = words.copy()
    tail[:first * step] = 0
    dropped = M.l2_data_clusters(image, tail)
    if not tail.any():
        return
    words[first * step:] = 0
    if l1_entry & C.QCOW_OFLAG_COPIED and meta.refcounts.refcount(l2off >> cb) == 1:
        meta.write_l2(l2off, words[first * step:], first=first * step)
        image.file.fsync()
        M.change_refcounts(image, dropped, -1)
    else:
        # shared with a snapshot: the active disk gets its own copy (l2_allocate)
        new = meta.allocate_table(words.astype(">u8").tobytes())
        meta.write_l1(np.array([new | C.QCOW_OFLAG_COPIED], dtype=np.uint64), first=l1i)
        M.change_refcounts(image, dropped, -1)
        M.change_refcounts(image, np.array([l2off >> cb]), -1)
    M.sync_refcounts(image)


def _cut_file(image) -> None:
    """Cut the file after its last used cluster, as QEMU does after a shrink."""
    end = (M.last_used_cluster(image) + 1) * image.cluster_size
    if 0 < end < image.file.size:
        image.file.truncate(end)
        image.file.fsync()
