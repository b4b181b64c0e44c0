"""Internal snapshots: the table, and reading the disk as a snapshot saw it."""

from __future__ import annotations

import pytest

import qemu
from conftest import guest_data
from qcow2view.engine import RequestError, open_image

KiB, MiB = 1024, 1024 * 1024


def _snapshot_list(path) -> list[dict]:
    return qemu.info(path).get("snapshots", [])


@pytest.mark.parametrize("opts", [
    ("compat=0.10", "cluster_size=4096"),
    ("compat=1.1", "cluster_size=4096"),
    ("compat=1.1", "cluster_size=16384", "extended_l2=on"),
    ("compat=1.1", "cluster_size=512", "compression_type=zstd", "refcount_bits=8"),
], ids=lambda o: "-".join(x.split("=")[1] for x in o))
def test_snapshot_views_read_like_qemu(tmp_path, guest_write, reads_like_qemu, opts):
    compat = opts[0].split("=")[1]
    path = qemu.create(tmp_path / "s.qcow2", "2M", *opts)
    guest_write(path, 0, guest_data(300 * KiB, 1))
    guest_write(path, 400 * KiB, guest_data(96 * KiB, 2), "-c")
    qemu.qemu_img("snapshot", "-c", "first", path)
    guest_write(path, 100 * KiB + 7, guest_data(300 * KiB, 3))
    qemu.qemu_io(path, "write -z 0 8k", "discard 400k 40k")
    qemu.qemu_img("snapshot", "-c", "second", path)
    # a snapshot taken before a resize (version 2 images refuse to resize with snapshots)
    if compat == "1.1":
        qemu.qemu_img("resize", path, "3M")
    guest_write(path, 1 * MiB + 5, guest_data(500 * KiB, 4))
    qemu.qemu_img("snapshot", "-c", "after resize", path)
    qemu.qemu_io(path, "write -P 1 0 1M")

    for name in (None, "first", "second", "after resize"):
        reads_like_qemu(path, snapshot=name, slices=20)

    expected = _snapshot_list(path)
    with open_image(path) as img:
        assert [(s.id_str, s.name, s.vm_state_size, s.date_sec, s.date_nsec,
                 s.vm_clock_nsec) for s in img.snapshots] == [
            (e["id"], e["name"], e["vm-state-size"], e["date-sec"], e["date-nsec"],
             e["vm-clock-sec"] * 10**9 + e["vm-clock-nsec"]) for e in expected]
        if compat == "1.1":   # v3 snapshots record the disk size in their extra data
            assert [s.disk_size for s in img.snapshots] == [2 * MiB, 2 * MiB, 3 * MiB]
        # the table entries lie where the header says, one after the other
        assert img.snapshots[0].offset == img.header.snapshots_offset
        for a, b in zip(img.snapshots, img.snapshots[1:]):
            assert b.offset == a.offset + a.entry_size
        assert img.snapshot_l1_table("second").size == img.snapshots[1].l1_size
    today = qemu.info(path)["virtual-size"]
    for view_name, size in (("first", 2 * MiB), ("after resize", today)):
        with open_image(path, snapshot=view_name) as view:
            # read like `convert -l`: today's size; the snapshot's own is disk_size
            assert view.virtual_size == today
            assert view.snapshot.disk_size == size
    with open_image(path, snapshot="first") as view:
        assert view.snapshot.name == "first"
    with open_image(path, snapshot="1") as view:       # by id as qemu-img -l snapshot.id
        assert view.snapshot.name == "first"
    with pytest.raises(RequestError):
        open_image(path, snapshot="no such snapshot")
    with pytest.raises(RequestError):
        open_image(path, snapshot="first", writable=True)


def test_many_snapshots(tmp_path, reads_like_qemu):
    path = qemu.create(tmp_path / "m.qcow2", "1M", "cluster_size=512")
    for i in range(40):
        qemu.qemu_io(path, f"write -P {i + 1} {i * 4096} 4096")
        qemu.qemu_img("snapshot", "-c", f"snap-{i}-{'x' * i}", path)
    with open_image(path) as img:
        assert [s.name for s in img.snapshots] == [e["name"] for e in _snapshot_list(path)]
    for i in (0, 17, 39):
        reads_like_qemu(path, snapshot=f"snap-{i}-{'x' * i}", slices=5)
