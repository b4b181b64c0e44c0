"""The ``qcow2view create`` terminal command."""

from __future__ import annotations

import subprocess
import sys

import qemu


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qcow2view", "create", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def test_create_command_with_options(tmp_path):
    img = tmp_path / "a.qcow2"
    p = _run(img, "10M", "-o", "cluster_size=4k,refcount_bits=8", "-o", "lazy_refcounts=on")
    assert p.returncode == 0, p.stderr
    info = qemu.info(img)
    assert info["virtual-size"] == 10 << 20 and info["cluster-size"] == 4096
    assert info["format-specific"]["data"]["refcount-bits"] == 8
    assert info["format-specific"]["data"]["lazy-refcounts"] is True
    assert qemu.check(img)[0] == 0


def test_create_command_backing_and_force(tmp_path):
    qemu.create(tmp_path / "base.qcow2", "3M")
    img = tmp_path / "o.qcow2"
    assert _run(img, "-b", "base.qcow2", "-F", "qcow2").returncode == 0
    info = qemu.info(img)
    assert info["virtual-size"] == 3 << 20 and info["backing-filename"] == "base.qcow2"
    p = _run(img, "1M")
    assert p.returncode == 1 and "exists" in p.stderr
    assert _run(img, "1M", "--force").returncode == 0
    assert qemu.info(img)["virtual-size"] == 1 << 20


def test_create_command_rejects_bad_options(tmp_path):
    img = tmp_path / "x.qcow2"
    p = _run(img, "1M", "-o", "compat=0.10,extended_l2=on")
    assert p.returncode == 1 and "Extended L2" in p.stderr
    p = _run(img, "1M", "-o", "bogus=1")
    assert p.returncode == 1 and "unknown option" in p.stderr
    assert not img.exists()


def test_a_missing_backing_file_is_refused_unless_u(tmp_path):
    """As qemu-img create: a backing file that does not open is refused, size given
    or not, and nothing is left behind; with -u the image is made without looking,
    with the same header as qemu-img create -u makes."""
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    args = ("-b", "missing.qcow2", "-F", "qcow2")
    p = _run(ours, "1G", *args)
    q = qemu.qemu_img("create", "-q", "-f", "qcow2", *args, theirs, "1G", check=False)
    assert q.returncode != 0 and p.returncode != 0
    assert not ours.exists() and not theirs.exists()
    assert p.stderr.count("\n") == 1 and "missing.qcow2" in p.stderr and \
        "No such file" in p.stderr
    assert _run(ours, "1G", *args, "-u").returncode == 0
    qemu.qemu_img("create", "-q", "-f", "qcow2", "-u", *args, theirs, "1G")
    assert ours.read_bytes()[:4096] == theirs.read_bytes()[:4096]
    assert _run(tmp_path / "n.qcow2", *args, "-u").returncode == 1     # -u needs a size
