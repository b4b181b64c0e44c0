"""Independent QA of the command-line twins against qemu-img 7.2: info --json, check
exit codes and counts, create, and one-line errors on bad input."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import qemu

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "engine"))
from test_oracle_matrix import DAMAGES, Raw, base_image, built  # noqa: E402,F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qcow2view", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})


INFO_KINDS = ["cs512", "cs2M", "v2", "extl2-64k", "zstd", "lazy-dirty", "bitmaps",
              "datafile-raw", "chain-mixed", "relative-backing", "snapshots", "size0",
              "refbits1", "refbits64", "resize-shrink", "amend-v2"]


@pytest.mark.parametrize("kind", INFO_KINDS)
def test_info_json_like_qemu(built, kind):
    p = built(kind)
    want = qemu.info(p)
    r = cli("info", p, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    for k in set(got) & set(want):
        if k == "actual-size":
            continue                      # blocks change as files settle
        assert got[k] == want[k], (k, got[k], want[k])
    # keys qemu prints that we leave out (actual-size aside)
    assert set(want) - set(got) <= {"actual-size"}, set(want) - set(got)


@pytest.mark.parametrize("kind", ["cs4k", "lazy-dirty", "convert-c-random", "snapshots"])
def test_check_clean_like_qemu(built, kind):
    _check_like_qemu(built(kind))


def _check_like_qemu(p) -> int:
    """``qcow2view check --json`` prints what ``qemu-img check --output=json`` prints
    and exits with its code; returns that code."""
    rc, want = qemu.check(p)
    r = cli("check", p, "--json")
    assert r.returncode == rc, r.stderr
    got = json.loads(r.stdout)
    got.pop("filename"), want.pop("filename")
    assert got == want
    return rc


@pytest.mark.parametrize("dmg", ["unref", "refcount_zero", "double", "past_eof",
                                 "misaligned", "copied_clear", "reftable_cleared"])
def test_check_damaged_exit_codes(tmp_path, dmg):
    p = base_image(tmp_path, "snap")
    DAMAGES[dmg](Raw(p))
    rc = _check_like_qemu(p)
    human = cli("check", p)
    assert human.returncode == rc and "Traceback" not in human.stderr


@pytest.mark.parametrize("dmg", [None, "unref", "double"])
def test_qemu_img_command_lines_work_renamed(tmp_path, dmg):
    """qemu-img's own flags for check and info (-f, --output, -U, -q): the same
    command line with the program's name changed prints and exits as qemu-img's."""
    p = base_image(tmp_path, "snap")
    if dmg:
        DAMAGES[dmg](Raw(p))
    for args in (["check", "-f", "qcow2", "--output=json", "-U"],
                 ["check", "-q"], ["check", "-q", "--output=json"], ["check", "-f", "raw"],
                 ["info", "-f", "qcow2", "--output=json", "-U"]):
        want = subprocess.run(["qemu-img", *args, str(p)], capture_output=True, text=True)
        got = cli(*args, p)
        assert got.returncode == want.returncode, (args, got.stderr, want.stderr)
        assert bool(got.stdout) == bool(want.stdout), (args, got.stdout)
        assert "Traceback" not in got.stderr
        if "--output=json" in args and want.stdout:
            mine, theirs = json.loads(got.stdout), json.loads(want.stdout)
            for k in set(theirs) - {"actual-size"}:
                assert mine.get(k) == theirs[k], (args, k, mine.get(k), theirs[k])
    other = cli("check", "-f", "vmdk", p)
    assert other.returncode == 1 and "qcow2 only" in other.stderr


@pytest.mark.parametrize("opts", [
    ["-o", "cluster_size=512"], ["-o", "cluster_size=2M,extended_l2=on"],
    ["-o", "compat=0.10"], ["-o", "refcount_bits=1,lazy_refcounts=on"],
    ["-o", "compression_type=zstd", "-o", "refcount_bits=64"],
    ["-o", "preallocation=metadata,cluster_size=4k"]], ids=lambda o: "-".join(o[1::2]))
def test_create_like_qemu(tmp_path, opts):
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    r = cli("create", *opts, ours, "5M")
    assert r.returncode == 0, r.stderr
    qemu.qemu_img("create", "-q", "-f", "qcow2", "-o", ",".join(opts[1::2]), theirs, "5M")
    a, b = qemu.info(ours), qemu.info(theirs)
    for d in (a, b):
        d.pop("filename"), d.pop("actual-size")
    assert a == b
    assert qemu.check(ours)[0] == 0
    assert qemu.compare(ours, theirs).returncode == 0


def test_create_relative_backing_from_other_cwd(tmp_path):
    (tmp_path / "sub").mkdir()
    qemu.create(tmp_path / "sub" / "base.qcow2", "2M")
    r = cli("create", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    i = qemu.info(tmp_path / "sub" / "top.qcow2")
    assert i["backing-filename"] == "base.qcow2" and i["virtual-size"] == 2 << 20


def _bad_inputs(d: Path) -> dict[str, Path]:
    g = d / "garbage.qcow2"
    g.write_bytes(os.urandom(70000))
    t = qemu.create(d / "trunc.qcow2", "1M")
    t.write_bytes(t.read_bytes()[:100])
    e = d / "empty.qcow2"
    e.write_bytes(b"")
    nul = qemu.create(d / "nul.qcow2", "1M", backing="trunc.qcow2", backing_fmt="raw")
    with open(nul, "r+b") as f:
        f.seek(16)
        n = struct.unpack(">I", f.read(4))[0]
        f.seek(16)
        f.write(struct.pack(">I", n + 4))
    df = qemu.create(d / "df.qcow2", "1M", f"data_file={d / 'df.data'}")
    (d / "df.data").unlink()
    (d / "df.data").mkdir()
    return {"garbage": g, "truncated": t, "empty": e, "missing": d / "nope.qcow2",
            "directory": d, "nul-backing": nul, "datafile-directory": df}


BAD = ["garbage", "truncated", "empty", "missing", "directory"]


@pytest.mark.parametrize("cmd", ["info", "check"])
@pytest.mark.parametrize("which", BAD + ["datafile-directory"])
def test_bad_input_one_line_error(tmp_path, cmd, which):
    p = _bad_inputs(tmp_path)[which]
    if which == "datafile-directory":
        # qemu-img check refuses it (qemu-img info opens without I/O and lists it;
        # we refuse there too, as check does)
        assert qemu.qemu_img("check", p, check=False).returncode != 0
    r = cli(cmd, p)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_nul_in_backing_name_like_qemu(tmp_path):
    """The backing name is a C string to qemu: read up to the NUL (BUG-2)."""
    p = _bad_inputs(tmp_path)["nul-backing"]
    want = qemu.info(p)
    r = cli("info", p, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    for k in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        assert got[k] == want[k], k
    _check_like_qemu(p)


@pytest.mark.gui
@pytest.mark.parametrize("which", ["garbage", "missing", "directory"])
def test_gui_screenshot_refuses_bad_input(tmp_path, which):
    p = _bad_inputs(tmp_path)[which]
    r = cli(p, "--screenshot", tmp_path / "out.png")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out.png").exists()
