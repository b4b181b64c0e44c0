"""XFS through libfsxfs; allocation-group headers and the internal log computed
from the superblock."""

from __future__ import annotations

import struct

from .files import TYPES_BY_MODE, FileInfo, Filesystem, map_extents, open_volume, short_error, walk

MAX_AGS = 1 << 20


def xfs_geometry(src) -> tuple[int, int, int] | None:
    """(block size, blocks per AG, log2 of the AG block field) from the superblock."""
    sb = src.pread(0, 128)
    if len(sb) < 128 or sb[:4] != b"XFSB":
        return None
    bsize = struct.unpack_from(">I", sb, 4)[0]
    agblocks = struct.unpack_from(">I", sb, 84)[0]
    agblklog = sb[124]
    if not 512 <= bsize <= 65536 or not agblocks or agblklog > 31:
        return None
    return bsize, agblocks, agblklog


def linear_offsets(raw: list, geometry: tuple[int, int, int] | None) -> list:
    """libfsxfs gives an extent's offset as (AG number << agblklog | block in AG) times
    the block size, XFS's own block numbering; the bytes are at (AG number x blocks per
    AG + block in AG) x block size (the two agree in AG 0 only)."""
    if geometry is None:
        return raw
    bs, agblocks, agblklog = geometry
    mask = (1 << agblklog) - 1
    out = []
    for off, n, flags in raw:
        fsb, rest = divmod(off, bs)
        out.append((((fsb >> agblklog) * agblocks + (fsb & mask)) * bs + rest, n, flags))
    return out


