"""What a leaked cluster once held, told from its bytes (qcow2view.guest.leaked): the
images are made by qemu-img/qemu-io, the leaks are counted by qemu-img check."""

from __future__ import annotations

from qemu import check, create, host_offset, qemu_io

from gui_fixtures import _make_leak
from qcow2view.engine import open_image
from qcow2view.guest.leaked import leaked_fates

CS = 65536


def _leak(path, data: bytes) -> int:
    """Append a leaked cluster holding ``data``; qemu-img check must count it."""
    idx = _make_leak(path)
    with open(path, "r+b") as f:
        f.seek(idx * CS)
        f.write(data)
    rc, report = check(path)
    assert rc == 3 and report["leaks"] >= 1
    return idx


def test_a_leak_equal_to_a_backing_cluster_names_that_guest_cluster(tmp_path):
    base = create(tmp_path / "base.qcow2", "4M")
    qemu_io(base, "write -P 0x5a 0 1M", "write -P 0x5b 1M 1M")
    top = create(tmp_path / "top.qcow2", "4M", backing="base.qcow2")
    qemu_io(top, "write -P 0x5c 2M 64k")
    copy = _leak(top, bytes([0x5b]) * CS)             # equals guest 1M..2M, in the base
    own = _leak(top, bytes([0x5c]) * CS)              # equals guest 2M, in the top
    stray = _leak(top, bytes(range(256)) * (CS // 256))   # equals nothing
    with open_image(str(top)) as img:
        fates = leaked_fates(img, [copy, own, stray], img.guest_map())
    assert (fates[copy].what, fates[copy].guest, fates[copy].depth) == ("copy", 1 << 20, 1)
    assert (fates[own].what, fates[own].guest, fates[own].depth) == ("copy", 2 << 20, 0)
    assert fates[own].host == host_offset(top, 2 << 20)      # qemu-img map's answer
    assert fates[stray].what == "?"
