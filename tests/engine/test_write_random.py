"""Model-based test: hundreds of random writes and zero-writes against a bytearray.

Images are made by qemu-img/qemu-io with every kind of cluster in them; the
expected disk starts as ``qemu-img convert`` output.  Afterwards qemu decides:
``qemu-img check`` finds no errors and no leaks, ``qemu-img compare`` finds
the image equal to the expected disk, and snapshot views are unchanged.
"""

from __future__ import annotations

import random

import pytest

import qemu
from qcow2view.engine import open_image

KiB, MiB = 1 << 10, 1 << 20
OPS = 200


def _populate(img, cs: int, size: int, *, compress=True, zero=True):
    """Data, compressed, zero (plain and preallocated) and discarded clusters."""
    cmds = []
    step = max(cs, size // 16)
    if compress:
        cmds += [f"write -c -P 0x{0xc0 + i:x} {i * step} {cs}" for i in range(0, 16, 4)]
    cmds += [f"write -P 0x{0x10 + i:x} {i * step + cs} {step - cs}" for i in range(0, 16, 2)]
    if zero:
        cmds += [f"write -z {3 * step} {cs}", f"write -z {2 * step + cs} {cs}",
                 f"write -z -u {4 * step + cs} {cs}"]
    qemu.qemu_io(img, *cmds)


def _kind(tmp_path, kind):
    """(image path, size, snapshot name or None)."""
    img = tmp_path / "img.qcow2"
    size = 4 * MiB
    snap = None
    if kind == "plain":
        qemu.create(img, size)
        _populate(img, 64 * KiB, size)
    elif kind == "backing":
        base = qemu.create(tmp_path / "base.qcow2", size)
        _populate(base, 64 * KiB, size)
        qemu.create(img, size, backing=str(base), backing_fmt="qcow2")
        qemu.qemu_io(img, "write -P 0x77 1M 200k", "write -z 2M 64k")
    elif kind == "snapshot":
        qemu.create(img, size)
        _populate(img, 64 * KiB, size)
        qemu.qemu_img("snapshot", "-c", "s1", img)
        qemu.qemu_io(img, "write -P 0x99 0 300k", f"write -z {6 * MiB // 16 + 64 * KiB} 64k")
        snap = "s1"
    elif kind == "extended-l2":
        base = qemu.create(tmp_path / "base.qcow2", size)
        qemu.qemu_io(base, "write -P 0x31 0 4M")
        qemu.create(img, size, "extended_l2=on", "cluster_size=32k",
                    backing=str(base), backing_fmt="qcow2")
        _populate(img, 32 * KiB, size)
        qemu.qemu_io(img, "write -P 0x32 1000k 3k", "write -z 2000k 2k")
    elif kind == "small-clusters-1bit":
        size = 2 * MiB
        qemu.create(img, size, "cluster_size=512", "refcount_bits=1")
        _populate(img, 512, size)
    elif kind == "v2":
        qemu.create(img, size, "compat=0.10")
        _populate(img, 64 * KiB, size, zero=False)
        qemu.qemu_img("snapshot", "-c", "s1", img)
        snap = "s1"
    elif kind == "data-file":
        qemu.create(img, size, f"data_file={tmp_path / 'data.raw'}")
        _populate(img, 64 * KiB, size, compress=False)
    elif kind == "data-file-raw":
        qemu.create(img, size, f"data_file={tmp_path / 'data.raw'}", "data_file_raw=on")
        _populate(img, 64 * KiB, size, compress=False)
    elif kind == "preallocated-extended-l2":
        base = qemu.create(tmp_path / "base.qcow2", size)
        qemu.qemu_io(base, "write -P 0x41 0 4M")
        qemu.create(img, size, "extended_l2=on", "preallocation=metadata",
                    backing=str(base), backing_fmt="qcow2")
        qemu.qemu_io(img, "write -P 0x42 100k 10k", "write -z 1M 64k")
    elif kind == "refcount-growth":
        # a block counts 64 clusters, the first table 4096: it has to grow
        qemu.create(img, size, "cluster_size=512", "refcount_bits=64")
        _populate(img, 512, size)
    return img, size, snap


KINDS = ["plain", "backing", "snapshot", "extended-l2", "small-clusters-1bit", "v2",
         "data-file", "data-file-raw", "preallocated-extended-l2", "refcount-growth"]


@pytest.mark.parametrize("kind", KINDS)
def test_random_writes_match_model(tmp_path, kind):
    img, size, snap = _kind(tmp_path, kind)
    expected = bytearray(qemu.to_raw(img, tmp_path / "start.raw"))
    snap_before = qemu.to_raw(img, tmp_path / "snap0.raw", snapshot=snap) if snap else None
    rng = random.Random(f"qcow2view-{kind}")
    with open_image(img, writable=True) as im:
        cs = im.cluster_size
        for i in range(OPS):
            if rng.random() < 0.7:      # mostly small, near cluster boundaries
                n = rng.choice([1, 511, 512, 4096, cs - 1, cs, cs + 1, 3 * cs, rng.randrange(1, 4 * cs)])
            else:
                n = rng.randrange(1, 300 * KiB)
            n = min(n, size)
            off = rng.randrange(0, size - n + 1)
            if rng.random() < 0.5:
                off = off // cs * cs
            if rng.random() < 0.25:
                im.write_zeroes(off, n)
                expected[off:off + n] = bytes(n)
            else:
                data = rng.randbytes(n)
                im.write(off, data)
                expected[off:off + n] = data
            if i % 25 == 0:
                a = max(0, off - 1000)
                assert im.read(a, min(size - a, n + 2000)) == \
                    bytes(expected[a:a + min(size - a, n + 2000)])
        assert im.read(0, size) == bytes(expected)
        if kind == "refcount-growth":
            assert im.header.refcount_table_clusters > 1
    rc, report = qemu.check(img)
    assert rc == 0, report
    assert report.get("leaks", 0) == 0 and report.get("corruptions", 0) == 0
    (tmp_path / "expected.raw").write_bytes(expected)
    p = qemu.compare(img, tmp_path / "expected.raw", "-f", "qcow2", "-F", "raw")
    assert p.returncode == 0, p.stdout + p.stderr
    if snap:
        assert qemu.to_raw(img, tmp_path / "snap1.raw", snapshot=snap) == snap_before
