"""qcow2view convert judged against qemu-img convert of the same source."""

from __future__ import annotations

import os

import pytest

import qemu
from ops_oracle import assert_clean, hold_with_qemu_io, info_fields, ours, release

MiB = 1 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A two-file chain with data, compressed and zero clusters and a snapshot."""
    d = tmp_path_factory.mktemp("convert")
    base = qemu.create(d / "base.qcow2", "5M", "cluster_size=4k")
    qemu.qemu_io(base, "write -P 1 0 2M")
    top = qemu.create(d / "top.qcow2", "5M", "cluster_size=4k", backing=str(base),
                      backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 2 1M 512k", "write -c -P 3 3M 64k", "write -z 0 64k")
    qemu.qemu_img("snapshot", "-c", "s", top)
    qemu.qemu_io(top, "write -P 4 4M 100k")
    return top


CASES = [
    ("-O", "qcow2"),
    ("-O", "raw"),
    ("-c", "-O", "qcow2"),
    ("-c", "-O", "qcow2", "-o", "compression_type=zstd,cluster_size=16k"),
    ("-O", "qcow2", "-o", "compat=0.10,cluster_size=512"),
    ("-O", "qcow2", "-o", "extended_l2=on,refcount_bits=64,lazy_refcounts=on"),
    ("-O", "qcow2", "-l", "snapshot.name=s"),
    ("-O", "raw", "-l", "s"),
]


@pytest.mark.parametrize("args", CASES, ids=[" ".join(c) for c in CASES])
def test_convert_as_qemu(source, tmp_path, capsys, args):
    theirs, mine = tmp_path / "q.img", tmp_path / "o.img"
    qemu.qemu_img("convert", *args, source, theirs)
    rc, _, err = ours(capsys, "convert", *args, source, mine)
    assert rc == 0, err
    p = qemu.compare(theirs, mine, "-f", "raw" if "raw" in args else "qcow2",
                     "-F", "raw" if "raw" in args else "qcow2")
    assert p.returncode == 0, p.stdout
    if "raw" in args:
        assert os.path.getsize(mine) == os.path.getsize(theirs)
        # sparse: no more blocks than qemu-img's output (plus a little slack)
        assert os.stat(mine).st_blocks <= os.stat(theirs).st_blocks + 64
        return
    assert_clean(mine)
    assert info_fields(mine) == info_fields(theirs)
    if "-c" in args:
        assert qemu.check(mine)[1].get("compressed-clusters", 0) > 0, \
            "nothing was written compressed"
    # sparse output: no more clusters allocated than qemu-img allocated
    assert qemu.check(mine)[1]["allocated-clusters"] <= \
        qemu.check(theirs)[1]["allocated-clusters"]


def test_refusals(source, tmp_path, capsys):
    rc, _, err = ours(capsys, "convert", "-O", "raw", "-l", "snapshot.name=nope",
                      source, tmp_path / "x.raw")
    assert rc == 1 and "nope" in err and len(err.splitlines()) == 1
    rc, _, err = ours(capsys, "convert", "-c", "-O", "raw", source, tmp_path / "x.raw")
    assert rc == 1 and "Compression not supported" in err
    rc, _, err = ours(capsys, "convert", "-O", "qcow2", "-o", "cluster_size=3000",
                      source, tmp_path / "x.qcow2")
    assert rc == 1 and "Cluster size must be a power of two" in err


def test_a_source_in_use_is_refused_unless_shared(source, tmp_path, capsys):
    holder = hold_with_qemu_io(source)
    try:
        assert qemu.qemu_img("convert", "-O", "raw", source, tmp_path / "q.raw",
                             check=False).returncode == 1
        rc, _, err = ours(capsys, "convert", "-O", "raw", source, tmp_path / "o.raw")
        assert rc == 1 and "in use" in err and len(err.splitlines()) == 1
        qemu.qemu_img("convert", "-U", "-O", "raw", source, tmp_path / "q.raw")
        assert ours(capsys, "convert", "-U", "-O", "raw", source, tmp_path / "o.raw")[0] == 0
    finally:
        release(holder)
    assert (tmp_path / "q.raw").read_bytes() == (tmp_path / "o.raw").read_bytes()


def test_an_output_in_use_is_not_replaced(source, tmp_path, capsys):
    out = qemu.create(tmp_path / "busy.qcow2", "1M")
    qemu.qemu_io(out, "write -P 7 0 64k")
    holder = hold_with_qemu_io(out)
    try:
        rc, _, err = ours(capsys, "convert", "-O", "qcow2", source, out)
        assert rc == 1 and "in use" in err
    finally:
        release(holder)
    assert qemu.check(out)[0] == 0 and qemu.info(out)["virtual-size"] == 1 << 20
