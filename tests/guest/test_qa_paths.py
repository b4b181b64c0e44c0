"""QA pass over the guest commands: paths as users type them, names as Linux keeps
them (bytes).  One small whole-disk ext4 made by mkfs.ext4 -d; the oracle is the
source tree and debugfs."""

from __future__ import annotations

import os

import pytest

import qemu
from guestdisks import need, sh, tool

from qcow2view.cli import main

MiB = 1 << 20
BAD_NAME = b"bad\xff\xfename"        # not UTF-8: Linux names are bytes


@pytest.fixture(scope="module")
def usrmerge(tmp_path_factory):
    """/lib -> usr/lib, /abs -> /usr/lib, /etc/os-release -> ../usr/lib/os-release
    (a usrmerge layout) and a file whose name is not UTF-8."""
    need("mkfs.ext4")
    d = tmp_path_factory.mktemp("usrmerge")
    src = d / "src"
    (src / "usr/lib").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "usr/lib/os-release").write_text("ID=qa\n")
    os.symlink("usr/lib", src / "lib")
    os.symlink("/usr/lib", src / "abs")
    os.symlink("../usr/lib/os-release", src / "etc/os-release")
    with open(os.path.join(os.fsencode(src), b"etc/" + BAD_NAME), "wb") as f:
        f.write(b"not utf-8\n")
    raw = d / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * MiB)
    sh(tool("mkfs.ext4"), "-q", "-d", src, raw)
    q = d / "disk.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    return q


def run(capsysbinary, *argv) -> tuple[int, bytes, str]:
    rc = main([os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv])
    out, err = capsysbinary.readouterr()
    return rc, out, err.decode(errors="replace")


@pytest.mark.parametrize("path", ["/lib/os-release", "/abs/os-release", "/etc/os-release",
                                  "//usr/./lib/../lib/os-release", "usr/lib/os-release"])
def test_cat_follows_symlinks_in_every_component(usrmerge, capsysbinary, path):
    rc, out, err = run(capsysbinary, "cat", usrmerge, path)
    assert (rc, out) == (0, b"ID=qa\n"), err


@pytest.mark.parametrize("path,reason", [("/usr/lib/", "is a directory"),
                                         ("/lib", "is a directory"),
                                         ("/", "is a directory"),
                                         ("/usr/lib/os-release/", "not a directory"),
                                         ("/etc/os-release/x", "not a directory"),
                                         ("/lib/nope", "no such file")])
def test_cat_refuses_what_is_not_a_file(usrmerge, capsysbinary, path, reason):
    rc, out, err = run(capsysbinary, "cat", usrmerge, path)
    assert rc == 2 and out == b"" and reason in err and len(err.splitlines()) == 1


def test_a_name_that_is_not_utf8_is_listed_as_its_bytes(usrmerge, capsysbinary):
    """libfsext cannot decode such a name; it is read from the directory block instead
    (it was an 'entry unreadable' problem and the file was missing)."""
    import json
    rc, out, err = run(capsysbinary, "ls", usrmerge, "--files", "--json")
    d = json.loads(out)
    assert rc == 0 and d["problems"] == [], d["problems"]
    paths = {f["path"] for f in d["partitions"][0]["filesystem"]["files"]}
    assert "/etc/" + os.fsdecode(BAD_NAME) in paths
    rc, out, _ = run(capsysbinary, "ls", usrmerge, "--files")
    assert b"/etc/" + BAD_NAME + b"\n" in out           # printed as the bytes, as ls does
    rc, out, err = run(capsysbinary, "cat", usrmerge, b"/etc/" + BAD_NAME)
    assert (rc, out) == (0, b"not utf-8\n"), err


