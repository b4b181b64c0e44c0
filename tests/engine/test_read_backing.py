"""Backing chains: qcow2 and raw backing files, relative names, short backing
files, and names the engine refuses to follow."""

from __future__ import annotations

import os

import pytest

import qemu
from conftest import guest_data
from qcow2view.engine import BackingFileError, ClusterType, open_image

KiB, MiB = 1024, 1024 * 1024


def test_deep_chain_with_raw_base_and_relative_names(tmp_path, guest_write, reads_like_qemu,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)          # qemu-img resolves -b relative to the image
    (tmp_path / "base.raw").write_bytes(guest_data(3 * MiB, 7))
    prev, prev_fmt = "base.raw", "raw"
    for depth in range(1, 6):
        name = f"layer{depth}.qcow2"
        # each layer is larger than the one below: past a backing file's end reads zeros
        qemu.create(tmp_path / name, f"{3 + depth}M", backing=prev, backing_fmt=prev_fmt)
        guest_write(tmp_path / name, depth * 300 * KiB + depth, guest_data(100 * KiB, depth))
        prev, prev_fmt = name, "qcow2"
    top = tmp_path / prev
    monkeypatch.chdir("/")               # names resolve from the image's folder, not cwd
    raw = reads_like_qemu(top)
    assert raw[-MiB:] == bytes(MiB)
    with open_image(top) as img:
        chain = img.backing_chain
        assert [b.depth for b in chain] == [1, 2, 3, 4, 5]
        assert [b.filename for b in chain] == ["layer4.qcow2", "layer3.qcow2", "layer2.qcow2",
                                                "layer1.qcow2", "base.raw"]
        assert [b.format for b in chain] == ["qcow2"] * 4 + ["raw"]
        assert all(b.found and b.path == str(tmp_path / b.filename) for b in chain)
        assert [b.virtual_size for b in chain] == [
            qemu.info(tmp_path / b.filename)["virtual-size"] for b in chain]
        m = img.guest_mapping(0)
        assert (m.depth, m.file, m.type) == (5, str(tmp_path / "base.raw"), ClusterType.NORMAL)
        assert img.guest_mapping(7 * MiB).depth == -1


def test_backing_shorter_than_image_reads_zeros_past_its_end(tmp_path, guest_write,
                                                              reads_like_qemu):
    base = qemu.create(tmp_path / "base.qcow2", "1000K")
    guest_write(base, 0, guest_data(1000 * KiB, 1))
    top = qemu.create(tmp_path / "top.qcow2", "3M", backing=str(base))
    raw = reads_like_qemu(top, slices=100)
    assert raw[1000 * KiB:] == bytes(3 * MiB - 1000 * KiB)


def test_backing_grown_after_the_overlay_shows_only_up_to_its_size(tmp_path, guest_write,
                                                                   reads_like_qemu):
    """The overlay reads the backing file's bytes up to the backing file's own size."""
    base = qemu.create(tmp_path / "base.qcow2", "1M")
    top = qemu.create(tmp_path / "top.qcow2", "1M", backing=str(base))
    qemu.qemu_img("resize", top, "2M")
    qemu.qemu_img("resize", base, "2M")
    guest_write(base, 0, guest_data(2 * MiB, 3))
    reads_like_qemu(top)


def test_raw_backing_with_odd_size(tmp_path, reads_like_qemu):
    (tmp_path / "odd.raw").write_bytes(guest_data(100_001, 4))
    top = qemu.create(tmp_path / "top.qcow2", "1M", backing="odd.raw", backing_fmt="raw")
    reads_like_qemu(top, slices=100)


@pytest.mark.parametrize("name", [
    'json:{"driver": "raw", "file": {"driver": "file", "filename": "/etc/hostname"}}',
    "nbd://localhost:10809/disk",
    "http://example.com/disk.qcow2",
])
def test_protocol_backing_names_are_refused(tmp_path, name):
    path = qemu.create(tmp_path / "p.qcow2", "1M")
    qemu.qemu_img("rebase", "-u", "-b", name, "-F", "raw", path)
    assert qemu.info(path)["backing-filename"] == name
    with pytest.raises(BackingFileError, match="protocol or json"):
        open_image(path)
    with open_image(path, ignore_backing_errors=True) as img:
        assert img.backing is None
        assert not img.backing_chain[0].found and "json" in img.backing_chain[0].error
        with pytest.raises(BackingFileError):
            img.read(0, 512)


