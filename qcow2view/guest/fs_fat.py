"""FAT12/16/32 and exFAT through libfsfat; reserved sectors (boot regions), FATs and
the FAT12/16 root directory computed from the boot sector."""

from __future__ import annotations

import datetime as _dt
import struct

import numpy as np

from ..engine.errors import Qcow2Error

from .files import FileInfo, Filesystem, map_extents, open_volume, short_error, utc_seconds, walk

ATTR_DIRECTORY = 0x10


def fat_metadata(src, fs: Filesystem) -> None:
    bs = src.pread(0, 512)
    if len(bs) < 512:
        fs.problem("FAT boot sector unreadable")
        return
    bps, spc, reserved, nfats, root_entries, total16 = struct.unpack_from("<HBHBHH", bs, 11)
    fatsz = struct.unpack_from("<H", bs, 22)[0] or struct.unpack_from("<I", bs, 36)[0]
    total = total16 or struct.unpack_from("<I", bs, 32)[0]
    if not bps or not spc:
        fs.problem("FAT boot sector: geometry out of range")
        return
    fs.block_size = bps * spc
    fs.add_metadata(0, reserved * bps, "boot sector and reserved sectors")
    for i in range(nfats):
        fs.add_metadata((reserved + i * fatsz) * bps, fatsz * bps, f"FAT {i + 1}")
    if root_entries:
        fs.add_metadata((reserved + nfats * fatsz) * bps, root_entries * 32, "root directory")
    if total * bps > fs.volume.size:
        fs.problem(f"FAT boot sector: {total} sectors exceed the {fs.volume.size}-byte volume")
    data_start = (reserved + nfats * fatsz) * bps + root_entries * 32
    clusters = max(0, (min(total * bps, fs.volume.size) - data_start) // (bps * spc))
    _fat_allocated(src, fs, reserved * bps, fatsz * bps, clusters, data_start, bps * spc)


MAX_FAT_BYTES = 64 << 20


def _fat_allocated(src, fs: Filesystem, fat_at: int, fat_bytes: int, clusters: int,
                   data_start: int, cluster: int) -> None:
    """Clusters the first FAT marks in use, as guest runs (FAT16 and FAT32)."""
    if fs.top_only:                     # a first look: the index reads it (up to 64 MiB)
        return
    if clusters < 4085:                 # FAT12: 12-bit entries, and small: not mapped
        return
    width = 2 if clusters < 65525 else 4
    need = (clusters + 2) * width
    if need > min(fat_bytes, MAX_FAT_BYTES):
        return
    try:
        raw = src.pread(fat_at, need)
    except Qcow2Error as e:
        fs.problem(f"FAT unreadable ({e.reason})")
        return
    fat = np.frombuffer(raw[:need], "<u2" if width == 2 else "<u4")[2:]
    if width == 4:
        fat = fat & 0x0FFFFFFF
    used = np.concatenate(([0], (fat != 0).astype(np.int8), [0]))
    edges = np.diff(used)
    for s, e in zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()):
        fs.add_allocated(data_start + s * cluster, (e - s) * cluster)


def exfat_metadata(src, fs: Filesystem) -> None:
    """exFAT: the main and backup boot regions (12 sectors each), the FATs and the
    cluster heap's start, from the boot sector."""
    bs = src.pread(0, 512)
    if len(bs) < 512:
        fs.problem("exFAT boot sector unreadable")
        return
    fat_off, fat_len, heap_off = struct.unpack_from("<III", bs, 0x50)
    sector_shift, cluster_shift, nfats = bs[0x6C], bs[0x6D], bs[0x6E]
    if not 9 <= sector_shift <= 12 or cluster_shift > 25 - sector_shift or nfats not in (1, 2):
        fs.problem("exFAT boot sector: geometry out of range")
        return
    ss = 1 << sector_shift
    fs.block_size = ss << cluster_shift
    fs.add_metadata(0, 12 * ss, "boot region")
    fs.add_metadata(12 * ss, 12 * ss, "backup boot region")
    for i in range(nfats):
        fs.add_metadata((fat_off + i * fat_len) * ss, fat_len * ss, f"FAT {i + 1}")


def _entry_mtime(src, offset: int) -> float | None:
    """Modification time from the short directory entry at or after ``offset``
    (libfsfat's identifier; its own date conversion is a month off)."""
    raw = src.pread(offset, 32 * 21)
    for o in range(0, len(raw) - 31, 32):
        if raw[o + 11] != 0x0F:                   # skip long-name entries
            time, date = struct.unpack_from("<HH", raw, o + 0x16)
            return _fat_time(date, time)
    return None


def _fat_time(date: int, time: int) -> float | None:
    try:
        d = _dt.datetime(1980 + (date >> 9), date >> 5 & 15, date & 31,
                         time >> 11, time >> 5 & 63, (time & 31) * 2, tzinfo=_dt.timezone.utc)
    except ValueError:
        return None
    return d.timestamp()


def _describe(vol, src, exfat: bool):
    def describe(e, path: str) -> FileInfo:
        attrs = e.file_attribute_flags
        kind = "dir" if attrs & ATTR_DIRECTORY else "file"
        size = e.size if kind == "file" else 0
        raw = []
        if kind == "file":
            n = e.number_of_extents
            raw = [e.get_extent(i) for i in range(min(n, 1 << 22))]
        exts, sparse = map_extents(vol, raw, size)
        return FileInfo(path, e.identifier, kind, size, None,
                        utc_seconds(e.modification_time) if exfat else
                        _entry_mtime(src, e.identifier),
                        None, None, 1, None, exts)
    return describe


def read_fat(src, fs: Filesystem, tick) -> None:
    import pyfsfat
    exfat = fs.type == "exfat"
    (exfat_metadata if exfat else fat_metadata)(src, fs)
    vol = pyfsfat.volume()
    if not open_volume(vol, src, fs):
        return
    try:
        if not fs.label:
            fs.label = vol.label or None
        walk(vol.get_root_directory(), _describe(fs.volume, src, exfat), fs, tick,
             lambda d: d.identifier, src)
    except (OSError, ValueError) as e:
        src.reraise()
        fs.problem(f"root directory unreadable ({short_error(e)})")
    finally:
        vol.close()
