"""Image.write / write_zeroes against qemu-io.

Each case writes the same request with our engine into one copy of an image
and with ``qemu-io`` into another; qemu then decides: the guest disks are
equal (``qemu-img compare``), the allocation maps agree (``qemu-img map``,
host offsets aside) and ``qemu-img check`` finds neither errors nor leaks.
"""

from __future__ import annotations

import shutil

import pytest

import qemu
from qcow2view.engine import ReadOnlyError, RequestError, open_image

KiB, MiB = 1 << 10, 1 << 20


def _map_shape(path):
    return [(m["start"], m["length"], m["depth"], m["present"], m["zero"], m["data"])
            for m in qemu.qemu_map(path)]


def _clean(path):
    rc, report = qemu.check(path)
    assert rc == 0, report
    assert report.get("leaks", 0) == 0 and report.get("corruptions", 0) == 0


def _twin(tmp_path, src, ops):
    """Apply ``ops`` with our engine on a copy and with qemu-io on another; compare."""
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    shutil.copy(src, ours)
    shutil.copy(src, theirs)
    cmds = []
    with open_image(ours, writable=True) as im:
        for op, off, n, pat in ops:
            if op == "w":
                im.write(off, bytes([pat]) * n)
                cmds.append(f"write -P {pat} {off} {n}")
            else:
                im.write_zeroes(off, n)
                cmds.append(f"write -z {off} {n}")
    qemu.qemu_io(theirs, *cmds)
    _clean(ours)
    assert qemu.compare(ours, theirs).returncode == 0
    assert _map_shape(ours) == _map_shape(theirs)
    return ours, theirs


@pytest.fixture
def base(tmp_path):
    b = qemu.create(tmp_path / "base.qcow2", "4M")
    qemu.qemu_io(b, "write -P 0x11 0 4M")
    return b


CASES = {
    # unallocated clusters, with and without a backing file to copy from
    "unallocated": ("", [("w", 1000, 5000, 1), ("w", 200 * KiB, 128 * KiB, 2)]),
    "backing-cow": ("backing", [("w", 1000, 5000, 3), ("w", 65 * KiB, 1, 4),
                                ("w", 3 * MiB - 7, 100, 5)]),
    "zero-plain": ("zero", [("w", 70 * KiB, 3000, 6)]),
    "zero-alloc-reuse": ("zeroalloc", [("w", 3000, 512, 7), ("w", 64 * KiB, 64 * KiB, 8)]),
    "compressed": ("compressed", [("w", 100, 1000, 9), ("w", 128 * KiB, 64 * KiB, 10)]),
    "zero-writes": ("data", [("z", 0, 64 * KiB, 0), ("z", 100 * KiB, 200 * KiB, 0),
                             ("z", 1000, 10, 0), ("z", 3 * MiB, 1 * MiB, 0)]),
    "zero-on-compressed": ("compressed", [("z", 0, 128 * KiB, 0), ("z", 130 * KiB, 5, 0)]),
    "zero-on-backing": ("backing", [("z", 64 * KiB, 64 * KiB, 0), ("z", 5, 5, 0)]),
    "across-tables": ("small-l2", [("w", 60 * KiB, 200 * KiB, 11), ("z", 1 * MiB, 700 * KiB, 0)]),
}


def _prepare(tmp_path, kind, base):
    img = tmp_path / "img.qcow2"
    if kind == "backing":
        qemu.create(img, "4M", backing=str(base), backing_fmt="qcow2")
        qemu.qemu_io(img, "write -P 0x22 192k 64k")
    elif kind == "small-l2":
        qemu.create(img, "4M", "cluster_size=4k")
        qemu.qemu_io(img, "write -P 0x33 0 4M")
    elif kind == "compressed":
        qemu.create(img, "4M")   # qemu compresses only into unallocated clusters
        qemu.qemu_io(img, "write -c -P 0x55 0 64k", "write -c -P 0x56 128k 64k",
                     "write -P 0x44 64k 64k", "write -P 0x44 192k 832k")
    else:
        qemu.create(img, "4M")
        qemu.qemu_io(img, "write -P 0x44 0 1M")
        if kind == "zero":
            qemu.qemu_io(img, "write -z -u 64k 64k")
        if kind == "zeroalloc":
            qemu.qemu_io(img, "write -z 0 128k")
    return img


@pytest.mark.parametrize("name", list(CASES))
def test_write_like_qemu(tmp_path, base, name):
    kind, ops = CASES[name]
    img = _prepare(tmp_path, kind, base)
    _twin(tmp_path, img, ops)


