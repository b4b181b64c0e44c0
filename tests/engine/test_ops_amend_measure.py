"""qcow2view amend and measure judged against qemu-img amend and measure."""

from __future__ import annotations

import json

import pytest

import qemu
from ops_oracle import (assert_same_as_qemu, hold_with_qemu_io, ours, release,
                        snapshot_views_equal, twins)

MiB = 1 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("amend")
    img = qemu.create(d / "a.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(img, "write -P 1 0 3M", "write -c -P 3 3M 64k", "write -P 4 3500k 8k")
    qemu.qemu_img("snapshot", "-c", "s", img)
    qemu.qemu_io(img, "write -P 2 0 64k")
    return img


@pytest.fixture(scope="module")
def zeros_image(tmp_path_factory):
    """No snapshot, zero clusters with and without a host cluster: downgradable."""
    d = tmp_path_factory.mktemp("amendz")
    img = qemu.create(d / "z.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(img, "write -P 1 0 1M", "write -z 64k 64k", "write -z 2M 64k")
    return img


AMENDS = ["refcount_bits=64", "refcount_bits=8,lazy_refcounts=on", "lazy_refcounts=on",
          "refcount_bits=32"]


@pytest.mark.parametrize("opts", AMENDS)
def test_amend_as_qemu(image, tmp_path, capsys, opts):
    theirs, mine = twins(image, tmp_path)
    qemu.qemu_img("amend", "-o", opts, theirs)
    rc, _, err = ours(capsys, "amend", "-o", opts, mine)
    assert rc == 0, err
    assert_same_as_qemu(theirs, mine)
    snapshot_views_equal(theirs, mine, tmp_path)
    qemu.qemu_io(mine, "write -P 9 0 4M")          # the new refcounts are usable
    assert qemu.check(mine)[0] == 0


def test_downgrade_and_upgrade_as_qemu(zeros_image, tmp_path, capsys):
    theirs, mine = twins(zeros_image, tmp_path)
    for opts in ("compat=0.10", "compat=1.1", "compat=0.10"):
        qemu.qemu_img("amend", "-o", opts, theirs)
        rc, _, err = ours(capsys, "amend", "-o", opts, mine)
        assert rc == 0, err
        assert_same_as_qemu(theirs, mine)


def test_refusals(image, tmp_path, capsys):
    _, mine = twins(image, tmp_path)
    for opts, words in [("refcount_bits=1", "Cannot decrease refcount entry width to 1"),
                        ("compat=0.10,lazy_refcounts=on", "Lazy refcounts only supported"),
                        ("cluster_size=4096", "only supported for image creation")]:
        rc, _, err = ours(capsys, "amend", "-o", opts, mine)
        assert rc == 1 and words in err and len(err.splitlines()) == 1, err
        assert qemu.qemu_img("amend", "-o", opts, mine, check=False).returncode != 0
    holder = hold_with_qemu_io(mine)
    try:
        rc, _, err = ours(capsys, "amend", "-o", "refcount_bits=64", mine)
        assert rc == 1 and "in use" in err
    finally:
        release(holder)
    assert qemu.compare(mine, image).returncode == 0


MEASURES = [("--size", "10G", "-O", "qcow2"),
            ("--size", "1000", "-O", "qcow2"),
            ("--size", "10G", "-O", "qcow2", "-o", "cluster_size=512,refcount_bits=1"),
            ("--size", "3G", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k"),
            ("-O", "qcow2", "SRC"),
            ("-O", "qcow2", "-o", "cluster_size=2M", "SRC"),
            ("-O", "qcow2", "-o", "extended_l2=on,cluster_size=32k", "SRC"),
            ("-O", "raw", "SRC"),
            ("-O", "qcow2", "-l", "snapshot.name=s", "SRC")]


@pytest.mark.parametrize("args", MEASURES, ids=[" ".join(a) for a in MEASURES])
def test_measure_as_qemu(image, capsys, args):
    args = [str(image) if a == "SRC" else a for a in args]
    want = json.loads(qemu.qemu_img("measure", "--output=json", *args).stdout)
    rc, out, err = ours(capsys, "measure", "--output=json", *args)
    assert rc == 0, err
    assert json.loads(out) == want


def test_downgrade_expands_zero_clusters_of_snapshots_over_a_backing_file(tmp_path, capsys):
    base = qemu.create(tmp_path / "b.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(base, "write -P 1 0 4M")
    img = qemu.create(tmp_path / "a.qcow2", "4M", "cluster_size=4k", backing="b.qcow2",
                      backing_fmt="qcow2")
    qemu.qemu_io(img, "write -P 2 0 1M", "write -z 64k 64k", "write -z 2M 64k")
    qemu.qemu_img("snapshot", "-c", "s", img)
    qemu.qemu_io(img, "write -z 3M 64k", "write -P 3 64k 8k")
    theirs, mine = twins(img, tmp_path)
    qemu.qemu_img("amend", "-o", "compat=0.10", theirs)
    rc, _, err = ours(capsys, "amend", "-o", "compat=0.10", mine)
    assert rc == 0, err
    assert_same_as_qemu(theirs, mine)
    snapshot_views_equal(theirs, mine, tmp_path)


def test_downgrade_refused_where_zeros_would_overwrite_a_snapshot(tmp_path, capsys):
    """A zero write over a cluster a snapshot shares keeps the cluster (zero flag and
    offset); qemu-img amend then writes zeros into it and the snapshot changes."""
    img = qemu.create(tmp_path / "n.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(img, "write -P 1 0 1M")
    qemu.qemu_img("snapshot", "-c", "s", img)
    qemu.qemu_io(img, "write -z 0 4k")
    theirs, mine = twins(img, tmp_path)
    snap = qemu.to_raw(img, tmp_path / "s.raw", snapshot="s")
    qemu.qemu_img("amend", "-o", "compat=0.10", theirs)
    assert qemu.to_raw(theirs, tmp_path / "q.raw", snapshot="s") != snap    # qemu's loss
    rc, _, err = ours(capsys, "amend", "-o", "compat=0.10", mine)
    assert rc == 1 and "holds data for a snapshot" in err
    assert qemu.to_raw(mine, tmp_path / "o.raw", snapshot="s") == snap
    assert qemu.compare(mine, img).returncode == 0


@pytest.mark.parametrize("options, switches", [
    ({"extended_l2": True, "cluster_size": 65536}, "extended_l2=on,cluster_size=64k"),
    ({"lazy_refcounts": True, "extended_l2": False}, "lazy_refcounts=on,extended_l2=off"),
])
def test_measure_takes_the_create_dialogs_bools(options, switches):
    """The window's create dialog gives on/off options as bools: the same sizes as
    qemu-img measure -o KEY=on|off (a bool was refused, and extended_l2=True measured
    as off)."""
    from qcow2view.engine.ops.measure import measure
    want = json.loads(qemu.qemu_img("measure", "--output=json", "--size", "10G", "-O",
                                    "qcow2", "-o", switches).stdout)
    got = measure(10 << 30, options=options)
    assert (got.required, got.fully_allocated) == (want["required"], want["fully-allocated"])