def test_missing_backing_file(tmp_path, guest_write):
    base = qemu.create(tmp_path / "base.qcow2", "1M")
    top = qemu.create(tmp_path / "top.qcow2", "1M", backing=str(base))
    guest_write(top, 0, b"hello")
    base.unlink()
    with pytest.raises(BackingFileError, match="not found") as e:
        open_image(top)
    # the error points at the name's bytes (backing_file_offset, header bytes 8..15)
    assert e.value.offset == int.from_bytes(top.read_bytes()[8:16], "big")
    with open_image(top, ignore_backing_errors=True) as img:
        assert img.read(0, 5) == b"hello"       # allocated here: no backing needed
        with pytest.raises(BackingFileError):
            img.read(64 * KiB, 1)          # the first cluster not allocated here


def test_backing_chain_that_loops_is_refused(tmp_path):
    a = qemu.create(tmp_path / "a.qcow2", "1M")
    b = qemu.create(tmp_path / "b.qcow2", "1M", backing=str(a))
    qemu.qemu_img("rebase", "-u", "-b", str(b), "-F", "qcow2", a)
    with pytest.raises(BackingFileError, match="loop"):
        open_image(b)
    self_loop = qemu.create(tmp_path / "self.qcow2", "1M")
    qemu.qemu_img("rebase", "-u", "-b", "self.qcow2", "-F", "qcow2", self_loop)
    with pytest.raises(BackingFileError, match="loop"):
        open_image(self_loop)
    os.symlink(self_loop, tmp_path / "alias.qcow2")
    with pytest.raises(BackingFileError, match="loop"):
        open_image(tmp_path / "alias.qcow2")


def test_unsupported_backing_format_is_refused(tmp_path):
    base = qemu.create(tmp_path / "base.vmdk", "1M", fmt="vmdk")
    top = qemu.create(tmp_path / "top.qcow2", "1M", backing=str(base), backing_fmt="vmdk")
    with pytest.raises(BackingFileError, match="vmdk"):
        open_image(top)


@pytest.mark.parametrize("base_fmt", ["qcow2", "raw"])
def test_backing_format_is_probed_when_not_named(tmp_path, guest_write, reads_like_qemu,
                                                 base_fmt):
    """Old images have no backing format extension: the format is probed (qcow2 by its
    magic, raw otherwise), as QEMU 7.2 still does for them."""
    base = tmp_path / f"base.{base_fmt}"
    if base_fmt == "raw":
        base.write_bytes(guest_data(MiB, 1))
    else:
        qemu.create(base, "1M")
        guest_write(base, 0, guest_data(MiB, 1))
    top = qemu.create(tmp_path / "top.qcow2", "1M", backing=str(base), backing_fmt=base_fmt)
    guest_write(top, 5000, b"top!")
    with open_image(top) as img:
        ext = next(e for e in img.extensions if e.name == "Backing file format name")
    with open(top, "r+b") as f:          # make the extension one nobody knows
        f.seek(ext.offset)
        f.write(b"\x12\x34\x56\x78")
    reads_like_qemu(top)
    with open_image(top) as img:
        assert img.backing_format is None
        assert img.backing_chain[0].format == base_fmt
        assert img.read(0, 5000) == guest_data(MiB, 1)[:5000]


def test_relative_names_resolve_from_each_images_folder(tmp_path, guest_write,
                                                       reads_like_qemu, monkeypatch):
    """top (in a/) names sub/mid.qcow2; mid (in a/sub/) names ../../base.raw."""
    sub = tmp_path / "a" / "sub"
    sub.mkdir(parents=True)
    (tmp_path / "base.raw").write_bytes(guest_data(MiB, 1))
    monkeypatch.chdir(sub)
    qemu.create(sub / "mid.qcow2", "1M", backing="../../base.raw", backing_fmt="raw")
    guest_write(sub / "mid.qcow2", 100_000, guest_data(50_000, 2))
    monkeypatch.chdir(tmp_path / "a")
    top = qemu.create(tmp_path / "a" / "top.qcow2", "1M", backing="sub/mid.qcow2")
    guest_write(top, 300_000, guest_data(50_000, 3))
    monkeypatch.chdir(tmp_path)
    reads_like_qemu(top)
    with open_image(top) as img:
        assert [(b.filename, b.path) for b in img.backing_chain] == [
            ("sub/mid.qcow2", str(sub / "mid.qcow2")),
            ("../../base.raw", str(sub / "../../base.raw"))]
        assert os.path.samefile(img.backing_chain[1].path, tmp_path / "base.raw")