def test_zero_alloc_cluster_keeps_its_host_cluster(tmp_path):
    img = qemu.create(tmp_path / "z.qcow2", "1M")
    qemu.qemu_io(img, "write -P 1 0 64k", "write -z 0 64k")
    before = qemu.qemu_map(img)[0]["offset"]
    with open_image(img, writable=True) as im:
        im.write(100, b"x" * 10)
    m = qemu.qemu_map(img)[0]
    assert m["offset"] == before and m["data"]
    assert qemu.qemu_io(img, "read -P 0 0 100", "read -P 0x78 100 10", "read -P 0 110 1000")


def test_compressed_bytes_are_released(tmp_path):
    img = qemu.create(tmp_path / "c.qcow2", "1M")
    qemu.qemu_io(img, "write -c -P 1 0 64k", "write -c -P 2 64k 64k")
    with open_image(img, writable=True) as im:
        im.write(0, b"a" * 64 * KiB)
        im.write(64 * KiB, b"b" * 10)
    _clean(img)   # a leak would show the compressed bytes still counted
    info = qemu.qemu_img("check", img).stdout.decode()
    assert "0.00% compressed" in info


def test_snapshot_stays_intact(tmp_path):
    img = qemu.create(tmp_path / "s.qcow2", "2M")
    qemu.qemu_io(img, "write -c -P 2 64k 64k", "write -P 1 0 64k", "write -P 1 128k 1920k")
    qemu.qemu_img("snapshot", "-c", "snap", img)
    before = qemu.to_raw(img, tmp_path / "before.raw", snapshot="snap")
    ours, _ = _twin(tmp_path, img, [("w", 1000, 3000, 7), ("w", 64 * KiB, 100, 8),
                                    ("z", 512 * KiB, 128 * KiB, 0)])
    assert qemu.to_raw(ours, tmp_path / "after.raw", snapshot="snap") == before
    qemu.qemu_img("snapshot", "-d", "snap", ours)
    _clean(ours)


@pytest.mark.parametrize("ops", [
    [("w", 3000, 1000, 1)],                     # inside one sub-cluster
    [("w", 2048, 4096, 2)],                     # whole sub-clusters
    [("w", 1000, 70 * KiB, 3)],                 # crossing a cluster
    [("z", 2048, 2048, 0), ("z", 64 * KiB, 64 * KiB, 0), ("w", 4096, 100, 4)],
], ids=["partial-sc", "whole-sc", "crossing", "zeros"])
def test_extended_l2_subclusters(tmp_path, base, ops):
    img = tmp_path / "x.qcow2"
    qemu.create(img, "4M", "extended_l2=on", backing=str(base), backing_fmt="qcow2")
    qemu.qemu_io(img, "write -P 0x66 128k 2k", "write -c -P 0x67 256k 64k")
    _twin(tmp_path, img, ops + [("w", 129 * KiB, 3 * KiB, 9), ("w", 260 * KiB, 1, 5)])


def test_data_file_guest_offsets(tmp_path):
    data = tmp_path / "data.raw"
    img = qemu.create(tmp_path / "d.qcow2", "2M", f"data_file={data}")
    qemu.qemu_io(img, "write -P 1 64k 64k")
    with open_image(img, writable=True) as im:
        im.write(1000, b"q" * 2000)
        im.write(64 * KiB + 5, b"r")
    _clean(img)
    raw = data.read_bytes()
    assert raw[1000:3000] == b"q" * 2000 and raw[64 * KiB + 5] == ord("r")
    qemu.qemu_io(img, "read -P 0x71 1000 2000", "read -P 1 64k 5")


def test_data_file_raw_zeroes_stay_raw(tmp_path):
    data = tmp_path / "data.raw"
    img = qemu.create(tmp_path / "d.qcow2", "1M", f"data_file={data}", "data_file_raw=on")
    qemu.qemu_io(img, "write -P 1 0 1M")
    with open_image(img, writable=True) as im:
        im.write_zeroes(64 * KiB, 128 * KiB)
        im.write(5, b"zz")
    raw = data.read_bytes()
    assert raw[64 * KiB:192 * KiB] == bytes(128 * KiB) and raw[5:7] == b"zz"
    _clean(img)


def test_v2_image_stays_v2(tmp_path):
    img = qemu.create(tmp_path / "v2.qcow2", "1M", "compat=0.10")
    qemu.qemu_io(img, "write -P 1 0 1M")
    ours, _ = _twin(tmp_path, img, [("z", 0, 128 * KiB, 0), ("w", 300, 3, 2)])
    assert qemu.info(ours)["format-specific"]["data"]["compat"] == "0.10"


