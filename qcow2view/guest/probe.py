"""What a volume holds, named as ``blkid`` names it (TYPE, LABEL, UUID).

Detection by magic numbers and the few sanity checks libblkid makes, reading at
most a few KiB through ``read(offset, length)`` (offsets relative to the volume).
ext2/ext3/ext4 are told apart by feature flags as libblkid does.
"""

from __future__ import annotations

import struct
import uuid as _uuid
from dataclasses import dataclass, field

from .crc32c import crc32c

# ext feature bits (e2fsprogs lib/ext2fs/ext2_fs.h)
EXT_COMPAT_HAS_JOURNAL = 0x4
EXT_INCOMPAT_FILETYPE = 0x2
EXT_INCOMPAT_RECOVER = 0x4
EXT_INCOMPAT_JOURNAL_DEV = 0x8
EXT_INCOMPAT_META_BG = 0x10
EXT_INCOMPAT_64BIT = 0x80
EXT_RO_SPARSE_SUPER = 0x1
EXT_RO_LARGE_FILE = 0x2
EXT_RO_BTREE_DIR = 0x4
EXT_RO_METADATA_CSUM = 0x400
EXT2_INCOMPAT_SUPP = EXT_INCOMPAT_FILETYPE | EXT_INCOMPAT_META_BG
EXT3_INCOMPAT_SUPP = EXT2_INCOMPAT_SUPP | EXT_INCOMPAT_RECOVER
EXT_RO_SUPP = EXT_RO_SPARSE_SUPER | EXT_RO_LARGE_FILE | EXT_RO_BTREE_DIR


@dataclass
class Probe:
    type: str                       # blkid TYPE
    label: str | None = None
    uuid: str | None = None
    block_size: int | None = None
    entries: int = 0                # files expected (used inodes), for progress
    problems: list[str] = field(default_factory=list)


def _text(raw: bytes, encoding: str = "utf-8") -> str | None:
    s = raw.split(b"\0", 1)[0].decode(encoding, "replace").rstrip()
    return s or None


def _uuid_text(raw: bytes) -> str | None:
    return None if raw == bytes(16) else str(_uuid.UUID(bytes=raw))


def _probe_ext(sb: bytes) -> Probe | None:
    if len(sb) < 1024 or sb[0x38:0x3A] != b"\x53\xef":
        return None
    compat, incompat, ro = struct.unpack_from("<III", sb, 0x5C)
    if incompat & EXT_INCOMPAT_JOURNAL_DEV:
        kind = "jbd"
    elif compat & EXT_COMPAT_HAS_JOURNAL:
        kind = "ext3" if not incompat & ~EXT3_INCOMPAT_SUPP and not ro & ~EXT_RO_SUPP else "ext4"
    else:
        kind = "ext2" if not incompat & ~EXT2_INCOMPAT_SUPP and not ro & ~EXT_RO_SUPP else "ext4"
    log = struct.unpack_from("<I", sb, 0x18)[0]
    inodes, free = struct.unpack_from("<I", sb, 0)[0], struct.unpack_from("<I", sb, 0x10)[0]
    p = Probe(kind, _text(sb[0x78:0x88]), _uuid_text(sb[0x68:0x78]),
              1024 << log if log <= 6 else None, max(0, inodes - free))
    if ro & EXT_RO_METADATA_CSUM:
        want = struct.unpack_from("<I", sb, 0x3FC)[0]
        if crc32c(sb[:0x3FC]) ^ 0xFFFFFFFF != want:   # ext4 stores it uninverted
            p.problems.append(f"{kind} superblock checksum wrong")
    if p.block_size is None:
        p.problems.append(f"{kind} superblock: block size 2^(10+{log}) out of range")
    return p


def _is_pow2(n: int, lo: int, hi: int) -> bool:
    return lo <= n <= hi and n & (n - 1) == 0


def _probe_fat(bs: bytes) -> Probe | None:
    if len(bs) < 512 or bs[510:512] != b"\x55\xaa" or bs[0] not in (0xEB, 0xE9):
        return None
    bps, spc, reserved, nfats, root_entries = struct.unpack_from("<HBHBH", bs, 11)
    fat_named = bs[0x36:0x39] == b"FAT" or bs[0x52:0x57] == b"FAT32"
    if not (_is_pow2(bps, 512, 4096) and _is_pow2(spc, 1, 128) and reserved >= 1
            and nfats in (1, 2) and fat_named):
        return None
    fat16_size = struct.unpack_from("<H", bs, 22)[0]
    if fat16_size == 0:                         # FAT32: extended BPB at 0x40
        serial, label = bs[0x43:0x47], bs[0x47:0x52]
    else:
        serial, label = bs[0x27:0x2B], bs[0x2B:0x36]
    lab = _text(label, "latin-1")
    sid = struct.unpack("<I", serial)[0]
    return Probe("vfat", None if lab == "NO NAME" else lab,
                 f"{sid >> 16:04X}-{sid & 0xFFFF:04X}", bps * spc, 1000)


