"""The one cluster classifier (engine/clusters.py): every scalar rule agrees with
its vectorised twin on random entries of every kind, and both agree with
qemu-img map on real images (standard and extended L2)."""

from __future__ import annotations

import numpy as np
import pytest

import qemu
from qcow2view.engine import clusters as C
from qcow2view.engine import open_image
from qcow2view.engine.extents import extents
from qcow2view.engine.kinds import GuestKind

KiB = 1024
OFFSET = C.L2E_OFFSET_MASK
ALL = C.L2_BITMAP_ALL_ALLOC


def _random_entries(rng: np.random.Generator, n: int, cluster_bits: int) -> np.ndarray:
    """Standard L2 entries of every kind: plain data (with and without COPIED),
    zero (plain and preallocated), unallocated, compressed descriptors (random
    sizes and offsets, some spilling over a cluster boundary), data-file entries at
    offset 0, and entries with reserved bits set."""
    host = (rng.integers(0, 1 << 20, n, dtype=np.uint64) << np.uint64(cluster_bits)) & \
        np.uint64(OFFSET)
    host[rng.random(n) < 0.2] = 0
    flags = np.zeros(n, dtype=np.uint64)
    flags[rng.random(n) < 0.5] |= np.uint64(C.QCOW_OFLAG_COPIED)
    flags[rng.random(n) < 0.25] |= np.uint64(C.QCOW_OFLAG_ZERO)
    flags[rng.random(n) < 0.05] |= np.uint64(1 << rng.integers(56, 62))   # reserved
    raw = host | flags
    comp = rng.random(n) < 0.25
    payload = rng.integers(0, 1 << 62, n, dtype=np.uint64)
    raw[comp] = payload[comp] | np.uint64(C.QCOW_OFLAG_COMPRESSED)
    return raw


