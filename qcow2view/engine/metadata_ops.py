"""Metadata primitives the image operations share (snapshot apply/delete, resize,
amend): header fields written by name, refcounts changed for many clusters at
once, tables written to new clusters, the references of an L1 table walked and
the COPIED flags brought back in line with the refcounts.

All of them are clients of :class:`~qcow2view.engine.allocator.RefcountAllocator`
(the writer's allocator) and keep QEMU's order: a refcount is raised and flushed
before anything points at a cluster, and lowered only after the last pointer is
gone, so a crash between two steps leaks clusters at worst.  Kept in one module
so that they can move into the single metadata store of issue 13 as a whole.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterable

import numpy as np

from . import clusters as C
from .errors import CancelledError, CorruptImageError, Qcow2Error, RequestError
from .header import FIELD_BY_NAME
from .snapshot_create import _commit_refcounts

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
            writer = getattr(image, "_writer", None)
            if writer is not None:
                try:
                    writer.alloc.forget()
                    image.reload_metadata()
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
    from .image import open_image
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


def refuse_if_in_use(path) -> None:
    """Refuse a file some process holds with QEMU's locks (a raw file written
    directly, an output about to be replaced)."""
    from . import locking
    from .errors import ImageInUseError
    from .fileio import HostFile
    f = HostFile(path)
    try:
        held = locking.held_lock_bytes(f.fd)
    finally:
        f.close()
    if held:
        raise ImageInUseError(f"{path} is in use ({locking.describe(held) or 'locked'}); is a "
                              "VM or another qemu process using it?", path=os.fspath(path))


def sync_refcounts(image, alloc) -> None:
    """Changed refcount blocks and table entries on disk, flushed."""
    _commit_refcounts(image, alloc)


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


# -- header ----------------------------------------------------------------------------
def write_header_fields(image, sync: bool = True, **values: int) -> None:
    """Set header fields by their spec names (``refcount_order=6``,
    ``l1_size=..., l1_table_offset=...``).  The whole fixed header is written in
    one write inside the first sector, so switching to new tables (several
    fields at once) is atomic, as qcow2_update_header's single write."""
    for name in values:
        if name not in FIELD_BY_NAME:
            raise KeyError(f"no header field {name!r}")
    new = image.header.replace(**values)
    image.file.pwrite(0, new.pack())
    if sync:
        image.file.fsync()
    image.header = new


