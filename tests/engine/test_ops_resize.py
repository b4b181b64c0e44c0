"""qcow2view resize judged against qemu-img resize on copies of one image."""

from __future__ import annotations

import pytest

import qemu
from ops_oracle import (assert_clean, assert_same_as_qemu, hold_with_qemu_io, ours, release,
                        snapshot_views_equal, twins)

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("resize")
    img = qemu.create(d / "r.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(img, "write -P 1 0 3M", "write -c -P 3 3M 64k", "write -z 3200k 8k")
    qemu.qemu_img("snapshot", "-c", "s", img)
    qemu.qemu_io(img, "write -P 2 1M 4k")
    return img


# each step on the result of the one before: growth that moves the L1 table, a shrink
# that cuts into an L2 table shared with the snapshot, a shrink to an unaligned size, ...
STEPS = ["+20M", "--shrink 1000k", "--shrink 2M", "+1G", "--shrink 3M", "-512", "-1M"]


def test_steps_as_qemu(image, tmp_path, capsys):
    theirs, mine = twins(image, tmp_path)
    for step in STEPS:
        args = step.split()
        shrink = ["--shrink"] if step.startswith("-") and not args[0] == "--shrink" else []
        size = args[-1]
        qemu.qemu_img("resize", *shrink, *args[:-1], theirs, "--", size) \
            if size.startswith("-") else qemu.qemu_img("resize", *args[:-1], theirs, size)
        rc, out, err = ours(capsys, "resize", *shrink, *args[:-1], mine, size)
        assert rc == 0 and out == "Image resized.\n", err
        assert_same_as_qemu(theirs, mine)
    snapshot_views_equal(theirs, mine, tmp_path)
    # what lay past an end that moved in and out again reads as zeros, as in qemu
    qemu.qemu_io(mine, "write -P 8 0 64k")
    assert_clean(mine)


def test_grow_over_a_longer_backing_file(tmp_path, capsys):
    base = qemu.create(tmp_path / "base.qcow2", "8M")
    qemu.qemu_io(base, "write -P 5 0 8M")
    top = qemu.create(tmp_path / "top.qcow2", "2M", backing=str(base), backing_fmt="qcow2")
    theirs, mine = twins(top, tmp_path)
    qemu.qemu_img("resize", theirs, "6M")
    assert ours(capsys, "resize", mine, "6M")[0] == 0
    assert_same_as_qemu(theirs, mine)


def test_refusals(image, tmp_path, capsys):
    _, mine = twins(image, tmp_path)
    p = qemu.qemu_img("resize", mine, "1M", check=False)
    rc, _, err = ours(capsys, "resize", mine, "1M")
    assert rc == 1 == p.returncode
    assert "Use the --shrink option" in err and len(err.splitlines()) == 1
    rc, _, err = ours(capsys, "resize", mine, "1000")
    assert rc == 1 and "multiple of 512" in err
    holder = hold_with_qemu_io(mine)
    try:
        rc, _, err = ours(capsys, "resize", mine, "+1M")
        assert rc == 1 and "in use" in err and len(err.splitlines()) == 1
    finally:
        release(holder)
    assert qemu.compare(mine, image).returncode == 0


def _data_file_image(folder, opts, longer: bool):
    folder.mkdir()
    img = qemu.create(folder / "d.qcow2", "4M", f"data_file={folder / 'd.raw'}", *opts)
    qemu.qemu_io(img, "write -P 4 1M 1M", "write -P 5 3M 64k")
    if longer:                      # a data file already longer than the new size
        with open(folder / "d.raw", "r+b") as f:
            f.truncate(16 * MiB)
    return img


@pytest.mark.parametrize("longer", [False, True])
@pytest.mark.parametrize("opts", [(), ("data_file_raw=on",)])
def test_grow_with_an_external_data_file_as_qemu(tmp_path, capsys, opts, longer):
    """The data file grows with the disk (a longer one is cut, unless data_file_raw)
    exactly as qemu-img leaves it; shrinking such an image is refused here."""
    theirs = _data_file_image(tmp_path / "qemu", opts, longer)
    mine = _data_file_image(tmp_path / "ours", opts, longer)
    qemu.qemu_img("resize", theirs, "+4M")
    rc, out, err = ours(capsys, "resize", mine, "+4M")
    assert rc == 0 and out == "Image resized.\n", err
    assert_same_as_qemu(theirs, mine)
    assert (mine.parent / "d.raw").read_bytes() == (theirs.parent / "d.raw").read_bytes()
    rc, _, err = ours(capsys, "resize", "--shrink", mine, "4M")
    assert rc == 1 and "external data file" in err and len(err.splitlines()) == 1
    assert qemu.info(mine)["virtual-size"] == 8 * MiB


def test_grow_past_the_end_of_a_longer_backing_file(tmp_path, capsys):
    """The whole new area becomes zero clusters, past the backing file's end too, as
    qcow2_co_truncate zeroes it (the same qemu-img map)."""
    base = qemu.create(tmp_path / "base.qcow2", "3M")
    qemu.qemu_io(base, "write -P 6 0 3M")
    top = qemu.create(tmp_path / "top.qcow2", "1M", backing=str(base), backing_fmt="qcow2")
    theirs, mine = twins(top, tmp_path)
    qemu.qemu_img("resize", theirs, "6M")
    assert ours(capsys, "resize", mine, "6M")[0] == 0
    assert_same_as_qemu(theirs, mine)
    assert qemu.qemu_map(mine) == qemu.qemu_map(theirs)
