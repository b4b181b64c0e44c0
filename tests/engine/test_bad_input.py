"""Bad input: every damaged or hostile image gives a typed error naming the
structure and the file offset at fault, never another exception, a hang, or an
allocation sized by an unchecked field."""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qemu
from conftest import guest_data
from qcow2view.engine import (BackingFileError, ClusterType, CorruptImageError, NotQcow2Error, Qcow2Error,
                              TruncatedImageError, UnsupportedFeatureError, open_image)

KiB, MiB = 1024, 1024 * 1024


def _patch(path: Path, offset: int, data: bytes) -> Path:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return path


def _set(path: Path, offset: int, fmt: str, value: int) -> Path:
    return _patch(path, offset, struct.pack(fmt, value))


def _qemu_refuses(path: Path) -> bool:
    return qemu.qemu_img("info", path, check=False).returncode != 0


@pytest.fixture
def image(tmp_path, guest_write):
    """A small v3 image with data, compressed and zero clusters and a snapshot."""
    path = qemu.create(tmp_path / "good.qcow2", "1M", "cluster_size=4096")
    guest_write(path, 0, guest_data(32 * KiB, 1))
    guest_write(path, 128 * KiB, guest_data(16 * KiB, 2), "-c")
    qemu.qemu_io(path, "write -z 256k 8k")
    qemu.qemu_img("snapshot", "-c", "snap", path)
    return path


def _layout(path: Path) -> dict[str, int]:
    with open_image(path) as img:
        l1 = img.l1_table.entry(0)
        t = img.l2_table(l1.l2_offset, 0)
        comp = next(t.entry(j) for j in range(len(t)) if t.entry(j).compressed)
        return {"l1": img.header.l1_table_offset, "l2": l1.l2_offset,
                "data0": t.entry(0).host_offset, "comp_entry": comp.offset,
                "comp_raw": comp.raw, "comp_off": comp.host_offset,
                "rt": img.header.refcount_table_offset,
                "snap": img.header.snapshots_offset}


# -- not QCOW2 at all -----------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"QFI", b"QFI\xfb", b"QFI\xfb" + bytes(60),
                                     b"\x7fELF" + bytes(4000), guest_data(70_000, 3)])
def test_not_qcow2(tmp_path, content):
    path = tmp_path / "x.img"
    path.write_bytes(content)
    with pytest.raises(NotQcow2Error) as e:
        open_image(path)
    assert e.value.offset == 0 and e.value.path == str(path)


def test_unsupported_version(image):
    _set(image, 4, ">I", 4)
    with pytest.raises(UnsupportedFeatureError) as e:
        open_image(image)
    assert e.value.offset == 4 and _qemu_refuses(image)


def test_directory_and_missing_file_are_typed(tmp_path):
    for p in (tmp_path, tmp_path / "nope.qcow2"):
        with pytest.raises(Qcow2Error):
            open_image(p)


# -- header fields out of range (each also refused by qemu-img) ------------------------
# qemu_too: QEMU 7.2 refuses the image as well; where it does not, it reads the
# table past the end of the file as zeros, which would only hide the damage.
@pytest.mark.parametrize("field_offset, fmt, value, structure, qemu_too", [
    (36, ">I", 0xFFFFFFFF, "l1_size", True),              # must not allocate 32 GiB
    (40, ">Q", 1 << 40, "l1_table_offset", False),        # past the end of the file
    (40, ">Q", 0x1234, "l1_table_offset", True),          # not cluster aligned
    (56, ">I", 0xFFFFFFFF, "refcount_table_clusters", True),
    (48, ">Q", 1 << 50, "refcount_table_offset", False),
    (60, ">I", 0xFFFFFFFF, "nb_snapshots", True),
    (64, ">Q", 1 << 45, "snapshots_offset", False),
    (20, ">I", 8, "cluster_bits", True),
    (20, ">I", 22, "cluster_bits", True),
    (96, ">I", 7, "refcount_order", True),
    (100, ">I", 1 << 20, "header_length", True),
    (100, ">I", 50, "header_length", True),
    (32, ">I", 3, "crypt_method", True),
])
def test_header_field_out_of_range(image, field_offset, fmt, value, structure, qemu_too):
    _set(image, field_offset, fmt, value)
    assert _qemu_refuses(image) == qemu_too
    with pytest.raises(CorruptImageError) as e:
        open_image(image)
    assert e.value.structure == structure and e.value.offset == field_offset


