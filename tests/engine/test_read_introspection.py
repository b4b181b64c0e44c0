"""Introspection for the GUI: L1/L2 entries, guest_mapping and refcounts, compared
with ``qemu-img map --output=json`` and the file's own bytes."""

from __future__ import annotations

import struct

import pytest

import qemu
from conftest import guest_data
from qcow2view.engine import ClusterType, open_image
from qcow2view.engine.clusters import L2E_OFFSET_MASK

KiB, MiB = 1024, 1024 * 1024
ZERO_TYPES = {ClusterType.ZERO_PLAIN, ClusterType.ZERO_ALLOC}


def _assert_mapping_matches(img, extent: dict, off: int) -> None:
    m = img.guest_mapping(off)
    where = f"guest {off:#x} in {extent}: {m}"
    if not extent["present"]:
        assert m.depth == -1, where
        return
    assert m.depth == extent["depth"], where
    if extent["zero"]:
        assert m.type in ZERO_TYPES, where
    elif "offset" in extent:
        assert m.type == ClusterType.NORMAL, where
    else:
        assert m.type == ClusterType.COMPRESSED, where
    if "offset" in extent:
        assert m.host_offset == extent["offset"] + off - extent["start"], where
    if m.type == ClusterType.ZERO_ALLOC:
        assert "offset" in extent, where


def _compare_with_qemu_map(path, step: int) -> None:
    with open_image(path) as img:
        for ext in qemu.qemu_map(path):
            start, end = ext["start"], ext["start"] + ext["length"]
            points = {start, end - 1, *range(start, end, max(step, ext["length"] // 16))}
            for off in sorted(points):
                _assert_mapping_matches(img, ext, off)


def test_mapping_of_every_cluster_kind(tmp_path, guest_write):
    base = qemu.create(tmp_path / "base.qcow2", "3M", "cluster_size=4096")
    guest_write(base, 0, guest_data(2 * MiB, 1))
    qemu.qemu_io(base, "write -z 1M 64k", "write -c -P 5 2M 64k")
    path = qemu.create(tmp_path / "top.qcow2", "4M", "cluster_size=4096", backing=str(base))
    guest_write(path, 0, guest_data(20 * 4096 + 7, 2))
    guest_write(path, 40 * 4096, guest_data(8 * 4096, 3), "-c")
    qemu.qemu_io(path, "write -z 12k 8k", "write -z -u 64k 64k", "discard 160k 4k",
                 "write -P 3 3M 100k", "write -z 3M 8k")
    _compare_with_qemu_map(path, 4096)


def test_mapping_of_subclusters(tmp_path, guest_write):
    cs, sc = 64 * KiB, 2 * KiB
    base = qemu.create(tmp_path / "base.qcow2", "2M")
    guest_write(base, 0, guest_data(2 * MiB, 1))
    path = qemu.create(tmp_path / "e.qcow2", "2M", "extended_l2=on", backing=str(base))
    guest_write(path, 3 * sc, guest_data(5 * sc, 2))
    qemu.qemu_io(path, f"write -z {10 * sc} {3 * sc}", f"write -z -u {cs + 5 * sc} {3 * sc}",
                 f"write -P 3 {4 * cs} {cs}", f"discard {4 * cs + sc} {2 * sc}")
    guest_write(path, 8 * cs, guest_data(cs, 4), "-c")
    _compare_with_qemu_map(path, sc)


def test_mapping_with_raw_backing_and_data_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.raw").write_bytes(guest_data(MiB + 512, 1))
    path = qemu.create(tmp_path / "t.qcow2", "2M", "data_file=t.data", backing="base.raw",
                       backing_fmt="raw")
    qemu.qemu_io(path, "write -P 1 64k 64k", "write -z 256k 64k")
    with open_image(path) as img:
        m = img.guest_mapping(64 * KiB + 5)
        assert m.file == str(tmp_path / "t.data")
        assert img.guest_mapping(0).file == str(tmp_path / "base.raw")
    _compare_with_qemu_map(path, 64 * KiB)


def test_l1_and_l2_entries_point_at_their_own_bytes(tmp_path, guest_write):
    path = qemu.create(tmp_path / "t.qcow2", "8M", "cluster_size=4096")
    guest_write(path, 0, guest_data(64 * KiB, 1))
    guest_write(path, 3 * MiB, guest_data(64 * KiB, 2), "-c")
    qemu.qemu_io(path, "write -z 5M 8k", "write -P 1 7M 4k", "write -z 7M 4k")
    raw = path.read_bytes()
    seen = set()
    with open_image(path) as img:
        for i in range(img.l1_table.size):
            e = img.l1_table.entry(i)
            assert struct.unpack_from(">Q", raw, e.offset)[0] == e.raw
            assert e.offset == img.header.l1_table_offset + 8 * i
            if not e.l2_offset:
                continue
            assert e.copied
            t = img.l2_table(e.l2_offset, i)
            types = t.types()
            for j in range(len(t)):
                le = t.entry(j)
                assert struct.unpack_from(">Q", raw, le.offset)[0] == le.raw
                assert types[j] == le.type
                guest = ((i << img.l2_bits) + j) * img.cluster_size
                if guest >= img.virtual_size:
                    continue
                m = img.guest_mapping(guest)
                assert (m.l1_index, m.l2_index, m.l2_entry_offset) == (i, j, le.offset)
                assert m.type == le.type
                seen.add(le.type)
                if le.type == ClusterType.NORMAL:
                    assert le.host_offset == le.raw & L2E_OFFSET_MASK == m.host_offset
                    assert img.refcount(le.host_offset // img.cluster_size) == 1
                elif le.type == ClusterType.COMPRESSED:
                    assert (le.host_offset, le.compressed_size) == (m.host_offset,
                                                                     m.compressed_size)
    assert seen == {ClusterType.NORMAL, ClusterType.COMPRESSED, ClusterType.UNALLOCATED,
                    ClusterType.ZERO_PLAIN, ClusterType.ZERO_ALLOC}


@pytest.mark.parametrize("refcount_bits", [1, 4, 16, 64])
def test_refcounts_after_snapshots(tmp_path, refcount_bits):
    """Clusters shared by a snapshot count 2; the COPIED flag says which are not shared."""
    path = qemu.create(tmp_path / "r.qcow2", "1M", "cluster_size=4096",
                       f"refcount_bits={refcount_bits}")
    qemu.qemu_io(path, "write -P 1 0 64k")
    if refcount_bits > 1:
        qemu.qemu_img("snapshot", "-c", "s", path)
        qemu.qemu_io(path, "write -P 2 0 8k")
    assert qemu.check(path)[0] == 0          # qemu agrees the counts are right
    with open_image(path) as img:
        t = img.l2_table(img.l1_table.entry(0).l2_offset, 0)
        for j in range(16):
            le = t.entry(j)
            count = img.refcount(le.host_offset // img.cluster_size)
            assert count == (1 if le.copied else 2)
            if refcount_bits > 1:
                assert le.copied == (j < 2)
        counts = img.refcounts()
        assert len(counts) == img.host_clusters
        assert all(img.refcount(i) == counts[i] for i in range(len(counts)))
