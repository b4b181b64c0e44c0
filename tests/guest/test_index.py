"""The index: guest byte -> owner (oracles: debugfs, sgdisk), host cluster -> owners
(oracle: qemu-img map), progress and cancel."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

import qemu
from guestdisks import debugfs, sh

from qcow2view.engine import open_image
from qcow2view.guest.index import WHAT, Cancelled, build_index


@pytest.fixture(scope="module")
def index(gpt_disk):
    im = open_image(gpt_disk.qcow2)
    yield build_index(im)
    im.close()


def _bs(part) -> int:
    return int(re.search(r"Block size:\s+(\d+)", debugfs(part, "stats")).group(1))


def test_every_file_block_is_owned_by_its_file(gpt_disk, index):
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    bs = _bs(part)
    for path in ("/etc/hostname", "/bin/tool", "/data/big.bin", "/deep/a/b/c/leaf.txt"):
        size = (gpt_disk.src / path.lstrip("/")).stat().st_size
        for fo in sorted({0, size // 2, size - 1}):
            blk = int(debugfs(part, f"bmap {path} {fo // bs}").split()[0])
            g = start + blk * bs + fo % bs
            o = index.owner(g)
            assert (o.what, o.partition, o.filesystem, o.file_offset) == (
                "file data", 2, "ext4", fo), (path, fo)
            assert path in o.names
    o = index.owner(index.find("/data/hard", 2)[0].info.extents[0][1])
    assert set(o.names) == {"/data/big.bin", "/data/hard"}


def test_metadata_table_and_unpartitioned(gpt_disk, index):
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    bs = _bs(part)
    it = int(re.search(r"inode table at (\d+)", debugfs(part, "stats")).group(1))
    o = index.owner(start + it * bs + 5)
    assert (o.what, o.label, o.partition) == ("filesystem metadata",
                                              "inode table, inode 1", 2)   # inode 1 + 5 bytes
    assert index.owner(start + 1024).label == "superblock"
    assert index.owner(0).what == "partition table"              # protective MBR
    assert index.owner(512).label == "GPT header"
    assert index.owner(1024 + 17).label == "GPT partition entries"
    assert index.owner((1 << 20) - 1).what == "unpartitioned"
    size = gpt_disk.raw.stat().st_size
    assert index.owner(size - 512).label == "backup GPT header"
    # /etc is a directory: its block is metadata, named by the directory
    blk = int(debugfs(part, "bmap /etc 0").split()[0])
    o = index.owner(start + blk * bs)
    assert (o.what, o.path, o.label) == ("filesystem metadata", "/etc", "directory")


def test_free_space_is_what_no_one_claims(gpt_disk, index):
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    bs = _bs(part)
    # the last block of the filesystem is free in debugfs's bitmap (testb)
    blocks = int(re.search(r"Block count:\s+(\d+)", debugfs(part, "stats")).group(1))
    last = blocks - 1
    assert "not in use" in debugfs(part, f"testb {last}")
    o = index.owner(start + last * bs)
    assert (o.what, o.partition, o.filesystem) == ("free space", 2, "ext4")


def test_vectorised_what_agrees_with_owner(index, gpt_disk):
    rng = np.random.default_rng(3)
    offs = rng.integers(0, gpt_disk.raw.stat().st_size, 2000)
    codes = index.what(offs)
    for off, code in zip(offs.tolist(), codes.tolist()):
        assert WHAT[code] == index.owner(off).what


def test_host_cluster_named_by_its_files(gpt_disk, index):
    g = index.find("/bin/tool", 2)[0].info.extents[0][1]
    mapping = json.loads(qemu.qemu_img("map", "--output=json", gpt_disk.qcow2).stdout)
    host = next(m["offset"] + g - m["start"] for m in mapping
                if m["start"] <= g < m["start"] + m["length"] and m.get("offset") is not None)
    with open_image(gpt_disk.qcow2) as im:
        index.image = im
        owners = index.host_owners(host // im.cluster_size)
    assert any(o.path == "/bin/tool" and gs <= g < gs + n for gs, n, o in owners)


def test_progress_reports_and_cancels(gpt_disk):
    calls = []
    with open_image(gpt_disk.qcow2) as im:
        build_index(im, progress=lambda d, t: calls.append((d, t)))
        assert calls and calls[-1][0] == calls[-1][1]
        assert all(d <= t for d, t in calls)
        with pytest.raises(Cancelled):
            build_index(im, progress=lambda d, t: False)

        def boom(d, t):
            raise RuntimeError("stop")
        with pytest.raises(Cancelled):
            build_index(im, progress=boom)


def test_a_cluster_only_a_snapshot_holds_is_named(gpt_disk, tmp_path):
    """After a write copies a shared cluster, the old host cluster (where qemu-img map
    put the file before) belongs to the snapshot alone, and is still named by it."""
    import shutil
    q = tmp_path / "s.qcow2"
    shutil.copy(gpt_disk.qcow2, q)
    with open_image(q) as im:
        g = build_index(im).find("/bin/tool", 2)[0].info.extents[0][1]
    mapping = json.loads(qemu.qemu_img("map", "--output=json", q).stdout)
    host = next(m["offset"] + g - m["start"] for m in mapping
                if m["start"] <= g < m["start"] + m["length"] and m.get("offset") is not None)
    qemu.qemu_img("snapshot", "-c", "s1", q)
    qemu.qemu_io(q, f"write -P 0x33 {g} 512")
    with open_image(q) as im:
        idx = build_index(im)
        cluster = host // im.cluster_size
        after = json.loads(qemu.qemu_img("map", "--output=json", q).stdout)
        assert all(m.get("offset") is None or not m["offset"] <= host < m["offset"] + m["length"]
                   for m in after)                  # the live disk no longer maps it
        owners = idx.host_owners(cluster)
    assert any(o.path == "/bin/tool" for _g, _n, o in owners)


def test_inode_table_and_mft_bytes_name_their_file(gpt_disk, mbr_disk, index):
    """debugfs imap says where /etc/fstab's inode lies; that byte names /etc/fstab.
    An MFT record of the NTFS partition names the file it describes."""
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    bs = _bs(part)
    imap = debugfs(part, "imap /etc/fstab")
    blk, off = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", imap).groups()
    o = index.owner(start + int(blk) * bs + int(off, 16) + 3)
    ino = int(re.search(r"Inode (\d+)", imap).group(1))
    assert (o.what, o.path, o.label) == ("filesystem metadata", "/etc/fstab",
                                         f"inode table, inode {ino}")
    with open_image(mbr_disk.qcow2) as im:
        idx = build_index(im)
    big = idx.find("/big.bin", 1)[0]
    [vi] = [i for i, v in enumerate(idx.volumes) if v.partition.index == 1]
    mft = idx.find("/$MFT", 1)[0].info
    size = next(each for _g, _f, each, _n in idx._records[vi][3])
    fo = big.info.inode * size                     # its record's offset in $MFT
    g = next(g + fo - f for f, g, n in mft.extents if f <= fo < f + n)
    o = idx.owner(g + 10)
    assert (o.path, o.label) == ("/big.bin", f"MFT, record {big.info.inode}")


def test_blocks_in_use_that_no_file_claims_are_not_free(gpt_disk, index):
    """The root directory's block (ext4: in use per debugfs testb, no file's extent) and
    a FAT directory's cluster (istat's sectors) read as in use, not free space."""
    from qcow2view.guest.index import IN_USE
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    bs = _bs(part)
    blk = int(debugfs(part, "bmap <2> 0").split()[0])
    assert "marked in use" in debugfs(part, f"testb {blk}")
    o = index.owner(start + blk * bs)
    assert (o.what, o.label) == ("filesystem metadata", IN_USE)
    if shutil.which("istat"):
        fat = gpt_disk.parts[1]
        ino = next(line.split()[1].rstrip(":") for line in sh("fls", "-D", fat).splitlines()
                   if line.endswith("\tbin"))
        sector = int(sh("istat", "-f", "fat", fat, ino).split("Sectors:")[1].split()[0])
        o = index.owner(gpt_disk.starts[1] + sector * 512)
        assert (o.what, o.label, o.partition) == ("filesystem metadata", IN_USE, 1)


def test_ntfs_directory_index_clusters_are_in_use(mbr_disk):
    """The root directory's $INDEX_ALLOCATION cluster (istat) is in use per $Bitmap,
    though no file's data claims it."""
    from qcow2view.guest.index import IN_USE
    if not shutil.which("istat"):
        pytest.skip("istat (sleuthkit) not installed")
    out = sh("istat", "-f", "ntfs", mbr_disk.parts[1], "5")
    cluster = int(out.split("Type: $INDEX_ALLOCATION")[1].splitlines()[1].split()[0])
    with open_image(mbr_disk.qcow2) as im:
        idx = build_index(im)
    cs = next(v.filesystem.block_size for v in idx.volumes if v.partition.index == 1)
    o = idx.owner(mbr_disk.starts[1] + cluster * cs)
    assert (o.what, o.label, o.filesystem) == ("filesystem metadata", IN_USE, "ntfs")


