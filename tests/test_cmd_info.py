"""qcow2view info / check in a terminal, against qemu-img info / check."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import qemu
from check_images import (_backing, _bitmaps, _data_file, _snapshots, _v2, build_damaged,
                          dmg_copied_l2, dmg_leak, dmg_refcount_high, dmg_refcount_zero)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "qcow2view", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env)


def norm(d: dict) -> str:
    return json.dumps(d, sort_keys=True)


@pytest.mark.parametrize("build", [_snapshots, _bitmaps, _backing, _data_file, _v2],
                         ids=lambda f: f.__name__.strip("_"))
def test_info_json_equals_qemu_img(tmp_path, build):
    p = build(tmp_path)
    name = os.path.basename(p)
    mine = run("info", "--json", name, cwd=tmp_path)
    assert mine.returncode == 0, mine.stderr
    want = json.loads(subprocess.run([qemu.QEMU_IMG, "info", "--output=json", name],
                                     capture_output=True, text=True, cwd=tmp_path).stdout)
    assert norm(json.loads(mine.stdout)) == norm(want)


def test_info_human_starts_like_qemu_img(tmp_path):
    p = _bitmaps(tmp_path)
    mine = run("info", p).stdout.splitlines()
    want = qemu.qemu_img("info", p).stdout.decode().splitlines()
    assert mine[:len(want)] == want
    extra = "\n".join(mine[len(want):])
    assert "Features: bitmaps" in extra and "Bitmaps extension" in extra


def test_info_shows_missing_backing_file(tmp_path):
    p = _backing(tmp_path)
    os.remove(tmp_path / "base.qcow2")
    r = run("info", p)
    assert r.returncode == 0 and "MISSING" in r.stdout


def test_info_snapshot_view(tmp_path):
    p = _snapshots(tmp_path)
    d = json.loads(run("info", "--json", "--snapshot", "s1", p).stdout)
    assert d["snapshot"] == {"id": "1", "name": "s1"}
    assert run("info", "--snapshot", "nope", p).returncode == 1


@pytest.mark.parametrize("damage,code", [(None, 0), (dmg_leak, 3), (dmg_refcount_zero, 2)],
                         ids=["clean", "leak", "corrupt"])
def test_check_json_and_exit_code_equal_qemu_img(tmp_path, damage, code):
    p = build_damaged(tmp_path, damage)
    name = os.path.basename(p)
    mine = run("check", "--json", name, cwd=tmp_path)
    q = subprocess.run([qemu.QEMU_IMG, "check", "--output=json", name], capture_output=True,
                       text=True, cwd=tmp_path)
    assert mine.returncode == q.returncode == code
    assert json.loads(mine.stdout) == json.loads(q.stdout)


@pytest.mark.parametrize("damage", [None, dmg_leak, dmg_refcount_zero],
                         ids=["clean", "leak", "corrupt"])
def test_check_human_output_equals_qemu_img(tmp_path, damage):
    p = build_damaged(tmp_path, damage)
    mine = run("check", p)
    q = subprocess.run([qemu.QEMU_IMG, "check", str(p)], capture_output=True, text=True)
    assert mine.stdout == q.stdout
    assert mine.returncode == q.returncode


def test_check_repair(tmp_path):
    p = build_damaged(tmp_path, dmg_leak)
    r = run("check", "--repair", "leaks", "--json", p)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["leaks-fixed"] == 1
    assert qemu.check(p)[0] == 0
    p2 = tmp_path / "second"
    p2.mkdir()
    q = build_damaged(p2, dmg_refcount_zero)
    r = run("check", "--repair", "all", q)
    assert r.returncode == 0, r.stderr
    assert "The following inconsistencies were found and repaired" in r.stdout
    assert qemu.check(q)[0] == 0


@pytest.mark.parametrize("content", [b"", b"not an image at all" * 100,
                                     b"QFI\xfb" + bytes(60)],
                         ids=["empty", "text", "truncated-header"])
def test_errors_are_one_line_no_traceback(tmp_path, content):
    p = tmp_path / "bad.qcow2"
    p.write_bytes(content)
    for cmd in ("info", "check"):
        r = run(cmd, p)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("check", tmp_path / "missing.qcow2")
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_cmd_info_does_not_load_qt(tmp_path):
    p = _v2(tmp_path)
    code = ("import sys; from qcow2view.cli import main; main(['check', %r]); "
            "main(['info', %r]); "
            "bad = [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph'))]; "
            "assert not bad, bad" % (str(p), str(p)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("mode", ["leaks", "all"])
def test_check_repair_json_equals_qemu_img(tmp_path, mode):
    p = build_damaged(tmp_path, dmg_leak)
    dmg_refcount_high(p)
    dmg_copied_l2(p)
    q = tmp_path / "q.qcow2"
    q.write_bytes(p.read_bytes())
    mine = run("check", "--repair", mode, "--json", "d.qcow2", cwd=tmp_path)
    peer = subprocess.run([qemu.QEMU_IMG, "check", "-r", mode, "--output=json", "q.qcow2"],
                          capture_output=True, text=True, cwd=tmp_path)
    want = json.loads(peer.stdout)
    want["filename"] = "d.qcow2"
    assert json.loads(mine.stdout) == want
    assert mine.returncode == peer.returncode
    assert qemu.to_raw(p, tmp_path / "a.raw") == qemu.to_raw(q, tmp_path / "b.raw")