def test_refcount_blocks_and_table_grow(tmp_path):
    # 512-byte clusters with 64-bit refcounts: a block covers 64 clusters and the
    # one-cluster table 4096, so writing 3 MiB needs new blocks and a new table
    img = qemu.create(tmp_path / "g.qcow2", "4M", "cluster_size=512", "refcount_bits=64")
    with open_image(img, writable=True) as im:
        for i in range(0, 3 * MiB, 256 * KiB):
            im.write(i, bytes([i // (256 * KiB) + 1]) * 256 * KiB)
    _clean(img)
    with open_image(img) as im:
        assert im.header.refcount_table_clusters > 1
    for i in range(0, 3 * MiB, 256 * KiB):
        qemu.qemu_io(img, f"read -P {i // (256 * KiB) + 1} {i} 256k")


def test_one_bit_refcounts_and_free_cluster_reuse(tmp_path):
    img = qemu.create(tmp_path / "b.qcow2", "2M", "cluster_size=512", "refcount_bits=1")
    qemu.qemu_io(img, "write -c -P 1 0 64k")
    with open_image(img, writable=True) as im:
        im.write(0, b"\x02" * 64 * KiB)         # frees the compressed clusters
    size1 = (tmp_path / "b.qcow2").stat().st_size
    with open_image(img, writable=True) as im:
        im.write(128 * KiB, b"\x03" * 8 * KiB)   # reuses them
    _clean(img)
    assert (tmp_path / "b.qcow2").stat().st_size == size1
    qemu.qemu_io(img, "read -P 2 0 64k", "read -P 3 128k 8k")


def test_bounds_and_read_only(tmp_path):
    img = qemu.create(tmp_path / "r.qcow2", "1M")
    with open_image(img) as im:
        with pytest.raises(ReadOnlyError):
            im.write(0, b"x")
        with pytest.raises(ReadOnlyError):
            im.write_zeroes(0, 512)
    with open_image(img, writable=True) as im:
        with pytest.raises(RequestError):
            im.write(MiB - 1, b"xy")
        with pytest.raises(RequestError):
            im.write_zeroes(MiB, 1)
        with pytest.raises(RequestError):
            im.write(-1, b"x")
        im.write(MiB - 1, b"z")
    qemu.qemu_io(img, "read -P 0x7a 1048575 1")


def test_enabled_bitmaps_marked_in_use_and_unknown_autoclear_cleared(tmp_path):
    img = qemu.create(tmp_path / "bm.qcow2", "1M")
    qemu.qemu_img("bitmap", "--add", img, "on")
    qemu.qemu_img("bitmap", "--add", "--disable", img, "off")
    with open(img, "r+b") as f:          # an autoclear bit nobody knows
        f.seek(88)
        f.write((1 | 1 << 40).to_bytes(8, "big"))

    def flags():
        bms = qemu.info(img, "-U")["format-specific"]["data"]["bitmaps"]
        return {b["name"]: b["flags"] for b in bms}
    assert flags() == {"on": ["auto"], "off": []}
    with open_image(img, writable=True) as im:
        im.write(0, b"x")
    # qemu would have updated the enabled bitmap; we cannot, so it is in-use
    assert flags() == {"on": ["in-use", "auto"], "off": []}
    with open_image(img) as im:
        assert im.header.autoclear_features == 1
    _clean(img)


@pytest.mark.parametrize("flag,needle", [("corrupt", "corrupt"), ("dirty", "dirty"),
                                         ("unknown", "unsupported incompatible")])
def test_refuses_unsafe_images(tmp_path, flag, needle):
    from qcow2view.engine import Qcow2Error
    img = qemu.create(tmp_path / "u.qcow2", "1M", "lazy_refcounts=on")
    bit = {"corrupt": 2, "dirty": 1, "unknown": 1 << 20}[flag]
    with open(img, "r+b") as f:
        f.seek(72)
        f.write(bit.to_bytes(8, "big"))
    with pytest.raises(Qcow2Error, match=needle):
        open_image(img, writable=True)
    if flag != "unknown":
        with open_image(img) as im:     # still viewable
            assert im.read(0, 512) == bytes(512)


def test_snapshot_view_is_read_only(tmp_path):
    img = qemu.create(tmp_path / "sv.qcow2", "1M")
    qemu.qemu_img("snapshot", "-c", "s", img)
    with pytest.raises(RequestError):
        open_image(img, writable=True, snapshot="s")


def test_unflushed_metadata_is_visible_to_us_and_disk_stays_consistent(tmp_path):
    img = qemu.create(tmp_path / "wb.qcow2", "4M")
    qemu.qemu_io(img, "write -P 1 0 64k")
    with open_image(img, writable=True) as im:
        im.write(MiB + 10, b"n" * 100)            # allocating: metadata pending
        im.write(5, b"i")                         # in place
        # this Image sees the pending state everywhere
        assert im.read(MiB + 10, 100) == b"n" * 100
        m = im.guest_mapping(MiB)
        assert m.depth == 0 and m.host_offset is not None
        l1e = im.l1_table.entry(0)
        table = im.l2_table(l1e.l2_offset, 0)
        assert table.entry(MiB // 65536).host_offset == m.host_offset
        assert im.refcount(m.host_offset // 65536) == 1
        # the file is a valid image all along (qemu, ignoring our lock, agrees)
        assert qemu.check(img, "-U")[0] == 0
        im.flush()
        assert qemu.check(img, "-U")[0] == 0
        qemu.qemu_io(img, f"read -P 0x6e {MiB + 10} 100", "read -P 0x69 5 1",
                     extra=("-U", "-r"))
    _clean(img)


def _l2_entry_offset(img, guest):
    with open_image(img) as im:
        return im.guest_mapping(guest).l2_entry_offset


def test_entry_pointing_into_metadata_is_refused(tmp_path):
    img = qemu.create(tmp_path / "m.qcow2", "1M")
    qemu.qemu_io(img, "write -P 1 0 64k")
    eo = _l2_entry_offset(img, 0)
    with open_image(img) as im:
        l1_off = im.header.l1_table_offset
    with open(img, "r+b") as f:          # data cluster 0 -> the L1 table, COPIED
        f.seek(eo)
        f.write(((1 << 63) | l1_off).to_bytes(8, "big"))
    before = (tmp_path / "m.qcow2").read_bytes()
    from qcow2view.engine import CorruptImageError
    with open_image(img, writable=True) as im:
        with pytest.raises(CorruptImageError, match="metadata"):
            im.write(10, b"boom")
    assert (tmp_path / "m.qcow2").read_bytes() == before


def test_copied_flag_contradicting_refcount_copies_on_write(tmp_path):
    img = qemu.create(tmp_path / "cp.qcow2", "1M")
    qemu.qemu_io(img, "write -P 1 0 64k")
    qemu.qemu_img("snapshot", "-c", "s", img)
    eo = _l2_entry_offset(img, 0)
    with open(img, "r+b") as f:          # claim sole ownership of a shared cluster
        f.seek(eo)
        e = int.from_bytes(f.read(8), "big")
        f.seek(eo)
        f.write((e | 1 << 63).to_bytes(8, "big"))
    with open_image(img, writable=True) as im:
        im.write(10, b"safe")
    # the snapshot keeps its data: the write went to a new cluster
    snap = qemu.to_raw(img, tmp_path / "s.raw", snapshot="s")
    assert snap[:64 * KiB] == b"\x01" * 64 * KiB
    qemu.qemu_io(img, "read -P 0x73 10 1", "read -P 1 14 100")


def test_compressed_descriptors_spanning_two_clusters_are_released(tmp_path):
    import random
    rng = random.Random(3)
    raw = tmp_path / "src.raw"
    # half-compressible data: qemu packs the compressed clusters back to back,
    # so some of them straddle a host cluster boundary
    table = bytes(b"0123456789abcdef"[i & 15] for i in range(256))
    raw.write_bytes(rng.randbytes(MiB).translate(table))
    img = tmp_path / "c.qcow2"
    qemu.qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", raw, img)
    spanning = 0
    with open_image(img) as im:
        l2 = im.l2_table(im.l1_table.entry(0).l2_offset, 0)
        for i in range(MiB // im.cluster_size):
            e = l2.entry(i)
            assert e.compressed
            if e.host_offset // im.cluster_size != \
                    (e.host_offset + e.compressed_size - 1) // im.cluster_size:
                spanning += 1
    assert spanning >= 2
    ours, _ = _twin(tmp_path, img, [("w", 3 * 64 * KiB + 5, 64 * KiB, 1), ("z", 0, 64 * KiB, 0),
                                     ("w", 10 * 64 * KiB, 100, 2), ("w", 512 * KiB, 512 * KiB, 3)])
    # every compressed cluster overwritten: nothing of them may stay counted
    rc, report = qemu.check(ours)
    assert rc == 0 and report.get("leaks", 0) == 0


def test_backing_file_shorter_than_the_disk(tmp_path):
    base = qemu.create(tmp_path / "short.qcow2", "1M")
    qemu.qemu_io(base, "write -P 0x12 0 1M")
    img = qemu.create(tmp_path / "long.qcow2", "3M", backing=str(base), backing_fmt="qcow2")
    _twin(tmp_path, img, [("w", MiB - 100, 200, 1), ("w", 2 * MiB + 7, 3, 2),
                          ("z", MiB - 10, 20, 0)])


def test_unaligned_zero_write_on_zero_filled_data_writes_zeros(tmp_path):
    # qemu decides by allocation status, not content: data that happens to be
    # zero stays data
    img = qemu.create(tmp_path / "zz.qcow2", "1M")
    qemu.qemu_io(img, "write -P 0 0 128k", "write -z 256k 64k")
    _twin(tmp_path, img, [("z", 100, 1000, 0), ("z", 64 * KiB + 1, 64 * KiB - 1, 0),
                          ("z", 256 * KiB + 5, 10, 0), ("z", 512 * KiB + 3, 10, 0)])
