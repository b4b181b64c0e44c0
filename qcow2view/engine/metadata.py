"""The one owner of an image's metadata (QEMU's BDRVQcow2State with its qcow2_cache).

:class:`MetadataStore` holds the header, the L1 table reads go through (the
active one, or a snapshot's for a snapshot view), the L2 table cache with the
tables that have uncommitted changes pinned in it, the refcount table and, in
its :class:`~qcow2view.engine.allocator.RefcountAllocator`, the refcount blocks
and the allocation of clusters, the snapshot table and the bitmap directory.

:class:`~qcow2view.engine.image.Image` reads through it; every writer (the write
path, compressed writes, snapshot creation, repair and rebuild, the image
operations) changes metadata through its methods, which keep QEMU's order: a
refcount is raised and flushed before anything points at a cluster, a table is
on disk before the entry that points at it, and a refcount is lowered only after
the last reference is gone and flushed.  Header fields are written by their spec
names.  Parsing and packing stay pure, one place each: header.py, extensions.py,
snapshots.py, bitmaps.py, refcounts.py.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from dataclasses import replace as dc_replace

import numpy as np

from . import clusters as C
from .allocator import RefcountAllocator, runs_of
from .bitmaps import BME_FLAG_AUTO, BME_FLAG_IN_USE, Bitmap, parse_bitmap_directory
from .clusters import CompressionLayout, L1Entry, L2Entry
from .errors import CorruptImageError, RequestError, TruncatedImageError
from .extensions import EXT_BITMAPS, HeaderExtension
from .fileio import HostFile
from .header import (FIELD_BY_NAME, QCOW_MAX_BITMAPS, QCOW_MAX_L1_SIZE,
                     QCOW_MAX_SNAPSHOTS_SIZE, Header, header_bytes_needed)
from .refcounts import decode_refcount_block, encode_refcount_block
from .snapshots import Snapshot, parse_snapshot_table

L2_CACHE_BYTES = 32 * 1024 * 1024
HEADER_PROBE = 4096
BITMAP_FLAGS_AT = 12          # flags (u32) inside a bitmap directory entry


@dataclass(frozen=True)
class L1Table:
    offset: int
    size: int                # entries
    entries: np.ndarray      # uint64, native order

    def entry(self, index: int) -> L1Entry:
        return L1Entry(index, int(self.entries[index]), self.offset + 8 * index)


@dataclass(frozen=True)
class L2Table:
    offset: int
    l1_index: int
    raw: np.ndarray                  # uint64 standard entries
    bitmap: np.ndarray | None        # uint64 sub-cluster bitmaps (extended L2)
    entry_size: int
    layout: CompressionLayout
    has_data_file: bool

    def __len__(self) -> int:
        return len(self.raw)

    def entry(self, index: int) -> L2Entry:
        bm = None if self.bitmap is None else int(self.bitmap[index])
        return C.decode_l2_entry(index, int(self.raw[index]), bm,
                                 self.offset + self.entry_size * index, self.layout,
                                 self.has_data_file)

    def types(self) -> np.ndarray:
        return C.decode_l2_types(self.raw, self.bitmap, self.has_data_file)


def read_header(file: HostFile) -> Header:
    """The header at the start of ``file`` (header_length may exceed the usual
    4 KiB probe, up to a cluster)."""
    return Header.parse(header_probe(file), file_size=file.size)


def header_probe(file: HostFile) -> bytes:
    head = file.pread(0, HEADER_PROBE)
    need = header_bytes_needed(head)
    return file.pread(0, need) if need > len(head) else head


def table_bytes(raw: list[int], bitmap: list[int] | None) -> bytes:
    """An L2 table (or part of one) as it is stored: big-endian entries, each
    followed by its sub-cluster bitmap with extended L2."""
    if bitmap is None:
        return np.array(raw, dtype=">u8").tobytes()
    words = np.empty(2 * len(raw), dtype=">u8")
    words[0::2] = raw
    words[1::2] = bitmap
    return words.tobytes()


class MetadataStore:
    """Header, tables, refcounts and the snapshot table of one open image."""

    def __init__(self, file: HostFile, header: Header, extensions: list[HeaderExtension],
                 *, snapshot: str | int | None = None, writable: bool = False) -> None:
        self.file = file
        self.header = header
        self.extensions = extensions
        self.writable = writable
        self.cluster_bits = header.cluster_bits
        self.cluster_size = header.cluster_size
        self.l2_size = header.l2_size
        self.extended_l2 = header.extended_l2
        self.layout = CompressionLayout(header.cluster_bits)
        self.reftable = self._read_reftable()
        self.snapshots = self._read_snapshots()
        self.bitmaps = self._read_bitmaps()
        # the snapshot a read-only view shows (None: the active disk)
        self.view: Snapshot | None = None
        l1_offset, l1_size = header.l1_table_offset, header.l1_size
        if snapshot is not None:
            self.view = self.find_snapshot(snapshot)
            l1_offset, l1_size = self.check_snapshot_l1(self.view)
        self.l1_table = self.read_l1(l1_offset, l1_size, "L1 table")
        self.l1: list[int] = self.l1_table.entries.tolist()
        # L2 tables as Python int lists (raw, bitmap), least recently used first
        self.l2_cache: OrderedDict[int, tuple[list[int], list[int] | None]] = OrderedDict()
        self.l2_cache_max = max(16, L2_CACHE_BYTES // self.cluster_size)
        # tables with uncommitted changes, by offset: never evicted, read from here
        self.pinned: dict[int, object] = {}
        self.refcounts = RefcountAllocator(self)
        # what readers derived from the metadata, dropped whenever it changes
        self.maps_cache: dict = {}
        self.compressed_cache: tuple[int, bytes] | None = None
        # bumped whenever a table appears or moves (the overlap set below is stale)
        self.layout_generation = 0
        self._overlap: tuple[tuple[int, int], set[int]] | None = None

    # -- geometry ------------------------------------------------------------------------
    @property
    def refcount_block_entries(self) -> int:
        return 1 << (self.cluster_bits + 3 - self.header.refcount_order)

    @property
    def l2_entry_size(self) -> int:
        return self.header.l2_entry_size

    # -- reading the tables ----------------------------------------------------------------
    def _read_reftable(self) -> np.ndarray:
        header = self.header     # bounded by Header.validate
        table = self.file.pread_exact(header.refcount_table_offset,
                                      header.refcount_table_clusters * self.cluster_size,
                                      "refcount table")
        return C.be_u64(table)

    def _read_snapshots(self) -> list[Snapshot]:
        header = self.header
        if not header.nb_snapshots:
            return []
        if header.snapshots_offset & (self.cluster_size - 1):
            raise CorruptImageError("snapshot table is not cluster aligned",
                                    structure="snapshots_offset",
                                    offset=FIELD_BY_NAME["snapshots_offset"].offset)
        avail = min(self.file.size - header.snapshots_offset, QCOW_MAX_SNAPSHOTS_SIZE)
        data = self.file.pread(header.snapshots_offset, avail)
        return parse_snapshot_table(data, header.snapshots_offset, header.nb_snapshots)

    def _read_bitmaps(self) -> list[Bitmap]:
        ext = next((ext for ext in self.extensions if ext.type == EXT_BITMAPS), None)
        if ext is None:
            return []
        nb, _, dsize, doff = struct.unpack_from(">IIQQ", ext.data)
        if nb > QCOW_MAX_BITMAPS or dsize > 64 * 1024 * 1024:
            raise CorruptImageError(f"bitmap directory of {nb} entries / {dsize} bytes "
                                    "is too large", structure="bitmaps extension",
                                    offset=ext.offset)
        if doff & (self.cluster_size - 1):
            raise CorruptImageError("bitmap directory is not cluster aligned",
                                    structure="bitmap_directory_offset",
                                    offset=ext.data_offset + 16)
        data = self.file.pread_exact(doff, dsize, "bitmap directory")
        return parse_bitmap_directory(data, doff, nb)

    def find_snapshot(self, key: str | int) -> Snapshot:
        for snap in self.snapshots:
            if snap.id_str == str(key):
                return snap
        for snap in self.snapshots:
            if snap.name == str(key):
                return snap
        raise RequestError(f"no snapshot with id or name {key!r}")

    def check_snapshot_l1(self, snap: Snapshot) -> tuple[int, int]:
        if snap.l1_size > QCOW_MAX_L1_SIZE // 8:
            raise CorruptImageError(f"snapshot {snap.name!r} L1 table of {snap.l1_size} entries "
                                    "is too large", structure="snapshot l1_size",
                                    offset=snap.offset + 8)
        if snap.l1_table_offset & (self.cluster_size - 1):
            raise CorruptImageError(f"snapshot {snap.name!r} L1 table offset "
                                    f"{snap.l1_table_offset:#x} is not cluster aligned",
                                    structure="snapshot l1_table_offset", offset=snap.offset)
        return snap.l1_table_offset, snap.l1_size

    def read_l1(self, offset: int, size: int, what: str) -> L1Table:
        if size == 0:
            return L1Table(offset, 0, np.zeros(0, dtype=np.uint64))
        buf = self.file.pread_exact(offset, size * 8, what)
        return L1Table(offset, size, C.be_u64(buf))

    def snapshot_l1_table(self, snap: Snapshot) -> L1Table:
        off, size = self.check_snapshot_l1(snap)
        return self.read_l1(off, size, f"L1 table of snapshot {snap.name!r}")

    def check_l2_offset(self, l2_offset: int, l1_index: int) -> None:
        entry_at = self.l1_table.offset + 8 * l1_index
        if l2_offset & (self.cluster_size - 1):
            raise CorruptImageError(f"L2 table offset {l2_offset:#x} is not cluster aligned "
                                    f"(L1 index {l1_index})", structure="L1 entry",
                                    offset=entry_at)
        if l2_offset + self.cluster_size > self.file.size:
            # the entry is at fault, not the (missing) table
            raise TruncatedImageError(
                f"L2 table offset {l2_offset:#x} lies past the end of the file "
                f"({self.file.size:#x} bytes; L1 index {l1_index})", structure="L1 entry",
                offset=entry_at if l1_index >= 0 else None)

    def read_l2_bytes(self, l2_offset: int, l1_index: int = -1) -> bytes:
        """The table's bytes as readers must see them: a pinned table's current
        contents, else the file's."""
        self.check_l2_offset(l2_offset, l1_index)
        pinned = self.pinned.get(l2_offset)
        if pinned is not None:
            return table_bytes(pinned.raw, pinned.bitmap)
        return self.file.pread_exact(l2_offset, self.cluster_size,
                                     f"L2 table (L1 index {l1_index})")

    def l2_table(self, l2_offset: int, l1_index: int = -1) -> L2Table:
        """Decode the L2 table at ``l2_offset`` (one table at a time, on demand)."""
        words = C.be_u64(self.read_l2_bytes(l2_offset, l1_index))
        if self.extended_l2:
            raw, bitmap = words[0::2].copy(), words[1::2].copy()
        else:
            raw, bitmap = words, None
        return L2Table(l2_offset, l1_index, raw, bitmap, self.header.l2_entry_size,
                       self.layout, self.header.has_data_file)

    def l2_words(self, l2_offset: int, l1_index: int = -1) -> np.ndarray:
        """The table's 64-bit words (entries and bitmaps interleaved), writable copy."""
        return np.frombuffer(self.read_l2_bytes(l2_offset, l1_index),
                             dtype=">u8").astype(np.uint64)

    def l2(self, l2_offset: int, l1_index: int) -> tuple[list[int], list[int] | None]:
        """The cached L2 table as Python int lists (raw entries, bitmaps or None)."""
        cache = self.l2_cache
        table = cache.get(l2_offset)
        if table is not None:
            cache.move_to_end(l2_offset)
            return table
        words = np.frombuffer(self.read_l2_bytes(l2_offset, l1_index), dtype=">u8").tolist()
        table = (words[0::2], words[1::2]) if self.extended_l2 else (words, None)
        cache[l2_offset] = table
        if len(cache) > self.l2_cache_max:
            cache.popitem(last=False)
        return table

    # -- refcounts (read side) -------------------------------------------------------------
    def refcount_block(self, rt_index: int) -> tuple[int, np.ndarray] | None:
        """(file offset, counts) of refcount block ``rt_index``, or None if unallocated."""
        off = int(self.reftable[rt_index]) & C.REFT_OFFSET_MASK
        if not off:
            return None
        if off & (self.cluster_size - 1):
            raise CorruptImageError(f"refcount block offset {off:#x} is not cluster aligned",
                                    structure="refcount table entry",
                                    offset=self.header.refcount_table_offset + 8 * rt_index)
        if self.writable:        # counts raised by uncommitted writes
            counts = self.refcounts.blocks.get(rt_index)
            if counts is not None:
                return off, counts.copy()
        buf = self.file.pread_exact(off, self.cluster_size, f"refcount block {rt_index}")
        return off, decode_refcount_block(buf, self.header.refcount_order)

    def metadata_clusters(self) -> set[int]:
        """Clusters of the header, the refcount table and blocks, the active L1 and
        L2 tables and the snapshot table: what a data write must never touch
        (QEMU's qcow2_check_metadata_overlap)."""
        key = (self.refcounts.generation, self.layout_generation)
        if self._overlap is not None and self._overlap[0] == key:
            return self._overlap[1]
        header, cb, cs = self.header, self.cluster_bits, self.cluster_size
        clusters = {0}
        rt_first = header.refcount_table_offset >> cb
        clusters.update(range(rt_first, rt_first + header.refcount_table_clusters))
        l1_end = header.l1_table_offset + 8 * header.l1_size
        clusters.update(range(header.l1_table_offset >> cb, (l1_end + cs - 1) >> cb))
        blocks = self.reftable & np.uint64(C.REFT_OFFSET_MASK)
        clusters.update((blocks[blocks != 0] >> np.uint64(cb)).tolist())
        tables = self.l1_table.entries & np.uint64(C.L1E_OFFSET_MASK)
        clusters.update((tables[tables != 0] >> np.uint64(cb)).tolist())
        if header.nb_snapshots and self.snapshots:
            # QEMU's snapshots_size: the entries as they are, each padded to 8 bytes
            end = max(snap.offset + snap.entry_size for snap in self.snapshots)
            clusters.update(range(header.snapshots_offset >> cb, ((end - 1) >> cb) + 1))
        self._overlap = (key, clusters)
        return clusters

    # -- caches --------------------------------------------------------------------------
    def changed(self) -> None:
        """Metadata changed: what readers derived from it is stale."""
        self.maps_cache = {}
        self.compressed_cache = None

    def remember_compressed(self, entry: int, data: bytes) -> None:
        """The last compressed cluster read, by its L2 entry (until metadata changes)."""
        self.compressed_cache = (entry, data)

    def invalidate(self) -> None:
        """Forget cached tables (after the file changed underneath)."""
        self.layout_generation += 1
        self.l2_cache.clear()
        self.l1 = self.l1_table.entries.tolist()
        self.changed()

    def reload(self) -> None:
        """Re-read the header, refcount table, snapshot table and active L1 table
        after an operation rewrote them, and forget every cache (refcount blocks
        included).  Pending table changes must have been committed first."""
        self.file.refresh_size()
        self.header = read_header(self.file)
        self.reftable = self._read_reftable()
        self.snapshots = self._read_snapshots()
        if self.view is None:
            self.l1_table = self.read_l1(self.header.l1_table_offset, self.header.l1_size,
                                         "L1 table")
        self.refcounts = RefcountAllocator(self)      # the refcount order may have changed
        self.invalidate()

    def forget_refcounts(self) -> None:
        """Drop cached refcount blocks after a failure: the file is the truth again."""
        self.reftable = self._read_reftable()
        self.refcounts.forget()

    # -- the header ----------------------------------------------------------------------
    def write_header(self, sync: bool = True, **values: int) -> None:
        """Set header fields by their spec names (``refcount_order=6``,
        ``l1_size=..., l1_table_offset=...``) in one write of the bytes from the
        first named field to the end of the last, so that switching to new tables
        (several fields at once) is atomic, as qcow2_update_header's single write."""
        named = [FIELD_BY_NAME[name] for name in values]      # KeyError: no such field
        new = self.header.replace(**values)
        lo = min(field.offset for field in named)
        hi = max(field.offset + field.size for field in named)
        self.file.pwrite(lo, new.pack()[lo:hi])
        if sync:
            self.file.fsync()
        self.header = new
        self.layout_generation += 1

    def write_header_cluster(self, head: bytes) -> None:
        """Replace the whole header cluster (header, extensions, backing file name)
        in one write, as qcow2_update_header; :meth:`reload` reads it back."""
        if len(head) > self.cluster_size:
            raise RequestError("header, extensions and backing file name do not fit in the "
                               "header cluster", structure="header", offset=0)
        self.file.pwrite(0, head + bytes(self.cluster_size - len(head)))
        self.file.fsync()

    def mark_bitmaps_in_use(self) -> None:
        """Mark enabled ("auto") persistent bitmaps in use, as QEMU does while it
        has them open for writing."""
        marked = []
        for bitmap in self.bitmaps:
            if bitmap.flags & BME_FLAG_AUTO and not bitmap.flags & BME_FLAG_IN_USE:
                self.file.pwrite(bitmap.offset + BITMAP_FLAGS_AT,
                                 (bitmap.flags | BME_FLAG_IN_USE).to_bytes(4, "big"))
                bitmap = dc_replace(bitmap, flags=bitmap.flags | BME_FLAG_IN_USE)
            marked.append(bitmap)
        self.file.fsync()
        self.bitmaps = marked

    # -- refcounts (write side) ----------------------------------------------------------
    def commit_refcounts(self) -> None:
        """Changed refcount blocks and table entries on disk, flushed (new blocks
        durable before the table entries that point at them)."""
        if self.refcounts.write_new_blocks():
            self.file.fsync()
        self.refcounts.write_dirty()
        self.file.fsync()

    def free(self, spans) -> None:
        """Drop one reference from each (offset, length) span, on disk at once:
        nothing may point there any more."""
        for off, length in spans:
            self.refcounts.change(off, length, -1)
        self.commit_refcounts()

    def allocate_table(self, data: bytes) -> int:
        """Write ``data`` (a table) into newly allocated clusters, refcounts first;
        returns its file offset.  Nothing points at it yet."""
        cs = self.cluster_size
        count = max(1, -(-len(data) // cs))
        off = self.refcounts.alloc(count) * cs
        self.commit_refcounts()
        self.file.pwrite(off, bytes(data) + bytes(count * cs - len(data)))
        self.file.fsync()
        return off

    def write_table(self, offset: int, data: bytes) -> None:
        """A new table (L1 copy, refcount table) into clusters the caller allocated
        and counted; nothing points at it yet."""
        self.file.pwrite(offset, data)

    def put_refcount_block(self, offset: int, counts: np.ndarray,
                           order: int | None = None) -> None:
        """Write a refcount block's counts at ``offset`` (repair, rebuild; ``order``:
        of a new structure not in force yet)."""
        order = self.header.refcount_order if order is None else order
        self.file.pwrite(offset, encode_refcount_block(counts, order))

    def switch_refcount_structure(self, table_offset: int, table_clusters: int,
                                  **fields: int) -> None:
        """Point the header at a new refcount table (written and flushed by the
        caller) in one write, flushed; ``fields`` (``refcount_order``) go with it."""
        self.write_header(refcount_table_offset=table_offset,
                          refcount_table_clusters=table_clusters, **fields)
        self.reftable = self._read_reftable()
        self.refcounts = RefcountAllocator(self)

    # -- the L1 and L2 tables ------------------------------------------------------------
    def set_l1_entry(self, index: int, value: int) -> None:
        """An active L1 entry changed in memory; :meth:`write_l1_entries` writes it."""
        self.l1[index] = value
        self.l1_table.entries[index] = value
        self.layout_generation += 1

    def write_l1_entries(self, lo: int, hi: int) -> None:
        """Entries ``lo..hi`` of the active L1 table, as they are in memory."""
        self.file.pwrite(self.l1_table.offset + 8 * lo,
                         np.array(self.l1[lo:hi], dtype=">u8").tobytes())

    def write_l1(self, entries: np.ndarray, first: int = 0, sync: bool = True) -> None:
        """Replace active L1 entries from ``first`` on, on disk and in memory."""
        entries = np.asarray(entries, dtype=np.uint64)
        self.file.pwrite(self.l1_table.offset + 8 * first, entries.astype(">u8").tobytes())
        if sync:
            self.file.fsync()
        self.l1_table.entries[first:first + entries.size] = entries
        self.l1[first:first + entries.size] = entries.tolist()
        self.layout_generation += 1
        self.changed()

    def grow_l1(self, min_size: int) -> None:
        """Move the active L1 table to new clusters with ``min_size`` entries
        (qcow2_grow_l1_table, exact size): the copy is written and flushed, the
        header switched in one write, and only then the old table freed."""
        old = self.l1_table
        if min_size <= old.size:
            return
        table = np.zeros(min_size, dtype=np.uint64)
        table[:old.size] = old.entries
        nbytes = -(-min_size * 8 // 512) * 512
        off = self.allocate_table(table.astype(">u8").tobytes() + bytes(nbytes - min_size * 8))
        self.write_header(l1_size=min_size, l1_table_offset=off)
        if old.size:
            self.free([(old.offset, old.size * 8)])
        self.reload()

    def write_table_entry(self, offset: int, value: int) -> None:
        """One 8-byte L1 or L2 entry at file ``offset`` (repair of a COPIED flag);
        an active L1 entry is changed in memory too."""
        self.file.pwrite(offset, struct.pack(">Q", value))
        index = (offset - self.l1_table.offset) // 8
        if (self.view is None and 0 <= index < self.l1_table.size
                and offset == self.l1_table.offset + 8 * index):
            self.l1_table.entries[index] = value
            self.l1[index] = value
            self.layout_generation += 1
        self.l2_cache.clear()
        self.changed()

    def write_l2(self, l2_offset: int, words: np.ndarray, first: int = 0) -> None:
        """L2 table words (entries, bitmaps interleaved with extended L2) from word
        ``first`` on, written in place; the cached copy is dropped."""
        self.file.pwrite(l2_offset + 8 * first,
                         np.asarray(words, dtype=np.uint64).astype(">u8").tobytes())
        self.l2_cache.pop(l2_offset, None)
        self.changed()

    def write_l2_entries(self, l2_offset: int, lo: int, raw: list[int],
                         bitmap: list[int] | None) -> None:
        """Entries ``lo..`` of an L2 table (the writer's committed changes)."""
        self.file.pwrite(l2_offset + self.header.l2_entry_size * lo, table_bytes(raw, bitmap))

    def pin(self, table) -> None:
        """A table (``offset``, ``raw``, ``bitmap``) with uncommitted changes: readers
        see it, the cache keeps it until :meth:`unpin_all`."""
        self.pinned[table.offset] = table
        self.l2_cache[table.offset] = (table.raw, table.bitmap)

    def cache_table(self, table) -> None:
        self.l2_cache[table.offset] = (table.raw, table.bitmap)

    def drop_table(self, l2_offset: int) -> None:
        self.l2_cache.pop(l2_offset, None)

    def unpin_all(self) -> None:
        self.pinned.clear()

    # -- committing the write path's tables (qcow2_cache_flush) ---------------------------
    def commit_tables(self, tables, data_file: HostFile | None = None) -> None:
        """Put pending L2 tables (``offset``, ``l1_index``, ``raw``, ``bitmap``, ``new``,
        ``changed`` entry indices) on disk in QEMU's order, one flush per stage:

        1. new refcount blocks (flush), raised refcounts and reftable entries, new
           tables whole, then a flush of the data (``data_file`` too): nothing points
           at a cluster before its refcount and contents are durable;
        2. the changed entries of existing tables, then the L1 entries of new ones.

        Every step rewrites what it wrote before, so a failed commit can be repeated."""
        if self.refcounts.write_new_blocks():
            self.file.fsync()
        self.refcounts.write_dirty()
        for table in tables:
            if table.new:
                self.write_l2_entries(table.offset, 0, table.raw, table.bitmap)
        if data_file is not None:
            data_file.fsync()
        self.file.fsync()
        for table in tables:
            if not table.new:
                for lo, hi in runs_of(sorted(table.changed)):
                    bitmap = None if table.bitmap is None else table.bitmap[lo:hi]
                    self.write_l2_entries(table.offset, lo, table.raw[lo:hi], bitmap)
        for lo, hi in runs_of(sorted(table.l1_index for table in tables if table.new)):
            self.write_l1_entries(lo, hi)

    def release(self, spans) -> None:
        """Stage 3: lower the refcounts of (offset, length) spans whose last reference
        is gone and flushed, and write the blocks (not flushed: the next flush does)."""
        for off, length in spans:
            self.refcounts.change(off, length, -1)
        self.refcounts.write_dirty()

    # -- the snapshot table --------------------------------------------------------------
    def snapshot_table_bytes(self) -> bytes:
        """The snapshot table as it is, every entry padded to 8 bytes (qemu-img ends
        the file right after the last entry's name, without that padding)."""
        if not self.snapshots:
            return b""
        last = self.snapshots[-1]
        off = self.header.snapshots_offset
        size = last.offset + last.entry_size - off
        data = self.file.pread(off, size)
        if len(data) < size - 7:
            raise CorruptImageError(f"{size} bytes needed but the file ends at "
                                    f"{self.file.size:#x}", structure="snapshot table",
                                    offset=off)
        return data + bytes(size - len(data))

    def write_snapshot_table(self, table: bytes, count: int) -> None:
        """Replace the snapshot table by ``table`` (``count`` packed entries), as
        qcow2_write_snapshots: the new table is written and flushed in new clusters,
        the header switched to it in one write (nb_snapshots and snapshots_offset),
        flushed, and only then the old table freed."""
        old_off = self.header.snapshots_offset
        old_len = 0
        if self.snapshots:
            last = self.snapshots[-1]
            old_len = last.offset + last.entry_size - old_off
        new_off = 0
        if table:
            new_off = self.allocate_table(table)
        self.write_header(nb_snapshots=count, snapshots_offset=new_off)
        if old_len:
            self.free([(old_off, old_len)])
        self.snapshots = self._read_snapshots()
        self.layout_generation += 1
