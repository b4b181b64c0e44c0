"""create_image against qemu-img: info reports what was asked, check is clean, qemu-io can use it."""

from __future__ import annotations

import os

import pytest

import qemu
from qcow2view.engine import RequestError, create_image, open_image, validate_create_options

MiB = 1 << 20

MATRIX = [
    {},
    {"compat": "0.10"},
    {"cluster_size": 512, "refcount_bits": 1},
    {"cluster_size": 4096, "refcount_bits": 64},
    {"cluster_size": 2 * MiB, "refcount_bits": 8},
    {"extended_l2": True, "cluster_size": 16384},
    {"compression_type": "zstd", "lazy_refcounts": True},
    {"preallocation": "metadata"},
    {"preallocation": "metadata", "extended_l2": True},
    {"preallocation": "metadata", "cluster_size": 512, "refcount_bits": 2},
    {"data_file": "DATA"},
    {"data_file": "DATA", "data_file_raw": True, "preallocation": "metadata"},
    {"backing_file": "base.qcow2", "backing_fmt": "qcow2"},
    {"backing_file": "base.raw", "backing_fmt": "raw", "extended_l2": True,
     "preallocation": "metadata"},
]


def _expected(opts: dict) -> dict:
    compat = opts.get("compat", "1.1")
    exp = {"compat": compat, "refcount-bits": opts.get("refcount_bits", 16),
           "compression-type": opts.get("compression_type", "zlib")}
    if compat == "1.1":
        exp["lazy-refcounts"] = opts.get("lazy_refcounts", False)
        exp["extended-l2"] = opts.get("extended_l2", False)
    return exp


@pytest.mark.parametrize("opts", MATRIX, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
                         or "defaults")
def test_create_matches_qemu(tmp_path, opts):
    opts = dict(opts)
    qemu.create(tmp_path / "base.qcow2", "3M")
    (tmp_path / "base.raw").write_bytes(b"\x11" * 3 * MiB)
    if opts.get("data_file") == "DATA":
        opts["data_file"] = str(tmp_path / "data.raw")   # qemu resolves it from the cwd
    size = 5 * MiB + 512
    img = tmp_path / "new.qcow2"
    create_image(img, size, **opts)
    rc, report = qemu.check(img)
    assert rc == 0, report
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0
    info = qemu.info(img)
    assert info["virtual-size"] == size
    assert info["cluster-size"] == opts.get("cluster_size", 65536)
    data = info["format-specific"]["data"]
    for key, value in _expected(opts).items():
        assert data[key] == value, key
    if "data_file" in opts:
        assert data["data-file"] == opts["data_file"]
        assert data["data-file-raw"] == opts.get("data_file_raw", False)
    if "backing_file" in opts:
        assert info["backing-filename"] == opts["backing_file"]
        assert info["backing-filename-format"] == opts["backing_fmt"]
    # qemu can use it, and sees what it wrote
    qemu.qemu_io(img, "write -P 0x5a 4096 70000", "read -P 0x5a 4096 70000")
    assert qemu.check(img)[0] == 0
    with open_image(img) as im:
        assert im.read(4096, 70000) == b"\x5a" * 70000


def test_metadata_preallocation_maps_every_cluster(tmp_path):
    img = tmp_path / "p.qcow2"
    create_image(img, 4 * MiB, preallocation="metadata")
    ref = tmp_path / "ref.qcow2"
    qemu.create(ref, "4M", "preallocation=metadata")
    ours, theirs = qemu.qemu_map(img), qemu.qemu_map(ref)
    assert [(m["start"], m["length"], m["data"], m["zero"]) for m in ours] == \
        [(m["start"], m["length"], m["data"], m["zero"]) for m in theirs]
    assert os.path.getsize(img) == os.path.getsize(ref)


def test_size_from_backing_file_and_rounding(tmp_path):
    qemu.create(tmp_path / "b.qcow2", "7M")
    create_image(tmp_path / "o.qcow2", None, backing_file="b.qcow2", backing_fmt="qcow2")
    assert qemu.info(tmp_path / "o.qcow2")["virtual-size"] == 7 * MiB
    create_image(tmp_path / "r.qcow2", 1000)
    qemu.create(tmp_path / "q.qcow2", 1000)
    assert qemu.info(tmp_path / "r.qcow2")["virtual-size"] == \
        qemu.info(tmp_path / "q.qcow2")["virtual-size"]


INVALID = [
    ({"extended_l2": True, "cluster_size": 8192}, "16384"),
    ({"extended_l2": True, "compat": "0.10"}, "compatibility level"),
    ({"compression_type": "zstd", "compat": "0.10"}, "Non-zlib"),
    ({"lazy_refcounts": True, "compat": "0.10"}, "Lazy refcounts"),
    ({"refcount_bits": 8, "compat": "0.10"}, "16 bits"),
    ({"refcount_bits": 3}, "power of two"),
    ({"refcount_bits": 128}, "power of two"),
    ({"cluster_size": 3000}, "power of two between 512"),
    ({"cluster_size": 4 * MiB}, "power of two between 512"),
    ({"cluster_size": 256}, "power of two between 512"),
    ({"backing_fmt": "qcow2"}, "without backing file"),
    ({"data_file": "x.raw", "compat": "0.10"}, "External data files"),
    ({"data_file_raw": True}, "requires data-file"),
    ({"compression_type": "lz4"}, "zlib or zstd"),
    ({"preallocation": "full"}, "preallocation"),
    ({"compat": "1.0"}, "compat"),
]


@pytest.mark.parametrize("opts,needle", INVALID, ids=[n for _, n in INVALID])
def test_invalid_options_raise_before_touching_anything(tmp_path, opts, needle):
    img = tmp_path / "x.qcow2"
    problems = validate_create_options(size=MiB, **opts)
    assert any(needle in p for p in problems), problems
    with pytest.raises(RequestError, match=needle):
        create_image(img, MiB, **opts)
    assert not img.exists()
    assert list(tmp_path.iterdir()) == []
    if opts.get("preallocation") == "full":
        return   # valid for qemu-img; we only offer off and metadata
    # qemu-img refuses the same combination
    qopts = [f"{k}={'on' if v is True else v}" for k, v in opts.items()]
    p = qemu.qemu_img("create", "-q", "-f", "qcow2", "-o", ",".join(qopts),
                      tmp_path / "q.qcow2", "1M", check=False)
    assert p.returncode != 0


def test_too_large_for_cluster_size(tmp_path):
    with pytest.raises(RequestError, match="too large"):
        create_image(tmp_path / "x.qcow2", 1 << 40, cluster_size=512)
    assert not (tmp_path / "x.qcow2").exists()


def test_existing_file_is_not_overwritten(tmp_path):
    img = tmp_path / "keep.qcow2"
    img.write_bytes(b"precious")
    with pytest.raises(RequestError, match="exists"):
        create_image(img, MiB)
    assert img.read_bytes() == b"precious"
    create_image(img, MiB, overwrite=True)
    assert qemu.check(img)[0] == 0


def test_valid_options_have_no_problems():
    assert validate_create_options(size=MiB) == []
    assert validate_create_options(size=MiB, extended_l2=True, cluster_size=16384,
                                   compression_type="zstd", refcount_bits=1) == []
    assert validate_create_options(size=None) != []
