"""NTFS through libfsntfs.  The metadata files ($MFT, $LogFile, $Bitmap, ...) are
listed as system files, their bytes labelled as filesystem metadata; resident
data (inside an MFT record) is marked inline."""

from __future__ import annotations

import struct

import numpy as np

from .files import FileInfo, Filesystem, map_extents, open_volume, short_error, utc_seconds, walk
from .partitions import Region

FIRST_USER_RECORD = 16          # records 0..15 are NTFS's own files
REF_MASK = (1 << 48) - 1
EXTENT_COMPRESSED = 0x2         # libfsntfs: the run holds compressed data

#: what the bytes of NTFS's own files are, for the metadata regions
SYSTEM_LABELS = {0: "MFT", 1: "MFT mirror", 2: "journal ($LogFile)", 4: "$AttrDef",
                 6: "cluster bitmap", 7: "boot sector", 8: "bad clusters", 9: "$Secure",
                 10: "$UpCase"}


def _describe(vol, fs: Filesystem, record_size: int):
    def describe(e, path: str) -> FileInfo:
        ref = e.file_reference & REF_MASK
        is_dir = e.has_directory_entries_index()
        size = 0 if is_dir else e.size
        n = 0 if is_dir else e.number_of_extents
        raw = [e.get_extent(i) for i in range(min(n, 1 << 22))]
        exts, sparse = map_extents(vol, raw, size)
        target = None
        try:
            target = e.symbolic_link_target
        except (OSError, ValueError):
            pass
        system = ref < FIRST_USER_RECORD and path.count("/") == 1 and path[1:2] == "$"
        info = FileInfo(path, ref, "dir" if is_dir else ("symlink" if target else "file"),
                        size, None, utc_seconds(e.modification_time),
                        utc_seconds(e.access_time), utc_seconds(e.entry_modification_time),
                        1, target, exts, inline=size > 0 and n == 0, sparse=sparse,
                        system=system, encoded=any(r[2] & EXTENT_COMPRESSED for r in raw))
        if system and ref in SYSTEM_LABELS and ref != 8:
            for _f, g, m in exts:
                fs.metadata.append(Region(g, m, SYSTEM_LABELS[ref]))
        if ref == 0 and path == "/$MFT" and record_size:   # which record each byte holds
            for fo, g, m in exts:
                fs.record_tables.append((g, fo // record_size, record_size, m // record_size))
        return info
    return describe


def read_ntfs(src, fs: Filesystem, tick) -> None:
    import pyfsntfs
    bs = src.pread(0, 512)
    if len(bs) == 512:
        bps, spc = struct.unpack_from("<HB", bs, 11)
        if bps and spc and spc < 0x80:
            fs.block_size = bps * spc
        fs.add_metadata(0, 512, "boot sector")
    vol = pyfsntfs.volume()
    if not open_volume(vol, src, fs):
        return
    try:
        fs.label = vol.name or fs.label
        fs.used_inodes = vol.number_of_file_entries
        record_size = vol.mft_entry_size if 0 < vol.mft_entry_size <= 65536 else 0
        walk(vol.get_root_directory(), _describe(fs.volume, fs, record_size), fs, tick,
             lambda d: d.file_reference & REF_MASK, src)
        _count_links(fs)
        _allocated(vol, fs)
    except (OSError, ValueError) as e:
        src.reraise()
        fs.problem(f"root directory unreadable ({short_error(e)})")
    finally:
        vol.close()


MAX_BITMAP_BYTES = 64 << 20      # $Bitmap of a 2 PiB volume of 4 KiB clusters
BITMAP_RECORD = 6


def _allocated(vol, fs: Filesystem) -> None:
    """Clusters $Bitmap marks in use (directory indexes, security descriptors and
    other attributes the file listing gives no extents), as guest runs."""
    try:
        e = vol.get_file_entry(BITMAP_RECORD)
        size = e.size
        if not 0 < size <= MAX_BITMAP_BYTES:
            return
        raw = e.read(size)
    except (OSError, ValueError) as err:
        fs.problem(f"$Bitmap unreadable ({short_error(err)})")
        return
    cs = fs.block_size
    clusters = fs.volume.size // cs
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:clusters]
    edges = np.diff(np.concatenate(([0], bits.astype(np.int8), [0])))
    for s, t in zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()):
        fs.add_allocated(s * cs, (t - s) * cs)


def _count_links(fs: Filesystem) -> None:
    """NTFS hard links: names sharing a record; links = names found."""
    count: dict[int, int] = {}
    for f in fs.files:
        count[f.inode] = count.get(f.inode, 0) + 1
    for f in fs.files:
        f.links = count[f.inode]
