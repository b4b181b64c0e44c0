"""Long operations report progress and stop when the callback raises CancelledError,
leaving a valid image (qemu-img check clean) whose guest view is unchanged, or
for commit's base and convert's output, a valid image partly written."""

from __future__ import annotations

import pytest

import qemu
from ops_oracle import assert_clean
from qcow2view.engine import CancelledError
from qcow2view.engine.metadata_ops import opened_writable
from qcow2view.engine.ops.amend import amend_image
from qcow2view.engine.ops.commit import commit_image
from qcow2view.engine.ops.convert import convert_image
from qcow2view.engine.ops.rebase import rebase_image
from qcow2view.engine.ops.snapshot import apply_snapshot, delete_snapshot


def _cancel_after(n: int):
    calls = []

    def progress(done: int, total: int) -> None:
        assert 0 <= done <= total
        calls.append(done)
        if len(calls) > n:
            raise CancelledError("cancelled")
    return progress, calls


@pytest.fixture
def chain(tmp_path):
    base = qemu.create(tmp_path / "base.qcow2", "12M", "cluster_size=4k")
    qemu.qemu_io(base, "write -P 1 0 10M")
    new = qemu.create(tmp_path / "new.qcow2", "12M")
    top = qemu.create(tmp_path / "top.qcow2", "12M", "cluster_size=4k", backing="base.qcow2",
                      backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 2 0 9M")
    qemu.qemu_img("snapshot", "-c", "s", top)
    qemu.qemu_io(top, "write -P 3 1M 4M")
    return tmp_path, base, new, top


def _image_op(fn):
    def run(path, progress):
        with opened_writable(path) as im:
            fn(im, progress)
    return run


OPS = {
    "snapshot-apply": ("top", _image_op(lambda im, p: apply_snapshot(im, "s", p))),
    "snapshot-delete": ("top", _image_op(lambda im, p: delete_snapshot(im, "s", p))),
    "amend": ("top", _image_op(lambda im, p: amend_image(im, {"refcount_bits": 64}, p))),
    "rebase": ("top", lambda path, p: rebase_image(str(path), "new.qcow2", "qcow2",
                                                   progress=p)),
    "commit": ("top", lambda path, p: commit_image(str(path), progress=p)),
}


@pytest.mark.parametrize("name", list(OPS))
def test_cancel_leaves_the_image_valid(chain, name):
    d, base, new, top = chain
    before = qemu.to_raw(top, d / "before.raw")
    _, op = OPS[name]
    progress, calls = _cancel_after(1)
    with pytest.raises(CancelledError):
        op(top, progress)
    assert len(calls) == 2
    for p in (base, new, top):
        assert_clean(p)
    assert qemu.to_raw(top, d / "after.raw") == before
    # and the operation still runs to the end afterwards
    progress, calls = _cancel_after(10 ** 6)
    op(top, progress)
    assert calls and calls[-1] > 0


def test_convert_cancel_leaves_a_valid_partial_copy(chain):
    d, _, _, top = chain
    progress, calls = _cancel_after(1)
    with pytest.raises(CancelledError):
        convert_image(str(top), str(d / "out.qcow2"), progress=progress,
                      options={"cluster_size": 4096})
    assert_clean(d / "out.qcow2")
    convert_image(str(top), str(d / "out.qcow2"), progress=_cancel_after(10 ** 6)[0])
    assert qemu.compare(top, d / "out.qcow2").returncode == 0
