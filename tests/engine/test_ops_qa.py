"""QA pass over the image operations: each case is one a user hit, judged by qemu-img
on a copy (same result, or the same refusal: exit 1, one line on stderr)."""

from __future__ import annotations

import pytest

import qemu
from ops_oracle import ours, twins


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    img = qemu.create(d / "a.qcow2", "10M")
    qemu.qemu_io(img, "write -P 7 0 3M")
    return img


@pytest.mark.parametrize("size", ["0", "-10M"])
def test_resize_to_zero_is_refused_as_qemu(small, tmp_path, capsys, size):
    theirs, mine = twins(small, tmp_path)
    p = qemu.qemu_img("resize", "--shrink", theirs, "--", size, check=False)
    rc, _, err = ours(capsys, "resize", "--shrink", mine, size)
    assert p.returncode == rc == 1
    assert "must be positive" in err and len(err.splitlines()) == 1
    assert qemu.compare(mine, small).returncode == 0
    assert qemu.info(mine)["virtual-size"] == 10 << 20
