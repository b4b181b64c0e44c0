"""Taking internal snapshots and writing compressed clusters, judged by qemu-img."""

from __future__ import annotations

import os
import random

import pytest

import qemu
from qcow2view.engine import RequestError, create_image, open_image
from qcow2view.engine.compressed_write import write_compressed
from qcow2view.engine.snapshot_create import create_snapshot

MiB = 1 << 20


def _assert_clean(path):
    code, res = qemu.check(path)
    assert code == 0, res
    assert res.get("corruptions", 0) == 0 and res.get("leaks", 0) == 0, res


@pytest.mark.parametrize("opts", [
    {},
    {"cluster_size": 512, "refcount_bits": 2},
    {"extended_l2": True, "cluster_size": 32768},
    {"compat": "0.10"},
    {"compression_type": "zstd", "refcount_bits": 64},
])
def test_snapshot_then_writes_keep_the_snapshot_view(tmp_path, opts):
    path = tmp_path / "s.qcow2"
    size = 4 * MiB
    create_image(path, size, **opts)
    rng = random.Random(7)
    with open_image(path, writable=True) as im:
        for _ in range(20):
            off, n = rng.randrange(size - 9000), rng.randrange(1, 9000)
            im.write(off, os.urandom(n))
        cs = im.cluster_size
        write_compressed(im, 2 * MiB, b"compress me please " * (cs // 19) +
                             b"x" * (cs % 19))
        create_snapshot(im, "one")
    before = qemu.to_raw(path, tmp_path / "before.raw")
    with open_image(path, writable=True) as im:
        for _ in range(20):
            off, n = rng.randrange(size - 9000), rng.randrange(1, 9000)
            im.write(off, os.urandom(n))
        im.write(2 * MiB + 10, b"into the compressed cluster")
        create_snapshot(im, "two")
        im.write(0, b"after two")
    _assert_clean(path)
    # qemu sees both snapshots, and the first one's view is the disk as it was
    names = [s["name"] for s in qemu.info(path)["snapshots"]]
    assert names == ["one", "two"]
    assert qemu.to_raw(path, tmp_path / "one.raw", snapshot="one") == before
    with open_image(path, snapshot="one") as view:
        assert view.read(0, size) == before
    with open_image(path) as im:
        assert im.read(0, size) == qemu.to_raw(path, tmp_path / "now.raw")


def test_compressed_clusters_are_what_qemu_reads(tmp_path):
    path = tmp_path / "c.qcow2"
    create_image(path, 8 * MiB)
    data = b"".join(bytes([i]) * 4096 + b"text" * 1024 for i in range(16))[:16 * 65536]
    data = data + bytes(16 * 65536 - len(data))
    with open_image(path, writable=True) as im:
        write_compressed(im, MiB, data)
    _assert_clean(path)
    raw = qemu.to_raw(path, tmp_path / "c.raw")
    assert raw[MiB:MiB + len(data)] == data
    assert qemu.check(path)[1]["compressed-clusters"] == 16


def test_one_bit_refcounts_cannot_snapshot(tmp_path):
    """As in QEMU: a second reference does not fit in a 1-bit refcount."""
    path = tmp_path / "r1.qcow2"
    create_image(path, MiB, refcount_bits=1, cluster_size=4096)
    with open_image(path, writable=True) as im:
        im.write(0, b"data")
        with pytest.raises(RequestError, match="refcount"):
            create_snapshot(im, "x")
        im.write(4096, b"still writable")
    _assert_clean(path)
    assert qemu.to_raw(path, tmp_path / "r.raw")[4096:4110] == b"still writable"


def test_compressed_write_needs_whole_clusters(tmp_path):
    path = tmp_path / "c.qcow2"
    create_image(path, MiB)
    with open_image(path, writable=True) as im, pytest.raises(RequestError):
        write_compressed(im, 512, b"x" * 65536)


def test_snapshot_names_are_unique(tmp_path):
    path = tmp_path / "n.qcow2"
    create_image(path, MiB)
    with open_image(path, writable=True) as im:
        create_snapshot(im, "a")
        with pytest.raises(RequestError):
            create_snapshot(im, "a")
    _assert_clean(path)


def test_snapshot_entry_lists_as_qemu_img_snapshot_c_makes_it(tmp_path):
    """Ours and qemu-img's 'snapshot -c' of the same image list the same way in
    'qemu-img snapshot -l' (VM size, clock, icount), the date aside."""
    a = qemu.create(tmp_path / "a.qcow2", "8M")
    qemu.qemu_io(a, "write -P 7 0 1M")
    b = tmp_path / "b.qcow2"
    b.write_bytes(a.read_bytes())
    with open_image(a, writable=True) as im:
        create_snapshot(im, "s1")
    qemu.qemu_img("snapshot", "-c", "s1", b)

    def listing(p):
        out = qemu.qemu_img("snapshot", "-l", p).stdout.decode().splitlines()
        # ID TAG VM-SIZE(2 words) DATE(2 words) VM-CLOCK ICOUNT: drop the date
        return [line.split()[:4] + line.split()[6:] for line in out[2:]]
    assert listing(a) == listing(b)
    assert listing(a)[0][-1] == "0"          # qemu-img's icount, not 'none'