def test_many_snapshots_running_past_the_file(image):
    _set(image, 60, ">I", 5000)      # qemu reads entries past the end as zeros
    with pytest.raises(CorruptImageError) as e:
        open_image(image)
    assert e.value.offset is not None


def test_backing_file_name_too_long(tmp_path):
    base = qemu.create(tmp_path / "b.qcow2", "1M")
    path = qemu.create(tmp_path / "t.qcow2", "1M", backing=str(base))
    _set(path, 16, ">I", 1024)
    with pytest.raises(CorruptImageError) as e:
        open_image(path)
    assert e.value.offset == 8


def test_header_extension_length_huge(tmp_path):
    path = qemu.create(tmp_path / "e.qcow2", "1M")       # 64 KiB clusters: feature table
    with open_image(path) as img:
        ext = img.extensions[0].offset
    _set(path, ext + 4, ">I", 0xFFFFFFF0)
    assert _qemu_refuses(path)
    with pytest.raises(CorruptImageError) as e:
        open_image(path)
    assert e.value.structure == "header extension" and e.value.offset == ext


# -- tables and entries --------------------------------------------------------------
def test_l1_entry_unaligned(image):
    lay = _layout(image)
    with open(image, "rb") as f:
        f.seek(lay["l1"])
        raw = struct.unpack(">Q", f.read(8))[0]
    _set(image, lay["l1"], ">Q", raw + 512)
    with open_image(image) as img:
        with pytest.raises(CorruptImageError) as e:
            img.read(0, 4096)
        assert e.value.offset == lay["l1"]


def test_l1_entry_past_end_of_file(image):
    lay = _layout(image)
    _set(image, lay["l1"], ">Q", (1 << 63) | (1 << 40))
    with open_image(image) as img:
        with pytest.raises(TruncatedImageError) as e:
            img.read(0, 4096)
        assert (e.value.structure, e.value.offset) == ("L1 entry", lay["l1"])
        with pytest.raises(TruncatedImageError):
            img.l2_table(img.l1_table.entry(0).l2_offset, 0)


def test_l2_entry_unaligned(image):
    lay = _layout(image)
    _set(image, lay["l2"], ">Q", (1 << 63) | lay["data0"] + 0x200)
    out = qemu.run(qemu.QEMU_IO, "-r", "-c", "read 0 4k", image, check=False)
    assert b"error" in (out.stdout + out.stderr).lower()      # qemu refuses the read too
    with open_image(image) as img:
        with pytest.raises(CorruptImageError) as e:
            img.read(0, 1)
        assert e.value.structure == "L2 entry" and e.value.offset == lay["l2"]
        with pytest.raises(CorruptImageError):
            img.read(100, 5000)
        assert img.read(8 * KiB, 4) == guest_data(32 * KiB, 1)[8 * KiB:8 * KiB + 4]


def test_compressed_descriptor_past_end_of_file(image):
    lay = _layout(image)
    size = image.stat().st_size
    with open_image(image) as img:
        entry = img.layout.encode(size + 10 * MiB, 100)
    _set(image, lay["comp_entry"], ">Q", entry)
    with open_image(image) as img:
        with pytest.raises(CorruptImageError) as e:
            img.read(128 * KiB, 10)
        assert e.value.structure == "compressed cluster"
        assert img.read(0, 10) == guest_data(10, 1)   # the rest of the disk still reads