# -- refcounts -------------------------------------------------------------------------
def change_refcounts(alloc, clusters: np.ndarray, delta: int) -> None:
    """Add ``delta`` to the refcount of each cluster index in ``clusters`` (a
    cluster listed twice changes twice), in memory; :func:`sync_refcounts` writes."""
    clusters = np.asarray(clusters, dtype=np.int64)
    if clusters.size == 0 or delta == 0:
        return
    uniq, counts = np.unique(clusters, return_counts=True)
    per = alloc.per
    rtis = uniq // per
    bounds = np.flatnonzero(np.diff(rtis)) + 1
    for part_c, part_n in zip(np.split(uniq, bounds), np.split(counts, bounds)):
        rti = int(part_c[0] // per)
        block = alloc.block(rti)
        if block is None:
            raise CorruptImageError(f"cluster {int(part_c[0]):#x} has no refcount block",
                                    structure="refcount table", offset=int(part_c[0]))
        idx = part_c - rti * per
        new = block[idx].astype(np.int64) + part_n * delta
        bad = np.flatnonzero((new < 0) | (new > alloc.max_rc))
        if bad.size:
            c = int(part_c[bad[0]])
            raise CorruptImageError(
                f"refcount of cluster at {c << alloc.cb:#x} would become {int(new[bad[0]])}",
                structure="refcount block", offset=int(alloc.reftable[rti]) & C.REFT_OFFSET_MASK)
        block[idx] = new.astype(np.uint64)
        alloc.dirty_blocks.add(rti)
        if delta < 0:
            zero = part_c[new == 0]
            if zero.size and int(zero[0]) < alloc.free_hint:
                alloc.free_hint = int(zero[0])


def refcounts_of(alloc, clusters: np.ndarray) -> np.ndarray:
    """Refcounts (as the allocator sees them now) of the given cluster indices."""
    clusters = np.asarray(clusters, dtype=np.int64)
    out = np.zeros(clusters.size, dtype=np.uint64)
    per = alloc.per
    rtis = clusters // per
    for rti in np.unique(rtis).tolist():
        block = alloc.block(rti)
        if block is not None:
            sel = rtis == rti
            out[sel] = block[clusters[sel] - rti * per]
    return out


def span_clusters(cb: int, spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """Cluster indices touched by byte spans (offset, length)."""
    parts = [np.arange(off >> cb, ((off + n - 1) >> cb) + 1, dtype=np.int64)
             for off, n in spans if n > 0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def free_spans(image, alloc, spans: Iterable[tuple[int, int]]) -> None:
    """Drop one reference from each span (nothing on disk may point there any more)."""
    change_refcounts(alloc, span_clusters(image.cluster_bits, spans), -1)
    sync_refcounts(image, alloc)


# -- tables ----------------------------------------------------------------------------
def write_new_table(image, alloc, data: bytes) -> int:
    """Write ``data`` (a table) into newly allocated clusters, refcounts first;
    returns its file offset.  Nothing points at it yet."""
    cs = image.cluster_size
    n = max(1, -(-len(data) // cs))
    off = alloc.alloc(n) * cs
    sync_refcounts(image, alloc)
    image.file.pwrite(off, bytes(data) + bytes(n * cs - len(data)))
    image.file.fsync()
    return off


def read_l2_words(image, l2off: int, l1i: int) -> np.ndarray:
    return np.frombuffer(image.read_l2_bytes(l2off, l1i), dtype=">u8").astype(np.uint64)


def l2_data_clusters(image, words: np.ndarray) -> np.ndarray:
    """Host clusters an L2 table's entries reference, as qcow2_update_snapshot_refcount
    counts them: a normal or preallocated-zero cluster once, a compressed stream
    once for every host cluster it touches."""
    raw = words[::2] if image.extended_l2 else words
    comp = (raw & COMPRESSED) != 0
    off = raw & OFFSET_MASK
    plain = off[(~comp) & (off != 0)] >> np.uint64(image.cluster_bits)
    parts = [plain.astype(np.int64)]
    if comp.any():
        spans = [image.layout.decode(int(e)) for e in raw[comp].tolist()]
        parts.append(span_clusters(image.cluster_bits, spans))
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


def change_l1_refcounts(image, alloc, l1: np.ndarray, delta: int,
                        progress: Progress = None) -> None:
    """Every L2 table and data cluster ``l1`` reaches gets ``delta`` (in memory)."""
    tables, data = l1_references(image, l1, progress)
    change_refcounts(alloc, tables, delta)
    change_refcounts(alloc, data, delta)


def fix_copied_flags(image, alloc) -> None:
    """Set COPIED exactly where the refcount is 1 in the active L1 and L2 tables
    (qcow2_update_snapshot_refcount with addend 0), writing only what changed."""
    f = image.file
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
        owned = ((raw & COMPRESSED) == 0) & (off != 0)
        rc = np.zeros(raw.size, dtype=np.uint64)
        if owned.any():
            rc[owned] = refcounts_of(alloc, (off[owned] >> np.uint64(cb)).astype(np.int64))
        new = np.where(owned & (rc == 1), raw | COPIED, raw & NOT_COPIED)
        if not np.array_equal(new, raw):
            words[::step] = new
            f.pwrite(l2off, words.astype(">u8").tobytes())
        want = l2off | (C.QCOW_OFLAG_COPIED if alloc.refcount(l2off >> cb) == 1 else 0)
        l1[l1i] = (e & ~(C.L1E_OFFSET_MASK | C.QCOW_OFLAG_COPIED)) | want
    if not np.array_equal(l1, image.l1_table.entries):
        f.pwrite(image.l1_table.offset, l1.astype(">u8").tobytes())
    f.fsync()


def last_used_cluster(image, alloc) -> int:
    """Index of the last host cluster with a nonzero refcount (-1 if none)."""
    for rti in range(len(alloc.reftable) - 1, -1, -1):
        block = alloc.block(rti)
        if block is None:
            continue
        used = np.flatnonzero(block)
        if used.size:
            return rti * alloc.per + int(used[-1])
    return -1


def clear_copied_in_tables(image, l1: np.ndarray) -> np.ndarray:
    """Clear COPIED in every L2 table ``l1`` reaches (their clusters are about to be
    shared); returns ``l1`` with COPIED cleared too.  Refcounts must already be raised."""
    f = image.file
    step = 2 if image.extended_l2 else 1
    for l1i, e in enumerate(l1.tolist()):
        l2off = e & C.L1E_OFFSET_MASK
        if not l2off:
            continue
        words = read_l2_words(image, l2off, l1i)
        if (words[::step] & COPIED).any():
            words[::step] &= NOT_COPIED
            f.pwrite(l2off, words.astype(">u8").tobytes())
    f.fsync()
    return l1 & NOT_COPIED


def grow_l1_table(image, alloc, min_size: int) -> None:
    """Move the active L1 table to new clusters with ``min_size`` entries
    (qcow2_grow_l1_table, exact size): the copy is written and flushed, the header
    switched in one write, and the old table freed."""
    old = image.l1_table
    if min_size <= old.size:
        return
    table = np.zeros(min_size, dtype=np.uint64)
    table[:old.size] = old.entries
    nbytes = -(-min_size * 8 // 512) * 512
    data = table.astype(">u8").tobytes() + bytes(nbytes - min_size * 8)
    off = write_new_table(image, alloc, data)
    write_header_fields(image, l1_size=min_size, l1_table_offset=off)
    if old.size:
        free_spans(image, alloc, [(old.offset, old.size * 8)])
    reload(image)


def reload(image) -> None:
    """Re-read the metadata an operation rewrote (header, refcount table, snapshot
    table, active L1) and drop every cache, the writer's allocator included."""
    image.reload_metadata()
    image.virtual_size = image.header.size
    image.refcount_block_entries = 1 << (image.cluster_bits + 3 - image.header.refcount_order)


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
                           backing_fmt: str | None = ..., **fields: int) -> None:
    """Write the header cluster anew in one write, as qcow2_update_header: header
    fields (``version=2`` ...), the extensions (the backing format one replaced;
    the feature name table only for version 3) and the backing file name."""
    from .extensions import EXT_BACKING_FORMAT, EXT_FEATURE_NAME_TABLE, pack_extension
    from .create import _feature_table
    h = image.header.replace(**fields)
    name = image.backing_filename if backing_file is ... else (backing_file or None)
    fmt = image.backing_format if backing_fmt is ... else backing_fmt
    if not name:
        fmt = None
    exts = b""
    if fmt:
        exts += pack_extension(EXT_BACKING_FORMAT, fmt.encode())
    for e in image.extensions:
        if e.type in (EXT_BACKING_FORMAT, EXT_FEATURE_NAME_TABLE):
            continue
        exts += pack_extension(e.type, e.data)
    if h.version >= 3:
        exts += pack_extension(EXT_FEATURE_NAME_TABLE, _feature_table())
    exts += bytes(8)
    hlen = h.header_length if h.version >= 3 else 72
    bname = os.fsencode(name) if name else b""
    h = h.replace(header_length=hlen, backing_file_offset=hlen + len(exts) if bname else 0,
                  backing_file_size=len(bname))
    head = h.pack() + exts + bname
    if len(head) > image.cluster_size:
        raise RequestError("header, extensions and backing file name do not fit in the "
                           "header cluster", structure="header", offset=0)
    image.file.pwrite(0, head + bytes(image.cluster_size - len(head)))
    image.file.fsync()
