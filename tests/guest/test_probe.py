"""TYPE, LABEL and UUID as blkid -p prints them for each extracted partition."""

from __future__ import annotations

import pytest

from guestdisks import sh, tool

from qcow2view.engine import open_image
from qcow2view.guest.disk import read_disk


def _blkid(path) -> dict:
    out = sh(tool("blkid"), "-p", "-o", "export", path)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _check(disk_fixture, qcow2=None):
    with open_image(qcow2 or disk_fixture.qcow2) as im:
        disk = read_disk(im)
    seen = 0
    for v in disk.volumes:
        part = disk_fixture.parts.get(v.partition.index)
        if part is None:
            continue
        want = _blkid(part)
        p = v.probe
        assert p is not None, v.partition
        assert p.type == want["TYPE"]
        assert p.label == want.get("LABEL")
        assert p.uuid == want.get("UUID")
        if v.filesystem is not None:
            assert v.filesystem.label == want.get("LABEL")
        seen += 1
    assert seen == len(disk_fixture.parts)


def test_gpt_partitions_named_as_blkid(gpt_disk):
    _check(gpt_disk)


def test_mbr_partitions_named_as_blkid(mbr_disk):
    _check(mbr_disk)        # ntfs, swap, ext2, ext4 (inline_data)


def test_compressed_image_probes_the_same(gpt_disk, gpt_compressed):
    _check(gpt_disk, gpt_compressed)


def test_whole_disk_xfs(xfs_disk):
    want = _blkid(xfs_disk.raw)
    with open_image(xfs_disk.qcow2) as im:
        [v] = read_disk(im).volumes
    assert (v.probe.type, v.probe.label, v.probe.uuid) == (want["TYPE"], want["LABEL"],
                                                          want["UUID"])


def test_ext3_told_from_ext4(tmp_path):
    """ext3 (a journal, no ext4 features) is named ext3, as blkid names it."""
    from qcow2view.guest.probe import probe
    img = tmp_path / "e3.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    sh(tool("mkfs.ext3"), "-q", "-L", "three", img)
    data = img.read_bytes()
    p = probe(lambda o, n: data[o:o + n], len(data))
    want = _blkid(img)
    assert (p.type, p.label, p.uuid) == (want["TYPE"], want["LABEL"], want["UUID"])


def test_exfat_detected_and_listed(tmp_path):
    """An (empty: nothing fills exFAT unmounted) exFAT: named as blkid names it, its
    label from the root directory, its boot regions and FATs as metadata."""
    from guestdisks import need
    need("mkfs.exfat")
    from qcow2view.guest.disk import read_source
    from qcow2view.guest.source import BlockCache, GuestSource
    img = tmp_path / "x.exfat"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    sh(tool("mkfs.exfat"), "-L", "EXL", img)
    data = img.read_bytes()
    disk = read_source(GuestSource(BlockCache(lambda o, n: data[o:o + n], len(data))))
    [v] = disk.volumes
    want = _blkid(img)
    assert (v.probe.type, v.probe.label, v.probe.uuid) == (want["TYPE"], want["LABEL"],
                                                          want["UUID"])
    fs = v.filesystem
    assert fs.readable and fs.problems == [] and fs.files == []
    assert {r.label for r in fs.metadata} >= {"boot region", "backup boot region", "FAT 1"}


@pytest.mark.parametrize("kind", ["crypto_LUKS", "iso9660"])
def test_luks_and_iso9660_named_as_blkid(tmp_path, kind):
    """A LUKS2 header (cryptsetup luksFormat on a file, a quick PBKDF) and an ISO
    image (genisoimage): TYPE, LABEL and UUID as blkid -p prints them."""
    from guestdisks import need
    from qcow2view.guest.probe import probe
    if kind == "crypto_LUKS":
        need("cryptsetup")
        img = tmp_path / "luks.img"
        with open(img, "wb") as f:
            f.truncate(32 << 20)
        sh(tool("cryptsetup"), "luksFormat", "-q", "--type", "luks2", "--label", "secret",
           "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img, "-", input=b"pw")
    else:
        need("genisoimage")
        (tmp_path / "src").mkdir()
        (tmp_path / "src/a.txt").write_text("hi\n")
        img = tmp_path / "x.iso"
        sh(tool("genisoimage"), "-quiet", "-V", "MYISO", "-o", img, tmp_path / "src")
    data = img.read_bytes()
    p = probe(lambda o, n: data[o:o + n], len(data))
    want = _blkid(img)
    assert (p.type, p.label, p.uuid) == (want["TYPE"], want["LABEL"], want["UUID"]) == (
        kind, want["LABEL"], want["UUID"])
