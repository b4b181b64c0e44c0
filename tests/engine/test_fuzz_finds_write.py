"""Disagreements with QEMU found by tests/fuzz/fuzz_write.py, each minimised to a
small image made by qemu-img / qemu-io and judged by the real tools."""

from __future__ import annotations

import json
import random

import pytest

import qemu
from qcow2view.engine import open_image
from qcow2view.engine.compressed_write import write_compressed


def _clean(path) -> dict:
    code, res = qemu.check(path)
    assert code == 0 and not res.get("leaks") and not res.get("corruptions"), res
    return res


def test_write_into_the_data_cluster_right_after_the_snapshot_table(tmp_path):
    # fuzz_write seed 3220532069 case 24: with 512-byte clusters the snapshot table
    # (one 72-byte entry) is followed by the next data cluster qemu allocates
    p = qemu.create(tmp_path / "s.qcow2", "64k", "cluster_size=512")
    qemu.qemu_io(p, "write -P 1 0 512")
    qemu.qemu_img("snapshot", "-c", "s0", p)
    qemu.qemu_io(p, "write -P 2 4096 512")          # a data cluster just past the table
    expected = qemu.to_raw(p, tmp_path / "before.raw")
    with open_image(p, writable=True) as im:
        im.write(4096 + 3, b"ours")
    _clean(p)
    got = qemu.to_raw(p, tmp_path / "after.raw")
    assert got == expected[:4099] + b"ours" + expected[4103:]
    assert qemu.to_raw(p, tmp_path / "s0.raw", snapshot="s0")[:512] == b"\x01" * 512



@pytest.mark.parametrize("opts", [("cluster_size=4096",), ("compat=0.10", "cluster_size=4096"),
                                  ("cluster_size=65536", "extended_l2=on")])
def test_compressed_write_copies_an_l2_table_shared_with_a_snapshot(tmp_path, opts):
    # fuzz_write seed 12824448 cases 45, 110: qemu-io write -c copies the L2 table
    # (get_cluster_table -> l2_allocate) where we refused
    cs = 65536 if "cluster_size=65536" in opts else 4096
    p = qemu.create(tmp_path / "ours.qcow2", "1M", *opts)
    qemu.qemu_io(p, "write -P 1 0 4k")
    qemu.qemu_img("snapshot", "-c", "s0", p)
    q = tmp_path / "qemu.qcow2"
    q.write_bytes(p.read_bytes())
    qemu.qemu_io(q, f"write -c -P 0x5a {8 * cs} {cs}")
    with open_image(p, writable=True) as im:
        write_compressed(im, 8 * cs, b"\x5a" * cs)
    assert _clean(p).get("compressed-clusters") == _clean(q).get("compressed-clusters") == 1
    assert qemu.compare(p, q).returncode == 0
    assert qemu.to_raw(p, tmp_path / "s0.raw", snapshot="s0") == \
        qemu.to_raw(q, tmp_path / "qs0.raw", snapshot="s0")


def _twins(tmp_path, make):
    """The same image twice (made by ``make(path)``): one for qemu-io, one for us."""
    ours, theirs = tmp_path / "ours", tmp_path / "qemu"
    ours.mkdir()
    theirs.mkdir()
    return make(ours), make(theirs)


def _same_as_qemu(ours, theirs):
    _clean(ours)
    _clean(theirs)
    assert qemu.compare(ours, theirs).returncode == 0
    assert _map(ours) == _map(theirs)


def _map(path) -> list:
    """qemu-img map's ranges (data / zero / depth) without host offsets."""
    out = json.loads(qemu.qemu_img("map", "--output=json", path).stdout)
    return [{k: v for k, v in e.items() if k != "offset"} for e in out]


@pytest.mark.parametrize("backing_opts", [("cluster_size=4096",), ("cluster_size=4096", "compat=0.10"),
                                          ("cluster_size=2048", "extended_l2=off")])
def test_unaligned_zero_write_keeps_backing_data_later_in_the_cluster(tmp_path, backing_opts):
    # fuzz_write seed 3102427737 case 285: the first bytes of the overlay's cluster
    # are unallocated down the chain, but the backing file (smaller clusters) has data
    # later in it; qemu's is_zero() looks at the whole rest of the (sub)cluster
    def make(d):
        base = qemu.create(d / "base.qcow2", "1M", *backing_opts)
        qemu.qemu_io(base, "write -P 0x42 8k 4k")
        top = qemu.create(d / "top.qcow2", "1M", "cluster_size=32768",
                          backing="base.qcow2", backing_fmt="qcow2")
        return top
    ours, theirs = _twins(tmp_path, make)
    qemu.qemu_io(theirs, "write -z 100 100")
    with open_image(ours, writable=True) as im:
        im.write_zeroes(100, 100)
    _same_as_qemu(ours, theirs)
    assert qemu.to_raw(ours, tmp_path / "o.raw")[8192:12288] == b"\x42" * 4096


def test_zero_write_ending_inside_a_compressed_cluster_goes_head_middle_tail(tmp_path):
    # fuzz_write seed 3102427737 case 63: qemu zeroes the aligned middle before the
    # tail; the middle cuts the compressed cluster, so qemu writes it as zeros (data).
    # We did the tail first, which made the cluster plain, and then zero-flagged it
    def make(d):
        p = qemu.create(d / "x.qcow2", "1M", "cluster_size=65536", "extended_l2=on")
        qemu.qemu_io(p, "write -c -P 0x11 64k 64k", "write -P 0x22 0 16k")
        return p
    ours, theirs = _twins(tmp_path, make)
    start, end = 65536 - 8192 + 100, 65536 + 4096 + 100
    qemu.qemu_io(theirs, f"write -z {start} {end - start}")
    with open_image(ours, writable=True) as im:
        im.write_zeroes(start, end - start)
    _same_as_qemu(ours, theirs)


