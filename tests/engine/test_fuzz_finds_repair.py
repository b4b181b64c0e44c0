"""Repairs found wrong by tests/fuzz/fuzz_repair.py, minimised, judged by qemu-img."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys


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


def _far_refblock(tmp_path, name: str, far: int, *, qemu_too: bool = True):
    """A 1-bit refcount image whose refcount table names a block far past the end of
    the file: -r all grows the file to it (sparse) and rebuilds the refcounts."""
    p = qemu.create(tmp_path / name, "8M", "cluster_size=4096", "refcount_bits=1")
    qemu.qemu_io(p, "write -P 1 0 8k")
    with open_image(p) as im:
        at = im.header.refcount_table_offset + 8 * 3
    with open(p, "r+b") as f:
        f.seek(at)
        f.write(struct.pack(">Q", far))
    theirs = tmp_path / f"qemu-{name}"
    if qemu_too:
        shutil.copy(p, theirs)
        qemu.qemu_img("check", "-r", "all", theirs)
    return p, theirs


def test_repair_all_of_a_far_refcount_block_as_qemu(tmp_path, capsys):
    # fuzz_repair seed 83844907 case 99 (there 1 TiB away: the search for the new
    # table's clusters took the indices of every free cluster at once, gigabytes)
    p, theirs = _far_refblock(tmp_path, "far.qcow2", 64 << 30)
    assert cli.main(["check", "--repair", "all", str(p)]) == 0
    code, res = qemu.check(p)
    assert code == 0 and not res.get("leaks") and not res.get("corruptions"), res
    assert qemu.compare(p, theirs).returncode == 0
    assert p.stat().st_size == theirs.stat().st_size


def _repair_all_in_1gib(p):
    """check --repair all in a child process limited to 1 GiB of address space."""
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from qcow2view import cli\n"
            "sys.exit(cli.main(['check', '--repair', 'all', sys.argv[1]]))\n")
    return subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True)


def test_repair_all_of_a_refcount_block_1tib_away_fits_in_1gib(tmp_path):
    # fuzz_repair seed 83844907 cases 73 and 99: the fuzzer was killed by the OOM
    # killer (24 GB); qemu-img check -r all repairs them in 40-530 MB
    p = _far_refblock(tmp_path, "far.qcow2", 1 << 40, qemu_too=False)[0]
    r = _repair_all_in_1gib(p)
    assert r.returncode == 0, r.stderr[-500:]
    code, res = qemu.check(p)
    assert code == 0 and not res.get("leaks") and not res.get("corruptions"), res


def test_out_of_memory_is_a_message_not_a_traceback(tmp_path):
    # the same image under a 1 GiB limit: whatever the repair needs, a user sees a
    # sentence and exit code 1
    p = _far_refblock(tmp_path, "far.qcow2", 1 << 40, qemu_too=False)[0]
    r = _repair_all_in_1gib(p)
    assert "Traceback" not in r.stderr
    assert r.returncode in (0, 1)
