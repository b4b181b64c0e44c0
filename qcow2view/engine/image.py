"""An opened QCOW2 image: header, tables, backing chain and guest reads.

:func:`open_image` is the entry point.  Every table read from the file is
checked against the file's size before it is read, and every field that sizes
an allocation was bounded by :meth:`Header.validate` first.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Union

import numpy as np

from . import clusters as C
from .bitmaps import Bitmap, parse_bitmap_directory
from .clusters import ClusterType, CompressionLayout, L1Entry, L2Entry
from .compression import decompress_cluster
from .encryption import LUKS_HEADER_SIZE, LuksHeader, parse_luks_header
from .errors import (BackingFileError, CorruptImageError, DataFileError, EncryptedImageError,
                     Qcow2Error, RequestError, TruncatedImageError, UnsupportedFeatureError)
from .extensions import (EXT_BACKING_FORMAT, EXT_BITMAPS, EXT_DATA_FILE,
                         EXT_FULL_DISK_ENCRYPTION, HeaderExtension, feature_name_table,
                         parse_extensions)
from .fileio import HostFile
from .header import (AUTOCLEAR_BITMAPS, CRYPT_METHODS, FEATURE_INCOMPATIBLE,
                     INCOMPAT_KNOWN, QCOW_MAGIC, QCOW_MAX_BITMAPS, QCOW_MAX_L1_SIZE,
                     QCOW_MAX_SNAPSHOTS_SIZE, Header, feature_bit_names,
                     header_bytes_needed)
from .refcounts import RefcountTableEntry, block_entries, decode_refcount_block
from .snapshots import Snapshot, parse_snapshot_table

MAX_BACKING_DEPTH = 64
L2_CACHE_BYTES = 32 * 1024 * 1024
HEADER_PROBE = 4096


@dataclass(frozen=True)
class BackingInfo:
    """One file of the backing chain (depth 1 is the image's direct backing file)."""

    depth: int
    filename: str            # as stored in the image that names it
    path: str | None         # resolved absolute path
    format: str | None       # as named (backing_fmt) or probed
    found: bool
    virtual_size: int | None
    error: str | None = None


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


@dataclass(frozen=True)
class GuestMapping:
    """Where one guest offset lives: the answer to "who owns this byte"."""

    guest_offset: int
    type: ClusterType
    depth: int                   # 0 = this image, N = Nth backing file, -1 = nowhere (zeros)
    host_offset: int | None      # byte offset in the file holding the data
    file: str | None             # that file (image, data file or backing file)
    l1_index: int
    l2_index: int
    l1_entry_offset: int
    l2_entry_offset: int | None
    compressed_size: int = 0


class RawImage:
    """A raw backing file: guest offset == file offset."""

    format = "raw"

    def __init__(self, path: str) -> None:
        self.file = HostFile(path)
        self.path = path
        self.virtual_size = self.file.size
        self.backing_chain: list[BackingInfo] = []

    def read(self, offset: int, length: int) -> bytes:
        return self.file.pread_zero_fill(offset, length)

    def close(self) -> None:
        self.file.close()


_Backing = Union["Image", RawImage, None]


def _is_protocol_name(name: str) -> bool:
    if name.startswith("json:"):
        return True
    head = name.split("/", 1)[0]
    return ":" in head and not os.path.exists(name)


def probe_format(path: str) -> str:
    f = HostFile(path)      # refuses what QEMU's file driver refuses (directories, FIFOs)
    try:
        return "qcow2" if f.pread(0, 4) == QCOW_MAGIC else "raw"
    finally:
        f.close()


class Image:
    """A QCOW2 image opened by :func:`open_image`."""

    format = "qcow2"

    def __init__(self, path: str | os.PathLike, *, writable: bool = False,
                 snapshot: str | int | None = None, ignore_backing_errors: bool = False,
                 _chain: tuple[str, ...] = (), repair: bool = False) -> None:
        self.path = os.fspath(path)
        self.writable = writable
        self.for_repair = repair     # writable although dirty or marked corrupt
        self._closed = False
        if "\0" in self.path:      # os.open would raise a bare ValueError
            raise RequestError("a file name cannot contain a NUL byte",
                               path=self.path.replace("\0", "\\0"))
        self.file = HostFile(self.path, writable=writable)
        self.data_file: HostFile | None = None
        self.backing: _Backing = None
        self._writer = None
        self.in_use = False
        self.in_use_by: str | None = None
        try:
            self._open(snapshot, ignore_backing_errors, _chain)
            self._start_io()
        except Qcow2Error as e:
            self.close()
            raise e.with_path(self.path)
        except OSError as e:    # e.g. /proc/self/status: open works, lseek does not
            self.close()
            raise Qcow2Error(f"cannot read: {e.strerror or e}", path=self.path) from e
        except BaseException:
            self.close()
            raise

    # -- opening --------------------------------------------------------------------
    def _open(self, snapshot, ignore_backing_errors: bool, chain: tuple[str, ...]) -> None:
        f = self.file
        head = self._header_probe()
        self.header = h = Header.parse(head, file_size=f.size)
        self.cluster_bits = h.cluster_bits
        self.cluster_size = cs = h.cluster_size
        if len(head) < min(cs, f.size):
            head = f.pread(0, min(cs, f.size))
        self.file_size = f.size
        ext_end = h.backing_file_offset if h.backing_file_offset > h.extensions_offset else cs
        self.extensions: list[HeaderExtension] = (
            parse_extensions(head, h.extensions_offset, ext_end) if h.version >= 2 else [])
        self.feature_names = feature_name_table(self.extensions)
        unknown = h.incompatible_features & ~INCOMPAT_KNOWN
        if unknown:
            names = feature_bit_names(FEATURE_INCOMPATIBLE, unknown, self.feature_names)
            raise UnsupportedFeatureError(
                f"unsupported incompatible features: {', '.join(names)} "
                f"(bits {unknown:#x})", structure="incompatible_features", offset=72)
        self.l2_bits = h.l2_bits
        self.l2_size = h.l2_size
        self.extended_l2 = h.extended_l2
        self.layout = CompressionLayout(h.cluster_bits)
        self.encrypted = h.crypt_method != 0
        # QEMU keeps the name as a C string: up to the first NUL; empty means none
        name = (head[h.backing_file_offset:h.backing_file_offset + h.backing_file_size]
                .split(b"\0", 1)[0] if h.backing_file_offset else b"")
        self.backing_filename = name.decode("utf-8", "replace") if name else None
        self.backing_format = self._ext_text(EXT_BACKING_FORMAT)
        self.data_file_name = self._ext_text(EXT_DATA_FILE)
        self.has_data_file = h.has_data_file
        self.virtual_size = h.size

        # refcount table (bounded by Header.validate)
        rt = f.pread_exact(h.refcount_table_offset, h.refcount_table_clusters * cs,
                           "refcount table")
        self._reftable = C.be_u64(rt)
        self.refcount_block_entries = block_entries(h.cluster_bits, h.refcount_order)

        self.snapshots = self._read_snapshots()
        self.bitmaps = self._read_bitmaps()

        self.snapshot: Snapshot | None = None
        l1_offset, l1_size = h.l1_table_offset, h.l1_size
        if snapshot is not None:
            self.snapshot = self.find_snapshot(snapshot)
            l1_offset, l1_size = self._check_snapshot_l1(self.snapshot)
            # The view keeps today's virtual size, as `qemu-img convert -l` reads it
            # (past a smaller snapshot's L1 table the disk is unallocated); the size
            # the snapshot had is `snapshot.disk_size` (what `snapshot -a` restores).
        self.l1_table = self._read_l1(l1_offset, l1_size, "L1 table")
        self._l1 = self.l1_table.entries.tolist()
        self._l2_cache: OrderedDict[int, tuple[list[int], list[int] | None]] = OrderedDict()
        self._l2_cache_max = max(16, L2_CACHE_BYTES // cs)
        self._zcache: tuple[int, bytes] | None = None
        # L2 entry bits that keep a read off the fast path: anything but COPIED and a
        # cluster-aligned offset (compressed, zero, reserved bits, misalignment)
        self._fast_reject = ~(C.QCOW_OFLAG_COPIED | (C.L2E_OFFSET_MASK & ~(cs - 1))) \
            & 0xFFFFFFFFFFFFFFFF

        if self.has_data_file:
            self._open_data_file()
        self.backing_chain: list[BackingInfo] = []
        self._open_backing(ignore_backing_errors, chain)

    def _header_probe(self) -> bytes:
        """The file's first bytes: at least the whole header (header_length may
        exceed the usual 4 KiB probe, up to a cluster)."""
        head = self.file.pread(0, HEADER_PROBE)
        need = header_bytes_needed(head)
        return self.file.pread(0, need) if need > len(head) else head

    def _ext_text(self, ext_type: int) -> str | None:
        for e in self.extensions:
            if e.type == ext_type:
                return e.text
        return None

    def _read_l1(self, offset: int, size: int, what: str) -> L1Table:
        if size == 0:
            return L1Table(offset, 0, np.zeros(0, dtype=np.uint64))
        buf = self.file.pread_exact(offset, size * 8, what)
        return L1Table(offset, size, C.be_u64(buf))

    def _check_snapshot_l1(self, s: Snapshot) -> tuple[int, int]:
        if s.l1_size > QCOW_MAX_L1_SIZE // 8:
            raise CorruptImageError(f"snapshot {s.name!r} L1 table of {s.l1_size} entries "
                                    "is too large", structure="snapshot l1_size",
                                    offset=s.offset + 8)
        if s.l1_table_offset & (self.cluster_size - 1):
            raise CorruptImageError(f"snapshot {s.name!r} L1 table offset "
                                    f"{s.l1_table_offset:#x} is not cluster aligned",
                                    structure="snapshot l1_table_offset", offset=s.offset)
        return s.l1_table_offset, s.l1_size

    def _read_snapshots(self) -> list[Snapshot]:
        h = self.header
        if not h.nb_snapshots:
            return []
        if h.snapshots_offset & (self.cluster_size - 1):
            raise CorruptImageError("snapshot table is not cluster aligned",
                                    structure="snapshots_offset", offset=64)
        avail = min(self.file.size - h.snapshots_offset, QCOW_MAX_SNAPSHOTS_SIZE)
        data = self.file.pread(h.snapshots_offset, avail)
        return parse_snapshot_table(data, h.snapshots_offset, h.nb_snapshots)

    def _read_bitmaps(self) -> list[Bitmap]:
        ext = next((e for e in self.extensions if e.type == EXT_BITMAPS), None)
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

    def _resolve(self, name: str) -> str:
        if os.path.isabs(name):
            return name
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), name)

    def _open_data_file(self) -> None:
        ext = next((e for e in self.extensions if e.type == EXT_DATA_FILE), None)
        where = dict(structure="external data file name",
                     offset=ext.data_offset if ext else self.header.extensions_offset)
        name = self.data_file_name
        if not name:
            raise DataFileError("the image uses an external data file but names none",
                                **where)
        try:
            path = self._resolve(name)
            if not os.path.exists(path) and os.path.exists(name):
                # QEMU 7.2 resolves a relative data file name from its working directory
                # (backing names from the image's folder); accept both, folder first.
                path = os.path.abspath(name)
            self.data_file = HostFile(path, writable=self.writable)
        except Qcow2Error as e:
            raise DataFileError(f"external data file {name!r}: {e.reason}", **where) from None
        except (OSError, ValueError) as e:     # a name no path can be made of
            raise DataFileError(f"external data file {name!r}: {e}", **where) from None

    def _open_backing(self, ignore_errors: bool, chain: tuple[str, ...]) -> None:
        name = self.backing_filename
        if not name:
            return
        fmt = self.backing_format
        info_err = None
        path = None
        if _is_protocol_name(name):
            info_err = (f"backing file {name!r} is a protocol or json: name; qcow2view "
                        "only follows plain file names")
        elif fmt not in (None, "qcow2", "raw"):
            info_err = f"backing file format {fmt!r} is not supported (only qcow2 and raw)"
        else:
            try:
                path = self._resolve(name)
                real = os.path.realpath(path)
                if real in chain or real == os.path.realpath(self.path):
                    info_err = f"backing chain loops back to {name!r}"
                elif len(chain) >= MAX_BACKING_DEPTH:
                    info_err = f"backing chain deeper than {MAX_BACKING_DEPTH} files"
                elif not os.path.exists(path):
                    info_err = f"backing file {name!r} not found (looked for {path})"
            except (OSError, ValueError) as e:     # a name no path can be made of
                info_err = f"backing file {name!r}: {e}"
        if info_err is None:
            try:
                fmt = fmt or probe_format(path)
                if fmt == "qcow2":
                    self.backing = Image(path, ignore_backing_errors=ignore_errors,
                                         _chain=chain + (os.path.realpath(self.path),))
                else:
                    self.backing = RawImage(path)
            except Qcow2Error as e:
                info_err = f"backing file {name!r}: {e}"
            except (OSError, ValueError) as e:
                info_err = f"backing file {name!r}: {getattr(e, 'strerror', None) or e}"
        if info_err is not None:
            self.backing_chain = [BackingInfo(1, name, path, fmt, False, None, info_err)]
            if not ignore_errors:
                raise BackingFileError(info_err, structure="backing file name",
                                       offset=self.header.backing_file_offset)
            return
        b = self.backing
        self.backing_chain = [BackingInfo(1, name, path, fmt, True, b.virtual_size)]
        for sub in b.backing_chain:
            self.backing_chain.append(BackingInfo(sub.depth + 1, sub.filename, sub.path,
                                                  sub.format, sub.found, sub.virtual_size,
                                                  sub.error))

    # -- context management ---------------------------------------------------------
    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, *, discard: bool = False) -> None:
        """Flush and close.  If the flush fails the image stays open (its pending
        writes kept) and the error is raised, so that close never reports success
        for writes that are not on disk: free space and close again, or give up
        with ``discard=True``, which loses what was not flushed, as a crash would
        (the file stays consistent: at worst clusters leak)."""
        if self._closed:
            return
        try:
            if self._writer is not None:
                self._writer.close(discard=discard)   # flush, then drop QEMU's locks
        except BaseException:
            if discard:
                self._close_files()
            raise
        self._close_files()

    def _close_files(self) -> None:
        self._closed = True
        if self.backing is not None:
            self.backing.close()
        if self.data_file is not None:
            self.data_file.close()
        self.file.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- writing (the work is done in write.py) -------------------------------------------
    def _start_io(self) -> None:
        """Writable: refuse what must not be written, take QEMU's writer locks.

        Read-only: take no lock (a viewer must never stop a VM from starting),
        only note whether someone holds QEMU's locks (``in_use``/``in_use_by``).
        """
        if self.writable:
            from .write import Writer
            self._writer = Writer(self)
        else:
            from .locking import describe, held_lock_bytes
            held = held_lock_bytes(self.file.fd)
            self.in_use = bool(held)
            self.in_use_by = describe(held)

    def _write_side(self):
        if self._closed:
            raise RequestError("the image is closed", path=self.path)
        if self._writer is None:
            from .errors import ReadOnlyError
            raise ReadOnlyError("the image is open read-only", path=self.path)
        return self._writer

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write guest bytes at ``offset`` (any length and alignment inside the disk)."""
        self._write_side().write(offset, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        """Make guest bytes read as zero, with zero flags where whole (sub-)clusters are
        covered (v3), like ``qemu-io -c 'write -z'``."""
        self._write_side().write_zeroes(offset, length)

    def flush(self) -> None:
        """Make every write so far durable (fdatasync), like a guest flush."""
        if self._writer is not None and not self._closed:
            self._writer.flush()

    # -- simple facts ------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return self.header.dirty

    @property
    def corrupt(self) -> bool:
        return self.header.corrupt

    @property
    def lazy_refcounts(self) -> bool:
        return self.header.lazy_refcounts

    @property
    def encryption(self) -> str:
        return CRYPT_METHODS.get(self.header.crypt_method, "unknown")

    @property
    def encryption_extension(self) -> HeaderExtension | None:
        return next((e for e in self.extensions if e.type == EXT_FULL_DISK_ENCRYPTION), None)

    @property
    def luks_header(self) -> LuksHeader | None:
        """The LUKS header of a luks-encrypted image, for display (read on each call)."""
        ext = self.encryption_extension
        if ext is None or self.encryption != "luks":
            return None
        off = ext.item("offset")
        return parse_luks_header(self.file.pread_exact(off, LUKS_HEADER_SIZE, "LUKS header"),
                                 off)

    @property
    def bitmaps_consistent(self) -> bool:
        return bool(self.header.autoclear_features & AUTOCLEAR_BITMAPS)

    @property
    def host_clusters(self) -> int:
        """Clusters the image file spans (the last one may be partial)."""
        return -(-self.file.size // self.cluster_size)

    def find_snapshot(self, key: str | int) -> Snapshot:
        for s in self.snapshots:
            if s.id_str == str(key):
                return s
        for s in self.snapshots:
            if s.name == str(key):
                return s
        raise RequestError(f"no snapshot with id or name {key!r}")

    # -- tables -------------------------------------------------------------------------
    def snapshot_l1_table(self, snapshot: Snapshot | str | int) -> L1Table:
        s = snapshot if isinstance(snapshot, Snapshot) else self.find_snapshot(snapshot)
        off, size = self._check_snapshot_l1(s)
        return self._read_l1(off, size, f"L1 table of snapshot {s.name!r}")

    def _check_l2_offset(self, l2_offset: int, l1_index: int) -> None:
        if l2_offset & (self.cluster_size - 1):
            raise CorruptImageError(f"L2 table offset {l2_offset:#x} is not cluster aligned "
                                    f"(L1 index {l1_index})", structure="L1 entry",
                                    offset=self.l1_table.offset + 8 * l1_index)
        if l2_offset + self.cluster_size > self.file.size:
            # the entry is at fault, not the (missing) table
            raise TruncatedImageError(
                f"L2 table offset {l2_offset:#x} lies past the end of the file "
                f"({self.file.size:#x} bytes; L1 index {l1_index})", structure="L1 entry",
                offset=self.l1_table.offset + 8 * l1_index if l1_index >= 0 else None)

    def read_l2_bytes(self, l2_offset: int, l1_index: int = -1) -> bytes:
        self._check_l2_offset(l2_offset, l1_index)
        if self._writer is not None:     # a table with uncommitted changes
            pinned = self._writer.pinned_table_bytes(l2_offset)
            if pinned is not None:
                return pinned
        return self.file.pread_exact(l2_offset, self.cluster_size,
                                     f"L2 table (L1 index {l1_index})")

    def l2_table(self, l2_offset: int, l1_index: int = -1) -> L2Table:
        """Decode the L2 table at ``l2_offset`` (one table at a time, on demand)."""
        buf = self.read_l2_bytes(l2_offset, l1_index)
        words = C.be_u64(buf)
        if self.extended_l2:
            raw, bitmap = words[0::2].copy(), words[1::2].copy()
        else:
            raw, bitmap = words, None
        return L2Table(l2_offset, l1_index, raw, bitmap, self.header.l2_entry_size,
                       self.layout, self.has_data_file)

    def _l2(self, l2_offset: int, l1_index: int) -> tuple[list[int], list[int] | None]:
        """Cached L2 table as Python int lists for the read fast path."""
        cache = self._l2_cache
        t = cache.get(l2_offset)
        if t is not None:
            cache.move_to_end(l2_offset)
            return t
        buf = self.read_l2_bytes(l2_offset, l1_index)
        words = np.frombuffer(buf, dtype=">u8").tolist()
        t = (words[0::2], words[1::2]) if self.extended_l2 else (words, None)
        cache[l2_offset] = t
        if len(cache) > self._l2_cache_max:
            cache.popitem(last=False)
        return t

    def reload_metadata(self) -> None:
        """Re-read header, refcount table, snapshots and the active L1 table after an
        operation that rewrote them directly (snapshot creation, compressed writes).
        Pending writes must have been committed (``flush()``) first."""
        f = self.file
        f.refresh_size()
        self.file_size = f.size
        h = self.header = Header.parse(self._header_probe(), file_size=f.size)
        self._reftable = C.be_u64(f.pread_exact(
            h.refcount_table_offset, h.refcount_table_clusters * self.cluster_size,
            "refcount table"))
        self.snapshots = self._read_snapshots()
        if self.snapshot is None:
            self.l1_table = self._read_l1(h.l1_table_offset, h.l1_size, "L1 table")
        if self._writer is not None:
            self._writer.alloc.forget()
        self.invalidate_caches()

    def invalidate_caches(self) -> None:
        """Forget cached tables (after the file changed underneath)."""
        self._l2_cache.clear()
        self._zcache = None
        self._l1 = self.l1_table.entries.tolist()
        self._maps_cache = {}

    # -- check, repair and maps (engine/check.py, engine/maps.py) ---------------------
    def check(self, progress=None, cancel=None):
        """Check like ``qemu-img check``; returns a :class:`check.CheckResult`."""
        from .check import check
        if self._writer is not None:
            self._writer.commit()        # check reads the file itself
        return check(self, progress, cancel)

    def repair(self, leaks: bool = True, all: bool = False, progress=None, cancel=None):
        """Repair like ``qemu-img check -r leaks|all`` (image opened writable)."""
        from .check import repair
        try:
            return repair(self, leaks=leaks, all=all, progress=progress, cancel=cancel)
        finally:
            self.invalidate_caches()

    def host_map(self, progress=None, cancel=None):
        """Kind, refcount and references of every host cluster (maps.HostMap)."""
        from .maps import host_map
        return self._cached_map(("host",), lambda: host_map(self, progress, cancel))

    def guest_map(self, snapshot=None, progress=None, cancel=None, follow_backing=True):
        """State and host offset of every guest cluster (maps.GuestMap; a disk of more
        than maps.MAX_GUEST_ENTRIES clusters is summarised, see GuestMap)."""
        from .maps import guest_map
        key = ("guest", None if snapshot is None else str(getattr(snapshot, "id_str", snapshot)),
               follow_backing)
        return self._cached_map(
            key, lambda: guest_map(self, snapshot, progress, cancel, follow_backing))

    def _cached_map(self, key: tuple, build):
        if self._writer is not None:
            self._writer.commit()        # maps read the file itself
        cache = getattr(self, "_maps_cache", None)
        if cache is None:
            cache = self._maps_cache = {}
        hit = cache.get(key)
        if hit is not None and hit[0] == self.file.size:
            return hit[1]
        got = build()
        if not self.writable:    # writes change tables in place: cache read-only opens only
            cache[key] = (self.file.size, got)
        return got

    # refcounts
    @property
    def refcount_table(self) -> np.ndarray:
        return self._reftable

    def refcount_table_entry(self, index: int) -> RefcountTableEntry:
        return RefcountTableEntry(index, int(self._reftable[index]),
                                  self.header.refcount_table_offset + 8 * index)

    def refcount_block(self, rt_index: int) -> tuple[int, np.ndarray] | None:
        """(file offset, counts) of refcount block ``rt_index``, or None if unallocated."""
        off = int(self._reftable[rt_index]) & C.REFT_OFFSET_MASK
        if not off:
            return None
        if off & (self.cluster_size - 1):
            raise CorruptImageError(f"refcount block offset {off:#x} is not cluster aligned",
                                    structure="refcount table entry",
                                    offset=self.header.refcount_table_offset + 8 * rt_index)
        if self._writer is not None:     # counts raised by uncommitted writes
            counts = self._writer.alloc.blocks.get(rt_index)
            if counts is not None:
                return off, counts.copy()
        buf = self.file.pread_exact(off, self.cluster_size, f"refcount block {rt_index}")
        return off, decode_refcount_block(buf, self.header.refcount_order)

    def refcount(self, host_cluster: int) -> int:
        """Refcount of host cluster ``host_cluster`` (0 where no block covers it)."""
        if host_cluster < 0:
            raise RequestError(f"no host cluster {host_cluster}", path=self.path)
        rti, bi = divmod(host_cluster, self.refcount_block_entries)
        if rti >= len(self._reftable):
            return 0
        blk = self.refcount_block(rti)
        return 0 if blk is None else int(blk[1][bi])

    def refcounts(self, nclusters: int | None = None) -> np.ndarray:
        """Refcounts of host clusters 0..nclusters-1 (default: the whole file)."""
        n = self.host_clusters if nclusters is None else nclusters
        out = np.zeros(n, dtype=np.uint64)
        per = self.refcount_block_entries
        for rti in range(min(len(self._reftable), -(-n // per))):
            blk = self.refcount_block(rti)
            if blk is None:
                continue
            lo = rti * per
            hi = min(n, lo + per)
            out[lo:hi] = blk[1][:hi - lo]
        return out

    # -- guest reads --------------------------------------------------------------------
    def _check_request(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise RequestError(f"request {offset:#x}+{length:#x} lies outside the "
                               f"{self.virtual_size}-byte disk", path=self.path)
        if self._closed:
            raise RequestError("the image is closed", path=self.path)

    def _check_encryption(self) -> None:
        if self.encrypted:
            raise EncryptedImageError(
                f"encrypted images are not supported (encryption: {self.encryption}); "
                "the header and encryption details can be inspected, guest data cannot",
                structure="crypt_method", offset=32, path=self.path)

    def read(self, offset: int, length: int) -> bytes:
        """Guest bytes ``offset..offset+length``, byte-exact with QEMU."""
        # Fast path for small reads inside one plain data cluster whose L2 table is
        # cached (random 4 KiB reads); anything else, or any doubt, goes the long way.
        cb = self.cluster_bits
        cidx = offset >> cb
        if (0 <= offset and 0 < length and offset + length <= self.virtual_size
                and (offset + length - 1) >> cb == cidx and not self._closed
                and not self.encrypted and not self.has_data_file):
            l1 = self._l1
            l1i = cidx >> self.l2_bits
            if l1i < len(l1):
                t = self._l2_cache.get(l1[l1i] & C.L1E_OFFSET_MASK)
                if t is not None and t[1] is None:
                    e = t[0][cidx & (self.l2_size - 1)]
                    if not e & self._fast_reject and e & C.L2E_OFFSET_MASK:
                        try:
                            data = os.pread(self.file.fd, length, (e & C.L2E_OFFSET_MASK)
                                            + (offset & (self.cluster_size - 1)))
                        except OSError:
                            data = b""
                        if len(data) == length:
                            return data
        self._check_request(offset, length)
        if length == 0:
            return b""
        self._check_encryption()
        end = offset + length
        first = True
        out: bytearray | None = None
        mv = None
        pos = offset
        while pos < end:
            kind, host, n, src = self._extent(pos, end)
            if first and n == length and kind == ClusterType.NORMAL:
                # the whole request is one contiguous host run
                return src.pread_zero_fill(host, n)
            if first:
                out = bytearray(length)
                mv = memoryview(out)
                first = False
            dst = mv[pos - offset:pos - offset + n]
            if kind == ClusterType.NORMAL:
                got = os.preadv(src.fd, [dst], host)
                if got < n:   # past the end of the file: QEMU reads zeros
                    dst[got:] = bytes(n - got)
            elif kind == ClusterType.COMPRESSED:
                data = self._compressed_cluster(host, src)
                o = pos & (self.cluster_size - 1)
                dst[:] = data[o:o + n]
            elif kind == ClusterType.UNALLOCATED:
                self._read_backing(pos, dst)
            # zero kinds: already zero
            pos += n
        return bytes(out)

    def _read_backing(self, pos: int, dst: memoryview) -> None:
        b = self.backing
        if b is None:
            if self.backing_chain:   # named but unusable
                raise BackingFileError(self.backing_chain[0].error or "backing file missing",
                                       structure="backing file", path=self.path)
            return
        n = min(len(dst), b.virtual_size - pos)
        if n > 0:
            dst[:n] = b.read(pos, n)

    def _compressed_cluster(self, entry: int, src: HostFile) -> bytes:
        zc = self._zcache
        if zc is not None and zc[0] == entry:
            return zc[1]
        coff, csize = self.layout.decode(entry)
        data = src.pread(coff, csize)
        if not data:
            raise CorruptImageError("compressed cluster lies past the end of the file",
                                    structure="compressed cluster", offset=coff)
        out = decompress_cluster(data, self.cluster_size, self.header.compression_type,
                                 offset=coff)
        self._zcache = (entry, out)
        return out

    def _extent(self, pos: int, end: int) -> tuple[ClusterType, int, int, HostFile]:
        """The longest run from ``pos`` (< end) that reads the same way.

        Returns (kind, host offset or compressed entry, length, file); kind is
        one of NORMAL, COMPRESSED, UNALLOCATED (go to backing) or ZERO_PLAIN.
        """
        cb = self.cluster_bits
        cs = self.cluster_size
        cidx = pos >> cb
        l2_bits = self.l2_bits
        l1i = cidx >> l2_bits
        l2i = cidx & (self.l2_size - 1)
        table_end = (l1i + 1) << (l2_bits + cb)
        limit = min(end, table_end)
        l1e = self._l1[l1i] if l1i < len(self._l1) else 0
        l2off = l1e & C.L1E_OFFSET_MASK
        if not l2off:
            return ClusterType.UNALLOCATED, 0, limit - pos, self.file
        raw, bitmap = self._l2(l2off, l1i)
        entry = raw[l2i]
        src = self.data_file if self.has_data_file else self.file
        if bitmap is not None:
            return self._sub_extent(pos, limit, raw, bitmap, l2i, l1i, src)
        in_cluster = pos & (cs - 1)
        cluster_left = cs - in_cluster
        if entry & C.QCOW_OFLAG_COMPRESSED:
            if self.has_data_file:
                self._bad_entry("compressed cluster entry in an image with an external "
                                "data file", l1i, l2i)
            return ClusterType.COMPRESSED, entry, min(cluster_left, limit - pos), self.file
        t = C.cluster_type(entry, self.has_data_file)
        if t in (ClusterType.ZERO_ALLOC, ClusterType.ZERO_PLAIN) and self.header.version < 3:
            self._bad_entry("zero cluster entry in a version 2 image", l1i, l2i)
        if t == ClusterType.NORMAL:
            host = entry & C.L2E_OFFSET_MASK
            self._check_host(host, pos - in_cluster, l1i, l2i)
            n = min(cluster_left, limit - pos)
            # extend over following clusters that are contiguous on the host
            nxt = host + cs
            i = l2i + 1
            while pos + n < limit:
                e = raw[i]
                if e & C.QCOW_OFLAG_COMPRESSED or e & C.QCOW_OFLAG_ZERO \
                        or (e & C.L2E_OFFSET_MASK) != nxt:
                    break
                n = min(n + cs, limit - pos)
                nxt += cs
                i += 1
            return ClusterType.NORMAL, host + in_cluster, n, src
        # zero or unallocated: extend over following entries of the same type
        if t in (ClusterType.ZERO_ALLOC, ClusterType.ZERO_PLAIN):
            host = entry & C.L2E_OFFSET_MASK
            if t == ClusterType.ZERO_ALLOC:
                self._check_host(host, pos - in_cluster, l1i, l2i)
            kind = ClusterType.ZERO_PLAIN
        else:
            kind = ClusterType.UNALLOCATED
        n = min(cluster_left, limit - pos)
        i = l2i + 1
        while pos + n < limit:
            t2 = C.cluster_type(raw[i], self.has_data_file)
            k2 = (ClusterType.ZERO_PLAIN if t2 in (ClusterType.ZERO_ALLOC, ClusterType.ZERO_PLAIN)
                  else t2)
            if k2 != kind:
                break
            n = min(n + cs, limit - pos)
            i += 1
        return kind, 0, n, src

    def _sub_extent(self, pos, limit, raw, bitmap, l2i, l1i, src):
        cs = self.cluster_size
        sc_size = cs // C.SUBCLUSTERS
        entry, bm = raw[l2i], bitmap[l2i]
        in_cluster = pos & (cs - 1)
        sc = in_cluster // sc_size
        t = C.subcluster_type(entry, bm, sc, self.has_data_file)
        cluster_left = cs - in_cluster
        if t == ClusterType.COMPRESSED:
            if self.has_data_file:
                self._bad_entry("compressed cluster entry in an image with an external "
                                "data file", l1i, l2i)
            return ClusterType.COMPRESSED, entry, min(cluster_left, limit - pos), self.file
        if t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC, ClusterType.UNALLOCATED_ALLOC):
            self._check_host(entry & C.L2E_OFFSET_MASK, pos - in_cluster, l1i, l2i)
        if t == ClusterType.INVALID:
            raise CorruptImageError(
                f"extended L2 entry has a sub-cluster both allocated and zero "
                f"(bitmap {bm:#018x})", structure="L2 entry",
                offset=((self._l1[l1i] & C.L1E_OFFSET_MASK) + 16 * l2i))
        kind = {ClusterType.NORMAL: ClusterType.NORMAL,
                ClusterType.ZERO_ALLOC: ClusterType.ZERO_PLAIN,
                ClusterType.ZERO_PLAIN: ClusterType.ZERO_PLAIN}.get(t, ClusterType.UNALLOCATED)
        host = entry & C.L2E_OFFSET_MASK
        if kind == ClusterType.NORMAL and host & (cs - 1):
            self._unaligned(host, l1i, l2i)
        # run of sub-clusters with the same kind inside this cluster
        j = sc + 1
        while j < C.SUBCLUSTERS and (pos - in_cluster) + j * sc_size < limit:
            t2 = C.subcluster_type(entry, bm, j, self.has_data_file)
            k2 = {ClusterType.NORMAL: ClusterType.NORMAL,
                  ClusterType.ZERO_ALLOC: ClusterType.ZERO_PLAIN,
                  ClusterType.ZERO_PLAIN: ClusterType.ZERO_PLAIN,
                  ClusterType.INVALID: ClusterType.INVALID}.get(t2, ClusterType.UNALLOCATED)
            if k2 != kind:
                break
            j += 1
        n = min((pos - in_cluster) + j * sc_size, limit) - pos
        return kind, (host + in_cluster if kind == ClusterType.NORMAL else 0), n, src

    def _check_host(self, host: int, guest_cluster: int, l1i: int, l2i: int) -> None:
        """QEMU's checks of a host cluster offset before it is used (qcow2_get_host_offset)."""
        if host & (self.cluster_size - 1):
            self._unaligned(host, l1i, l2i)
        if self.has_data_file and host != guest_cluster:
            # external data files map guest clusters 1:1
            self._bad_entry(f"external data file host cluster offset {host:#x} does not "
                            f"match guest cluster offset {guest_cluster:#x}", l1i, l2i)

    def _bad_entry(self, what: str, l1i: int, l2i: int) -> None:
        l2off = self._l1[l1i] & C.L1E_OFFSET_MASK
        raise CorruptImageError(f"{what} (L1 index {l1i}, L2 index {l2i})",
                                structure="L2 entry",
                                offset=l2off + self.header.l2_entry_size * l2i)

    def _unaligned(self, host: int, l1i: int, l2i: int) -> None:
        l2off = self._l1[l1i] & C.L1E_OFFSET_MASK
        raise CorruptImageError(
            f"cluster allocation offset {host:#x} is not cluster aligned "
            f"(L1 index {l1i}, L2 index {l2i})", structure="L2 entry",
            offset=l2off + self.header.l2_entry_size * l2i)

    # -- introspection ------------------------------------------------------------------
    def guest_mapping(self, guest_offset: int) -> GuestMapping:
        """Which table entries map ``guest_offset`` and where its bytes live."""
        self._check_request(guest_offset, 0)
        cb = self.cluster_bits
        cidx = guest_offset >> cb
        l1i, l2i = cidx >> self.l2_bits, cidx & (self.l2_size - 1)
        l1_entry_offset = self.l1_table.offset + 8 * l1i
        l2off = (self._l1[l1i] if l1i < len(self._l1) else 0) & C.L1E_OFFSET_MASK
        l2_entry_offset = None
        t = ClusterType.UNALLOCATED
        host = None
        csize = 0
        if l2off:
            raw, bitmap = self._l2(l2off, l1i)
            l2_entry_offset = l2off + self.header.l2_entry_size * l2i
            entry = raw[l2i]
            in_cluster = guest_offset & (self.cluster_size - 1)
            if bitmap is not None:
                t = C.subcluster_type(entry, bitmap[l2i],
                                      in_cluster // (self.cluster_size // C.SUBCLUSTERS),
                                      self.has_data_file)
            else:
                t = C.cluster_type(entry, self.has_data_file)
            if t == ClusterType.COMPRESSED:
                host, csize = self.layout.decode(entry)
            elif t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC, ClusterType.UNALLOCATED_ALLOC):
                # the byte's own host offset, as qemu-img map reports it
                host = (entry & C.L2E_OFFSET_MASK) + in_cluster
        depth, file = 0, (self.data_file.path if self.has_data_file and self.data_file
                          else self.path)
        if t in (ClusterType.UNALLOCATED, ClusterType.UNALLOCATED_ALLOC):
            b = self.backing
            if isinstance(b, Image) and guest_offset < b.virtual_size:
                sub = b.guest_mapping(guest_offset)
                return GuestMapping(guest_offset, sub.type, sub.depth + 1 if sub.depth >= 0
                                    else -1, sub.host_offset, sub.file, l1i, l2i,
                                    l1_entry_offset, l2_entry_offset, sub.compressed_size)
            if isinstance(b, RawImage) and guest_offset < b.virtual_size:
                return GuestMapping(guest_offset, ClusterType.NORMAL, 1, guest_offset, b.path,
                                    l1i, l2i, l1_entry_offset, l2_entry_offset)
            depth, file = -1, None
        return GuestMapping(guest_offset, t, depth, host, file, l1i, l2i, l1_entry_offset,
                            l2_entry_offset, csize)

    def __repr__(self) -> str:
        mode = "rw" if self.writable else "ro"
        return f"<Image {self.path!r} {self.virtual_size} bytes {mode}>"


def open_image(path: str | os.PathLike, *, writable: bool = False,
               snapshot: str | int | None = None,
               ignore_backing_errors: bool = False, repair: bool = False) -> Image:
    """Open a QCOW2 image (read-only unless asked); use it as a context manager.

    ``snapshot`` (a snapshot id or name) gives a read-only view of the disk as
    that internal snapshot saw it.  ``ignore_backing_errors`` opens an image
    whose backing file is missing or unsupported; reads that reach the backing
    file then raise :class:`BackingFileError`.  ``repair`` (with ``writable``)
    opens an image that is dirty or marked corrupt so that :meth:`Image.repair`
    can fix it, as ``qemu-img check -r`` does.
    """
    if snapshot is not None and writable:
        raise RequestError("a snapshot view is read-only", path=os.fspath(path))
    return Image(path, writable=writable, snapshot=snapshot,
                 ignore_backing_errors=ignore_backing_errors, repair=repair)