def test_unaligned_zero_write_over_a_hole_of_a_raw_backing_file(tmp_path):
    # qemu's is_zero() asks the raw backing file for holes (SEEK_DATA): a hole reads
    # as zero by status, so the overlay's cluster gets the zero flag; data does not
    def make(d):
        with open(d / "base.raw", "wb") as f:
            f.truncate(1 << 20)
            f.seek(512 << 10)
            f.write(b"\x33" * 4096)
        return qemu.create(d / "top.qcow2", "1M", backing="base.raw", backing_fmt="raw")
    ours, theirs = _twins(tmp_path, make)
    qemu.qemu_io(theirs, "write -z 100 100", f"write -z {(512 << 10) + 100} 100")
    with open_image(ours, writable=True) as im:
        im.write_zeroes(100, 100)
        im.write_zeroes((512 << 10) + 100, 100)
    _same_as_qemu(ours, theirs)


@pytest.mark.parametrize("cluster_size, data", [
    (512, b"\x61" * 512),                                  # any 512-byte cluster
    (4096, random.Random(7).randbytes(3700) + bytes(396)),  # squeezed to 3.6-4 KiB
])
def test_compressed_write_compresses_whatever_fits_in_a_cluster(tmp_path, cluster_size, data):
    # fuzz_write seed 500419600 case 9: qemu keeps a stream that fits in cluster_size - 1
    # bytes (qcow2_co_pwritev_compressed_task); we wrote clusters whose stream was
    # cluster_size - 512 or more uncompressed -- every 512-byte cluster
    def make(d):
        return qemu.create(d / "c.qcow2", "64k", f"cluster_size={cluster_size}")
    ours, theirs = _twins(tmp_path, make)
    (tmp_path / "data.bin").write_bytes(data)
    qemu.qemu_io(theirs, f"write -c -s {tmp_path / 'data.bin'} 0 {cluster_size}")
    with open_image(ours, writable=True) as im:
        write_compressed(im, 0, data)
    assert _clean(ours).get("compressed-clusters") == _clean(theirs).get("compressed-clusters")
    assert qemu.compare(ours, theirs).returncode == 0
    assert _map(ours) == _map(theirs)


def test_new_clusters_are_allocated_run_by_run_as_qemu(tmp_path):
    # qemu's handle_alloc takes each run of clusters needing new ones in request order;
    # we took one contiguous block for the whole request, so a one-cluster hole that
    # qemu fills with the first run stayed empty (host offsets differed)
    def make(d):
        p = qemu.create(d / "a.qcow2", "1M")
        qemu.qemu_io(p, "write -P 1 64k 64k", "write -P 2 320k 128k", "write -z -u 320k 64k")
        return p
    ours, theirs = _twins(tmp_path, make)
    qemu.qemu_io(theirs, "write -P 3 1000 190000")
    with open_image(ours, writable=True) as im:
        im.write(1000, b"\x03" * 190000)
    _same_as_qemu(ours, theirs)
    with_offsets = [json.loads(qemu.qemu_img("map", "--output=json", p).stdout)
                    for p in (ours, theirs)]
    assert with_offsets[0] == with_offsets[1]


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536])
def test_compressed_writes_of_one_session_share_host_clusters_as_qemu(tmp_path, cluster_size):
    # fuzz_write seed 500419600 case 15: qemu packs the streams of successive write -c
    # requests into one host cluster (free_byte_offset); each of our calls started a
    # new one, so every later allocation sat a cluster further on
    cs = cluster_size

    def make(d):
        return qemu.create(d / "p.qcow2", "1M", f"cluster_size={cs}")
    ours, theirs = _twins(tmp_path, make)
    qemu.qemu_io(theirs, f"write -c -P 1 0 {cs}", f"write -c -P 2 {cs} {cs}",
                 f"write -c -P 3 {4 * cs} {cs}", f"write -P 4 {8 * cs} {cs}")
    with open_image(ours, writable=True) as im:
        for guest, pattern in ((0, 1), (cs, 2), (4 * cs, 3)):
            write_compressed(im, guest, bytes([pattern]) * cs)
        im.write(8 * cs, b"\x04" * cs)
    _same_as_qemu(ours, theirs)
    res = [json.loads(qemu.qemu_img("map", "--output=json", p).stdout) for p in (ours, theirs)]
    assert res[0] == res[1]
    assert _clean(ours)["image-end-offset"] == _clean(theirs)["image-end-offset"]


def test_compressed_streams_with_1bit_refcounts_each_take_a_cluster(tmp_path):
    # fuzz_write seed 2960414979 cases 13, 132: a cluster holding a stream is at the
    # refcount maximum, so qemu starts the next stream in a new one
    def make(d):
        return qemu.create(d / "p.qcow2", "1M", "cluster_size=4096", "refcount_bits=1")
    ours, theirs = _twins(tmp_path, make)
    qemu.qemu_io(theirs, "write -c -P 1 0 4k", "write -c -P 2 4k 4k")
    with open_image(ours, writable=True) as im:
        write_compressed(im, 0, b"\x01" * 4096)
        write_compressed(im, 4096, b"\x02" * 4096)
    _same_as_qemu(ours, theirs)
    assert _clean(ours)["image-end-offset"] == _clean(theirs)["image-end-offset"]
