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
