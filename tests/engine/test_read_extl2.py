"""Extended L2 entries: 32 sub-clusters, each allocated, zero or unallocated."""

from __future__ import annotations

import pytest

import qemu
from conftest import guest_data
from qcow2view.engine import ClusterType, open_image

KiB, MiB = 1024, 1024 * 1024


@pytest.mark.parametrize("with_backing", [False, True])
@pytest.mark.parametrize("cluster_size", [16 * KiB, 64 * KiB, 2 * MiB])
def test_subclusters_read_like_qemu(tmp_path, guest_write, reads_like_qemu, cluster_size,
                                    with_backing):
    cs, sc = cluster_size, cluster_size // 32
    size = max(4 * MiB, 12 * cs)
    backing = None
    if with_backing:   # unallocated sub-clusters then show the backing file's bytes
        backing = tmp_path / "base.qcow2"
        qemu.create(backing, size, f"cluster_size={cs}")
        guest_write(backing, 0, guest_data(size, 9))
    path = tmp_path / "ext.qcow2"
    qemu.create(path, size, f"cluster_size={cs}", "extended_l2=on",
                backing=backing and str(backing))
    guest_write(path, 3 * sc + 5, guest_data(5 * sc, 1))              # some sub-clusters
    qemu.qemu_io(path, f"write -z {10 * sc} {3 * sc}",                 # zero in allocated
                 f"write -z -u {cs + 10 * sc} {3 * sc}",               # zero in unallocated
                 f"write -P 3 {8 * cs} {cs}",
                 f"discard {8 * cs + sc} {2 * sc}")                    # holes in full cluster
    guest_write(path, 2 * cs, guest_data(2 * cs, 4), "-c")             # compressed
    qemu.qemu_io(path, f"discard {6 * cs} {cs}")
    reads_like_qemu(path)

    with open_image(path) as img:
        assert img.extended_l2 and img.header.l2_entry_size == 16
        l1 = img.l1_table.entry(0)
        t = img.l2_table(l1.l2_offset, 0)
        assert t.bitmap is not None and len(t) == cs // 16
        # guest_mapping answers per sub-cluster, like qemu-io's "map"
        assert img.guest_mapping(3 * sc).type == ClusterType.NORMAL
        assert img.guest_mapping(10 * sc).type == ClusterType.ZERO_ALLOC
        assert img.guest_mapping(2 * cs).type == ClusterType.COMPRESSED
        before = img.guest_mapping(sc - 1)
        if with_backing:
            assert before.depth == 1 and before.type == ClusterType.NORMAL
        else:
            assert before.depth == -1
