"""Files against the source tree they were made from, debugfs and The Sleuth Kit."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from guestdisks import debugfs, sh, source_files

from qcow2view.engine import open_image
from qcow2view.guest.disk import GuestSource, read_disk, read_through_library


def _volume(path, index):
    with open_image(path) as im:
        disk = read_disk(im)
    return next(v for v in disk.volumes if v.partition.index == index), disk


def _bytes(path, info) -> bytes:
    """The file's bytes read through its reported extents (holes read as zeros)."""
    out = bytearray(info.size)
    with open_image(path) as im:
        for fo, g, n in info.extents:
            out[fo:fo + n] = im.read(g, n)
    return bytes(out)


@pytest.fixture(scope="module")
def ext_root(gpt_disk):
    v, disk = _volume(gpt_disk.qcow2, 2)
    return v


def test_ext4_names_sizes_bytes_match_the_source(gpt_disk, ext_root):
    fs = ext_root.filesystem
    assert (fs.type, fs.label) == ("ext4", "rootfs")
    assert fs.problems == [] and fs.skipped == 0
    got = {f.path: f for f in fs.files}
    want = source_files(gpt_disk.src)
    assert set(want) <= set(got)
    assert set(got) - set(want) == {"/lost+found", "/etc", "/bin", "/data", "/deep",
                                    "/deep/a", "/deep/a/b", "/deep/a/b/c"}
    for path, p in want.items():
        f = got[path]
        if p.is_symlink():
            assert f.type == "symlink" and f.target == os.readlink(p)
            continue
        assert f.type == "file" and f.size == p.stat().st_size, path
        assert _bytes(gpt_disk.qcow2, f) == p.read_bytes(), path


def test_ext4_extents_inodes_links_as_debugfs(gpt_disk, ext_root):
    part = gpt_disk.parts[2]
    start = gpt_disk.starts[2]
    bs = int(re.search(r"Block size:\s+(\d+)", debugfs(part, "stats")).group(1))
    assert ext_root.filesystem.block_size == bs
    for f in ext_root.filesystem.files:
        if f.type != "file" or not f.extents:
            continue
        st = debugfs(part, f"stat {f.path}")
        assert f.inode == int(re.search(r"Inode: (\d+)", st).group(1))
        assert f.links == int(re.search(r"Links: (\d+)", st).group(1))
        fo, g, _n = f.extents[0]
        blk = int(debugfs(part, f"bmap {f.path} {fo // bs}").split()[0])
        assert g == start + blk * bs, f.path
        # icheck: the block belongs to this inode; ncheck: every name of it
        assert debugfs(part, f"icheck {blk}").split()[-1] == str(f.inode)
    hard = [f for f in ext_root.filesystem.files if f.path in ("/data/big.bin", "/data/hard")]
    assert len({f.inode for f in hard}) == 1 and all(f.links == 2 for f in hard)
    names = {line.split("\t")[1] for line in debugfs(part, f"ncheck {hard[0].inode}")
             .splitlines()[1:]}
    assert names == {"/data/big.bin", "/data/hard"}


def test_sparse_file_has_a_hole(gpt_disk, ext_root):
    f = next(f for f in ext_root.filesystem.files if f.path == "/sparse.img")
    assert f.sparse and f.size == 2 << 20
    assert f.extents[0][0] == 1 << 20          # the first data is at 1 MiB
    assert _bytes(gpt_disk.qcow2, f) == (gpt_disk.src / "sparse.img").read_bytes()


