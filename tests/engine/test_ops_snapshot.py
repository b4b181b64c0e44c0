"""qcow2view snapshot -l/-c/-a/-d judged against qemu-img snapshot on copies of one image."""

from __future__ import annotations

import pytest

import qemu
from ops_oracle import (assert_clean, assert_same_as_qemu, hold_with_qemu_io, ours, release,
                        snapshot_views_equal, twins)
from qcow2view.engine import open_image
from qcow2view.engine.ops.snapshot import preview_delete

MiB = 1 << 20


@pytest.fixture(scope="module", params=["plain", "extl2-rc8"])
def base_image(request, tmp_path_factory):
    """Data, compressed and zero clusters over two L2 tables, two snapshots with
    writes between them (shared, copied and private clusters and tables)."""
    d = tmp_path_factory.mktemp("snap")
    opts = ("cluster_size=4k",) if request.param == "plain" else (
        "cluster_size=16k", "extended_l2=on", "refcount_bits=8")
    img = qemu.create(d / "base.qcow2", "4M", *opts)
    qemu.qemu_io(img, "write -P 1 0 1M", "write -c -P 2 2M 64k", "write -z 3M 64k",
                 "write -P 3 3200k 100k")
    qemu.qemu_img("snapshot", "-c", "one", img)
    qemu.qemu_io(img, "write -P 4 512k 40k", "write -P 5 2100k 8k", "discard 3200k 64k")
    qemu.qemu_img("snapshot", "-c", "two", img)
    qemu.qemu_io(img, "write -P 6 100k 4k", "write -z 2M 64k")
    return img


def _used_clusters(path) -> int:
    with open_image(path) as im:
        return int((im.refcounts() > 0).sum())


def test_list_matches_qemu(base_image, capsys):
    rc, out, _ = ours(capsys, "snapshot", "-l", base_image)
    want = qemu.qemu_img("snapshot", "-l", base_image).stdout.decode()
    assert rc == 0
    # ICOUNT: qemu-img's own snapshots record 0; the columns before it are the same
    assert [line[:70] for line in out.splitlines()] == \
        [line[:70] for line in want.splitlines()]


@pytest.mark.parametrize("name", ["one", "two"])
def test_apply_as_qemu(base_image, tmp_path, capsys, name):
    theirs, mine = twins(base_image, tmp_path)
    qemu.qemu_img("snapshot", "-a", name, theirs)
    assert ours(capsys, "snapshot", "-a", name, mine)[0] == 0
    assert_same_as_qemu(theirs, mine)
    snapshot_views_equal(theirs, mine, tmp_path)
    # the disk now reads as the snapshot did, and writes after it keep it intact
    p = qemu.compare(mine, base_image)
    assert p.returncode == 1
    qemu.qemu_io(mine, "write -P 9 0 4M")
    qemu.qemu_io(theirs, "write -P 9 0 4M")
    assert_clean(mine)
    snapshot_views_equal(theirs, mine, tmp_path)


@pytest.mark.parametrize("name", ["one", "two"])
def test_delete_as_qemu(base_image, tmp_path, capsys, name):
    theirs, mine = twins(base_image, tmp_path)
    with open_image(mine) as im:
        preview = preview_delete(im, name)
    before = _used_clusters(mine)
    qemu.qemu_img("snapshot", "-d", name, theirs)
    assert ours(capsys, "snapshot", "-d", name, mine)[0] == 0
    assert_same_as_qemu(theirs, mine)
    p = qemu.compare(mine, base_image)
    assert p.returncode == 0, "deleting a snapshot changed the disk"
    snapshot_views_equal(theirs, mine, tmp_path)
    # the preview said how many clusters would be freed (refcounts qemu found right)
    assert before - _used_clusters(mine) == preview.freed_clusters
    # a write everywhere after deleting: no shared cluster is overwritten
    qemu.qemu_io(mine, "write -P 9 0 4M")
    assert_clean(mine)


def test_delete_all_then_write(base_image, tmp_path, capsys):
    theirs, mine = twins(base_image, tmp_path)
    for n in ("one", "two"):
        qemu.qemu_img("snapshot", "-d", n, theirs)
        assert ours(capsys, "snapshot", "-d", n, mine)[0] == 0
    assert_same_as_qemu(theirs, mine)
    qemu.qemu_io(mine, "write -P 9 0 4M")
    assert_clean(mine)


def test_create_then_apply_after_resize(base_image, tmp_path, capsys):
    theirs, mine = twins(base_image, tmp_path)
    for img, run in ((theirs, lambda *a: qemu.qemu_img(*a)),
                     (mine, lambda *a: ours(capsys, *a))):
        run("snapshot", "-c", "three", img)
        run("resize", img, "+6M")
    qemu.qemu_io(theirs, "write -P 7 8M 64k")
    qemu.qemu_io(mine, "write -P 7 8M 64k")
    qemu.qemu_img("snapshot", "-a", "three", theirs)
    assert ours(capsys, "snapshot", "-a", "three", mine)[0] == 0
    assert_same_as_qemu(theirs, mine)


def test_refusals(base_image, tmp_path, capsys):
    _, mine = twins(base_image, tmp_path)
    rc, _, err = ours(capsys, "snapshot", "-c", "one", mine)
    assert rc == 1 and "exists already" in err and len(err.splitlines()) == 1
    for flag in ("-a", "-d"):
        rc, _, err = ours(capsys, "snapshot", flag, "nope", mine)
        assert rc == 1 and "not found" in err and len(err.splitlines()) == 1
        assert qemu.qemu_img("snapshot", flag, "nope", mine, check=False).returncode == 1
    holder = hold_with_qemu_io(mine)
    try:
        for flag in ("-a", "-d", "-c"):
            rc, _, err = ours(capsys, "snapshot", flag, "two", mine)
            assert rc == 1 and "in use" in err and len(err.splitlines()) == 1
    finally:
        release(holder)
    assert qemu.compare(mine, base_image).returncode == 0
    assert_clean(mine)


def test_table_at_the_end_of_the_file(tmp_path, capsys):
    """qemu-img ends the file right after the last snapshot's name (no padding)."""
    img = qemu.create(tmp_path / "e.qcow2", "1M")
    qemu.qemu_io(img, "write -P 1 0 64k")
    qemu.qemu_img("snapshot", "-c", "s", img)
    theirs, mine = twins(img, tmp_path)
    for args in (("-c", "t"), ("-d", "s")):
        qemu.qemu_img("snapshot", *args, theirs)
        rc, _, err = ours(capsys, "snapshot", *args, mine)
        assert rc == 0, err
    assert_same_as_qemu(theirs, mine)
