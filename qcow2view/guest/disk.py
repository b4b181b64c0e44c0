"""The guest disk read as a whole: table, volumes, what each holds, their files.

:func:`read_disk` is the one entry point; it never raises for bad guest data (the
problems are listed) and reports progress through ``progress(done, total)``, which
may return False or raise to cancel (then :class:`Cancelled` is raised).
"""

from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass, field
from typing import Callable

from ..engine.errors import Qcow2Error
from .files import Cancelled, Filesystem, TopListed, Volume, short_error
from .partitions import Partition, PartitionTable, Region, read_partition_table
from .probe import Probe, probe
from .source import GuestSource

Progress = Callable[[int, int], object] | None

#: blkid TYPE -> the module and function that list its files
READERS = {"ext2": ("fs_ext", "read_ext"), "ext3": ("fs_ext", "read_ext"),
           "ext4": ("fs_ext", "read_ext"), "vfat": ("fs_fat", "read_fat"),
           "exfat": ("fs_fat", "read_fat"), "ntfs": ("fs_ntfs", "read_ntfs"),
           "xfs": ("fs_xfs", "read_xfs")}


@dataclass
class GuestVolume:
    """A partition (or an LVM logical volume, or the whole disk) and what it holds."""

    partition: Partition
    volume: Volume
    probe: Probe | None = None
    filesystem: Filesystem | None = None
    logical_volumes: list["GuestVolume"] = field(default_factory=list)
    lv_name: str | None = None          # set for LVM logical volumes
    problems: list[str] = field(default_factory=list)
    #: the volume's own structures outside any filesystem (an LVM label and metadata
    #: area), as guest ranges
    regions: list[Region] = field(default_factory=list)


@dataclass
class GuestDisk:
    size: int
    table: PartitionTable
    volumes: list[GuestVolume] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unreadable: str | None = None       # "unreadable: reason" when no guest byte reads

    def filesystems(self):
        """(GuestVolume, Filesystem) of every filesystem, LVs included, in disk order."""
        for v in self.volumes:
            for sub in [v] + v.logical_volumes:
                if sub.filesystem is not None:
                    yield sub, sub.filesystem


class _Ticker:
    """Calls the caller's progress every so many entries; turns a False into Cancelled."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.total = max(1, total)
        self.done = 0

    def report(self) -> None:
        if self.progress is not None:
            try:
                ok = self.progress(min(self.done, self.total - 1), self.total)
            except Cancelled:
                raise
            except Exception as e:     # the caller's way to cancel
                raise Cancelled(str(e)) from e
            if ok is False:
                raise Cancelled("cancelled")

    def tick(self, n: int = 1) -> None:
        self.done += n
        self.report()


def _safe_read(src: GuestSource):
    def read(offset: int, length: int) -> bytes:
        return src.pread(offset, length)
    return read


def _source_of(src: GuestSource, gv: GuestVolume) -> GuestSource:
    if len(gv.volume.pieces) == 1:
        return src.slice(gv.volume.start, gv.volume.size)
    return src.mapped(gv.volume.pieces, gv.volume.size)


def probe_volume(src: GuestSource, gv: GuestVolume) -> int:
    """Probe ``gv`` (and the LVs of an LVM PV); the entries expected, for progress."""
    vsrc = _source_of(src, gv)
    try:
        gv.probe = p = probe(_safe_read(vsrc), vsrc.size)
    except (struct.error, ValueError, IndexError) as e:
        gv.problems.append(f"superblock unreadable ({e})")
        return 0
    if p is None:
        return 0
    if p.type == "LVM2_member" and gv.lv_name is None:
        from .lvm import read_lvm
        try:
            read_lvm(vsrc, gv)
        except (KeyError, ValueError, TypeError, AttributeError, struct.error) as e:
            gv.problems.append(f"LVM metadata unusable ({type(e).__name__}: {e})")
            gv.logical_volumes = []
        return sum(probe_volume(src, lv) for lv in gv.logical_volumes)
    gv.problems.extend(p.problems)
    return p.entries


def list_files(src: GuestSource, gv: GuestVolume, ticker: _Ticker,
               top_only: bool = False) -> None:
    """List the files of the filesystem the probe found in ``gv`` (and in its LVs);
    with ``top_only``, those of the root directory only."""
    for lv in gv.logical_volumes:
        list_files(src, lv, ticker, top_only)
    p = gv.probe
    if p is None or p.type == "LVM2_member":
        return
    fs = Filesystem(p.type, p.label, p.uuid, gv.volume, p.block_size or 512,
                    top_only=top_only)
    fs.problems.extend(p.problems)
    gv.problems = [x for x in gv.problems if x not in p.problems]
    gv.filesystem = fs
    reader = READERS.get(p.type)
    if reader is None:
        fs.readable, fs.reason = False, f"files of {p.type} are not listed"
        return
    _read_files(src, gv, fs, reader, ticker.tick)
    if p.label is None and fs.label:        # NTFS keeps its label in $Volume
        p.label = fs.label
    ticker.report()


def _read_files(src: GuestSource, gv: GuestVolume, fs: Filesystem, reader, tick) -> None:
    """Run the filesystem's reader; what goes wrong is said in ``fs``."""
    fn = getattr(importlib.import_module(f"{__package__}.{reader[0]}"), reader[1])
    try:
        fn(_source_of(src, gv), fs, tick)
    except Qcow2Error as e:
        fs.readable, fs.reason = False, f"unreadable: {e.reason}"
    except Cancelled:
        raise
    except TopListed:
        pass
    except Exception as e:  # noqa: BLE001 - untrusted data through a C library: a problem
        fs.readable, fs.reason = False, f"unreadable: {type(e).__name__}: {short_error(e)}"
        fs.problem(f"files not listed: {type(e).__name__}: {short_error(e)}")


