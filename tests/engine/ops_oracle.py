"""Shared oracle for the image-operation tests: run the same operation with
qemu-img on a copy and with qcow2view on another, then judge ours by qemu's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import qemu
from qcow2view import cli


def twins(src: Path, tmp: Path, name: str = "img") -> tuple[Path, Path]:
    """Two copies of ``src``: (for qemu-img, for us)."""
    theirs, ours = tmp / f"{name}-qemu.qcow2", tmp / f"{name}-ours.qcow2"
    shutil.copyfile(src, theirs)
    shutil.copyfile(src, ours)
    return theirs, ours


def ours(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``qcow2view-cli ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def info_fields(path: Path) -> dict:
    """The ``qemu-img info`` fields an operation must leave as qemu-img leaves them."""
    d = qemu.info(path)
    spec = d.get("format-specific", {}).get("data", {})
    return {
        "virtual-size": d["virtual-size"],
        "backing-filename": d.get("backing-filename"),
        "backing-filename-format": d.get("backing-filename-format"),
        "compat": spec.get("compat"),
        "refcount-bits": spec.get("refcount-bits"),
        "lazy-refcounts": spec.get("lazy-refcounts"),
        "compression-type": spec.get("compression-type"),
        "snapshots": [s["name"] for s in d.get("snapshots", [])],
    }


def assert_clean(path: Path, leaks_ok: bool = False) -> None:
    rc, res = qemu.check(path)
    assert res.get("corruptions", 0) == 0 and res.get("check-errors", 0) == 0, res
    if not leaks_ok:
        assert rc == 0 and res.get("leaks", 0) == 0, res


def assert_same_as_qemu(theirs: Path, ours_: Path, *extra_compare: str) -> None:
    """Clean, guest-identical and with the same info fields as qemu-img's result."""
    assert_clean(ours_)
    p = qemu.compare(theirs, ours_, *extra_compare)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    assert info_fields(ours_) == info_fields(theirs)


def snapshot_views_equal(a: Path, b: Path, tmp: Path) -> None:
    """Every snapshot reads the same in both images."""
    names = info_fields(a)["snapshots"]
    assert names == info_fields(b)["snapshots"]
    for n in names:
        assert qemu.to_raw(a, tmp / "sa.raw", snapshot=n) == \
            qemu.to_raw(b, tmp / "sb.raw", snapshot=n), n


def hold_with_qemu_io(path: Path, fmt: str = "qcow2") -> subprocess.Popen:
    """A real qemu-io process holding ``path`` open for writing (QEMU's locks)."""
    p = subprocess.Popen([qemu.QEMU_IO, "-f", fmt, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.stdin.write(b"read 0 512\n")
    p.stdin.flush()
    p.stdout.readline()         # the image is open once it answers
    return p


def release(p: subprocess.Popen) -> None:
    try:
        p.stdin.write(b"quit\n")
        p.stdin.close()
    except OSError:
        pass
    p.wait(timeout=10)
    p.stdout.close()
