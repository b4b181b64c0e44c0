"""Untrusted guest data: damage gives listed problems, the rest still shows, and
nothing raises, hangs or allocates by an unchecked field."""

from __future__ import annotations

import random
import re
import shutil
import struct

import pytest

import qemu
from guestdisks import debugfs, sh, tool

from qcow2view.engine import open_image
from qcow2view.guest.disk import read_disk
from qcow2view.guest.source import BlockCache, GuestSource
from qcow2view.guest.disk import read_source


def _disk_of(data: bytes):
    return read_source(GuestSource(BlockCache(lambda o, n: data[o:o + n], len(data))))


def _root(gpt_disk, tmp_path, name="p2.img"):
    p = tmp_path / name
    shutil.copy(gpt_disk.parts[2], p)
    return p


def _listing(data: bytes):
    disk = _disk_of(data)
    [(v, fs)] = list(disk.filesystems())
    return disk, fs, {f.path for f in fs.files}


def test_superblock_checksum_wrong_is_a_problem(gpt_disk, tmp_path):
    p = _root(gpt_disk, tmp_path)
    data = bytearray(p.read_bytes())
    data[1024 + 0x2C] ^= 0xFF                       # s_mtime: the checksum no longer fits
    disk, fs, paths = _listing(bytes(data))
    assert "partition 0: ext4 superblock checksum wrong" in disk.problems
    assert "/etc/hostname" in paths                 # the rest still shows


