"""Guest reads of every cluster kind, byte-exact with ``qemu-img convert -O raw``.

Images are written by qemu-io (data, compressed, zero with and without unmap,
discard) over the range of cluster sizes, refcount widths and both versions.
"""

from __future__ import annotations

import numpy as np
import pytest

import qemu
from conftest import guest_data
from qcow2view.engine import ClusterType, RequestError, open_image

KiB, MiB = 1024, 1024 * 1024


def _all_types(img) -> set[ClusterType]:
    seen: set[ClusterType] = set()
    for i in range(img.l1_table.size):
        e = img.l1_table.entry(i)
        if e.l2_offset:
            seen |= {ClusterType(t) for t in img.l2_table(e.l2_offset, i).types()}
    return seen


def _write_every_kind(path, cs: int, guest_write) -> None:
    guest_write(path, 0, guest_data(3 * cs + 100, 1))                 # data, odd tail
    guest_write(path, 5 * cs, guest_data(4 * cs, 2), "-c")            # compressed
    qemu.qemu_io(path, f"write -z {cs // 2} {cs}")                    # zero, partial clusters
    qemu.qemu_io(path, f"write -P 7 {10 * cs} {3 * cs}",
                 f"write -z {10 * cs} {cs}",                          # preallocated zero
                 f"write -z -u {11 * cs} {cs}",                       # zero, unmapped
                 f"discard {12 * cs} {cs}")
    qemu.qemu_io(path, f"write -z {14 * cs} {2 * cs}")                # zero over nothing
    guest_write(path, 17 * cs + 333, guest_data(cs + 777, 3))         # straddling, odd


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("cluster_size", [512, 4 * KiB, 64 * KiB, 2 * MiB])
def test_every_cluster_kind_reads_like_qemu(tmp_path, guest_write, reads_like_qemu,
                                            cluster_size, compat):
    path = tmp_path / "kinds.qcow2"
    qemu.create(path, max(4 * MiB, 20 * cluster_size), f"cluster_size={cluster_size}",
                f"compat={compat}")
    _write_every_kind(path, cluster_size, guest_write)
    reads_like_qemu(path)
    with open_image(path) as img:
        kinds = _all_types(img)
    assert {ClusterType.NORMAL, ClusterType.COMPRESSED, ClusterType.UNALLOCATED} <= kinds
    if compat == "1.1":
        assert {ClusterType.ZERO_PLAIN, ClusterType.ZERO_ALLOC} <= kinds


@pytest.mark.parametrize("refcount_bits", [1, 2, 4, 8, 16, 32, 64])
def test_refcount_widths_read_like_qemu(tmp_path, guest_write, reads_like_qemu, refcount_bits):
    path = tmp_path / "rc.qcow2"
    qemu.create(path, "1M", "cluster_size=4096", f"refcount_bits={refcount_bits}")
    _write_every_kind(path, 4096, guest_write)
    reads_like_qemu(path, slices=20)
    rc, report = qemu.check(path)
    assert rc == 0
    with open_image(path) as img:
        assert img.header.refcount_bits == refcount_bits
        counts = img.refcounts()
        # the last referenced host cluster is where qemu-img check says the image ends
        assert int(np.flatnonzero(counts).max() + 1) * 4096 == report["image-end-offset"]
        assert counts[0] == 1  # the header cluster
        assert img.refcount(0) == 1 and img.refcount(len(counts) + 10**6) == 0
        with pytest.raises(RequestError):
            img.refcount(-1)


@pytest.mark.parametrize("compression_type", ["zlib", "zstd"])
@pytest.mark.parametrize("cluster_size", [512, 4 * KiB, 64 * KiB])
def test_compressed_descriptors_spilling_into_next_cluster(
        tmp_path, guest_write, reads_like_qemu, cluster_size, compression_type):
    path = tmp_path / "z.qcow2"
    qemu.create(path, "2M", f"cluster_size={cluster_size}",
                f"compression_type={compression_type}")
    guest_write(path, 0, guest_data(1 * MiB, 5), "-c")
    reads_like_qemu(path)
    with open_image(path) as img:
        assert img.header.compression_type_name == compression_type
        spilling = 0
        for i in range(img.l1_table.size):
            e = img.l1_table.entry(i)
            if not e.l2_offset:
                continue
            t = img.l2_table(e.l2_offset, i)
            for j in range(len(t)):
                le = t.entry(j)
                if le.compressed:
                    first = le.host_offset // cluster_size
                    last = (le.host_offset + le.compressed_size - 1) // cluster_size
                    spilling += last != first
        assert spilling > 0


def test_read_past_end_of_short_data_cluster_is_zero(tmp_path, reads_like_qemu):
    """A data cluster that the file truncates part-way reads as zeros past EOF (as QEMU)."""
    path = tmp_path / "short.qcow2"
    qemu.create(path, "1M")
    qemu.qemu_io(path, "write -P 0x5a 0 64k")
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    raw = reads_like_qemu(path)
    assert raw[:64 * KiB - 1000] == b"\x5a" * (64 * KiB - 1000)


def test_requests_outside_the_disk_are_refused(tmp_path):
    path = qemu.create(tmp_path / "x.qcow2", "1M")
    with open_image(path) as img:
        assert img.read(MiB, 0) == b""
        for off, n in ((MiB, 1), (-1, 1), (0, MiB + 1)):
            with pytest.raises(RequestError):
                img.read(off, n)


def test_opening_and_reading_never_changes_the_file(tmp_path, reads_like_qemu):
    """Read-only unless asked: even a dirty image (which QEMU repairs when it opens
    it for writing) keeps every byte and its modification time."""
    import hashlib
    import os
    import subprocess
    path = qemu.create(tmp_path / "d.qcow2", "1M", "lazy_refcounts=on")
    subprocess.run([qemu.QEMU_IO, "-c", "write -P 1 0 64k", "-c", "abort", str(path)],
                   capture_output=True)
    before = (hashlib.sha256(path.read_bytes()).digest(), os.stat(path).st_mtime_ns)
    with open_image(path) as img:
        assert img.dirty and not img.file.writable
        img.read(0, img.virtual_size)
        img.refcounts()
        img.l2_table(img.l1_table.entry(0).l2_offset, 0).types()
    assert (hashlib.sha256(path.read_bytes()).digest(), os.stat(path).st_mtime_ns) == before
