"""QA pass over partition tables: what a shrunk or hand-edited disk shows."""

from __future__ import annotations

import json

import qemu
from guestdisks import need, sh, tool

from qcow2view.cli import main

MiB = 1 << 20


def test_gpt_partition_past_the_end_of_the_disk_is_a_problem(tmp_path, capsys):
    """A GPT disk cut short (a raw disk shrunk after partitioning): sgdisk -v says the
    disk is too small for the data; ls lists the partition and names the problem."""
    need("sgdisk")
    raw = tmp_path / "cut.raw"
    with open(raw, "wb") as f:
        f.truncate(32 * MiB)
    sh(tool("sgdisk"), "-n", "1:2048:0", raw)
    with open(raw, "r+b") as f:
        f.truncate(24 * MiB)
    assert "Disk is too small" in sh(tool("sgdisk"), "-v", raw)
    q = tmp_path / "cut.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    assert main(["ls", str(q), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [p["index"] for p in d["partitions"]] == [1]
    assert "partition 1 ends past the end of the disk" in d["problems"]


def test_btrfs_is_named_as_blkid_names_it(tmp_path, capsys):
    """Fedora's and openSUSE's root filesystem: it was not recognised at all (a disk
    with no table and a btrfs showed nothing)."""
    need("mkfs.btrfs", "blkid")
    raw = tmp_path / "bt.raw"
    with open(raw, "wb") as f:
        f.truncate(128 * MiB)
    sh(tool("mkfs.btrfs"), "-q", "-L", "fedora_root", raw)
    want = dict(kv.split("=", 1) for kv in sh(tool("blkid"), "-p", "-o", "export", raw).split())
    q = tmp_path / "bt.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    assert main(["ls", str(q), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    fs = d["partitions"][0]["filesystem"]
    assert (fs["type"], fs["label"], fs["uuid"]) == (want["TYPE"], want["LABEL"], want["UUID"])
    assert d["problems"] == []
