"""ext2/ext3/ext4 through libfsext, and the metadata regions computed from the
superblock and group descriptors (libfsext does not expose them)."""

from __future__ import annotations

import struct

import numpy as np

from ..engine.errors import Qcow2Error

from .files import TYPES_BY_MODE, FileInfo, Filesystem, map_extents, open_volume, short_error, walk
from .partitions import Region
from .probe import EXT_INCOMPAT_64BIT, EXT_INCOMPAT_META_BG, EXT_RO_SPARSE_SUPER

MAX_GROUPS = 1 << 22              # 2^22 groups of 32768 4 KiB blocks = 512 TiB
COMPAT_SPARSE_SUPER2 = 0x200


def _has_backup(g: int, sparse: bool, sparse2: tuple[int, int] | None) -> bool:
    if g == 0:
        return True
    if sparse2 is not None:
        return g in sparse2
    if not sparse or g == 1:
        return True
    for base in (3, 5, 7):
        n = base
        while n < g:
            n *= base
        if n == g:
            return True
    return False


def ext_metadata(src, fs: Filesystem):
    """Superblocks, group descriptors, bitmaps and inode tables as labelled regions;
    returns where an inode lies (``inode_at(ino)``, a volume offset or None) when the
    geometry could be read."""
    sb = src.pread(1024, 1024)
    if len(sb) < 1024:
        fs.problem("ext superblock unreadable")
        return
    (inodes, blocks_lo, _, free_blocks, free_inodes, first_data, log_bs) = \
        struct.unpack_from("<7I", sb, 0)
    bpg, _, ipg = struct.unpack_from("<III", sb, 0x20)
    inode_size = struct.unpack_from("<H", sb, 0x58)[0] or 128
    compat, incompat, ro = struct.unpack_from("<III", sb, 0x5C)
    reserved_gdt = struct.unpack_from("<H", sb, 0xCE)[0]
    desc_size = struct.unpack_from("<H", sb, 0xFE)[0] if incompat & EXT_INCOMPAT_64BIT else 32
    blocks = blocks_lo | ((struct.unpack_from("<I", sb, 0x150)[0] << 32)
                          if incompat & EXT_INCOMPAT_64BIT else 0)
    fs.used_inodes = max(0, inodes - free_inodes)
    if log_bs > 6 or bpg == 0 or ipg == 0 or desc_size < 32 or desc_size & (desc_size - 1):
        fs.problem("ext superblock: geometry out of range, metadata regions not shown")
        return
    bs = 1024 << log_bs
    fs.block_size = bs
    if blocks * bs > fs.volume.size:
        fs.problem(f"ext superblock: {blocks} blocks of {bs} bytes exceed the "
                   f"{fs.volume.size}-byte volume")
    # only the groups that lie inside the volume: a huge block count in a damaged
    # superblock must not size the loop below
    groups = min(-(-(blocks - first_data) // bpg), -(-fs.volume.size // (bpg * bs)))
    gdt_blocks = -(-groups * desc_size // bs)
    if groups > MAX_GROUPS or gdt_blocks * bs > fs.volume.size:
        fs.problem(f"ext superblock: {groups} block groups, metadata regions not shown")
        return
    sparse2 = struct.unpack_from("<II", sb, 0x24C) if compat & COMPAT_SPARSE_SUPER2 else None
    meta_bg = bool(incompat & EXT_INCOMPAT_META_BG)
    gdt = src.pread((first_data + 1) * bs, gdt_blocks * bs)
    if len(gdt) < groups * desc_size:
        fs.problem("ext group descriptors unreadable")
        return
    it_len = ipg * inode_size
    bitmaps = []
    tables: dict[int, int] = {}
    for g in range(groups):
        gstart = (first_data + g * bpg) * bs
        if _has_backup(g, bool(ro & EXT_RO_SPARSE_SUPER), sparse2):
            if g == 0:
                fs.add_metadata(0, 2048 if bs == 1024 else bs, "superblock")
            else:
                fs.add_metadata(gstart, bs, "superblock backup")
            if not meta_bg:
                fs.add_metadata(gstart + bs, gdt_blocks * bs,
                                "group descriptors" if g == 0 else "group descriptors backup")
                if reserved_gdt:
                    fs.add_metadata(gstart + (1 + gdt_blocks) * bs, reserved_gdt * bs,
                                    "reserved GDT blocks")
        d = gdt[g * desc_size:(g + 1) * desc_size]
        bb, ib, itb = struct.unpack_from("<III", d, 0)
        if desc_size >= 64:
            hb, hi, ht = struct.unpack_from("<III", d, 0x20)
            bb, ib, itb = bb | hb << 32, ib | hi << 32, itb | ht << 32
        bitmaps.append((g, bb, struct.unpack_from("<H", d, 0x12)[0]))
        for blk, n, label in ((bb, bs, "block bitmap"), (ib, bs, "inode bitmap"),
                              (itb, it_len, "inode table")):
            if 0 < blk < blocks:
                fs.add_metadata(blk * bs, n, label)
        if 0 < itb < blocks:                 # which inode each byte of the table holds
            tables[g] = itb * bs
            done = 0
            for g0, m in fs.volume.to_guest(itb * bs, it_len):
                fs.record_tables.append((g0, g * ipg + 1 + done // inode_size, inode_size,
                                         m // inode_size))
                done += m
    if meta_bg:
        fs.problem("ext meta_bg: group descriptor blocks not shown")
    _ext_allocated(src, fs, bitmaps, bpg, first_data, blocks, bs)

    def inode_at(ino: int) -> int | None:
        t = tables.get((ino - 1) // ipg)
        return None if t is None else t + (ino - 1) % ipg * inode_size
    return inode_at


BG_BLOCK_UNINIT = 0x2            # bg_flags: the block bitmap was never written
MAX_BITMAP_BYTES = 64 << 20      # block bitmaps read at most (a 2 TiB ext4 of 4 KiB blocks)


def _ext_allocated(src, fs: Filesystem, bitmaps, bpg: int, first_data: int, blocks: int,
                   bs: int) -> None:
    """The blocks each group's block bitmap marks in use, as guest runs."""
    if fs.top_only:                     # a first look: the index reads it (up to 64 MiB)
        return
    if len(bitmaps) * bs > MAX_BITMAP_BYTES:
        fs.problem("ext: too many block bitmaps to read; unclaimed blocks shown as free")
        return
    for g, bb, flags in bitmaps:
        base = first_data + g * bpg
        if flags & BG_BLOCK_UNINIT or not 0 < bb < blocks or base >= blocks:
            continue
        try:
            raw = src.pread(bb * bs, bs)
        except Qcow2Error as e:
            fs.problem(f"group {g}: block bitmap unreadable ({e.reason})")
            continue
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
        bits = bits[:min(bpg, blocks - base)].astype(np.int8)
        edges = np.diff(np.concatenate(([0], bits, [0])))
        for s, e in zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()):
            fs.add_allocated((base + s) * bs, (e - s) * bs)


def _inline_dir_size(src, inode_at, ino: int) -> int:
    """i_size of an inline-data directory (libfsext gives directories no size)."""
    at = inode_at(ino) if inode_at is not None else None
    raw = src.pread(at, 0x70) if at is not None else b""
    if len(raw) < 0x70:
        return 0
    return struct.unpack_from("<I", raw, 4)[0] | struct.unpack_from("<I", raw, 0x6C)[0] << 32


def _describe(vol, known: dict, src=None, inode_at=None):
    one_piece = len(vol.pieces) == 1
    base, vsize = vol.start, vol.size

    def describe(e, path: str) -> FileInfo:
        ino = e.inode_number
        first = known.get(ino)
        if first is not None:            # another name of a file already read
            info = FileInfo(path, ino, first.type, first.size, first.mode, first.mtime,
                            first.atime, first.ctime, first.links, first.target,
                            first.extents, first.inline, first.sparse)
            return info
        mode = e.file_mode
        kind = TYPES_BY_MODE.get(mode & 0o170000, "file")
        size = e.size
        n = e.number_of_extents
        if n == 1 and size and one_piece:   # most files: one extent, no hole
            off, length, flags = e.get_extent(0)
            if flags & 1 or off + length > vsize:
                exts, sparse = map_extents(vol, [(off, length, flags)], size)
            else:
                exts, sparse = ((0, base + off, min(size, length)),), size > length
        else:
            raw = [e.get_extent(i) for i in range(min(n, 1 << 20))]
            if kind == "dir" and size == 0:     # libfsext gives directories no size
                size = sum(r[1] for r in raw if not r[2] & 1) if n else \
                    _inline_dir_size(src, inode_at, ino)
            exts, sparse = map_extents(vol, raw, size)
        target = e.symbolic_link_target if kind == "symlink" else None
        info = FileInfo(path, ino, kind, size, mode,
                        e.get_modification_time_as_integer() / 1e9,
                        e.get_access_time_as_integer() / 1e9,
                        e.get_inode_change_time_as_integer() / 1e9,
                        e.number_of_links, target, exts,
                        inline=size > 0 and n == 0 and kind in ("file", "dir", "symlink"),
                        sparse=sparse)
        if info.links > 1:
            known[ino] = info
        return info
    return describe


MAX_DIR_BYTES = 64 << 20       # of one directory read for its raw names


def _raw_names(src, block_size: int):
    """(inode, name bytes) of a directory's entries, read from its blocks (linear and
    htree leaf blocks share the format; the htree root's and nodes' fake entries and
    the checksum tail have inode 0): for names libfsext cannot decode."""
    def names(d) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        budget = MAX_DIR_BYTES
        for i in range(min(d.number_of_extents, 4096)):
            off, length, flags = d.get_extent(i)
            if flags & 1 or budget <= 0:
                continue
            data = src.pread(off, min(length, budget))
            budget -= len(data)
            for b in range(0, len(data), block_size):
                blk, pos = data[b:b + block_size], 0
                while pos + 8 <= len(blk):
                    ino, rec, nlen = struct.unpack_from("<IHB", blk, pos)
                    if rec < 8 or pos + rec > len(blk):
                        break
                    if ino and 8 + nlen <= rec:
                        out.append((ino, blk[pos + 8:pos + 8 + nlen]))
                    pos += rec
        return out
    return names


def read_ext(src, fs: Filesystem, tick) -> None:
    import pyfsext
    inode_at = ext_metadata(src, fs)
    vol = pyfsext.volume()
    if not open_volume(vol, src, fs):
        return
    try:
        try:
            j = struct.unpack_from("<I", src.pread(1024 + 0xE0, 4))[0]
            if j:
                je = vol.get_file_entry_by_inode(j)
                raw = [je.get_extent(i) for i in range(je.number_of_extents)]
                for _f, g, n in map_extents(fs.volume, raw, je.size)[0]:
                    fs.metadata.append(Region(g, n, "journal"))
        except (OSError, ValueError, struct.error) as e:
            fs.problem(f"journal inode unreadable ({short_error(e)})")
        walk(vol.get_root_directory(), _describe(fs.volume, {}, src, inode_at), fs, tick,
             lambda d: d.inode_number, src, _raw_names(src, fs.block_size or 1024))
        _count_unreached(src, fs)
    except (OSError, ValueError) as e:
        src.reraise()
        fs.problem(f"root directory unreadable ({short_error(e)})")
    finally:
        vol.close()


def _count_unreached(src, fs: Filesystem) -> None:
    """Inodes the superblock counts as in use that no directory entry reached: what
    the library skipped (unreadable entries) or orphans; said as a problem."""
    try:
        first_ino = struct.unpack_from("<I", src.pread(1024 + 0x54, 4))[0]
    except struct.error:
        return
    found = len({f.inode for f in fs.files if f.inode >= first_ino})
    unreached = fs.used_inodes - (first_ino - 1) - found
    if unreached > 0:
        fs.skipped += unreached
        fs.problem(f"{unreached} inodes in use were not reached from the root directory",
                   always=True)