def test_xfs_inode_bytes_name_their_file(xfs_disk):
    """xfs_db converts an inode number to its disk address; that byte is named by the
    file whose inode it is."""
    from guestdisks import tool
    with open_image(xfs_disk.qcow2) as im:
        idx = build_index(im)
    f = idx.find("/etc/hostname", 0)[0]
    out = sh(tool("xfs_db"), "-r", "-c", f"convert ino {f.info.inode} byte", xfs_disk.raw)
    at = int(re.search(r"\((\d+)\)", out).group(1))
    o = idx.owner(at + 10)
    assert (o.what, o.path, o.label) == ("filesystem metadata", "/etc/hostname",
                                         f"inode chunk, inode {f.info.inode}")


def test_a_first_look_lists_each_root_directory_only(gpt_disk, index):
    """build_top: the table, the volumes and each filesystem's root directory (the
    tree's first rows while the index builds), each entry as the full walk reads it."""
    from qcow2view.guest.index import build_top
    with open_image(gpt_disk.qcow2) as im:
        top = build_top(im)
    fss = {fs.type: fs for _gv, fs in top.disk.filesystems()}
    # the oracles: the trees mkfs.ext4 -d and mcopy were given (and mkfs's lost+found)
    assert {f.path for f in fss["ext4"].files} == \
        {"/" + p.name for p in gpt_disk.src.iterdir()} | {"/lost+found"}
    assert {f.path.lower() for f in fss["vfat"].files} == \
        {"/" + p.name.lower() for p in gpt_disk.extra["fat_src"].iterdir()}
    assert [gv.partition.index for gv in top.volumes] == [gv.partition.index
                                                          for gv in index.volumes]
    full = {(f.volume.partition.index, f.path): f.info for f in index.files}
    for f in top.files:
        assert f.info == full[(f.volume.partition.index, f.path)]
    # the deeper walk is skipped, and so are the counts that need it and the allocation
    # maps (the index reads them)
    assert not any("not reached" in p for p in top.disk.problems)
    assert not fss["ext4"].allocated and not fss["vfat"].allocated
