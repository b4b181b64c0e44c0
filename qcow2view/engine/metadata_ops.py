"""What the image operations share (snapshot apply/delete, resize, amend, commit):
the error handling of an operation, progress and cancel, refcounts changed for
many clusters at once, the references of an L1 table walked, the COPIED flags
brought back in line with the refcounts, the header cluster rewritten.

Every metadata write goes through the image's
:class:`~qcow2view.engine.metadata.MetadataStore` (``image.meta``), in QEMU's
order: a refcount is raised and flushed before anything points at a cluster,
and lowered only after the last pointer is gone, so a crash between two steps
leaks clusters at worst.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterable

import numpy as np

from . import clusters as C
from . import locking
from .errors import CancelledError, ImageInUseError, Qcow2Error
from .extensions import (EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FEATURE_NAME_TABLE,
                         pack_extension, pack_feature_name_table)
from .fileio import HostFile
from .header import V2_HEADER_LENGTH
from .image import open_image

Progress = Callable[[int, int], None] | None
COPIED = np.uint64(C.QCOW_OFLAG_COPIED)
NOT_COPIED = np.uint64(~C.QCOW_OFLAG_COPIED & 0xFFFFFFFFFFFFFFFF)
OFFSET_MASK = np.uint64(C.L2E_OFFSET_MASK)
COMPRESSED = np.uint64(C.QCOW_OFLAG_COMPRESSED)


def operation(fn):
    """Decorate an image operation: an I/O error becomes a :class:`Qcow2Error`
    (the image stays valid: before or after, plus leaked clusters at most), and
    an image passed first forgets whatever it held in memory, as after a crash."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            image = args[0] if args else None
            if getattr(image, "writable", False) and not image.closed:
                try:
                    image.meta.reload()
                except (Qcow2Error, OSError):
                    pass
            if isinstance(e, OSError):
                what = fn.__name__.replace("_", " ")
                raise Qcow2Error(f"{what} failed: {e.strerror or e}; the image stays "
                                 "consistent (at worst clusters leak)") from e
            raise
    return run


@contextlib.contextmanager
def opened_writable(path, **kwargs):
    """``open_image(path, writable=True)`` for one operation: closed (flushed) at
    the end; after a failure closed anyway, dropping what was not flushed as a
    crash would, so QEMU's locks never outlive the operation."""
    repair_if_dirty(path)
    image = open_image(path, writable=True, **kwargs)
    try:
        yield image
        image.close()
    except BaseException:
        try:
            image.close(discard=True)
        except (Qcow2Error, OSError):
            pass
        raise


def repair_if_dirty(path) -> None:
    """As qcow2_do_open opening an image for writing: a dirty image (lazy refcounts
    not written back by a writer that died) is repaired first, as ``qemu-img check
    -r all``, and the dirty bit cleared; every qemu-img operation does this before
    its work.  An image also marked corrupt is left alone (opening it refuses)."""
    try:
        with open_image(path, ignore_backing_errors=True) as image:
            dirty = image.header.dirty and not image.header.corrupt
    except (Qcow2Error, OSError):
        return                           # the real open says what is wrong
    if not dirty:
        return
    image = open_image(path, writable=True, repair=True, ignore_backing_errors=True)
    try:
        image.repair(fix_all=True)
        image.close()
    except BaseException:
        image.close(discard=True)
        raise


def refuse_if_in_use(path) -> None:
    """Refuse a file some process holds with QEMU's locks (a raw file written
    directly, an output about to be replaced)."""
    host_file = HostFile(path)
    try:
        held = locking.held_lock_bytes(host_file.fd)
    finally:
        host_file.close()
    if held:
        raise ImageInUseError(f"{path} is in use ({locking.describe(held) or 'locked'}); is a "
                              "VM or another qemu process using it?", path=os.fspath(path))


def report(progress: Progress, done: int, total: int) -> None:
    """Call a progress callback; it may raise :class:`CancelledError` to stop."""
    if progress is not None:
        progress(done, total)


def finish(progress: Progress, total: int) -> None:
    """The last progress report: the work is done, so a cancel now changes nothing."""
    try:
        report(progress, total, total)
    except CancelledError:
        pass


def check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise CancelledError("cancelled")