def test_ext4_metadata_regions_as_debugfs_stats(gpt_disk, ext_root):
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    fs = ext_root.filesystem
    bs = fs.block_size
    regions = {(r.label, (r.start - start) // bs) for r in fs.metadata}
    stats = debugfs(part, "stats")
    groups = re.findall(r"block bitmap at (\d+).*?inode bitmap at (\d+).*?inode table at (\d+)",
                        stats)
    assert groups
    for bb, ib, it in groups:
        assert ("block bitmap", int(bb)) in regions
        assert ("inode bitmap", int(ib)) in regions
        assert ("inode table", int(it)) in regions
    # the journal: inode 8's blocks
    jblk = int(debugfs(part, "bmap <8> 0").split()[0])
    assert ("journal", jblk) in regions


def test_ext4_inline_data_is_marked_and_read_by_the_library(mbr_disk):
    v, _disk = _volume(mbr_disk.qcow2, 6)
    fs = v.filesystem
    for name in ("hostname", "motd"):        # 11 bytes; 100 (past the inode's 60)
        f = next(f for f in fs.files if f.path == f"/{name}")
        assert "Size of inline data" in debugfs(mbr_disk.parts[6], f"stat /{name}")
        assert f.inline and f.extents == ()
        with open_image(mbr_disk.qcow2) as im:
            got = read_through_library(GuestSource.of_image(im), v, f.path, f.size)
        assert got == (mbr_disk.src / "etc" / name).read_bytes()


def test_fat_files_match_the_source_and_fls(gpt_disk):
    v, _ = _volume(gpt_disk.qcow2, 1)
    fs = v.filesystem
    assert (fs.type, fs.label) == ("vfat", "EFI")
    got = {f.path: f for f in fs.files}
    want = source_files(gpt_disk.extra["fat_src"])
    assert {p for p, f in got.items() if f.type == "file"} == set(want)
    for path, p in want.items():
        assert got[path].size == p.stat().st_size
        assert _bytes(gpt_disk.qcow2, got[path]) == p.read_bytes(), path
    if shutil.which("fls"):
        listing = sh("fls", "-r", "-p", "-F", gpt_disk.parts[1])
        names = {"/" + line.split("\t", 1)[1] for line in listing.splitlines()
                 if line.startswith("r/r") and "$" not in line and "Volume Label" not in line}
        assert names == set(want)


def test_ntfs_files_system_files_and_resident_data(mbr_disk):
    v, _ = _volume(mbr_disk.qcow2, 1)
    fs = v.filesystem
    assert (fs.type, fs.label) == ("ntfs", "win")
    got = {f.path: f for f in fs.files}
    big = got["/big.bin"]
    assert big.size == 1_500_000 and not big.inline
    assert _bytes(mbr_disk.qcow2, big) == (mbr_disk.src / "data/big.bin").read_bytes()
    host = got["/hostname"]
    assert host.inline and host.extents == ()           # resident in its MFT record
    assert got["/$MFT"].system and any(r.label == "MFT" for r in fs.metadata)
    if shutil.which("fls"):
        listing = sh("fls", "-p", "-F", mbr_disk.parts[1])
        names = {"/" + line.split("\t", 1)[1] for line in listing.splitlines()}
        assert {"/big.bin", "/hostname"} <= names
        assert {p for p in got if not got[p].system} - {"/$Extend"} <= names | {
            p for p in got if p.startswith("/$Extend")}


def test_compressed_image_lists_the_same(gpt_disk, gpt_compressed):
    def listing(q):
        with open_image(q) as im:
            d = read_disk(im)
        return [(v.partition.index, f.path, f.size, f.extents)
                for v, fs in d.filesystems() for f in fs.files]
    assert listing(gpt_compressed) == listing(gpt_disk.qcow2)


def test_xfs_files_match_the_source_and_xfs_db(xfs_disk):
    from guestdisks import tool
    v, _ = _volume(xfs_disk.qcow2, 0)
    fs = v.filesystem
    assert (fs.type, fs.label, fs.problems) == ("xfs", "xl", [])
    got = {f.path: f for f in fs.files}
    want = source_files(xfs_disk.src)
    assert set(want) <= set(got)
    sb = sh(tool("xfs_db"), "-r", "-c", "sb 0", "-c", "print agblocks agblklog blocksize",
            xfs_disk.raw)
    agblocks, agblklog, bs = (int(x.split(" = ")[1]) for x in sb.splitlines())
    for path, p in want.items():
        f = got[path]
        if p.is_symlink():
            assert f.type == "symlink" and f.target == os.readlink(p)
            continue
        assert f.size == p.stat().st_size
        assert _bytes(xfs_disk.qcow2, f) == p.read_bytes(), path
        if not f.extents:
            continue
        bmap = sh(tool("xfs_db"), "-r", "-c", f"path {path}", "-c", "bmap", xfs_disk.raw)
        m = re.search(r"data offset (\d+) startblock (\d+)", bmap)
        fsb = int(m.group(2))                  # AG number in the high bits
        start = ((fsb >> agblklog) * agblocks + (fsb & ((1 << agblklog) - 1))) * bs
        assert (f.extents[0][0], f.extents[0][1]) == (int(m.group(1)) * bs, start), path
