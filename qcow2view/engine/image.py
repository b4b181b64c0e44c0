"""An opened QCOW2 image: header, tables, backing chain and guest reads.

:func:`open_image` is the entry point.  Every table read from the file is
checked against the file's size before it is read, and every field that sizes
an allocation was bounded by :meth:`Header.validate` first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from . import clusters as C
from .backing import (MAX_BACKING_DEPTH, BackingInfo, RawImage, is_protocol_name,
                      probe_format)
from .bitmaps import Bitmap
from .clusters import ClusterType, CompressionLayout
from .compression import decompress_cluster
from .errors import (BackingFileError, CorruptImageError, DataFileError, EncryptedImageError,
                     Qcow2Error, ReadOnlyError, RequestError, UnsupportedFeatureError)
from .extensions import (EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FULL_DISK_ENCRYPTION,
                         HeaderExtension, feature_name_table, parse_extensions)
from .fileio import HostFile
from .header import (AUTOCLEAR_BITMAPS, CRYPT_METHODS, FEATURE_INCOMPATIBLE, FIELD_BY_NAME,
                     INCOMPAT_KNOWN, Header, feature_bit_names)
from .locking import describe, held_lock_bytes
from .metadata import L1Table, L2Table, MetadataStore, header_probe
from .refcounts import RefcountTableEntry
from .snapshots import Snapshot

if TYPE_CHECKING:
    from .encryption import LuksHeader
    from .write import Writer

# The writer, the check and the maps are imported where first used: a command
# that needs one of them (``check`` of a 1 TiB image: ~0.3 s in all) does not pay
# for loading the others.

__all__ = ["BackingInfo", "GuestMapping", "Image", "L1Table", "L2Table", "RawImage",
           "open_image", "probe_format"]

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


_Backing = Union["Image", RawImage, None]


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
        host_file = self.file
        head = header_probe(host_file)
        header = Header.parse(head, file_size=host_file.size)
        self.cluster_bits = header.cluster_bits
        self.cluster_size = cs = header.cluster_size
        if len(head) < min(cs, host_file.size):
            head = host_file.pread(0, min(cs, host_file.size))
        name_at = header.backing_file_offset
        ext_end = name_at if name_at > header.extensions_offset else cs
        self.extensions: list[HeaderExtension] = (
            parse_extensions(head, header.extensions_offset, ext_end)
            if header.version >= 2 else [])
        self.feature_names = feature_name_table(self.extensions)
        unknown = header.incompatible_features & ~INCOMPAT_KNOWN
        if unknown:
            names = feature_bit_names(FEATURE_INCOMPATIBLE, unknown, self.feature_names)
            raise UnsupportedFeatureError(
                f"unsupported incompatible features: {', '.join(names)} "
                f"(bits {unknown:#x})", structure="incompatible_features",
                offset=FIELD_BY_NAME["incompatible_features"].offset)
        self.l2_bits = header.l2_bits
        self.l2_size = header.l2_size
        self.extended_l2 = header.extended_l2
        self.layout = CompressionLayout(header.cluster_bits)
        self.encrypted = header.crypt_method != 0
        # QEMU keeps the name as a C string: up to the first NUL; empty means none
        name = (head[name_at:name_at + header.backing_file_size].split(b"\0", 1)[0]
                if name_at else b"")
        self.backing_filename = name.decode("utf-8", "replace") if name else None
        self.backing_format = self._ext_text(EXT_BACKING_FORMAT)
        self.data_file_name = self._ext_text(EXT_DATA_FILE)
        self.has_data_file = header.has_data_file
        # The view of a snapshot keeps today's virtual size, as `qemu-img convert -l`
        # reads it (past a smaller snapshot's L1 table the disk is unallocated); the
        # size the snapshot had is `snapshot.disk_size` (what `snapshot -a` restores).
        self.meta = MetadataStore(host_file, header, self.extensions, snapshot=snapshot,
                                  writable=self.writable)
        # L2 entry bits that keep a read off the fast path: anything but COPIED and a
        # cluster-aligned offset (compressed, zero, reserved bits, misalignment)
        self._fast_reject = ~(C.QCOW_OFLAG_COPIED | (C.L2E_OFFSET_MASK & ~(cs - 1))) \
            & 0xFFFFFFFFFFFFFFFF

        if self.has_data_file:
            self._open_data_file()
        self.backing_chain: list[BackingInfo] = []
        self._open_backing(ignore_backing_errors, chain)

    # -- what the metadata store holds -------------------------------------------------
    @property
    def header(self) -> Header:
        return self.meta.header

    @property
    def virtual_size(self) -> int:
        return self.meta.header.size

    @property
    def file_size(self) -> int:
        return self.file.size

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot this read-only view shows (None: the active disk)."""
        return self.meta.view

    @property
    def snapshots(self) -> list[Snapshot]:
        return self.meta.snapshots

    @property
    def bitmaps(self) -> list[Bitmap]:
        return self.meta.bitmaps

    @property
    def l1_table(self) -> L1Table:
        return self.meta.l1_table

    @property
    def refcount_block_entries(self) -> int:
        return self.meta.refcount_block_entries

    def _ext_text(self, ext_type: int) -> str | None:
        for e in self.extensions:
            if e.type == ext_type:
                return e.text
        return None

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
        if is_protocol_name(name):
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
        backing = self.backing
        self.backing_chain = [BackingInfo(1, name, path, fmt, True, backing.virtual_size)]
        for sub in backing.backing_chain:
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
            held = held_lock_bytes(self.file.fd)
            self.in_use = bool(held)
            self.in_use_by = describe(held)

    def require_writable(self) -> None:
        """Refuse a closed or read-only image before changing anything."""
        self._write_side()

    def _write_side(self) -> Writer:
        if self._closed:
            raise RequestError("the image is closed", path=self.path)
        if self._writer is None:
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
        from .encryption import LUKS_HEADER_SIZE, parse_luks_header   # (rarely needed)
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
        return self.meta.find_snapshot(key)

    # -- tables (read through the metadata store) ------------------------------------------
    def snapshot_l1_table(self, snapshot: Snapshot | str | int) -> L1Table:
        snap = snapshot if isinstance(snapshot, Snapshot) else self.find_snapshot(snapshot)
        return self.meta.snapshot_l1_table(snap)

    def read_l2_bytes(self, l2_offset: int, l1_index: int = -1) -> bytes:
        """The L2 table's bytes (with the changes writes have not committed yet)."""
        return self.meta.read_l2_bytes(l2_offset, l1_index)

    def l2_table(self, l2_offset: int, l1_index: int = -1) -> L2Table:
        """Decode the L2 table at ``l2_offset`` (one table at a time, on demand)."""
        return self.meta.l2_table(l2_offset, l1_index)

    def reload_metadata(self) -> None:
        """Re-read header, refcount table, snapshots and the active L1 table after an
        operation that rewrote them.  Pending writes must have been committed
        (``flush()``) first."""
        self.meta.reload()

    def invalidate_caches(self) -> None:
        """Forget cached tables (after the file changed underneath)."""
        self.meta.invalidate()

    # -- check, repair and maps (engine/check.py, engine/maps.py) ---------------------
    def check(self, progress=None, cancel=None):
        """Check like ``qemu-img check``; returns a :class:`check.CheckResult`."""
        if self._writer is not None:
            self._writer.commit()        # check reads the file itself
        from .check import check as check_image
        return check_image(self, progress, cancel)

    def repair(self, leaks: bool = True, fix_all: bool = False, progress=None, cancel=None):
        """Repair like ``qemu-img check -r leaks`` (or ``-r all`` with ``fix_all``; the
        image opened writable)."""
        try:
            from .check import repair as repair_image
            return repair_image(self, leaks=leaks, fix_all=fix_all, progress=progress,
                                cancel=cancel)
        finally:
            self.invalidate_caches()

    def host_map(self, progress=None, cancel=None):
        """Kind, refcount and references of every host cluster (maps.HostMap)."""
        from .maps import host_map as build_host_map
        return self._cached_map(("host",), lambda: build_host_map(self, progress, cancel))

    def guest_map(self, snapshot=None, progress=None, cancel=None, follow_backing=True):
        """State and host offset of every guest cluster (maps.GuestMap; a disk of more
        than maps.MAX_GUEST_ENTRIES clusters is summarised, see GuestMap)."""
        key = ("guest", None if snapshot is None else str(getattr(snapshot, "id_str", snapshot)),
               follow_backing)
        from .maps import guest_map as build_guest_map
        return self._cached_map(
            key, lambda: build_guest_map(self, snapshot, progress, cancel, follow_backing))

    def cached_map(self, key: tuple):
        """A map built before for this file size (read-only opens only), or None."""
        hit = self.meta.maps_cache.get(key)
        return hit[1] if hit is not None and hit[0] == self.file.size else None

    def _cached_map(self, key: tuple, build):
        if self._writer is not None:
            self._writer.commit()        # maps read the file itself
        hit = self.cached_map(key)
        if hit is not None:
            return hit
        got = build()
        if not self.writable:    # writes change tables in place: cache read-only opens only
            self.meta.maps_cache[key] = (self.file.size, got)
        return got

    # refcounts
    @property
    def refcount_table(self) -> np.ndarray:
        return self.meta.reftable

    def refcount_table_entry(self, index: int) -> RefcountTableEntry:
        return RefcountTableEntry(index, int(self.meta.reftable[index]),
                                  self.header.refcount_table_offset + 8 * index)

    def refcount_block(self, rt_index: int) -> tuple[int, np.ndarray] | None:
        """(file offset, counts) of refcount block ``rt_index``, or None if unallocated."""
        return self.meta.refcount_block(rt_index)

    def refcount(self, host_cluster: int) -> int:
        """Refcount of host cluster ``host_cluster`` (0 where no block covers it)."""
        if host_cluster < 0:
            raise RequestError(f"no host cluster {host_cluster}", path=self.path)
        rti, bi = divmod(host_cluster, self.refcount_block_entries)
        if rti >= len(self.meta.reftable):
            return 0
        blk = self.refcount_block(rti)
        return 0 if blk is None else int(blk[1][bi])

    def refcounts(self, nclusters: int | None = None) -> np.ndarray:
        """Refcounts of host clusters 0..nclusters-1 (default: the whole file)."""
        count = self.host_clusters if nclusters is None else nclusters
        out = np.zeros(count, dtype=np.uint64)
        per = self.refcount_block_entries
        for rti in range(min(len(self.meta.reftable), -(-count // per))):
            blk = self.refcount_block(rti)
            if blk is None:
                continue
            lo = rti * per
            hi = min(count, lo + per)
            out[lo:hi] = blk[1][:hi - lo]
        return out

    # -- guest reads --------------------------------------------------------------------
    def check_request(self, offset: int, length: int) -> None:
        """Refuse a guest range outside the disk, or any request once closed."""
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
                structure="crypt_method",
                offset=FIELD_BY_NAME["crypt_method"].offset, path=self.path)

    def read(self, offset: int, length: int) -> bytes:
        """Guest bytes ``offset..offset+length``, byte-exact with QEMU."""
        # Fast path for small reads inside one plain data cluster whose L2 table is
        # cached (random 4 KiB reads); anything else, or any doubt, goes the long way.
        cb = self.cluster_bits
        cidx = offset >> cb
        if (0 <= offset and 0 < length and offset + length <= self.virtual_size
                and (offset + length - 1) >> cb == cidx and not self._closed
                and not self.encrypted and not self.has_data_file):
            meta = self.meta
            l1 = meta.l1
            l1i = cidx >> self.l2_bits
            if l1i < len(l1):
                table = meta.l2_cache.get(l1[l1i] & C.L1E_OFFSET_MASK)
                if table is not None and table[1] is None:
                    entry = table[0][cidx & (self.l2_size - 1)]
                    if not entry & self._fast_reject and entry & C.L2E_OFFSET_MASK:
                        try:
                            data = os.pread(self.file.fd, length, (entry & C.L2E_OFFSET_MASK)
                                            + (offset & (self.cluster_size - 1)))
                        except OSError:
                            data = b""
                        if len(data) == length:
                            return data
        self.check_request(offset, length)
        if length == 0:
            return b""
        self._check_encryption()
        end = offset + length
        first = True
        out: bytearray | None = None
        mv = None
        pos = offset
        while pos < end:
            kind, host, size, src = self._extent(pos, end)
            if first and size == length and kind == ClusterType.NORMAL:
                # the whole request is one contiguous host run
                return src.pread_zero_fill(host, size)
            if first:
                out = bytearray(length)
                mv = memoryview(out)
                first = False
            dst = mv[pos - offset:pos - offset + size]
            if kind == ClusterType.NORMAL:
                got = os.preadv(src.fd, [dst], host)
                if got < size:   # past the end of the file: QEMU reads zeros
                    dst[got:] = bytes(size - got)
            elif kind == ClusterType.COMPRESSED:
                data = self._compressed_cluster(host, src)
                in_cluster = pos & (self.cluster_size - 1)
                dst[:] = data[in_cluster:in_cluster + size]
            elif kind == ClusterType.UNALLOCATED:
                self._read_backing(pos, dst)
            # zero kinds: already zero
            pos += size
        return bytes(out)

    def _read_backing(self, pos: int, dst: memoryview) -> None:
        backing = self.backing
        if backing is None:
            if self.backing_chain:   # named but unusable
                raise BackingFileError(self.backing_chain[0].error or "backing file missing",
                                       structure="backing file", path=self.path)
            return
        size = min(len(dst), backing.virtual_size - pos)
        if size > 0:
            dst[:size] = backing.read(pos, size)

    def _compressed_cluster(self, entry: int, src: HostFile) -> bytes:
        zc = self.meta.compressed_cache
        if zc is not None and zc[0] == entry:
            return zc[1]
        coff, csize = self.layout.decode(entry)
        data = src.pread(coff, csize)
        if not data:
            raise CorruptImageError("compressed cluster lies past the end of the file",
                                    structure="compressed cluster", offset=coff)
        out = decompress_cluster(data, self.cluster_size, self.header.compression_type,
                                 offset=coff)
        self.meta.remember_compressed(entry, out)
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
        l1 = self.meta.l1
        l1e = l1[l1i] if l1i < len(l1) else 0
        l2off = l1e & C.L1E_OFFSET_MASK
        if not l2off:
            return ClusterType.UNALLOCATED, 0, limit - pos, self.file
        raw, bitmap = self.meta.l2(l2off, l1i)
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
        ctype = C.cluster_type(entry, self.has_data_file)
        if ctype in (ClusterType.ZERO_ALLOC, ClusterType.ZERO_PLAIN) and self.header.version < 3:
            self._bad_entry("zero cluster entry in a version 2 image", l1i, l2i)
        if ctype == ClusterType.NORMAL:
            host = entry & C.L2E_OFFSET_MASK
            self._check_host(host, pos - in_cluster, l1i, l2i)
            size = min(cluster_left, limit - pos)
            # extend over following clusters that are contiguous on the host
            nxt = host + cs
            index = l2i + 1
            while pos + size < limit:
                if not C.continues_run(raw[index], nxt):
                    break
                size = min(size + cs, limit - pos)
                nxt += cs
                index += 1
            return ClusterType.NORMAL, host + in_cluster, size, src
        # zero or unallocated: extend over following entries of the same type
        if ctype in (ClusterType.ZERO_ALLOC, ClusterType.ZERO_PLAIN):
            host = entry & C.L2E_OFFSET_MASK
            if ctype == ClusterType.ZERO_ALLOC:
                self._check_host(host, pos - in_cluster, l1i, l2i)
            kind = ClusterType.ZERO_PLAIN
        else:
            kind = ClusterType.UNALLOCATED
        size = min(cluster_left, limit - pos)
        index = l2i + 1
        while pos + size < limit:
            t2 = C.cluster_type(raw[index], self.has_data_file)
            k2 = (ClusterType.ZERO_PLAIN if t2 in (ClusterType.ZERO_ALLOC, ClusterType.ZERO_PLAIN)
                  else t2)
            if k2 != kind:
                break
            size = min(size + cs, limit - pos)
            index += 1
        return kind, 0, size, src

    def _sub_extent(self, pos, limit, raw, bitmap, l2i, l1i, src):
        cs = self.cluster_size
        sc_size = cs // C.SUBCLUSTERS
        entry, bm = raw[l2i], bitmap[l2i]
        in_cluster = pos & (cs - 1)
        sc = in_cluster // sc_size
        ctype = C.subcluster_type(entry, bm, sc, self.has_data_file)
        cluster_left = cs - in_cluster
        if ctype == ClusterType.COMPRESSED:
            if self.has_data_file:
                self._bad_entry("compressed cluster entry in an image with an external "
                                "data file", l1i, l2i)
            return ClusterType.COMPRESSED, entry, min(cluster_left, limit - pos), self.file
        if ctype in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC, ClusterType.UNALLOCATED_ALLOC):
            self._check_host(entry & C.L2E_OFFSET_MASK, pos - in_cluster, l1i, l2i)
        if ctype == ClusterType.INVALID:
            raise CorruptImageError(
                f"extended L2 entry has a sub-cluster both allocated and zero "
                f"(bitmap {bm:#018x})", structure="L2 entry",
                offset=((self.meta.l1[l1i] & C.L1E_OFFSET_MASK) + 16 * l2i))
        kind = {ClusterType.NORMAL: ClusterType.NORMAL,
                ClusterType.ZERO_ALLOC: ClusterType.ZERO_PLAIN,
                ClusterType.ZERO_PLAIN: ClusterType.ZERO_PLAIN}.get(ctype, ClusterType.UNALLOCATED)
        host = entry & C.L2E_OFFSET_MASK
        if kind == ClusterType.NORMAL and host & (cs - 1):
            self._unaligned(host, l1i, l2i)
        # run of sub-clusters with the same kind inside this cluster
        sub = sc + 1
        while sub < C.SUBCLUSTERS and (pos - in_cluster) + sub * sc_size < limit:
            t2 = C.subcluster_type(entry, bm, sub, self.has_data_file)
            k2 = {ClusterType.NORMAL: ClusterType.NORMAL,
                  ClusterType.ZERO_ALLOC: ClusterType.ZERO_PLAIN,
                  ClusterType.ZERO_PLAIN: ClusterType.ZERO_PLAIN,
                  ClusterType.INVALID: ClusterType.INVALID}.get(t2, ClusterType.UNALLOCATED)
            if k2 != kind:
                break
            sub += 1
        size = min((pos - in_cluster) + sub * sc_size, limit) - pos
        return kind, (host + in_cluster if kind == ClusterType.NORMAL else 0), size, src

    def _check_host(self, host: int, guest_cluster: int, l1i: int, l2i: int) -> None:
        """QEMU's checks of a host cluster offset before it is used (qcow2_get_host_offset)."""
        if host & (self.cluster_size - 1):
            self._unaligned(host, l1i, l2i)
        if self.has_data_file and host != guest_cluster:
            # external data files map guest clusters 1:1
            self._bad_entry(f"external data file host cluster offset {host:#x} does not "
                            f"match guest cluster offset {guest_cluster:#x}", l1i, l2i)

    def _bad_entry(self, what: str, l1i: int, l2i: int) -> None:
        l2off = self.meta.l1[l1i] & C.L1E_OFFSET_MASK
        raise CorruptImageError(f"{what} (L1 index {l1i}, L2 index {l2i})",
                                structure="L2 entry",
                                offset=l2off + self.header.l2_entry_size * l2i)

    def _unaligned(self, host: int, l1i: int, l2i: int) -> None:
        l2off = self.meta.l1[l1i] & C.L1E_OFFSET_MASK
        raise CorruptImageError(
            f"cluster allocation offset {host:#x} is not cluster aligned "
            f"(L1 index {l1i}, L2 index {l2i})", structure="L2 entry",
            offset=l2off + self.header.l2_entry_size * l2i)

    # -- introspection ------------------------------------------------------------------
    def guest_mapping(self, guest_offset: int) -> GuestMapping:
        """Which table entries map ``guest_offset`` and where its bytes live."""
        self.check_request(guest_offset, 0)
        cb = self.cluster_bits
        cidx = guest_offset >> cb
        l1i, l2i = cidx >> self.l2_bits, cidx & (self.l2_size - 1)
        l1_entry_offset = self.l1_table.offset + 8 * l1i
        l1 = self.meta.l1
        l2off = (l1[l1i] if l1i < len(l1) else 0) & C.L1E_OFFSET_MASK
        l2_entry_offset = None
        ctype = ClusterType.UNALLOCATED
        host = None
        csize = 0
        if l2off:
            raw, bitmap = self.meta.l2(l2off, l1i)
            l2_entry_offset = l2off + self.header.l2_entry_size * l2i
            entry = raw[l2i]
            in_cluster = guest_offset & (self.cluster_size - 1)
            if bitmap is not None:
                ctype = C.subcluster_type(entry, bitmap[l2i],
                                      in_cluster // (self.cluster_size // C.SUBCLUSTERS),
                                      self.has_data_file)
            else:
                ctype = C.cluster_type(entry, self.has_data_file)
            if ctype == ClusterType.COMPRESSED:
                host, csize = self.layout.decode(entry)
            elif ctype in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC,
                           ClusterType.UNALLOCATED_ALLOC):
                # the byte's own host offset, as qemu-img map reports it
                host = (entry & C.L2E_OFFSET_MASK) + in_cluster
        depth, file = 0, (self.data_file.path if self.has_data_file and self.data_file
                          else self.path)
        if ctype in (ClusterType.UNALLOCATED, ClusterType.UNALLOCATED_ALLOC):
            backing = self.backing
            if isinstance(backing, Image) and guest_offset < backing.virtual_size:
                sub = backing.guest_mapping(guest_offset)
                return GuestMapping(guest_offset, sub.type, sub.depth + 1 if sub.depth >= 0
                                    else -1, sub.host_offset, sub.file, l1i, l2i,
                                    l1_entry_offset, l2_entry_offset, sub.compressed_size)
            if isinstance(backing, RawImage) and guest_offset < backing.virtual_size:
                return GuestMapping(guest_offset, ClusterType.NORMAL, 1, guest_offset, backing.path,
                                    l1i, l2i, l1_entry_offset, l2_entry_offset)
            depth, file = -1, None
        return GuestMapping(guest_offset, ctype, depth, host, file, l1i, l2i, l1_entry_offset,
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