# -- refcounts -------------------------------------------------------------------------
def change_refcounts(image, clusters: np.ndarray, delta: int) -> None:
    """Add ``delta`` to the refcount of each cluster index in ``clusters`` (a
    cluster listed twice changes twice), in memory; :func:`sync_refcounts` writes."""
    image.meta.refcounts.change_many(clusters, delta)


def sync_refcounts(image) -> None:
    """Changed refcount blocks and table entries on disk, flushed."""
    image.meta.commit_refcounts()


def span_clusters(cb: int, spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """Cluster indices touched by byte spans (offset, length)."""
    parts = [np.arange(off >> cb, ((off + n - 1) >> cb) + 1, dtype=np.int64)
             for off, n in spans if n > 0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def free_spans(image, spans: Iterable[tuple[int, int]]) -> None:
    """Drop one reference from each span (nothing on disk may point there any more)."""
    change_refcounts(image, span_clusters(image.cluster_bits, spans), -1)
    sync_refcounts(image)


# -- tables ----------------------------------------------------------------------------
def read_l2_words(image, l2off: int, l1i: int) -> np.ndarray:
    return image.meta.l2_words(l2off, l1i)


def l2_data_clusters(image, words: np.ndarray) -> np.ndarray:
    """Host clusters an L2 table's entries reference, as qcow2_update_snapshot_refcount
    counts them: a normal or preallocated-zero cluster once, a compressed stream
    once for every host cluster it touches."""
    raw = words[::2] if image.extended_l2 else words
    comp = (raw & COMPRESSED) != 0
    plain = (raw[C.has_host_clusters(raw)] & OFFSET_MASK) >> np.uint64(image.cluster_bits)
    parts = [plain.astype(np.int64)]
    if comp.any():
        offsets, lengths = image.layout.decode_array(raw[comp])
        parts.append(span_clusters(image.cluster_bits,
                                   zip(offsets.tolist(), lengths.tolist())))
    return np.concatenate(parts)


def l1_references(image, l1: np.ndarray, progress: Progress = None,
                  lo: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(L2 table clusters, data clusters) reached through ``l1`` entries from ``lo``."""
    tables, data = [], []
    cb = image.cluster_bits
    entries = l1.tolist()
    for l1i in range(lo, len(entries)):
        l2off = entries[l1i] & C.L1E_OFFSET_MASK
        if l2off:
            tables.append(l2off >> cb)
            data.append(l2_data_clusters(image, read_l2_words(image, l2off, l1i)))
        report(progress, l1i + 1, len(entries))
    return (np.asarray(tables, dtype=np.int64),
            np.concatenate(data) if data else np.zeros(0, dtype=np.int64))


def change_l1_refcounts(image, l1: np.ndarray, delta: int, progress: Progress = None) -> None:
    """Every L2 table and data cluster ``l1`` reaches gets ``delta`` (in memory)."""
    tables, data = l1_references(image, l1, progress)
    change_refcounts(image, tables, delta)
    change_refcounts(image, data, delta)


def fix_copied_flags(image) -> None:
    """Set COPIED exactly where the refcount is 1 in the active L1 and L2 tables
    (qcow2_update_snapshot_refcount with addend 0), writing only what changed."""
    meta = image.meta
    refs = meta.refcounts
    cb = image.cluster_bits
    step = 2 if image.extended_l2 else 1
    l1 = image.l1_table.entries.copy()
    for l1i, e in enumerate(l1.tolist()):
        l2off = e & C.L1E_OFFSET_MASK
        if not l2off:
            continue
        words = read_l2_words(image, l2off, l1i)
        raw = words[::step]
        off = raw & OFFSET_MASK
        owned = C.has_host_clusters(raw)
        rc = np.zeros(raw.size, dtype=np.uint64)
        if owned.any():
            rc[owned] = refs.counts_of((off[owned] >> np.uint64(cb)).astype(np.int64))
        new = np.where(owned & (rc == 1), raw | COPIED, raw & NOT_COPIED)
        if not np.array_equal(new, raw):
            words[::step] = new
            meta.write_l2(l2off, words)
        want = l2off | (C.QCOW_OFLAG_COPIED if refs.refcount(l2off >> cb) == 1 else 0)
        l1[l1i] = (e & ~(C.L1E_OFFSET_MASK | C.QCOW_OFLAG_COPIED)) | want
    if not np.array_equal(l1, image.l1_table.entries):
        meta.write_l1(l1, sync=False)
    image.file.fsync()


def last_used_cluster(image) -> int:
    """Index of the last host cluster with a nonzero refcount (-1 if none)."""
    return image.meta.refcounts.last_used()


def clear_copied_in_tables(image, l1: np.ndarray) -> np.ndarray:
    """Clear COPIED in every L2 table ``l1`` reaches (their clusters are about to be
    shared); returns ``l1`` with COPIED cleared too.  Refcounts must already be raised."""
    step = 2 if image.extended_l2 else 1
    for l1i, e in enumerate(l1.tolist()):
        l2off = e & C.L1E_OFFSET_MASK
        if not l2off:
            continue
        words = read_l2_words(image, l2off, l1i)
        if (words[::step] & COPIED).any():
            words[::step] &= NOT_COPIED
            image.meta.write_l2(l2off, words)
    image.file.fsync()
    return l1 & NOT_COPIED


def reload(image) -> None:
    """Re-read the metadata an operation rewrote (header, refcount table, snapshot
    table, active L1) and drop every cache, the refcount blocks included."""
    image.meta.reload()


def guest_allocation(image) -> tuple[int, np.ndarray]:
    """(granule, allocated): for each guest cluster (sub-cluster with extended L2)
    of the active disk, whether this image itself decides what it reads (data,
    compressed or zero) rather than its backing file."""
    cs = image.cluster_size
    granule = cs // C.SUBCLUSTERS if image.extended_l2 else cs
    per_entry = C.SUBCLUSTERS if image.extended_l2 else 1
    total = -(-image.virtual_size // granule)
    out = np.zeros(image.l1_table.size * image.l2_size * per_entry, dtype=bool)
    span = image.l2_size * per_entry
    for l1i, e in enumerate(image.l1_table.entries.tolist()):
        l2off = e & C.L1E_OFFSET_MASK
        if not l2off:
            continue
        words = read_l2_words(image, l2off, l1i)
        if image.extended_l2:
            raw, bm = words[0::2], words[1::2]
            bits = (bm | (bm >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
            shifts = np.arange(C.SUBCLUSTERS, dtype=np.uint64)
            sub = ((bits[:, None] >> shifts[None, :]) & np.uint64(1)) != 0
            sub[(raw & COMPRESSED) != 0] = True
            out[l1i * span:(l1i + 1) * span] = sub.reshape(-1)
        else:
            types = C.decode_l2_types(words, None, image.has_data_file)
            out[l1i * span:(l1i + 1) * span] = types != C.ClusterType.UNALLOCATED
    if out.size < total:
        out = np.concatenate([out, np.zeros(total - out.size, dtype=bool)])
    return granule, out[:total]


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs where ``flags`` is true."""
    idx = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
    return [(int(a), int(b)) for a, b in zip(idx[::2], idx[1::2])]


def rewrite_header_cluster(image, *, backing_file: str | None = ...,
                           backing_fmt: str | None = ..., data_file: str | None = None,
                           **fields: int) -> None:
    """Write the header cluster anew in one write, as qcow2_update_header: header
    fields (``version=2`` ...), the extensions (the backing format one replaced, the
    data file name one too when ``data_file`` is given; the feature name table only
    for version 3) and the backing file name."""
    header = image.header.replace(**fields)
    name = image.backing_filename if backing_file is ... else (backing_file or None)
    fmt = image.backing_format if backing_fmt is ... else backing_fmt
    if not name:
        fmt = None
    exts = b""
    if fmt:
        exts += pack_extension(EXT_BACKING_FORMAT, fmt.encode())
    for ext in image.extensions:
        if ext.type in (EXT_BACKING_FORMAT, EXT_FEATURE_NAME_TABLE):
            continue
        if ext.type == EXT_DATA_FILE and data_file:
            exts += pack_extension(ext.type, os.fsencode(data_file))
            continue
        exts += pack_extension(ext.type, ext.data)
    if header.version >= 3:
        exts += pack_extension(EXT_FEATURE_NAME_TABLE, pack_feature_name_table())
    exts += bytes(8)
    hlen = header.header_length if header.version >= 3 else V2_HEADER_LENGTH
    bname = os.fsencode(name) if name else b""
    header = header.replace(header_length=hlen,
                            backing_file_offset=hlen + len(exts) if bname else 0,
                            backing_file_size=len(bname))
    image.meta.write_header_cluster(header.pack() + exts + bname)