def _probe_exfat(bs: bytes) -> Probe | None:
    if bs[3:11] != b"EXFAT   ":
        return None
    sid = struct.unpack_from("<I", bs, 0x64)[0]
    shift = bs[0x6C] + bs[0x6D]
    return Probe("exfat", None, f"{sid >> 16:04X}-{sid & 0xFFFF:04X}",
                 1 << shift if shift <= 25 else None)


def _probe_ntfs(bs: bytes) -> Probe | None:
    if bs[3:11] != b"NTFS    ":
        return None
    bps, spc = struct.unpack_from("<HB", bs, 11)
    serial = struct.unpack_from("<Q", bs, 0x48)[0]
    return Probe("ntfs", None, f"{serial:016X}", bps * spc if bps and spc < 0x80 else None,
                 1000)


def _probe_xfs(sb: bytes) -> Probe | None:
    if sb[:4] != b"XFSB":
        return None
    bsize = struct.unpack_from(">I", sb, 4)[0]
    icount, ifree = struct.unpack_from(">QQ", sb, 128)
    return Probe("xfs", _text(sb[108:120]), _uuid_text(sb[32:48]), bsize,
                 max(0, min(icount - ifree, 1 << 32)))


def _probe_swap(page: bytes) -> Probe | None:
    if len(page) < 4096 or page[4086:4096] not in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return None
    if page[4086:4096] == b"SWAP-SPACE":
        return Probe("swap")
    return Probe("swap", _text(page[1024 + 28:1024 + 44]), _uuid_text(page[1024 + 12:1024 + 28]),
                 4096)


def _probe_luks(h: bytes) -> Probe | None:
    if h[:6] != b"LUKS\xba\xbe":
        return None
    version = struct.unpack_from(">H", h, 6)[0]
    label = _text(h[24:72]) if version == 2 else None
    return Probe("crypto_LUKS", label, _text(h[168:208], "ascii"))


def _probe_lvm(head: bytes) -> tuple[Probe, int] | None:
    for sector in range(4):
        o = sector * 512
        if head[o:o + 8] == b"LABELONE" and head[o + 24:o + 32] == b"LVM2 001":
            off = struct.unpack_from("<I", head, o + 20)[0]
            raw = head[o + off:o + off + 32].decode("ascii", "replace")
            parts = (raw[:6], raw[6:10], raw[10:14], raw[14:18], raw[18:22], raw[22:26], raw[26:])
            return Probe("LVM2_member", None, "-".join(parts)), o
    return None


BTRFS_SUPER = 0x10000             # the primary superblock, 4 KiB


def _probe_btrfs(sb: bytes) -> Probe | None:
    """btrfs (Fedora's and openSUSE's root): magic, label, fsid and sector size as
    blkid reads them; the superblock's crc32c is checked (csum_type 0)."""
    if len(sb) < 4096 or sb[0x40:0x48] != b"_BHRfS_M":
        return None
    sector = struct.unpack_from("<I", sb, 0x90)[0]
    p = Probe("btrfs", _text(sb[0x12B:0x22B]), _uuid_text(sb[0x20:0x30]),
              sector if _is_pow2(sector, 512, 65536) else None)
    if struct.unpack_from("<H", sb, 0xC4)[0] == 0 and \
            crc32c(sb[0x20:0x1000]) != struct.unpack_from("<I", sb, 0)[0]:
        p.problems.append("btrfs superblock checksum wrong")
    return p


def _probe_iso(pvd: bytes) -> Probe | None:
    if pvd[1:6] != b"CD001":
        return None
    d = pvd[813:829].decode("ascii", "replace")
    uid = f"{d[0:4]}-{d[4:6]}-{d[6:8]}-{d[8:10]}-{d[10:12]}-{d[12:14]}-{d[14:16]}" \
        if d.isdigit() else None
    return Probe("iso9660", _text(pvd[40:72], "ascii"), uid, 2048)


def probe(read, size: int) -> Probe | None:
    """blkid's TYPE/LABEL/UUID of the volume read through ``read`` (None: unknown)."""
    head = read(0, min(size, 8192))
    if len(head) < 512:
        return None
    for fn, arg in ((_probe_luks, head), (_probe_xfs, head)):
        got = fn(arg)
        if got:
            return got
    lvm = _probe_lvm(head)
    if lvm:
        return lvm[0]
    got = _probe_ext(head[1024:2048]) if len(head) >= 2048 else None
    got = got or _probe_ntfs(head) or _probe_exfat(head) or _probe_fat(head)
    got = got or _probe_swap(head)
    if got:
        return got
    if size >= BTRFS_SUPER + 4096:
        got = _probe_btrfs(read(BTRFS_SUPER, 4096))
        if got:
            return got
    if size >= 32768 + 2048:
        return _probe_iso(read(32768, 2048))
    return None
