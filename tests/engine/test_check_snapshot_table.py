"""A v3 snapshot table entry without the 16 bytes of extra data v3 needs: ``qemu-img
check`` says "snapshot table entry N is incomplete" (a corruption, exit 2) and ``-r all``
rewrites the table; we do both, byte for byte (issue 16 item 3)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import qemu
from qcow2view.engine import open_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def strip_extra_data(path, index: int) -> None:
    """Rewrite the snapshot table in place with entry ``index``'s extra_data_size 0 (the
    same ids, names and L1 tables; the table only gets shorter)."""
    d = bytearray(Path(path).read_bytes())
    nb, start = struct.unpack_from(">IQ", d, 60)
    assert index < nb
    off, table = start, bytearray()
    for i in range(nb):
        fields = list(struct.unpack_from(">QIHHIIQII", d, off))
        id_len, name_len, extra = fields[2], fields[3], fields[8]
        body = d[off + 40:off + 40 + extra + id_len + name_len]
        if i == index:
            body, fields[8] = body[extra:], 0
        table += bytes((-len(table)) % 8) + struct.pack(">QIHHIIQII", *fields) + body
        off += (40 + extra + id_len + name_len + 7) & ~7
    d[start:off] = table + bytes(off - start - len(table))
    Path(path).write_bytes(d)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qcow2view", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ,
                                                               "PYTHONPATH": ROOT})


def snapshot_table(path) -> bytes:
    with open_image(path) as img:
        last = img.snapshots[-1]
        start = img.header.snapshots_offset
        return img.file.pread(start, last.offset - start + 40 + last.extra_data_size + 32)


@pytest.fixture(scope="module", params=["v3-first", "v3-second", "v2"])
def damaged(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("snaptable")
    compat = "compat=0.10" if request.param == "v2" else "compat=1.1"
    p = qemu.create(d / "s.qcow2", "16M", compat)
    qemu.qemu_io(p, "write -P 1 0 64k")
    qemu.qemu_img("snapshot", "-c", "first", p)
    qemu.qemu_io(p, "write -P 2 0 64k")
    qemu.qemu_img("snapshot", "-c", "second", p)
    strip_extra_data(p, 1 if request.param == "v3-second" else 0)
    return request.param, p


def test_check_reports_it_as_qemu_img_does(damaged):
    kind, p = damaged
    rc, want = qemu.check(p)
    theirs = qemu.qemu_img("check", p, check=False)
    ours = cli("check", p, "--json")
    assert ours.returncode == rc == (0 if kind == "v2" else 2)
    got = json.loads(ours.stdout)
    got.pop("filename"), want.pop("filename")
    assert got == want
    human = cli("check", p)
    assert human.returncode == rc
    assert human.stderr == theirs.stderr.decode()       # "ERROR snapshot table entry 1 ..."
    assert human.stdout == theirs.stdout.decode().replace(os.fspath(p), "")


@pytest.mark.parametrize("mode", ["all", "leaks"])
def test_repair_fixes_it_as_qemu_img_does(damaged, tmp_path, mode):
    kind, p = damaged
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    shutil.copy(p, ours)
    shutil.copy(p, theirs)
    q = qemu.qemu_img("check", "-r", mode, theirs, check=False)
    r = cli("check", "--repair", mode, ours)
    assert r.returncode == q.returncode, r.stderr
    assert r.stdout == q.stdout.decode().replace(os.fspath(theirs), "")
    (rc_o, o), (rc_t, t) = qemu.check(ours), qemu.check(theirs)
    o.pop("filename"), t.pop("filename")
    assert (rc_o, o) == (rc_t, t)
    assert snapshot_table(ours) == snapshot_table(theirs)
    listing = qemu.qemu_img("snapshot", "-l", ours).stdout
    assert listing == qemu.qemu_img("snapshot", "-l", theirs).stdout
    for snap in ("first", "second"):
        assert qemu.to_raw(ours, tmp_path / "o.raw", snap) == \
            qemu.to_raw(theirs, tmp_path / "t.raw", snap)
