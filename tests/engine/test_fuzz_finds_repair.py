"""Repairs found wrong by tests/fuzz/fuzz_repair.py, minimised, judged by qemu-img."""

from __future__ import annotations

import struct

import qemu
from qcow2view import cli
from qcow2view.engine import open_image


def test_repair_all_of_a_reserved_reftable_entry_pointing_past_the_file(tmp_path, capsys):
    # fuzz_repair seed 399021436 case 33: the entry has reserved bits and its offset
    # lies past the end of the file; qemu's check_refblocks names only the reserved
    # bits (and then gives up on -r all), the log looked for "is outside image" too
    p = qemu.create(tmp_path / "r.qcow2", "8M")
    qemu.qemu_io(p, "write -P 1 0 64k")
    with open_image(p) as im:
        at = im.header.refcount_table_offset + 8 * 5
    with open(p, "r+b") as f:
        f.seek(at)
        f.write(struct.pack(">Q", 0x7232B93F8B082E12))
    capsys.readouterr()
    assert cli.main(["check", "--repair", "all", str(p)]) == 0
    err = capsys.readouterr().err
    assert "ERROR refcount table entry 5 has reserved bits set" in err
    assert "Traceback" not in err
    code, res = qemu.check(p)
    assert code == 0 and not res.get("leaks") and not res.get("corruptions"), res
    assert qemu.to_raw(p, tmp_path / "r.raw")[:65536] == b"\x01" * 65536