def test_unreadable_directory_block_is_named(gpt_disk, tmp_path):
    p = _root(gpt_disk, tmp_path)
    bs = int(re.search(r"Block size:\s+(\d+)", debugfs(p, "stats")).group(1))
    blk = int(debugfs(p, "bmap /etc 0").split()[0])
    data = bytearray(p.read_bytes())
    data[blk * bs:(blk + 1) * bs] = bytes(range(256)) * (bs // 256)
    disk, fs, paths = _listing(bytes(data))
    assert "/etc/hostname" not in paths and "/bin/tool" in paths
    assert any(x.startswith("partition 0: /etc: ") for x in disk.problems), disk.problems
    # what the library could not reach is counted: the files under /etc
    n = len(list((gpt_disk.src / "etc").iterdir()))
    assert f"partition 0: {n} inodes in use were not reached from the root directory" \
        in disk.problems


def test_directory_loop_is_not_followed(gpt_disk, tmp_path):
    p = _root(gpt_disk, tmp_path)
    sh(tool("debugfs"), "-w", "-R", "link /deep /deep/a/b/loop", p)   # a hard-linked dir
    disk, fs, paths = _listing(p.read_bytes())
    assert "/deep/a/b/loop" in paths and "/deep/a/b/loop/a" not in paths
    assert any("already seen (a loop)" in x for x in fs.problems), fs.problems


def test_a_2_to_the_48_block_filesystem_allocates_nothing_for_it(gpt_disk, tmp_path):
    p = _root(gpt_disk, tmp_path)
    data = bytearray(p.read_bytes())
    struct.pack_into("<I", data, 1024 + 4, 0xFFFFFFFF)        # s_blocks_count_lo
    struct.pack_into("<I", data, 1024 + 0x150, 0xFFFF)        # s_blocks_count_hi
    disk, fs, paths = _listing(bytes(data))
    assert any("exceed" in x or "block groups" in x for x in fs.problems)


@pytest.mark.parametrize("seed", range(12))
def test_random_metadata_damage_never_raises(gpt_disk, seed):
    """Bytes of the superblock, group descriptors, inode table and directory blocks
    overwritten at random: read_disk returns (problems, not exceptions)."""
    r = random.Random(seed)
    data = bytearray(gpt_disk.parts[2].read_bytes()[:4 << 20])
    hot = [(1024, 2048), (2048, 8192), (0x40000, 0x240000)]
    for _ in range(r.choice([5, 50, 500])):
        lo, hi = r.choice(hot)
        o = r.randrange(lo, min(hi, len(data)))
        data[o:o + 4] = r.randbytes(4)
    disk = _disk_of(bytes(data) + bytes(gpt_disk.parts[2].stat().st_size - len(data)))
    assert isinstance(disk.problems, list)


@pytest.mark.parametrize("seed", range(8))
def test_random_fat_damage_never_raises(gpt_disk, seed):
    r = random.Random(seed)
    data = bytearray(gpt_disk.parts[1].read_bytes())
    for _ in range(200):
        o = r.randrange(0, 1 << 20)
        data[o] = r.randrange(256)
    assert isinstance(_disk_of(bytes(data)).problems, list)


def test_missing_backing_file_is_unreadable(gpt_disk, tmp_path):
    base = tmp_path / "base.qcow2"
    shutil.copy(gpt_disk.qcow2, base)
    ov = tmp_path / "ov.qcow2"
    qemu.qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", ov)
    base.unlink()
    with open_image(ov, ignore_backing_errors=True) as im:
        disk = read_disk(im)
    assert disk.unreadable and disk.unreadable.startswith("unreadable: ")
    assert disk.volumes == []


def test_encrypted_image_is_unreadable(tmp_path):
    q = tmp_path / "enc.qcow2"
    qemu.qemu_img("create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=pw",
                  "-o", "encrypt.format=aes,encrypt.key-secret=s0", q, "4M")   # no PBKDF: quick
    with open_image(q) as im:
        disk = read_disk(im)
    assert disk.unreadable and "encrypted" in disk.unreadable


def test_partly_missing_backing_file_names_what_is_unreadable(gpt_disk, tmp_path):
    """The overlay holds the table; the partitions' bytes were in the lost backing file."""
    base = tmp_path / "base.qcow2"
    shutil.copy(gpt_disk.qcow2, base)
    ov = tmp_path / "ov.qcow2"
    qemu.qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", ov)
    head = tmp_path / "head.bin"
    head.write_bytes(gpt_disk.raw.read_bytes()[:1 << 20])
    qemu.qemu_io(ov, f"write -s {head} 0 {1 << 20}")
    base.unlink()
    with open_image(ov, ignore_backing_errors=True) as im:
        disk = read_disk(im)
    assert disk.unreadable is None and disk.table.kind == "gpt"
    assert [v.partition.name for v in disk.volumes] == ["EFI", "root"]
    assert any(p.startswith("backup GPT unreadable") for p in disk.problems)
    for v in (1, 2):
        assert any(p.startswith(f"partition {v}: unreadable: ") for p in disk.problems), \
            disk.problems


@pytest.mark.parametrize("seed", range(6))
def test_random_ntfs_and_xfs_damage_never_raises(mbr_disk, xfs_disk, seed):
    """The MFT and the XFS AG headers, root inode chunk and directories overwritten at
    random: problems, not exceptions."""
    r = random.Random(seed)
    for part, hi in ((mbr_disk.parts[1], 200_000), (xfs_disk.raw, 400_000)):
        head = bytearray(part.read_bytes()[:4 << 20])
        for _ in range(30 * (seed + 1)):
            o = r.randrange(0, hi)
            head[o:o + 4] = r.randbytes(4)
        size = part.stat().st_size
        data = bytes(head)
        disk = read_source(GuestSource(BlockCache(
            lambda o, n: data[o:o + n] + bytes(max(0, min(o + n, size) - max(o, len(data)))),
            size)))
        assert isinstance(disk.problems, list)


def test_unreadable_xfs_directory_counts_what_was_not_reached(xfs_disk, tmp_path):
    """/etc's short-form entries (inside its inode, found by xfs_db) overwritten: /etc
    shows no entries and the inodes it held are counted as not reached."""
    from guestdisks import tool
    with open_image(xfs_disk.qcow2) as im:
        ino = next(f.inode for f in read_disk(im).volumes[0].filesystem.files
                   if f.path == "/etc")
    out = sh(tool("xfs_db"), "-r", "-c", f"convert ino {ino} byte", xfs_disk.raw)
    at = int(re.search(r"\((\d+)\)", out).group(1))
    data = bytearray(xfs_disk.raw.read_bytes())
    data[at + 176:at + 176 + 64] = b"\xff" * 64             # the v5 inode's data fork
    disk, fs, paths = _listing(bytes(data))
    n = len(list((xfs_disk.src / "etc").iterdir()))
    assert "/etc/hostname" not in paths and "/bin/tool" in paths
    assert f"partition 0: {n} inodes in use were not reached from the root directory" \
        in disk.problems, disk.problems