def xfs_metadata(src, fs: Filesystem) -> None:
    sb = src.pread(0, 512)
    if len(sb) < 512 or sb[:4] != b"XFSB":
        fs.problem("XFS superblock unreadable")
        return
    bsize, dblocks = struct.unpack_from(">IQ", sb, 4)
    logstart = struct.unpack_from(">Q", sb, 48)[0]
    agblocks, agcount = struct.unpack_from(">II", sb, 84)
    logblocks = struct.unpack_from(">I", sb, 96)[0]
    sectsize = struct.unpack_from(">H", sb, 102)[0]
    icount, ifree = struct.unpack_from(">QQ", sb, 128)
    agblklog = sb[124]
    fs.used_inodes = max(0, min(icount - ifree, 1 << 32))
    if not 512 <= bsize <= 65536 or not agblocks or not 0 < agcount <= MAX_AGS \
            or not 512 <= sectsize <= 32768:
        fs.problem("XFS superblock: geometry out of range, metadata regions not shown")
        return
    fs.block_size = bsize
    if dblocks * bsize > fs.volume.size:
        fs.problem(f"XFS superblock: {dblocks} blocks of {bsize} bytes exceed the "
                   f"{fs.volume.size}-byte volume")
    for ag in range(min(agcount, -(-fs.volume.size // (agblocks * bsize)))):
        fs.add_metadata(ag * agblocks * bsize, 4 * sectsize,
                        "superblock and AG headers" if ag == 0 else
                        "superblock backup and AG headers")
    if logstart:
        # logstart is a filesystem block number: AG number in the high bits
        ag, blk = logstart >> agblklog, logstart & ((1 << agblklog) - 1)
        fs.add_metadata((ag * agblocks + blk) * bsize, logblocks * bsize, "journal (log)")


def _describe(vol, known: dict, geometry):
    def describe(e, path: str) -> FileInfo:
        ino = e.inode_number
        first = known.get(ino)
        if first is not None:
            return FileInfo(path, ino, first.type, first.size, first.mode, first.mtime,
                            first.atime, first.ctime, first.links, first.target,
                            first.extents, first.inline, first.sparse)
        mode = e.file_mode
        kind = TYPES_BY_MODE.get(mode & 0o170000, "file")
        size = e.size
        try:
            n = e.number_of_extents
        except OSError:
            if kind not in ("dir", "symlink"):
                raise
            n = 0                       # short-form directory / inline symlink: in the inode
        raw = linear_offsets([e.get_extent(i) for i in range(min(n, 1 << 20))], geometry)
        exts, sparse = map_extents(vol, raw, size)
        info = FileInfo(path, ino, kind, size, mode,
                        e.get_modification_time_as_integer() / 1e9,
                        e.get_access_time_as_integer() / 1e9,
                        e.get_inode_change_time_as_integer() / 1e9,
                        e.number_of_links,
                        e.symbolic_link_target if kind == "symlink" else None, exts,
                        inline=size > 0 and n == 0, sparse=sparse)
        if info.links > 1:
            known[ino] = info
        return info
    return describe


def read_xfs(src, fs: Filesystem, tick) -> None:
    import pyfsxfs
    xfs_metadata(src, fs)
    vol = pyfsxfs.volume()
    if not open_volume(vol, src, fs):
        return
    try:
        describe = _describe(fs.volume, {}, xfs_geometry(src))
        walk(vol.get_root_directory(), describe, fs, tick,
             lambda d: d.inode_number, src, _raw_names(src))
        _inode_chunks(src, fs)
        _count_unreached(src, fs)
    except (OSError, ValueError) as e:
        src.reraise()
        fs.problem(f"root directory unreadable ({short_error(e)})")
    finally:
        vol.close()


XFS_SB_VERSION2_FTYPE = 0x200
DATA_MAGICS = (b"XD2D", b"XDD3", b"XD2B", b"XDB3")
MAX_DIR_BYTES = 64 << 20          # of one directory read for its raw names


def _raw_names(src):
    """(inode, name bytes) of a directory's entries read from its inode (short form) or
    its data blocks: for the names libfsxfs cannot decode (not UTF-8)."""
    sb = src.pread(0, 256)
    geometry = xfs_geometry(src)
    if len(sb) < 256 or geometry is None:
        return None
    bs, agblocks, agblklog = geometry
    isize, inopblog = struct.unpack_from(">H", sb, 104)[0], sb[123]
    v5 = struct.unpack_from(">H", sb, 100)[0] & 0xF == 5
    ftype = v5 or bool(struct.unpack_from(">I", sb, 200)[0] & XFS_SB_VERSION2_FTYPE)
    dirblk = bs << min(sb[192], 8)

    def inode(ino: int) -> bytes:
        agno = ino >> (agblklog + inopblog)
        agbno = (ino >> inopblog) & ((1 << agblklog) - 1)
        at = (agno * agblocks + agbno) * bs + (ino & ((1 << inopblog) - 1)) * isize
        return src.pread(at, isize)

    def names(d) -> list[tuple[int, bytes]]:
        core = inode(d.inode_number)
        if len(core) < 176 or core[:2] != b"IN":
            return []
        if core[5] == 1:                                    # short form, in the inode
            return _short_form(core[176 if core[4] >= 3 else 100:], ftype)
        out: list[tuple[int, bytes]] = []
        raw = linear_offsets([d.get_extent(i) for i in range(min(d.number_of_extents, 4096))],
                             geometry)
        budget = MAX_DIR_BYTES
        for off, n, flags in raw:
            data = src.pread(off, min(n, budget))
            budget -= len(data)
            for b in range(0, len(data) - dirblk + 1, dirblk):
                out += _data_block(data[b:b + dirblk], ftype)
        return out
    return names


def _short_form(fork: bytes, ftype: bool) -> list[tuple[int, bytes]]:
    if len(fork) < 6:
        return []
    count, i8 = fork[0], fork[1]
    isz = 8 if i8 else 4
    pos, out = 2 + isz, []
    for _ in range(count):
        if pos + 3 > len(fork):
            break
        n = fork[pos]
        name = fork[pos + 3:pos + 3 + n]
        at = pos + 3 + n + (1 if ftype else 0)
        if at + isz > len(fork):
            break
        out.append((int.from_bytes(fork[at:at + isz], "big"), name))
        pos = at + isz
    return out


def _data_block(blk: bytes, ftype: bool) -> list[tuple[int, bytes]]:
    """Entries of a directory data block (XD2D/XDD3), or of a single-block directory
    (XD2B/XDB3, whose tail holds the leaf entries); other blocks give none."""
    magic = blk[:4]
    if magic not in DATA_MAGICS:
        return []
    pos = 64 if magic in (b"XDD3", b"XDB3") else 16
    end = len(blk)
    if magic in (b"XD2B", b"XDB3"):
        count = struct.unpack_from(">I", blk, end - 8)[0]
        end = max(pos, end - 8 - 8 * count)
    out = []
    while pos + 8 <= end:
        if blk[pos:pos + 2] == b"\xff\xff":                 # unused space
            n = struct.unpack_from(">H", blk, pos + 2)[0]
            if n < 8:
                break
            pos += n
            continue
        ino, n = struct.unpack_from(">QB", blk, pos)
        out.append((ino, blk[pos + 9:pos + 9 + n]))
        pos += (9 + n + (1 if ftype else 0) + 2 + 7) // 8 * 8
    return out


CHUNK = 64                       # inodes are allocated 64 at a time


def _inode_chunks(src, fs: Filesystem) -> None:
    """The inode chunks holding the inodes found (and the root's), as labelled regions
    and record tables: an XFS inode number encodes where it lies (AG, block, slot)."""
    sb = src.pread(0, 128)
    if len(sb) < 128:
        return
    geometry = xfs_geometry(src)
    if geometry is None:
        return
    bs, agblocks, agblklog = geometry
    isize = struct.unpack_from(">H", sb, 104)[0]
    inopblog = sb[123]
    if not 256 <= isize <= 2048 or inopblog > 8 or isize << inopblog != bs:
        return
    root = struct.unpack_from(">Q", sb, 56)[0]
    per_block = 1 << inopblog
    chunks = {ino & ~(CHUNK - 1) for ino in [root] + [f.inode for f in fs.files]}
    for first in sorted(chunks):
        agno = first >> (agblklog + inopblog)
        agbno = (first >> inopblog) & ((1 << agblklog) - 1)
        at = (agno * agblocks + agbno) * bs + (first & (per_block - 1)) * isize
        if at + CHUNK * isize > fs.volume.size:
            continue
        fs.add_metadata(at, CHUNK * isize, "inode chunk")
        done = 0
        for g, n in fs.volume.to_guest(at, CHUNK * isize):
            fs.record_tables.append((g, first + done // isize, isize, n // isize))
            done += n


NULLFSINO = (1 << 64) - 1


def _count_unreached(src, fs: Filesystem) -> None:
    """Inodes the superblock counts in use (icount - ifree) that no directory entry
    reached, less the root and the realtime/quota inodes: what the library skipped."""
    sb = src.pread(0, 256)
    if len(sb) < 256:
        return
    special = [struct.unpack_from(">Q", sb, o)[0] for o in (56, 64, 72, 160, 168)]
    if struct.unpack_from(">H", sb, 100)[0] & 0xF == 5:        # v5: the project quota too
        special.append(struct.unpack_from(">Q", sb, 232)[0])
    found = {f.inode for f in fs.files}
    reserved = sum(1 for ino in set(special) if ino not in (0, NULLFSINO) and ino not in found)
    unreached = fs.used_inodes - reserved - len(found)
    if unreached > 0:
        fs.skipped += unreached
        fs.problem(f"{unreached} inodes in use were not reached from the root directory",
                   always=True)

