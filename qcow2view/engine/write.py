"""Writing guest data the way QEMU's qcow2 driver does (qcow2-cluster.c, qcow2.c).

One request is planned in memory (which clusters are written in place, which
need a new host cluster, which L2 tables must be created or copied).  Its
guest data is written at once -- into clusters that nothing on disk points to
yet, or in place into clusters the image owns -- while its metadata stays
pending in the image's metadata store (tables pinned there, so every reader
sees them) until :meth:`Writer.commit`, run by ``flush()``/``close()`` or once
enough piles up.  This is QEMU's write-back metadata cache.  A commit goes in
QEMU's order (:meth:`MetadataStore.commit_tables` for stages 1 and 2), one
flush barrier per stage:

1. new refcount blocks (flush), then raised refcounts, reftable entries and
   new L2 tables (flush, which also makes the data durable): nothing points
   at a cluster before its refcount and contents are on disk;
2. L2 entries in existing tables, then L1 entries;
3. only then (after a flush) are the refcounts of clusters that lost their
   last reference lowered; until then they are not reused.

A crash at any point leaks clusters at worst; writes since the last flush may
be lost (each guest range then holds its old or its new bytes).  Refcounts are
always kept exact, also on images with lazy_refcounts: the dirty bit is never
set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import clusters as C
from . import locking
from .allocator import RefcountAllocator
from .backing import RawImage
from .clusters import ClusterType
from .errors import (CorruptImageError, EncryptedImageError, ImageInUseError, Qcow2Error,
                     RequestError, UnsupportedFeatureError)
from .header import AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, FIELD_BY_NAME, INCOMPAT_KNOWN
from .metadata import MetadataStore

SUB = C.SUBCLUSTERS
ALL_ALLOC = C.L2_BITMAP_ALL_ALLOC
ALL_ZERO = C.L2_BITMAP_ALL_ZERO
ZERO_CHUNK = 8 << 20
BOUNCE = 16 << 20          # qemu's MAX_BOUNCE_BUFFER: a refused zero write falls back this much
# pending metadata is committed at flush, or once this much piles up
COMMIT_BYTES = 1 << 30
COMMIT_TABLE_ENTRIES = 1 << 20      # pending L2 entries held as Python lists (~40 MB)
COMMIT_FREES = 4096
# what a failed commit or flush means for the writes before it (they are not lost)
_KEPT = ("the writes since the last successful flush are not on disk yet (they are kept: "
         "flush again once the cause is fixed)")
FEATURES_AT = FIELD_BY_NAME["incompatible_features"].offset
CRYPT_AT = FIELD_BY_NAME["crypt_method"].offset


def _alloc_range(first: int, end: int) -> int:
    """Bitmap bits of sub-clusters a..b-1 (allocation half)."""
    return ((1 << (end - first)) - 1) << first


@dataclass
class _Table:
    """An L2 table being changed by one request."""

    l1_index: int
    offset: int                      # where the table lives (new or existing)
    raw: list[int]
    bitmap: list[int] | None
    new: bool                        # freshly allocated (written whole)
    old_offset: int = 0              # table it replaces (COW of a shared table)
    changed: set[int] = field(default_factory=set)


@dataclass
class _NewCluster:
    table: _Table
    l2_index: int
    guest: int                        # guest offset of the cluster
    lo: int                           # written range in the cluster
    hi: int
    pieces: list[tuple[int, bytes]]   # (offset in cluster, data) of the request
    bitmap: int | None
    host: int = -1


@dataclass
class _Undo:
    """What one request changed in memory, to put back if the request fails.

    Only the failed request is undone: metadata of earlier requests that
    returned stays pending until a commit gets it onto the disk."""

    entries: list[tuple[_Table, int, int, int | None, bool]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)          # clusters in _pending_drops
    allocated: list[tuple[int, int]] = field(default_factory=list)   # (host offset, bytes)


class Writer:
    """The write side of an :class:`~qcow2view.engine.image.Image` opened writable."""

    def __init__(self, image) -> None:
        self.image = image
        self.meta: MetadataStore = image.meta
        self._check_writable()
        self.locked = False
        self._locked_files = []
        try:
            self._lock(image.file, "image")
            if image.data_file is not None:
                self._lock(image.data_file, "external data file")
            backing = image.backing
            while backing is not None:        # the chain must not change under us
                self._lock(backing.file, "backing file", locking.BACKING_PERMS,
                           locking.BACKING_UNSHARED)
                backing = getattr(backing, "backing", None)
        except BaseException:
            self._unlock()
            raise
        self.prepared = False
        self.unflushed = False
        self.pending: dict[int, _Table] = {}        # by L1 index: uncommitted tables
        self.pending_frees: list[tuple[int, int]] = []
        self.pending_data = 0
        self._pending_drops: dict[int, int] = {}    # cluster -> pending decrements
        self._undo = _Undo()
        # why the last commit failed; pending metadata stays until one succeeds
        self.commit_error: Qcow2Error | None = None
        # where the next compressed stream goes (qemu's free_byte_offset) and the
        # refcount its cluster had then: (host byte offset, refcount) or None
        self.compressed_tail: tuple[int, int] | None = None

    @property
    def alloc(self) -> RefcountAllocator:
        """The store's refcounts and allocator."""
        return self.meta.refcounts

    # -- opening ---------------------------------------------------------------------
    def _check_writable(self) -> None:
        im, header = self.image, self.image.header
        if im.snapshot is not None:
            raise RequestError("a snapshot view is read-only")
        if header.corrupt and not im.for_repair:
            raise CorruptImageError("the image is marked corrupt; repair it (qemu-img check "
                                    "-r all) before writing", structure="incompatible_features",
                                    offset=FEATURES_AT)
        if header.incompatible_features & ~INCOMPAT_KNOWN:
            raise UnsupportedFeatureError("unknown incompatible features",
                                          structure="incompatible_features", offset=FEATURES_AT)
        if im.encrypted:
            raise EncryptedImageError("encrypted images cannot be written",
                                      structure="crypt_method", offset=CRYPT_AT)
        if header.dirty and not im.for_repair:
            raise Qcow2Error("the dirty bit is set (lazy refcounts were not written back); "
                             "repair the refcounts (qemu-img check -r all) before writing",
                             structure="incompatible_features", offset=FEATURES_AT)
        if im.data_file is None and im.has_data_file:
            raise Qcow2Error("the external data file is missing")

    def _lock(self, hf, what: str, perms=locking.WRITER_PERMS,
              unshared=locking.WRITER_UNSHARED) -> None:
        fd = hf.fd
        if not locking.take_writer_locks(fd, perms, unshared):
            return
        self._locked_files.append(hf)
        conflicts = locking.writer_conflicts(fd, perms, unshared)
        if conflicts:
            held = locking.held_lock_bytes(fd)
            raise ImageInUseError(
                f"{what} {hf.path} is in use: {conflicts[0]} "
                f"({locking.describe(held) or 'locked'}); is a VM or another qemu process "
                "using it?", path=self.image.path)
        self.locked = True

    def _unlock(self) -> None:
        for hf in self._locked_files:
            if hf.fd >= 0:
                locking.release_locks(hf.fd)
        self._locked_files = []

    def close(self, *, discard: bool = False) -> None:
        """Flush, then drop QEMU's locks.  A failed flush raises and keeps both the
        pending metadata and the locks, so a later close can still succeed;
        ``discard`` gives up what was not flushed (as a crash would)."""
        if not discard:
            self.flush()
        self._unlock()

    # -- first write: autoclear bits ---------------------------------------------------
    def _prepare(self) -> None:
        try:
            self._prepare_inner()
        except OSError as e:
            raise Qcow2Error(f"cannot update the header: {e.strerror or e}",
                             path=self.image.path) from e

    def _prepare_inner(self) -> None:
        """Before the first write: clear unknown autoclear bits (the spec asks it of
        writers that do not know them) and mark enabled ("auto") persistent bitmaps
        in-use, as QEMU does while it has them open: we do not track writes in
        them, so they become inconsistent, but stay accounted for (no leaks)."""
        if self.prepared:
            return
        meta = self.meta
        if meta.header.version >= 3:
            keep = meta.header.autoclear_features & (AUTOCLEAR_DATA_FILE_RAW
                                                     | AUTOCLEAR_BITMAPS)
            if meta.header.autoclear_features != keep:
                meta.write_header(autoclear_features=keep)
            if keep & AUTOCLEAR_BITMAPS and meta.bitmaps:
                meta.mark_bitmaps_in_use()
        self.prepared = True

    # -- public entry points -----------------------------------------------------------
    def write(self, offset: int, data) -> None:
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.image.check_request(offset, len(data))
        if not data:
            return
        self._prepare()
        self._run(offset, len(data), data, zero=False)

    def write_zeroes(self, offset: int, length: int) -> None:
        im = self.image
        im.check_request(offset, length)
        if length == 0:
            return
        self._prepare()
        if im.header.version < 3 and (im.backing is not None or im.backing_chain):
            # v2 has no zero flag: with a backing file qemu writes zeros
            pos, end = offset, offset + length
            while pos < end:
                size = min(ZERO_CHUNK, end - pos)
                self._run(pos, size, bytes(size), zero=False)
                pos += size
            return
        if im.header.data_file_raw:
            self._zero_data_file(offset, length)
        unit = im.cluster_size // SUB if im.extended_l2 else im.cluster_size
        end = offset + length
        first_unit = -(-offset // unit) * unit
        last_unit = end // unit * unit
        vsize = im.virtual_size
        if last_unit < first_unit:                                    # inside a single unit
            self._zero_partial(offset, end, unit, vsize)
            return
        # head, middle, tail in that order, as qemu's bdrv_co_do_pwrite_zeroes: a
        # piece written as data changes what the next piece finds
        if offset < first_unit:
            self._zero_partial(offset, first_unit, unit, vsize)
        tail = end > last_unit and end != vsize              # else: the disk's last, short unit
        if end > last_unit and not tail:
            last_unit = end
        self._zero_run(first_unit, last_unit - first_unit)
        if tail:
            self._zero_partial(last_unit, end, unit, vsize)

    def _zero_run(self, pos: int, size: int) -> None:
        """Zero (sub-)cluster-aligned pos..pos+size in the metadata.  Where that would
        cut through a compressed cluster (extended L2), qemu's zeroing is refused and
        it writes zeros as data instead, BOUNCE bytes at a time, then tries again."""
        end = pos + size
        while pos < end and self._partial_compressed(pos, end - pos):
            chunk = min(BOUNCE, end - pos)
            for at in range(pos, pos + chunk, ZERO_CHUNK):
                n = min(ZERO_CHUNK, pos + chunk - at)
                self._run(at, n, bytes(n), zero=False)
            pos += chunk
        cs = self.image.cluster_size
        while pos < end:      # 1 GiB of entries at a time, cut at cluster boundaries
            size = min(end - pos, (1 << 30) - pos % cs)
            self._run(pos, size, None, zero=True)
            pos += size

    def _partial_compressed(self, pos: int, size: int) -> bool:
        """Does a zero-write cover part of a compressed cluster (extended L2)?"""
        im = self.image
        if not im.extended_l2:
            return False
        cs = im.cluster_size
        probes = []
        if pos % cs or size < cs:
            probes.append(pos)
        if (pos + size) % cs:
            probes.append(pos + size - 1)
        for probe in probes:
            mapping = im.guest_mapping(probe)
            if mapping.depth == 0 and mapping.type == ClusterType.COMPRESSED:
                return True
        return False

    def _zero_partial(self, lo: int, hi: int, unit: int, vsize: int) -> None:
        """An unaligned piece (qcow2_co_pwrite_zeroes): if the rest of its (sub-)cluster
        already reads as zero by allocation status (qemu's is_zero over the whole
        head and tail, down the chain) and the top layer has no data there, zero the
        unit in the metadata; otherwise write zeros."""
        ua = lo // unit * unit
        ub = min(ua + unit, vsize)
        top = self.image.guest_mapping(ua)
        top_ok = top.depth != 0 or top.type in (ClusterType.ZERO_PLAIN, ClusterType.ZERO_ALLOC)
        if top_ok and self._reads_zero(ua, lo) and self._reads_zero(hi, ub):
            self._zero_run(ua, ub - ua)
        else:
            self._run(lo, hi - lo, bytes(hi - lo), zero=False)

    def _reads_zero(self, lo: int, hi: int) -> bool:
        """Does every byte of lo..hi read as zero by its allocation status alone (a
        zero flag, unallocated down to a qcow2 bottom, or past a short backing file)?"""
        im = self.image
        step = _smallest_unit(im)
        pos = lo
        while pos < hi:
            nxt = min((pos // step + 1) * step, hi)
            mapping = im.guest_mapping(pos)
            if mapping.depth != -1 and mapping.type not in (ClusterType.ZERO_PLAIN,
                                                            ClusterType.ZERO_ALLOC):
                layer = im
                for _ in range(max(mapping.depth, 0)):
                    layer = layer.backing
                if not (isinstance(layer, RawImage) and layer.is_hole(pos, nxt)):
                    return False
            pos = nxt
        return True

    def _zero_data_file(self, offset: int, length: int) -> None:
        df = self.image.data_file
        pos, end = offset, offset + length
        try:
            while pos < end:
                size = min(ZERO_CHUNK, end - pos)
                df.pwrite(pos, bytes(size))
                pos += size
        except OSError as e:
            raise Qcow2Error(f"zeroing {length} bytes at guest offset {offset:#x} failed: "
                             f"{e.strerror or e}", path=df.path) from e

    def flush(self) -> None:
        if not self.unflushed:
            return
        im = self.image
        self.commit()
        try:
            self.alloc.write_dirty()
            if im.data_file is not None:
                im.data_file.fsync()
            im.file.fsync()
        except OSError as e:
            self.alloc.mark_all_dirty()
            raise Qcow2Error(f"flush failed: {e.strerror or e}; {_KEPT}", path=im.path) from e
        self.unflushed = False

    # -- planning ----------------------------------------------------------------------
    def _table(self, l1i: int, tables: dict[int, _Table]) -> _Table:
        table = tables.get(l1i) or self.pending.get(l1i)
        if table is not None:
            tables[l1i] = table
            return table
        im, meta = self.image, self.meta
        if l1i >= len(meta.l1):
            raise CorruptImageError(f"L1 index {l1i} lies past the L1 table",
                                    structure="L1 table", offset=meta.l1_table.offset)
        l1e = meta.l1[l1i]
        l2off = l1e & C.L1E_OFFSET_MASK
        if l2off and l1e & C.QCOW_OFLAG_COPIED:
            raw, bm = meta.l2(l2off, l1i)
            table = _Table(l1i, l2off, list(raw), None if bm is None else list(bm), False)
        else:
            if l2off:   # shared with a snapshot: copy before changing (l2_allocate)
                raw, bm = meta.l2(l2off, l1i)
                raw, bm = list(raw), None if bm is None else list(bm)
            else:
                raw = [0] * im.l2_size
                bm = [0] * im.l2_size if im.extended_l2 else None
            host = self.alloc.alloc(1) << im.cluster_bits
            self._undo.allocated.append((host, im.cluster_size))
            table = _Table(l1i, host, raw, bm, True, l2off)
        tables[l1i] = table
        return table

    def _run(self, offset: int, length: int, data, *, zero: bool) -> None:
        im = self.image
        self._undo = _Undo()
        try:
            try:
                self._run_inner(offset, length, data, zero)
            except OSError as e:
                raise Qcow2Error(f"write of {length} bytes at guest offset {offset:#x} "
                                 f"failed: {e.strerror or e}; that range holds its old or "
                                 "its new bytes, earlier writes are kept", path=im.path) from e
        except BaseException:
            self._rollback()
            raise
        self._undo = _Undo()
        if (self.pending_data >= COMMIT_BYTES
                or len(self.pending) * im.l2_size >= COMMIT_TABLE_ENTRIES
                or len(self.pending_frees) >= COMMIT_FREES):
            self.commit()

    def _set(self, table: _Table, l2i: int, raw: int | None = None,
             bitmap: int | None = None) -> None:
        """Change an L2 entry of a table being written, journalled for _rollback."""
        self._undo.entries.append((table, l2i, table.raw[l2i],
                                   None if table.bitmap is None else table.bitmap[l2i],
                                   l2i in table.changed))
        if raw is not None:
            table.raw[l2i] = raw
        if bitmap is not None:
            table.bitmap[l2i] = bitmap
        table.changed.add(l2i)

    def _rollback(self) -> None:
        """Undo the failed request's changes to memory; nothing on disk points at
        what it wrote, so its clusters are free again."""
        undo, self._undo = self._undo, _Undo()
        for table, l2i, raw, bitmap, was_changed in reversed(undo.entries):
            table.raw[l2i] = raw
            if bitmap is not None:
                table.bitmap[l2i] = bitmap
            if not was_changed:
                table.changed.discard(l2i)
        for cluster in undo.dropped:
            left = self._pending_drops[cluster] - 1
            if left:
                self._pending_drops[cluster] = left
            else:
                del self._pending_drops[cluster]
        for host, size in undo.allocated:
            self.alloc.change(host, size, -1)
        self.meta.changed()

    def _run_inner(self, offset: int, length: int, data, zero: bool) -> None:
        im = self.image
        cs, cb = im.cluster_size, im.cluster_bits
        tables: dict[int, _Table] = {}
        news: list[_NewCluster] = []
        inplace: list[tuple[object, int, object]] = []   # (file, host offset, bytes)
        frees: list[tuple[int, int]] = []
        has_df = im.has_data_file
        src = im.data_file if has_df else im.file
        end = offset + length
        pos = offset
        placed = 0                          # news[:placed] have their host clusters
        l1_now = -1
        while pos < end:
            cidx = pos >> cb
            cstart = cidx << cb
            lo = pos - cstart
            hi = min(cs, end - cstart)
            if cidx >> im.l2_bits != l1_now:   # qemu: a table, then its data, then the next
                placed = self._place(news, placed)
                l1_now = cidx >> im.l2_bits
            table = self._table(l1_now, tables)
            l2i = cidx & (im.l2_size - 1)
            if zero:
                self._plan_zero(table, l2i, lo, hi, frees)
            else:
                piece = data[pos - offset:pos - offset + hi - lo]
                count = len(news)
                self._plan_write(table, l2i, cstart, lo, hi, piece, news, inplace, frees, src)
                if len(news) == count:        # written in place: a run of new ones ends
                    placed = self._place(news, placed)
            pos = cstart + hi
        self._place(news, placed)
        for new in news:
            table = new.table
            entry = new.host | C.QCOW_OFLAG_COPIED
            self._set(table, new.l2_index, entry, new.bitmap)

        self._apply(tables, news, inplace, frees, src)

    def _place(self, news: list[_NewCluster], placed: int) -> int:
        """Host clusters for news[placed:], one contiguous run: qemu's handle_alloc
        allocates each run of clusters that need new ones, in request order."""
        run = news[placed:]
        if not run:
            return placed
        im = self.image
        if im.has_data_file:
            for new in run:          # qemu: data file host offset == guest offset
                new.host = new.guest
        else:
            first = self.alloc.alloc(len(run)) << im.cluster_bits
            self._undo.allocated.append((first, len(run) * im.cluster_size))
            for index, new in enumerate(run):
                new.host = first + index * im.cluster_size
        return len(news)

    def _old_bytes(self, guest: int, lo: int, hi: int) -> bytes:
        """Guest bytes of the cluster at ``guest`` in lo..hi, as they read now."""
        im = self.image
        start = guest + lo
        end = min(guest + hi, im.virtual_size)
        out = im.read(start, end - start) if end > start else b""
        return out + bytes(hi - lo - len(out))

    def _plan_write(self, table: _Table, l2i: int, guest: int, lo: int, hi: int, piece,
                    news, inplace, frees, src) -> None:
        im = self.image
        cs = im.cluster_size
        entry = table.raw[l2i]
        has_df = im.has_data_file
        if table.bitmap is None:
            typ = C.cluster_type(entry, has_df)
            host = entry & C.L2E_OFFSET_MASK
            if typ == ClusterType.NORMAL and entry & C.QCOW_OFLAG_COPIED \
                    and self._owned(host, table, l2i):
                inplace.append((src, host + lo, piece))
                return
            if typ == ClusterType.ZERO_ALLOC and entry & C.QCOW_OFLAG_COPIED \
                    and self._owned(host, table, l2i):
                # preallocated zero cluster we own: reuse it (keep_old_clusters)
                buf = bytearray(cs)
                buf[lo:hi] = piece
                inplace.append((src, host, bytes(buf)))
                self._set(table, l2i, host | C.QCOW_OFLAG_COPIED)
                return
            pieces = [(lo, piece)]
            if lo > 0 or hi < cs:
                old = self._old_bytes(guest, 0, cs) if typ not in (
                    ClusterType.ZERO_PLAIN, ClusterType.ZERO_ALLOC) else bytes(cs)
                pieces = [(0, old[:lo]), (lo, piece), (hi, old[hi:])]
            news.append(_NewCluster(table, l2i, guest, 0, cs, pieces, None))
            self._free_entry(entry, typ, frees)
            return
        # extended L2
        bm = table.bitmap[l2i]
        scs = cs // SUB
        sc0, sc1 = lo // scs, (hi - 1) // scs + 1
        compressed = bool(entry & C.QCOW_OFLAG_COMPRESSED)
        has_host = C.has_host_cluster(entry, has_df)
        if has_host and (bm >> 32) & bm & ALL_ALLOC:
            raise CorruptImageError(f"extended L2 entry has a sub-cluster both allocated and "
                                    f"zero (bitmap {bm:#018x})", structure="L2 entry",
                                    offset=table.offset + 16 * l2i)
        if has_host and entry & C.QCOW_OFLAG_COPIED \
                and self._owned(entry & C.L2E_OFFSET_MASK, table, l2i):
            host = entry & C.L2E_OFFSET_MASK
            touched = _alloc_range(sc0, sc1)
            if bm & touched == touched:           # every touched sub-cluster holds data
                inplace.append((src, host + lo, piece))
                return
            first, end = sc0 * scs, sc1 * scs
            buf = bytearray(self._old_bytes(guest, first, end)) if (lo > first or hi < end) \
                else bytearray(end - first)
            buf[lo - first:hi - first] = piece
            inplace.append((src, host + first, bytes(buf)))
            self._set(table, l2i, bitmap=(bm | touched) & ~(touched << 32))
            return
        if compressed:
            first, end = 0, SUB
            newbm = ALL_ALLOC
        else:
            first, end = sc0, sc1
            alloc_bits = bm & ALL_ALLOC if has_host else 0
            if alloc_bits:       # a shared cluster: keep its data (calculate_l2_meta)
                first = min(first, (alloc_bits & -alloc_bits).bit_length() - 1)
                end = max(end, alloc_bits.bit_length())
            bits = _alloc_range(first, end)
            newbm = ((bm if has_host else bm & ~ALL_ALLOC) | bits) & ~(bits << 32)
        lo_b, hi_b = first * scs, end * scs
        pieces = [(lo, piece)]
        if lo > lo_b or hi < hi_b:
            old = self._old_bytes(guest, lo_b, hi_b)
            pieces = [(lo_b, old[:lo - lo_b]), (lo, piece), (hi, old[hi - lo_b:])]
        news.append(_NewCluster(table, l2i, guest, lo_b, hi_b, pieces, newbm))
        self._free_entry(entry, ClusterType.COMPRESSED if compressed else
                         ClusterType.NORMAL if has_host else ClusterType.UNALLOCATED, frees)

    def _plan_zero(self, table: _Table, l2i: int, lo: int, hi: int, frees) -> None:
        """zero_in_l2_slice / zero_l2_subclusters (no unmap, as qemu-io write -z)."""
        im = self.image
        cs = im.cluster_size
        entry = table.raw[l2i]
        compressed = bool(entry & C.QCOW_OFLAG_COMPRESSED)
        if im.header.version < 3:
            # v2 without a backing file: unallocated reads zero, so qemu discards
            if entry:
                self._set(table, l2i, 0)
                self._free_entry(entry, C.cluster_type(entry), frees)
            return
        if table.bitmap is None:
            new = C.QCOW_OFLAG_ZERO if compressed else entry | C.QCOW_OFLAG_ZERO
            if new != entry:
                self._set(table, l2i, new)
                if compressed:
                    self._free_entry(entry, ClusterType.COMPRESSED, frees)
            return
        bm = table.bitmap[l2i]
        if lo == 0 and hi == cs:
            new, newbm = (0 if compressed else entry), ALL_ZERO
        else:
            if compressed:   # qemu: -ENOTSUP; _zero_run writes zeros instead
                raise RequestError("part of a compressed cluster cannot be zeroed in "
                                   "its L2 entry")
            scs = cs // SUB
            bits = _alloc_range(lo // scs, -(-hi // scs))
            new, newbm = entry, (bm | (bits << 32)) & ~bits
        if (new, newbm) != (entry, bm):
            self._set(table, l2i, new, newbm)
            if compressed:
                self._free_entry(entry, ClusterType.COMPRESSED, frees)

    def _free_entry(self, entry: int, typ: ClusterType, frees) -> None:
        """Remember the host bytes an entry being replaced referenced."""
        im = self.image
        if im.has_data_file:
            return                       # data file clusters carry no refcounts
        if typ == ClusterType.COMPRESSED:
            coff, csize = im.layout.decode(entry)
            span = (coff, csize)
        elif typ in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC) and entry & C.L2E_OFFSET_MASK:
            span = (entry & C.L2E_OFFSET_MASK, im.cluster_size)
        else:
            return
        # refuse now rather than fail half-way through a commit
        cb = im.cluster_bits
        for cluster in range(span[0] >> cb, ((span[0] + span[1] - 1) >> cb) + 1):
            if self.alloc.refcount(cluster) - self._pending_drops.get(cluster, 0) < 1:
                raise CorruptImageError(
                    f"host cluster {cluster << cb:#x} is referenced but its refcount is 0; "
                    "repair the image (qemu-img check -r all) before writing",
                    structure="refcount block", offset=cluster << cb)
            self._pending_drops[cluster] = self._pending_drops.get(cluster, 0) + 1
            self._undo.dropped.append(cluster)
        frees.append(span)

    def _owned(self, host: int, table: _Table, l2i: int) -> bool:
        """May the cluster at ``host`` be written in place (COPIED entry)?

        Like QEMU's overlap check, an entry pointing into metadata is
        corruption; an entry whose COPIED flag contradicts a refcount above 1
        is treated as shared (copy-on-write never destroys anything)."""
        self._check_host(host, table, l2i)
        im = self.image
        if im.has_data_file:
            return True
        cluster = host >> im.cluster_bits
        where = table.offset + im.header.l2_entry_size * l2i
        if cluster in self.meta.metadata_clusters():
            raise CorruptImageError(f"L2 entry points into metadata (cluster {host:#x}); "
                                    "writing would destroy it", structure="L2 entry",
                                    offset=where)
        rc = self.alloc.refcount(cluster) - self._pending_drops.get(cluster, 0)
        if rc < 1:
            raise CorruptImageError(f"data cluster {host:#x} has refcount 0",
                                    structure="L2 entry", offset=where)
        return rc == 1

    def _check_host(self, host: int, table: _Table, l2i: int) -> None:
        if host & (self.image.cluster_size - 1):
            raise CorruptImageError(f"cluster allocation offset {host:#x} is not cluster "
                                    f"aligned", structure="L2 entry",
                                    offset=table.offset + self.image.header.l2_entry_size * l2i)

    # -- committing --------------------------------------------------------------------
    def _apply(self, tables, news, inplace, frees, src) -> None:
        """Write the request's data now; keep its metadata pending until commit()."""
        im = self.image
        self.unflushed = True
        for dst, host, buf in _coalesce(news, src):
            dst.pwrite(host, buf)
        for dst, off, piece in inplace:
            dst.pwrite(off, piece)
        meta = self.meta
        for table in tables.values():
            if not (table.new or table.changed):
                continue
            if table.l1_index not in self.pending:
                self.pending[table.l1_index] = table
                meta.pin(table)
                if table.new:
                    meta.set_l1_entry(table.l1_index, table.offset | C.QCOW_OFLAG_COPIED)
                    if table.old_offset:
                        meta.drop_table(table.old_offset)
                        self.pending_frees.append((table.old_offset, im.cluster_size))
            meta.cache_table(table)
        if frees:
            self.pending_frees += frees
        meta.changed()
        self.pending_data += sum(new.hi - new.lo for new in news)

    def commit(self) -> None:
        """Put pending metadata on disk in QEMU's order (the file is consistent after
        every step; a crash in between leaks clusters at worst).

        A failure keeps everything pending -- the writes before it returned, so
        they must not be forgotten -- and the next commit starts again from the
        top: every step rewrites what it wrote before, so it is safe to repeat."""
        im = self.image
        alloc = self.alloc
        if not (self.pending or self.pending_frees or alloc.dirty_blocks or alloc.dirty_rt):
            return
        try:
            self._commit_stages()
        except BaseException as e:
            # a write that failed may have left anything in the page cache: every
            # cached refcount block and table entry is rewritten by the retry
            alloc.mark_all_dirty()
            self.unflushed = True
            if not isinstance(e, OSError):
                raise
            self.commit_error = Qcow2Error(
                f"writing metadata failed: {e.strerror or e}; {_KEPT}", path=im.path)
            raise self.commit_error from e
        self.commit_error = None
        for table in self.pending.values():
            table.new = False
            table.old_offset = 0
            table.changed = set()
        self.pending.clear()
        self.meta.unpin_all()
        self.pending_data = 0
        self.unflushed = True

    def _commit_stages(self) -> None:
        """The store writes the tables in QEMU's order (stages 1 and 2); refcounts of
        what lost its last reference are lowered after a flush (stage 3)."""
        im, meta = self.image, self.meta
        data_file = im.data_file if im.data_file is not None and self.pending_data else None
        meta.commit_tables(list(self.pending.values()), data_file)
        if self.pending_frees:
            im.file.fsync()
            # in memory at once and for good: a retry writes the lowered blocks
            # again (stage 2 is durable by now) but must not lower them twice
            frees, self.pending_frees = self.pending_frees, []
            self._pending_drops = {}
            meta.release(frees)


def _smallest_unit(image) -> int:
    """The finest allocation granule (cluster or sub-cluster) in the qcow2 chain."""
    unit = image.cluster_size
    while image is not None and hasattr(image, "l1_table"):
        unit = min(unit, image.cluster_size // SUB if image.extended_l2 else image.cluster_size)
        image = image.backing
    return unit


def _coalesce(news: list[_NewCluster], src):
    """Data writes of new clusters, merged where host ranges touch (each run joined
    once: growing one buffer piece by piece cost 2.4 s per GiB)."""
    runs: list[tuple[int, int, list]] = []          # (start, end, parts)
    for new in sorted(news, key=lambda new: new.host):
        start = new.host + new.lo
        if not runs or runs[-1][1] != start:
            runs.append((start, start, []))
        first, end, parts = runs[-1]
        for _, piece in new.pieces:
            if len(piece):
                parts.append(piece)
                end += len(piece)
        runs[-1] = (first, end, parts)
    return [(src, start, parts[0] if len(parts) == 1 else b"".join(parts))
            for start, _, parts in runs]
