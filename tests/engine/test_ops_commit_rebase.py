"""qcow2view commit and rebase judged against qemu-img on copies of one chain."""

from __future__ import annotations

import shutil

import pytest

import qemu
from ops_oracle import (assert_clean, assert_same_as_qemu, hold_with_qemu_io, ours, release)
from qcow2view.engine.ops.commit import plan_commit

KiB, MiB = 1 << 10, 1 << 20
NAMES = ("b.qcow2", "m.qcow2", "t.qcow2")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """base <- mid <- top, top larger than the others and with another cluster size;
    mid has zero clusters over base data; base has a snapshot."""
    d = tmp_path_factory.mktemp("chain")
    b = qemu.create(d / "b.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(b, "write -P 1 0 3M")
    qemu.qemu_img("snapshot", "-c", "s", b)
    m = qemu.create(d / "m.qcow2", "4M", "cluster_size=4k", backing="b.qcow2",
                    backing_fmt="qcow2")
    qemu.qemu_io(m, "write -P 2 1M 1M", "write -z 2500k 100k")
    t = qemu.create(d / "t.qcow2", "6M", "cluster_size=64k", backing="m.qcow2",
                    backing_fmt="qcow2")
    qemu.qemu_io(t, "write -P 3 1500k 1M", "write -P 4 5M 64k", "write -z 0 64k")
    return d


def _copies(chain, tmp_path):
    q, o = tmp_path / "q", tmp_path / "o"
    for d in (q, o):
        d.mkdir()
        for n in NAMES:
            shutil.copyfile(chain / n, d / n)
    return q, o


def _all_same(q, o):
    for n in NAMES:
        assert_same_as_qemu(q / n, o / n)


def test_commit_into_backing_file(chain, tmp_path, capsys):
    q, o = _copies(chain, tmp_path)
    plan = plan_commit(str(o / "t.qcow2"))
    assert plan.base.endswith("m.qcow2") and plan.depth == 1
    assert plan.bytes_to_write == 64 * KiB + 1024 * KiB + 64 * KiB + 64 * KiB  # 19 clusters
    qemu.qemu_img("commit", q / "t.qcow2")
    rc, out, err = ours(capsys, "commit", o / "t.qcow2")
    assert (rc, out) == (0, "Image committed.\n"), err
    _all_same(q, o)
    # the overlay is empty and still reads as before: its data is in the base now
    assert qemu.compare(o / "t.qcow2", chain / "t.qcow2").returncode == 0
    assert qemu.check(o / "t.qcow2")[1].get("allocated-clusters", 0) == 0


def test_commit_keep_and_down_the_chain(chain, tmp_path, capsys):
    q, o = _copies(chain, tmp_path)
    qemu.qemu_img("commit", "-d", q / "t.qcow2")
    assert ours(capsys, "commit", "-d", o / "t.qcow2")[0] == 0
    _all_same(q, o)
    q, o = tmp_path / "2", tmp_path / "3"
    for d in (q, o):
        shutil.copytree(chain, d)
    qemu.qemu_img("commit", "-b", (q / "b.qcow2").resolve(), q / "t.qcow2")
    assert ours(capsys, "commit", "-b", o / "b.qcow2", o / "t.qcow2")[0] == 0
    _all_same(q, o)
    # the base grew to the overlay's size; its snapshot kept its contents
    assert qemu.to_raw(o / "b.qcow2", tmp_path / "s1", "s") == \
        qemu.to_raw(q / "b.qcow2", tmp_path / "s2", "s")


REBASES = [("-u", "-b", "b.qcow2", "-F", "qcow2"),
           ("-b", "b.qcow2", "-F", "qcow2"),
           ("-b", ""),
           ("-u", "-b", "")]


@pytest.mark.parametrize("args", REBASES, ids=[" ".join(a) or "flatten" for a in REBASES])
def test_rebase_as_qemu(chain, tmp_path, capsys, args):
    q, o = _copies(chain, tmp_path)
    qemu.qemu_img("rebase", *args, q / "t.qcow2")
    rc, out, err = ours(capsys, "rebase", *args, o / "t.qcow2")
    assert rc == 0, err
    _all_same(q, o)
    if "-u" not in args:   # safe mode: the guest sees what it saw
        assert qemu.compare(o / "t.qcow2", chain / "t.qcow2").returncode == 0


def test_refusals(chain, tmp_path, capsys):
    q, o = _copies(chain, tmp_path)
    rc, _, err = ours(capsys, "commit", o / "b.qcow2")
    assert rc == 1 and "does not have a backing file" in err
    rc, _, err = ours(capsys, "commit", "-b", q / "b.qcow2", o / "t.qcow2")
    assert rc == 1 and "not in the backing chain" in err
    rc, _, err = ours(capsys, "rebase", "-b", "nope.qcow2", o / "t.qcow2")
    assert rc == 1 and "nope.qcow2" in err and len(err.splitlines()) == 1
    for args in (("commit", o / "t.qcow2"), ("rebase", "-b", "", o / "t.qcow2")):
        holder = hold_with_qemu_io(o / "t.qcow2")
        try:
            rc, _, err = ours(capsys, *args)
            assert rc == 1 and "in use" in err and len(err.splitlines()) == 1
        finally:
            release(holder)
    for n in NAMES:
        assert qemu.compare(o / n, chain / n).returncode == 0
        assert_clean(o / n)


def test_commit_into_a_raw_base(tmp_path, capsys):
    base = tmp_path / "b.raw"
    base.write_bytes(b"\x01" * (2 << 20))
    top = qemu.create(tmp_path / "t.qcow2", "2M", backing="b.raw", backing_fmt="raw")
    qemu.qemu_io(top, "write -P 2 64k 128k", "write -z 1M 64k")
    q, o = tmp_path / "q", tmp_path / "o"
    for d in (q, o):
        d.mkdir()
        shutil.copyfile(base, d / "b.raw")
        shutil.copyfile(top, d / "t.qcow2")
    qemu.qemu_img("commit", q / "t.qcow2")
    assert ours(capsys, "commit", o / "t.qcow2")[0] == 0
    assert (o / "b.raw").read_bytes() == (q / "b.raw").read_bytes()
    assert_same_as_qemu(q / "t.qcow2", o / "t.qcow2")
    # a raw base a VM holds is not written
    holder = hold_with_qemu_io(base, "raw")
    try:
        rc, _, err = ours(capsys, "commit", top)
        assert rc == 1 and "in use" in err
    finally:
        release(holder)
    assert base.read_bytes() == b"\x01" * (2 << 20)