@pytest.mark.parametrize("compression_type", ["zlib", "zstd"])
@pytest.mark.parametrize("garbage", ["random", "zeros", "truncated", "bomb"])
def test_compressed_garbage(tmp_path, guest_write, compression_type, garbage):
    path = qemu.create(tmp_path / "z.qcow2", "1M", "cluster_size=4096",
                       f"compression_type={compression_type}")
    guest_write(path, 0, guest_data(4 * KiB, 1), "-c")   # one compressed cluster
    lay = _layout(path)
    off = lay["comp_off"]
    with open_image(path) as img:
        _, csize = img.layout.decode(lay["comp_raw"])
    if garbage == "random":
        _patch(path, off, os.urandom(csize))
    elif garbage == "zeros":
        _patch(path, off, bytes(csize))
    elif garbage == "truncated":
        _patch(path, off + csize // 3, bytes(csize - csize // 3))
    else:  # a stream that claims a gigabyte of output, squeezed into the descriptor
        import zstandard
        if compression_type == "zstd":
            bomb = zstandard.ZstdCompressor().compress(bytes(1 << 28))
        else:
            c = zlib.compressobj(9, zlib.DEFLATED, -12)
            bomb = c.compress(bytes(1 << 26)) + c.flush()
        bomb = bomb[:csize]
        _patch(path, off, bomb + bytes(csize - len(bomb)))
    with open_image(path) as img:
        try:
            data = img.read(0, 4 * KiB)          # the first, damaged, cluster
        except CorruptImageError as e:
            assert e.structure == "compressed cluster" and e.offset == off
        else:
            # a damaged stream qemu happens to accept must read as qemu reads it
            assert data == qemu.to_raw(path, tmp_path / "o.raw")[:4 * KiB]


def test_refcount_table_entry_unaligned_or_past_end(image):
    lay = _layout(image)
    for value in (0x10200, 1 << 42):
        _set(image, lay["rt"], ">Q", value)
        with open_image(image) as img:
            with pytest.raises(CorruptImageError) as e:
                img.refcounts()
            assert e.value.offset is not None
            with pytest.raises(CorruptImageError):
                img.refcount(0)


def test_snapshot_with_bad_l1_table(image):
    lay = _layout(image)
    for field_offset, fmt, value in ((lay["snap"] + 8, ">I", 0xFFFFFFFF),
                                     (lay["snap"], ">Q", 0x1234),
                                     (lay["snap"], ">Q", 1 << 40)):
        good = image.read_bytes()
        _set(image, field_offset, fmt, value)
        with open_image(image) as img:        # the active disk is fine
            assert img.snapshots[0].name == "snap"
        with pytest.raises(CorruptImageError) as e:
            open_image(image, snapshot="snap")
        assert e.value.offset is not None
        image.write_bytes(good)


def test_truncated_in_every_structure(image):
    lay = _layout(image)
    good = image.read_bytes()
    for where in ("l1", "l2", "rt", "snap", "data0"):
        image.write_bytes(good[:lay[where] + 4])
        try:
            with open_image(image) as img:
                img.read(0, img.virtual_size)
                img.refcounts()
        except Qcow2Error as e:
            assert e.offset is not None and e.path == str(image)


def test_backing_loop_is_refused(tmp_path):
    a = qemu.create(tmp_path / "a.qcow2", "1M")
    qemu.qemu_img("rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", a)
    with pytest.raises(BackingFileError, match="loop"):
        open_image(a)


def test_huge_virtual_size_opens_without_big_allocations(tmp_path):
    path = qemu.create(tmp_path / "big.qcow2", "64T", "cluster_size=2M")
    with open_image(path) as img:
        assert img.virtual_size == 64 << 40
        assert img.read(img.virtual_size - 10, 10) == bytes(10)


# -- property test: damaged real images ----------------------------------------------
@dataclass
class Seed:
    path: Path
    regions: dict[str, tuple[int, int]]     # structure -> (start, end) in the file


def _regions(path: Path) -> dict[str, tuple[int, int]]:
    with open_image(path, ignore_backing_errors=True) as img:
        h, cs = img.header, img.cluster_size
        reg = {"header": (0, h.extensions_offset),
               "extensions": (h.extensions_offset, max(h.extensions_offset + 8,
                              img.extensions[-1].data_offset + img.extensions[-1].length
                              if img.extensions else 0)),
               "l1": (h.l1_table_offset, h.l1_table_offset + 8 * h.l1_size),
               "refcount table": (h.refcount_table_offset, h.refcount_table_offset + 64)}
        l2 = [img.l1_table.entry(i).l2_offset for i in range(img.l1_table.size)]
        l2 = [o for o in l2 if o]
        if l2:
            reg["l2"] = (l2[0], l2[0] + cs)
        rb = int(img.refcount_table[0]) & ~0x1FF
        if rb:
            reg["refcount block"] = (rb, rb + cs)
        if img.snapshots:
            s = img.snapshots
            reg["snapshot table"] = (s[0].offset, s[-1].offset + s[-1].entry_size)
            reg["snapshot l1"] = (s[0].l1_table_offset, s[0].l1_table_offset + 8 * s[0].l1_size)
        if img.bitmaps:
            b = img.bitmaps[0]
            reg["bitmap directory"] = (b.offset, b.offset + 24)
        reg["whole file"] = (0, img.file.size)
    return reg


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[Seed]:
    d = tmp_path_factory.mktemp("seeds")
    src = d / "src"
    out: list[Seed] = []

    def write(path, off, data, *flags):
        src.write_bytes(data)
        qemu.qemu_io(path, f"write {' '.join(flags)} -s {src} {off} {len(data)}")

    base = qemu.create(d / "base.qcow2", "256K", "cluster_size=512")
    write(base, 0, guest_data(200 * KiB, 9))
    specs = [("v3.qcow2", ["cluster_size=512"], True),
             ("v2.qcow2", ["cluster_size=1024", "compat=0.10"], False),
             ("zstd.qcow2", ["cluster_size=4096", "compression_type=zstd",
                             "refcount_bits=4"], False),
             ("extl2.qcow2", ["cluster_size=16384", "extended_l2=on", "refcount_bits=64"],
              True)]
    for name, opts, with_backing in specs:
        p = qemu.create(d / name, "256K", *opts, backing=str(base) if with_backing else None)
        write(p, 1000, guest_data(20 * KiB, 1))
        write(p, 64 * KiB, guest_data(32 * KiB, 2), "-c")
        qemu.qemu_io(p, "write -z 120k 8k", "discard 4k 2k")
        qemu.qemu_img("snapshot", "-c", "s1", p)
        write(p, 130 * KiB, guest_data(10 * KiB, 3))
        if "compat=0.10" not in opts:
            qemu.qemu_img("bitmap", "--add", p, "bm")
        out.append(Seed(p, _regions(p)))
    return out


def _exercise(path: Path) -> None:
    """Open, read everything, walk every table: only Qcow2Error may escape."""
    try:
        with open_image(path, ignore_backing_errors=True) as img:
            end = min(img.virtual_size, 1 * MiB)
            for off in range(0, end, 96 * KiB):
                try:
                    img.read(off, min(96 * KiB, end - off))
                except Qcow2Error:
                    pass
            for i in range(min(img.l1_table.size, 64)):
                e = img.l1_table.entry(i)
                if e.l2_offset:
                    try:
                        t = img.l2_table(e.l2_offset, i)
                        t.types()
                        for j in range(0, len(t), 7):
                            t.entry(j)
                    except Qcow2Error:
                        pass
            for off in range(0, end, 50_000):
                try:
                    img.guest_mapping(off)
                except Qcow2Error:
                    pass
            try:
                img.refcounts()
                img.luks_header
            except Qcow2Error:
                pass
            snaps = [s.id_str for s in img.snapshots[:2]]
        for key in snaps:
            try:
                with open_image(path, snapshot=key, ignore_backing_errors=True) as view:
                    view.read(0, min(view.virtual_size, 256 * KiB))
            except Qcow2Error:
                pass
    except Qcow2Error:
        pass


@st.composite
def damage(draw, seeds):
    seed = draw(st.sampled_from(seeds))
    kind = draw(st.sampled_from(sorted(seed.regions) + ["truncate"]))
    size = seed.path.stat().st_size
    if kind == "truncate":
        return seed, [], draw(st.integers(0, size - 1))
    start, end = seed.regions[kind]
    end = max(min(end, size), start + 1)
    edits = draw(st.lists(st.tuples(st.integers(start, end - 1),
                                    st.sampled_from(["byte", "flip", "u32", "u64"]),
                                    st.integers(0, 2 ** 64 - 1)), min_size=1, max_size=4))
    return seed, edits, None


def test_damaged_images_raise_only_qcow2_errors(seeds, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("damaged") / "d.qcow2"

    @settings(max_examples=int(os.environ.get("QCOW2VIEW_FUZZ_EXAMPLES", 200)), deadline=timedelta(seconds=5), database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def run(data):
        seed, edits, truncate = data.draw(damage(seeds))
        buf = bytearray(seed.path.read_bytes())
        for pos, how, value in edits:
            if how == "byte":
                buf[pos] = value & 0xFF
            elif how == "flip":
                buf[pos] ^= 1 << (value % 8)
            else:
                n = 4 if how == "u32" else 8
                buf[pos:pos + n] = (value & ((1 << 8 * n) - 1)).to_bytes(n, "big")
        if truncate is not None:
            del buf[truncate:]
        scratch.write_bytes(bytes(buf))
        _exercise(scratch)

    run()


def test_exercise_reads_the_seeds(seeds):
    """The property test's walker really reaches data, tables and snapshots."""
    for s in seeds:
        _exercise(s.path)
        with open_image(s.path) as img:
            assert img.snapshots and img.l1_table.size
        assert set(s.regions) >= {"header", "l1", "l2", "refcount block", "snapshot table"}


# -- entries QEMU refuses to use (qcow2_get_host_offset) ------------------------------
def _qemu_read_fails(path: Path, offset: int, fmt: str = "qcow2") -> bool:
    p = qemu.run(qemu.QEMU_IO, "-r", "-f", fmt, "-c", f"read {offset} 512", path, check=False)
    return b"read failed" in p.stdout + p.stderr


def _l2_entry(path: Path, index: int):
    with open_image(path) as img:
        return img.l2_table(img.l1_table.entry(0).l2_offset, 0).entry(index)


def test_zero_flag_in_a_version_2_image(tmp_path):
    path = qemu.create(tmp_path / "v2.qcow2", "1M", "compat=0.10", "cluster_size=4096")
    qemu.qemu_io(path, "write -P 5 0 8k")
    e0, e2 = _l2_entry(path, 0), _l2_entry(path, 2)
    _set(path, e0.offset, ">Q", e0.raw | 1)            # "preallocated zero"
    _set(path, e2.offset, ">Q", 1)                     # "plain zero"
    with open_image(path) as img:
        for entry, guest in ((e0, 0), (e2, 8192)):
            assert _qemu_read_fails(path, guest)
            with pytest.raises(CorruptImageError, match="version 2") as e:
                img.read(guest, 512)
            assert (e.value.structure, e.value.offset) == ("L2 entry", entry.offset)
        assert img.read(4096, 4096) == b"\5" * 4096


@pytest.mark.parametrize("data_file_raw", ["off", "on"])
def test_data_file_entry_not_mapping_guest_offset_1_to_1(tmp_path, monkeypatch, data_file_raw):
    monkeypatch.chdir(tmp_path)
    path = qemu.create(tmp_path / "d.qcow2", "1M", "data_file=d.data",
                       f"data_file_raw={data_file_raw}")
    qemu.qemu_io(path, "write -P 5 0 256k")
    e1 = _l2_entry(path, 1)
    _set(path, e1.offset, ">Q", (1 << 63) | 3 * 64 * KiB)
    assert _qemu_read_fails(path, 64 * KiB)
    with open_image(path) as img:
        with pytest.raises(CorruptImageError, match="does not match guest") as e:
            img.read(64 * KiB, 512)
        assert e.value.offset == e1.offset
        assert img.read(0, 512) == b"\5" * 512


def test_compressed_entry_in_an_image_with_a_data_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = qemu.create(tmp_path / "d.qcow2", "1M", "data_file=d.data")
    qemu.qemu_io(path, "write -P 5 0 128k")
    e1 = _l2_entry(path, 1)
    with open_image(path) as img:
        _set(path, e1.offset, ">Q", img.layout.encode(64 * KiB, 100))
    assert _qemu_read_fails(path, 64 * KiB)
    with open_image(path) as img:
        with pytest.raises(CorruptImageError, match="compressed") as e:
            img.read(64 * KiB, 512)
        assert e.value.offset == e1.offset


@pytest.mark.parametrize("mapped", [True, False])
def test_invalid_subcluster_bitmap(tmp_path, mapped):
    """A sub-cluster both allocated and zero, or allocated without a host cluster."""
    path = qemu.create(tmp_path / "x.qcow2", "1M", "extended_l2=on")
    qemu.qemu_io(path, "write -P 5 0 128k")
    e0 = _l2_entry(path, 0)
    if mapped:
        _set(path, e0.offset + 8, ">Q", (1 << 32 | 1) | 0xFFFF)   # sub-cluster 0: both
    else:
        _set(path, e0.offset, ">Q", 0)                            # no host cluster ...
        _set(path, e0.offset + 8, ">Q", 0x3)                      # ... yet allocated
    assert _qemu_read_fails(path, 0)
    with open_image(path) as img:
        with pytest.raises(CorruptImageError) as e:
            img.read(0, 512)
        assert (e.value.structure, e.value.offset) == ("L2 entry", e0.offset)
        assert img.read(64 * KiB, 512) == b"\5" * 512
        table = img.l2_table(img.l1_table.entry(0).l2_offset, 0)
        assert table.types()[0] == ClusterType.INVALID == table.entry(0).type
