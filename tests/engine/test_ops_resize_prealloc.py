"""qcow2view resize --preallocation=metadata|falloc|full on qcow2, judged against
qemu-img resize of a copy of the same image: check clean, guest identical, the same
info fields and the same ``qemu-img map --output=json`` -- offsets included, since
both place the new L2 tables and clusters with the same first-fit allocation (the
map also tells a sparse new area, ``zero: true``, from a written one).  These images
stay inside the range of their first refcount block: where a new area needs a new
refcount block, the engine's allocator puts it at the first free cluster, before the
new run, and QEMU's after it, so host offsets differ by a cluster from there on."""

from __future__ import annotations

import shutil

import pytest

import qemu
from ops_oracle import assert_clean, assert_same_as_qemu, ours, twins
from qcow2view.engine import Qcow2Error
from qcow2view.engine.fileio import HostFile
from qcow2view.engine.metadata_ops import opened_writable
from qcow2view.engine.ops.resize import resize_image
from test_ops_crash import _assert_before_or_after, _views, assert_consistent

MiB = 1 << 20


def _plain(d):
    img = qemu.create(d / "plain.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(img, "write -P 1 0 1M")
    return img


def _shared_table(d):
    """The new area starts inside an L2 table a snapshot shares (copied first)."""
    img = qemu.create(d / "shared.qcow2", "3M", "cluster_size=4k")
    qemu.qemu_io(img, "write -P 1 0 3M")
    qemu.qemu_img("snapshot", "-c", "s1", img)
    return img


def _unaligned(d):
    """Old and new ends inside a cluster; data in the cluster holding the old end."""
    img = qemu.create(d / "unaligned.qcow2", "1000k")
    qemu.qemu_io(img, "write -P 3 960k 40k")
    return img


def _extended_l2(d):
    img = qemu.create(d / "ext.qcow2", "1M", "extended_l2=on")
    qemu.qemu_io(img, "write -P 1 0 100k")
    return img


def _v2(d):
    return qemu.create(d / "v2.qcow2", "1M", "compat=0.10")


def _over_backing(d):
    """A longer backing file: the new clusters become zero-allocated after it."""
    base = qemu.create(d / "base.qcow2", "8M")
    qemu.qemu_io(base, "write -P 5 0 8M")
    return qemu.create(d / "top.qcow2", "2M", backing=str(base), backing_fmt="qcow2")


def _unaligned_over_backing(d):
    """The cluster holding an unaligned old end shows the backing file before that
    end: the new cluster must get those bytes (QEMU's copy-on-write of its head)."""
    base = qemu.create(d / "base7.qcow2", "8M")
    qemu.qemu_io(base, "write -P 7 0 8M")
    return qemu.create(d / "top7.qcow2", "1000k", "cluster_size=64k", backing=str(base),
                       backing_fmt="qcow2")


IMAGES = {"plain": (_plain, "+3M"), "shared-table": (_shared_table, "5M"),
          "unaligned": (_unaligned, "3073k"), "extended-l2": (_extended_l2, "+5M"),
          "v2-new-l1": (_v2, "1025M"), "over-backing": (_over_backing, "6M"),
          "unaligned-over-backing": (_unaligned_over_backing, "3M")}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("prealloc")
    return {name: (build(d), size) for name, (build, size) in IMAGES.items()}


def _assert_same_map(theirs, mine, offsets: bool = True) -> None:
    if offsets:
        assert qemu.qemu_map(mine) == qemu.qemu_map(theirs)
        assert mine.stat().st_size == theirs.stat().st_size
    else:
        assert qemu.map_shape(qemu.qemu_map(mine)) == qemu.map_shape(qemu.qemu_map(theirs))


@pytest.mark.parametrize("name", list(IMAGES))
def test_metadata_as_qemu(images, tmp_path, capsys, name):
    src, size = images[name]
    theirs, mine = twins(src, tmp_path)
    qemu.qemu_img("resize", "--preallocation=metadata", theirs, size)
    rc, out, err = ours(capsys, "resize", "--preallocation=metadata", mine, size)
    assert rc == 0 and out == "Image resized.\n", err
    assert_same_as_qemu(theirs, mine)
    _assert_same_map(theirs, mine)


@pytest.mark.parametrize("mode", ["falloc", "full"])
@pytest.mark.parametrize("name", ["plain", "unaligned"])
def test_falloc_and_full_as_qemu(images, tmp_path, capsys, name, mode):
    """The same allocation (the new area written, data not zero); host offsets may
    differ: qemu-img first places a new refcount structure at the old file end and
    the new area in one run after it (qcow2_refcount_area), moving the cluster that
    holds an unaligned old end there too; ours are placed first-fit by the writer."""
    src, size = images[name]
    theirs, mine = twins(src, tmp_path)
    qemu.qemu_img("resize", f"--preallocation={mode}", theirs, size)
    rc, _, err = ours(capsys, "resize", f"--preallocation={mode}", mine, size)
    assert rc == 0, err
    assert_same_as_qemu(theirs, mine)
    _assert_same_map(theirs, mine, offsets=False)


def _data_file_twin(folder, raw: str):
    folder.mkdir()
    img = qemu.create(folder / "d.qcow2", "1M", f"data_file={folder / 'd.raw'}",
                      f"data_file_raw={raw}")
    qemu.qemu_io(img, "write -P 1 0 100k")
    return img


@pytest.mark.parametrize("raw", ["off", "on"])
def test_metadata_with_a_data_file_as_qemu(tmp_path, capsys, raw):
    """Clusters of a data file are its guest offsets: entries only, the data file grown."""
    theirs = _data_file_twin(tmp_path / "qemu", raw)
    mine = _data_file_twin(tmp_path / "ours", raw)
    qemu.qemu_img("resize", "--preallocation=metadata", theirs, "5M")
    rc, _, err = ours(capsys, "resize", "--preallocation=metadata", mine, "5M")
    assert rc == 0, err
    assert_same_as_qemu(theirs, mine)
    assert qemu.qemu_map(mine) == qemu.qemu_map(theirs)
    assert (mine.parent / "d.raw").stat().st_size == (theirs.parent / "d.raw").stat().st_size


@pytest.mark.parametrize("args", [("--preallocation=metadata", "4M"),     # same size
                                  ("--preallocation=metadata", "--shrink", "2M"),
                                  ("--preallocation=bogus", "8M")])
def test_refusals_as_qemu(images, tmp_path, capsys, args):
    src, _ = images["plain"]
    theirs, mine = twins(src, tmp_path)
    p = qemu.qemu_img("resize", *args[:-1], theirs, args[-1], check=False)
    rc, _, err = ours(capsys, "resize", *args[:-1], mine, args[-1])
    assert rc == 1 == p.returncode
    want = p.stderr.decode().strip().splitlines()[-1].removeprefix("qemu-img: ")
    assert err.strip().endswith(want), err
    assert mine.read_bytes() == src.read_bytes()


@pytest.mark.slow
def test_io_error_at_every_step_of_metadata_preallocation(images, tmp_path):
    """An I/O error at each file operation leaves the image as before or as after,
    leaks at most (the oracle: qemu-img check and convert)."""
    img = tmp_path / "img"
    shutil.copyfile(images["shared-table"][0], img)
    paths = {"img": img}
    pristine = img.read_bytes()
    before = _views(paths, tmp_path)

    def op():
        with opened_writable(img) as im:
            resize_image(im, 6 * MiB, preallocation="metadata")
    steps: list = []
    HostFile.fault_hook = steps.append
    try:
        op()
    finally:
        HostFile.fault_hook = None
    after = _views(paths, tmp_path)
    assert len(steps) > 3
    for fail_at in range(len(steps)):
        img.write_bytes(pristine)
        HostFile.fault_after = fail_at
        try:
            with pytest.raises(Qcow2Error):
                op()
        finally:
            HostFile.fault_after = None
        assert_consistent(img)
        _assert_before_or_after(_views(paths, tmp_path), before, after, set())


@pytest.mark.parametrize("mode", ["falloc", "full"])
def test_v2_over_a_longer_backing_file_as_qemu(tmp_path, capsys, mode):
    """falloc|full write zeros over the new area, so qemu-img resize allows them on a
    v2 image whose backing file is longer (off|metadata are refused: no zero flag)."""
    base = qemu.create(tmp_path / "base.qcow2", "8M")
    qemu.qemu_io(base, "write -P 6 0 8M")
    top = qemu.create(tmp_path / "top.qcow2", "2M", "compat=0.10", backing=str(base),
                      backing_fmt="qcow2")
    theirs, mine = twins(top, tmp_path)
    qemu.qemu_img("resize", f"--preallocation={mode}", theirs, "4M")
    rc, _, err = ours(capsys, "resize", f"--preallocation={mode}", mine, "4M")
    assert rc == 0, err
    assert_same_as_qemu(theirs, mine)
    _assert_same_map(theirs, mine, offsets=False)
    p = qemu.qemu_img("resize", "--preallocation=metadata", theirs, "6M", check=False)
    rc, _, err = ours(capsys, "resize", "--preallocation=metadata", mine, "6M")
    assert rc == p.returncode == 1 and "Failed to zero out new clusters" in err


def test_reused_clusters_read_as_zeros(tmp_path, capsys):
    """Clusters freed inside the file (here by deleting a snapshot, which does not
    punch holes) and reused for the new area are zeroed first: the grown disk reads
    as zeros (QEMU's preallocate_co does not zero them: on such images its new area
    can show what they held -- a deliberate difference)."""
    img = qemu.create(tmp_path / "r.qcow2", "1M", "cluster_size=4k")
    qemu.qemu_io(img, "write -P 5 0 1M")
    qemu.qemu_img("snapshot", "-c", "s", img)
    qemu.qemu_io(img, "write -P 9 0 1M")
    assert ours(capsys, "snapshot", "-d", "s", img)[0] == 0
    with open(img, "rb") as f:                  # the pattern-5 clusters, free, still there
        assert bytes([5]) * 4096 in f.read()
    rc, _, err = ours(capsys, "resize", "--preallocation=metadata", img, "2M")
    assert rc == 0, err
    assert_clean(img)
    raw = qemu.to_raw(img, tmp_path / "m.raw")
    assert raw[:1 << 20] == bytes([9]) * (1 << 20) and raw[1 << 20:] == bytes(1 << 20)