def list_directory(image, gv: GuestVolume, path: str,
                   tick: Callable[[int], None] = lambda n: None) -> Filesystem:
    """Directory ``path`` of the filesystem of ``gv`` (a volume of a first look) read
    alone, for a tree that has only the root directories yet: its entries are the
    returned Filesystem's ``files`` (``problems`` and ``reason`` say what went wrong).
    Reads ``image`` only through ``Image.read``; ``tick`` may raise Cancelled."""
    p = gv.probe
    fs = Filesystem(p.type, p.label, p.uuid, gv.volume, p.block_size or 512,
                    top_only=True, top_dir=path)
    reader = READERS.get(p.type)
    if reader is None:
        fs.readable, fs.reason = False, f"files of {p.type} are not listed"
    else:
        _read_files(GuestSource.of_image(image), gv, fs, reader, tick)
    return fs


def read_disk(image, progress: Progress = None, top_only: bool = False) -> GuestDisk:
    """Everything the guest disk of ``image`` (an engine Image) holds; with
    ``top_only`` a first look: the table, the volumes, and each filesystem's root
    directory (the deeper walk and the readers' counts skipped; a few milliseconds)."""
    return read_source(GuestSource.of_image(image), progress, top_only)


def read_source(src: GuestSource, progress: Progress = None,
                top_only: bool = False) -> GuestDisk:
    size = src.size
    read = _safe_read(src)
    try:
        def fs_at_zero() -> bool:
            p = probe(read, size)
            return p is not None and p.type in ("vfat", "ntfs", "exfat")
        table = read_partition_table(read, size, fs_at_zero)
        disk = GuestDisk(size, table, problems=list(table.problems))
        parts = [p for p in table.partitions if p.kind != "extended"]
        if table.kind is None:
            parts = [Partition(0, 0, size, "whole disk", "", kind="whole disk")]
        expected = 0
        for p in parts:
            start = min(max(0, p.start), size)
            gv = GuestVolume(p, Volume.linear(start, max(0, min(p.size, size - start))))
            try:
                expected += probe_volume(src, gv)
            except Qcow2Error as e:        # this partition's bytes only (a backing gap)
                if table.kind is None:
                    raise
                gv.problems.append(f"unreadable: {e.reason}")
            if table.kind is None and gv.probe is None:
                continue        # no table and nothing at offset 0: no whole-disk entry
            disk.volumes.append(gv)
    except Qcow2Error as e:
        return GuestDisk(size, PartitionTable(None), unreadable=f"unreadable: {e.reason}")
    ticker = _Ticker(progress, expected + len(disk.volumes))
    ticker.report()
    for gv in disk.volumes:
        list_files(src, gv, ticker, top_only)
        ticker.done += 1
    for gv in disk.volumes:
        for sub in [gv] + gv.logical_volumes:
            disk.problems.extend(_prefixed(sub))
    if progress is not None:
        progress(ticker.total, ticker.total)
    return disk


def _prefixed(gv: GuestVolume) -> list[str]:
    where = f"LV {gv.lv_name}" if gv.lv_name else f"partition {gv.partition.index}"
    out = [f"{where}: {p}" for p in gv.problems]
    fs = gv.filesystem
    if fs is not None:
        out += [f"{where}: {p}" for p in fs.problems]
        if fs.skipped:
            out.append(f"{where}: {fs.skipped} entries could not be read")
    return out


#: blkid TYPE -> the libyal module that reads its files
LIBRARIES = {"ext2": "pyfsext", "ext3": "pyfsext", "ext4": "pyfsext", "vfat": "pyfsfat",
             "exfat": "pyfsfat", "ntfs": "pyfsntfs", "xfs": "pyfsxfs"}


def read_through_library(src: GuestSource, gv: GuestVolume, path: str, size: int) -> bytes:
    """A file's bytes as the filesystem library reads them (for inline/resident
    data, which has no extents of its own)."""
    lib = importlib.import_module(LIBRARIES[gv.filesystem.type])
    vol = lib.volume()
    vsrc = _source_of(src, gv)
    try:
        vol.open_file_object(vsrc)
        e = vol.get_file_entry_by_path(path.replace("/", "\\") if lib.__name__ == "pyfsntfs"
                                       else path)
        if e is None:
            raise OSError(f"{path}: not found")
        data = e.read(size) if size else b""
        if lib.__name__ == "pyfsext" and size > EXT_INLINE_BYTES:
            data = _ext_inline_tail(e, data, size)
        return data
    except (OSError, ValueError) as err:
        vsrc.reraise()
        raise OSError(f"{path}: unreadable ({short_error(err)})") from None
    finally:
        vol.close()


EXT_INLINE_BYTES = 60          # inline data inside the inode's i_block; the rest is an xattr


def _ext_inline_tail(e, data: bytes, size: int) -> bytes:
    """ext4 inline data past the inode's 60 bytes lives in the 'system.data' extended
    attribute (libfsext reads that part as zeros)."""
    try:
        for i in range(e.number_of_extended_attributes):
            a = e.get_extended_attribute(i)
            if a.name == "system.data":
                tail = a.read_buffer(a.size)
                return (data[:EXT_INLINE_BYTES] + tail)[:size]
    except (OSError, ValueError):
        pass
    return data