@pytest.fixture(scope="module")
def fat_disk(tmp_path_factory):
    need("mkfs.vfat", "mcopy")
    d = tmp_path_factory.mktemp("fatcase")
    raw = d / "fat.raw"
    with open(raw, "wb") as f:
        f.truncate(16 * MiB)
    sh(tool("mkfs.vfat"), "-F", "16", raw)
    (d / "grub.cfg").write_text("set timeout=5\n")
    sh("mmd", "-i", raw, "::/EFI", "::/EFI/ubuntu")
    sh("mcopy", "-i", raw, d / "grub.cfg", "::/EFI/ubuntu/grub.cfg")
    q = d / "fat.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    return q, raw


@pytest.mark.parametrize("path", ["/EFI/ubuntu/grub.cfg", "/efi/UBUNTU/GRUB.CFG"])
def test_fat_names_are_found_whatever_their_case(fat_disk, capsysbinary, path):
    """FAT looks names up without regard to case (as the Linux vfat driver and mtools
    do): cat of /efi/ubuntu/grub.cfg reads /EFI/ubuntu/grub.cfg."""
    q, raw = fat_disk
    want = sh("mtype", "-i", raw, "::/efi/UBUNTU/GRUB.CFG").encode()
    rc, out, err = run(capsysbinary, "cat", q, path)
    assert (rc, out) == (0, want), err


def test_xfs_names_that_are_not_utf8_are_read_from_the_directory(tmp_path, capsysbinary):
    """A short-form directory (in the inode) and a leaf directory (data blocks), each
    with a name that is not UTF-8, made by mkfs.xfs -p."""
    need("mkfs.xfs")
    data = tmp_path / "data.bin"
    data.write_bytes(b"xfs bytes\n")
    proto = b"/\n0 0\nd--755 0 0\n" + BAD_NAME + b" ---644 0 0 " + os.fsencode(data) + \
        b"\nsub d--755 0 0\n" + b"".join(
            b"file_with_a_long_name_%d ---644 0 0 %s\n" % (i, os.fsencode(data))
            for i in range(150)) + BAD_NAME + b"2 ---644 0 0 " + os.fsencode(data) + b"\n$\n$\n"
    (tmp_path / "proto").write_bytes(proto)
    raw = tmp_path / "x.raw"
    with open(raw, "wb") as f:
        f.truncate(300 * MiB)
    sh(tool("mkfs.xfs"), "-q", "-f", "-p", tmp_path / "proto", raw)
    q = tmp_path / "x.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    rc, out, err = run(capsysbinary, "ls", q, "--files")
    assert rc == 0 and b"problem" not in out, out[-400:]
    for path in (b"/" + BAD_NAME, b"/sub/" + BAD_NAME + b"2"):
        rc, out, err = run(capsysbinary, "cat", q, path)
        assert (rc, out) == (0, b"xfs bytes\n"), err


def test_ext4_inline_directory_has_its_size_and_is_inline(tmp_path, capsysbinary):
    """An inline_data directory keeps its entries in the inode: its size is i_size as
    debugfs says (it was 0) and it is marked inline (it was not)."""
    import json
    import re

    from guestdisks import debugfs
    need("mkfs.ext4", "debugfs")
    src = tmp_path / "src"
    (src / "small").mkdir(parents=True)
    (src / "small/f").write_text("x\n")
    raw = tmp_path / "i.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * MiB)
    sh(tool("mkfs.ext4"), "-q", "-O", "inline_data", "-d", src, raw)
    want = int(re.search(r"Size: (\d+)", debugfs(raw, "stat /small")).group(1))
    q = tmp_path / "i.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    rc, out, err = run(capsysbinary, "ls", q, "--files", "--json")
    files = {f["path"]: f for f in json.loads(out)["partitions"][0]["filesystem"]["files"]}
    assert (files["/small"]["size"], files["/small"]["inline"]) == (want, True)


@pytest.mark.parametrize("n", ["1", "9", "-1"])
def test_cat_names_a_partition_that_does_not_exist(usrmerge, capsysbinary, n):
    rc, out, err = run(capsysbinary, "cat", usrmerge, "/lib/os-release", "--partition", n)
    assert rc == 2 and out == b"" and len(err.splitlines()) == 1
    assert f"no partition {n} on this disk (partitions: 0)" in err