def _random_bitmaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sub-cluster bitmaps: none, all allocated, all zero, some allocated, some
    zero, disjoint mixes, and invalid ones (a sub-cluster both allocated and zero)."""
    alloc = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    zero = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    pick = rng.integers(0, 7, n)
    alloc[pick == 0] = 0
    zero[pick == 0] = 0
    alloc[pick == 1], zero[pick == 1] = ALL, 0
    alloc[pick == 2], zero[pick == 2] = 0, ALL
    zero[pick == 3] = 0
    alloc[pick == 4] = 0
    zero[pick == 5] &= ~alloc[pick == 5]
    # pick 6: random, mostly invalid
    return alloc | (zero << np.uint64(32))


@pytest.mark.parametrize("has_data_file", [False, True])
@pytest.mark.parametrize("extended", [False, True])
def test_vectorised_classification_matches_the_scalar_rules(extended, has_data_file):
    rng = np.random.default_rng(13 + 2 * extended + has_data_file)
    n = 4000
    raw = _random_entries(rng, n, 16)
    bitmap = _random_bitmaps(rng, n) if extended else None
    layout = C.CompressionLayout(16)
    types = C.decode_l2_types(raw, bitmap, has_data_file)
    kinds = C.guest_kinds(raw, bitmap, has_data_file)
    owned = C.has_host_clusters(raw, has_data_file)
    for i in range(n):
        entry = int(raw[i])
        bits = None if bitmap is None else int(bitmap[i])
        scalar = C.decode_l2_entry(i, entry, bits, 0, layout, has_data_file)
        assert types[i] == scalar.type, (hex(entry), bits and hex(bits))
        assert kinds[i] == C.guest_kind(entry, bits, has_data_file), (hex(entry), bits)
        assert owned[i] == C.has_host_cluster(entry, has_data_file), hex(entry)
    subs = C.decode_subcluster_types(raw, bitmap, has_data_file)
    assert subs.shape == (n, 32 if extended else 1)
    for i in range(0, n, 3):
        entry = int(raw[i])
        for sc in range(subs.shape[1]):
            want = (C.subcluster_type(entry, int(bitmap[i]), sc, has_data_file) if extended
                    else types[i])
            assert subs[i, sc] == want, (hex(entry), sc)


@pytest.mark.parametrize("has_data_file", [False, True])
def test_every_entry_kind_as_qemu_names_it(has_data_file):
    """The spec's table of L2 entry and sub-cluster types (QEMU's
    qcow2_get_subcluster_type), case by case."""
    T = C.ClusterType
    host = 0x50000
    copied = C.QCOW_OFLAG_COPIED
    assert C.cluster_type(host | copied) == T.NORMAL
    assert C.cluster_type(host | C.QCOW_OFLAG_ZERO) == T.ZERO_ALLOC
    assert C.cluster_type(C.QCOW_OFLAG_ZERO) == T.ZERO_PLAIN
    assert C.cluster_type(0) == T.UNALLOCATED
    assert C.cluster_type(C.QCOW_OFLAG_COMPRESSED | 5) == T.COMPRESSED
    # an external data file's cluster 0: offset 0, told apart by COPIED
    assert C.cluster_type(copied, has_data_file) == (T.NORMAL if has_data_file
                                                     else T.UNALLOCATED)
    bitmap = 0b01 | (0b10 << 32)      # sub-cluster 0 allocated, 1 zero, 2 neither
    sub = [C.subcluster_type(host, bitmap, i, has_data_file) for i in range(3)]
    assert sub == [T.NORMAL, T.ZERO_ALLOC, T.UNALLOCATED_ALLOC]
    sub = [C.subcluster_type(0, 0b10 << 32, i, has_data_file) for i in range(3)]
    assert sub == [T.UNALLOCATED, T.ZERO_PLAIN, T.UNALLOCATED]
    assert C.subcluster_type(0, 1, 5, has_data_file) == T.INVALID       # alloc without host
    assert C.subcluster_type(host, 1 | (1 << 32), 5, has_data_file) == T.INVALID
    assert C.subcluster_type(C.QCOW_OFLAG_COMPRESSED | 5, 0, 0) == T.COMPRESSED
    assert C.guest_kind(host, ALL) == GuestKind.DATA
    assert C.guest_kind(host, ALL << 32) == GuestKind.ZERO
    assert C.guest_kind(host, 0) == GuestKind.UNALLOCATED
    assert C.guest_kind(host, 1) == GuestKind.MIXED
    assert C.guest_kind(0, ALL | (ALL << 32)) == GuestKind.MIXED       # invalid: reads fail


@pytest.mark.parametrize("cluster_bits", [9, 12, 16, 21])
def test_compressed_descriptors_decode_alike(cluster_bits):
    """Scalar and vectorised decode agree, and a descriptor encoded for a run of
    bytes covers it, also where the run spills into the next cluster (QEMU writes
    compressed data packed, across cluster boundaries)."""
    rng = np.random.default_rng(cluster_bits)
    layout = C.CompressionLayout(cluster_bits)
    cs = 1 << cluster_bits
    coffsets = rng.integers(cs, 1 << 40, 2000).tolist()
    sizes = rng.integers(1, cs + 1, 2000).tolist()
    # packed right before a cluster boundary: the data continues in the next cluster
    coffsets[:100] = [(o | (cs - 1)) - 10 for o in coffsets[:100]]
    raw = np.array([layout.encode(o, n) for o, n in zip(coffsets, sizes)], dtype=np.uint64)
    offsets, lengths = layout.decode_array(raw)
    spills = 0
    for i, (o, n) in enumerate(zip(coffsets, sizes)):
        start, length = layout.decode(int(raw[i]))
        assert (start, length) == (int(offsets[i]), int(lengths[i]))
        assert start == o and length >= n and (start + length) % 512 == 0
        assert length - n < 512
        spills += (start + length - 1) // cs > start // cs
    assert spills >= 100


def test_contiguous_run_test_matches_the_scalar_rule():
    rng = np.random.default_rng(7)
    cs, per_table = 1 << 12, 64
    tables = []
    for row in range(300):
        base = int(rng.integers(1, 1 << 30)) << 12
        flags = [0, C.QCOW_OFLAG_COPIED, C.QCOW_OFLAG_ZERO][row % 3]
        entries = [base + i * cs | flags for i in range(per_table)]
        if row % 5 == 1:
            entries[int(rng.integers(1, per_table))] += cs          # a hole in the run
        if row % 7 == 2:
            entries[int(rng.integers(0, per_table))] = 0             # unallocated entry
        if row % 11 == 3:
            entries = [e + 512 for e in entries]                     # unaligned
        tables.append(entries)
    raw = np.array(tables, dtype=np.uint64)
    before = raw.copy()
    vector = C.contiguous_rows(raw, cs)
    assert (raw == before).all()
    assert vector.tolist() == [C.is_contiguous_row(t, cs) for t in tables]
    assert vector.any() and not vector.all()
    # the read path's test for the next entry of a run
    assert C.continues_run(0x20000 | C.QCOW_OFLAG_COPIED, 0x20000)
    assert not C.continues_run(0x20000 | C.QCOW_OFLAG_ZERO, 0x20000)
    assert not C.continues_run(0x30000, 0x20000)


def _qemu_types(path, cs: int, granule: int, size: int) -> list[str]:
    """What qemu-img map says backs each ``granule`` of the guest disk."""
    out = ["?"] * (size // granule)
    for ext in qemu.qemu_map(path):
        if not ext["present"]:
            what = "unallocated"
        elif ext["zero"]:
            what = "zero"
        else:
            what = "data" if "offset" in ext else "compressed"
        for g in range(ext["start"] // granule, (ext["start"] + ext["length"]) // granule):
            out[g] = what
    return out


_SCALAR_NAME = {C.ClusterType.NORMAL: "data", C.ClusterType.COMPRESSED: "compressed",
                C.ClusterType.ZERO_PLAIN: "zero", C.ClusterType.ZERO_ALLOC: "zero",
                C.ClusterType.UNALLOCATED: "unallocated",
                C.ClusterType.UNALLOCATED_ALLOC: "unallocated"}
_KIND_NAME = {GuestKind.DATA: "data", GuestKind.COMPRESSED: "compressed",
              GuestKind.ZERO: "zero", GuestKind.UNALLOCATED: "unallocated"}


@pytest.mark.parametrize("extended", [False, True])
def test_classifier_agrees_with_qemu_img_map(tmp_path, extended):
    cs = 64 * KiB
    sc = cs // 32 if extended else cs
    size = 48 * cs
    path = tmp_path / "kinds.qcow2"
    qemu.create(path, size, f"cluster_size={cs}", f"extended_l2={'on' if extended else 'off'}")
    qemu.qemu_io(path, f"write -P 1 0 {3 * cs}", f"write -c -P 2 {4 * cs} {cs}",
                 f"write -c -P 3 {5 * cs} {cs}", f"write -z {8 * cs} {2 * cs}",
                 f"write -P 4 {12 * cs} {cs}", f"write -z {12 * cs + 4 * sc} {2 * sc}",
                 f"write -z -u {16 * cs + 3 * sc} {sc}", f"write -P 5 {20 * cs + sc} {sc}",
                 f"discard {cs} {sc}", f"write -P 6 {40 * cs} {cs}")
    expected = _qemu_types(path, cs, sc, size)
    with open_image(path) as im:
        l1 = im.l1_table.entries
        table = im.l2_table(int(l1[0]) & C.L1E_OFFSET_MASK, 0)
        per_cluster = C.guest_kinds(table.raw, table.bitmap, im.has_data_file)
        for cluster in range(size // cs):
            entry = int(table.raw[cluster])
            bits = None if table.bitmap is None else int(table.bitmap[cluster])
            subs = ([C.subcluster_type(entry, bits, i) for i in range(32)] if extended
                    else [C.cluster_type(entry)])
            names = [_SCALAR_NAME[t] for t in subs]
            got = expected[cluster * (cs // sc):(cluster + 1) * (cs // sc)]
            assert names == got, f"cluster {cluster}: {names} != qemu {got}"
            kind = GuestKind(int(per_cluster[cluster]))
            assert kind == C.guest_kind(entry, bits)
            if len(set(got)) == 1:
                assert _KIND_NAME[kind] == got[0], cluster
            else:
                assert kind == GuestKind.MIXED, cluster

        # the engine's extent walk (search, "next allocated") says the same per run
        for start, end, kind in extents(im, 0, size):
            got = set(expected[start // sc:end // sc])
            if kind == GuestKind.MIXED:
                assert len(set(expected[start // cs * (cs // sc):
                                        -(-end // cs) * (cs // sc)])) > 1
            else:
                assert got == {_KIND_NAME[kind]}, (start, end, kind, got)
