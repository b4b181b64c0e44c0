"""Every error is one line with the right exit code; odd file names and closed pipes are
no errors at all (issue 16 item 3, issue 13's broken pipe)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import qemu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ODD = os.fsdecode(b"odd-\xff\xfe.qcow2")     # not UTF-8: its bytes as lone surrogates


def run(*args, stdout=subprocess.PIPE, env=None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "QT_QPA_PLATFORM": "offscreen", **(env or {})}
    return subprocess.run([sys.executable, "-m", "qcow2view", *map(os.fsencode, args)],
                          stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=cwd,
                          timeout=120)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-errors")
    p = qemu.create(d / "a.qcow2", "16M")
    qemu.qemu_io(p, "write -P 0x41 0 64k")
    return p


def one_line_error(p: subprocess.CompletedProcess) -> str:
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "Logging error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_goto_with_a_huge_number_is_an_error_of_the_user(image, tmp_path):
    p = run(image, "--goto", "9" * 400 + ".5M",
            env={"XDG_STATE_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)})
    assert p.returncode == 2
    assert "expected an offset such as 0x7e00, 1M, LBA 2048" in one_line_error(p)


@pytest.mark.parametrize("args", [("info",), ("check",), ("info", "--json"),
                                  ("check", "--json")])
def test_closed_pipe_exits_as_qemu_img_does(image, args):
    """``qcow2view check IMG | head -1``: the reader went away before the output came."""
    def closed_pipe(argv):
        r, w = os.pipe()
        os.close(r)
        try:
            return subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, timeout=60,
                                  env={**os.environ, "PYTHONPATH": ROOT})
        finally:
            os.close(w)
    cmd, *rest = args
    qargs = ["--output=json"] if rest else []
    theirs = closed_pipe([qemu.QEMU_IMG, cmd, *qargs, os.fspath(image)])
    ours = closed_pipe([sys.executable, "-m", "qcow2view", cmd, *rest, os.fspath(image)])
    assert ours.returncode == theirs.returncode
    assert ours.stderr == theirs.stderr == b""


def test_file_names_that_are_not_utf8(image, tmp_path):
    odd = tmp_path / ODD
    odd.write_bytes(image.read_bytes())
    strict = {"PYTHONIOENCODING": "utf-8:strict"}
    ours = run("info", ODD, cwd=tmp_path, env=strict)
    theirs = subprocess.run([qemu.QEMU_IMG, "info", os.fsencode(ODD)], capture_output=True,
                            cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines()[0] == theirs.stdout.splitlines()[0] \
        == b"image: odd-\xff\xfe.qcow2"
    png = os.fsdecode(b"map-\xff.png")
    p = run("map", ODD, "--png", png, cwd=tmp_path, env=strict)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"map-\xff.png: ")
    assert os.path.getsize(tmp_path / png) > 0       # under exactly that name


def test_log_handler_takes_names_that_are_not_utf8(tmp_path, monkeypatch, capsys):
    import logging
    from qcow2view.ui import dialogs
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    before = list(dialogs.log.handlers)
    path = dialogs.setup_logging()
    try:
        dialogs.log.error("Cannot open image: %s", "/tmp/" + ODD)
    finally:
        for h in dialogs.log.handlers[len(before):]:
            h.close()
            dialogs.log.removeHandler(h)
    assert "Logging error" not in capsys.readouterr().err
    assert b"odd-\\udcff\\udcfe.qcow2" in path.read_bytes()
    assert logging.getLogger("qcow2view") is dialogs.log


@pytest.mark.parametrize("cmd", ["info", "check", "map"])
def test_a_file_whose_end_cannot_be_found(cmd, tmp_path):
    args = ("--png", tmp_path / "x.png") if cmd == "map" else ()
    p = run(cmd, "/proc/self/status", *args)
    assert p.returncode == 1
    assert "/proc/self/status" in one_line_error(p)


def test_nul_byte_in_a_path_is_a_typed_error():
    from qcow2view.engine import Qcow2Error, open_image
    with pytest.raises(Qcow2Error, match="NUL byte"):
        open_image("a\0b.qcow2")


def test_symlink_loop_is_named_as_one(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    theirs = subprocess.run([qemu.QEMU_IMG, "info", "loop"], capture_output=True,
                            cwd=tmp_path, text=True)
    p = run("info", "loop", cwd=tmp_path)
    assert p.returncode == theirs.returncode == 1
    why = "Too many levels of symbolic links"
    assert why in theirs.stderr and why in one_line_error(p)
    assert "no such file" not in p.stderr.decode()


def test_unreadable_folder_is_named_as_one(image, tmp_path):
    d = tmp_path / "closed"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x.qcow2").write_bytes(image.read_bytes())
    target = d / "sub" / "x.qcow2"
    # root enters every folder: without the capabilities that let it, it does not
    plain = [] if os.geteuid() else ["setpriv", "--bounding-set",
                                     "-dac_override,-dac_read_search"]
    d.chmod(0)
    try:
        theirs = subprocess.run([*plain, qemu.QEMU_IMG, "info", target],
                                capture_output=True, text=True)
        p = subprocess.run([*plain, sys.executable, "-m", "qcow2view", "info", target],
                           capture_output=True, env={**os.environ, "PYTHONPATH": ROOT})
    finally:
        d.chmod(0o755)
    assert p.returncode == theirs.returncode == 1
    assert "Permission denied" in theirs.stderr
    assert "Permission denied" in one_line_error(p)
