"""The header panel's model shows what qemu-img info sees."""

from __future__ import annotations

import struct

import qemu
from qcow2view.engine import open_image
from qcow2view.model.header_model import HeaderModel, NameRole, OffsetRole


def _model(path):
    img = open_image(path, ignore_backing_errors=True)
    m = HeaderModel()
    m.set_image(img)
    return img, m


def _row(m: HeaderModel, name: str) -> dict:
    r = m.find(name)
    assert r >= 0, name
    return {"field": m.index(r, 0).data(), "offset": m.index(r, 1).data(),
            "raw": m.index(r, 2).data(), "meaning": m.index(r, 3).data(),
            "where": m.index(r, 0).data(OffsetRole)}


def test_fields_match_qemu_img_info(qtmodeltester, sample_image):
    info = qemu.info(sample_image)
    img, m = _model(sample_image)
    with img:
        qtmodeltester.check(m)
        size = _row(m, "size")
        assert size["offset"] == "0x18"
        assert int(size["raw"], 16) == info["virtual-size"]
        assert size["where"] == (24, 8)
        cb = _row(m, "cluster_bits")
        assert 1 << int(cb["raw"], 16) == info["cluster-size"]
        assert "64 KiB" in cb["meaning"]
        spec = info["format-specific"]["data"]
        ro = _row(m, "refcount_order")
        assert f"{spec['refcount-bits']}-bit" in ro["meaning"]
        assert f"compat {spec['compat']}" in _row(m, "version")["meaning"]
        assert spec["compression-type"] in _row(m, "compression_type")["meaning"]
        # snapshots as qemu-img lists them
        names = [m.index(r, 0).data() for r in range(m.rowCount())
                 if (m.index(r, 0).data(NameRole) or "").startswith("snapshot:")]
        assert [f"id {s['id']}: {s['name']}" for s in info["snapshots"]] == names


def test_raw_column_is_the_bytes_in_the_file(sample_image):
    head = sample_image.read_bytes()[:112]
    img, m = _model(sample_image)
    with img:
        for name, off, fmt in (("l1_table_offset", 40, ">Q"), ("l1_size", 36, ">I"),
                               ("refcount_table_offset", 48, ">Q")):
            assert int(_row(m, name)["raw"], 16) == struct.unpack_from(fmt, head, off)[0]


def test_feature_bits_by_name(tmp_path, qtmodeltester):
    p = qemu.create(tmp_path / "f.qcow2", "16M", "lazy_refcounts=on", "extended_l2=on",
                    "cluster_size=64k", "compression_type=zstd")
    spec = qemu.info(p)["format-specific"]["data"]
    assert spec["lazy-refcounts"] and spec["extended-l2"]
    img, m = _model(p)
    with img:
        qtmodeltester.check(m)
        assert "lazy refcounts" in _row(m, "compatible_features")["meaning"]
        incompat = _row(m, "incompatible_features")["meaning"]
        assert "extended L2 entries" in incompat and "compression type" in incompat
        assert "zstd" in _row(m, "compression_type")["meaning"]


def test_backing_chain_and_missing_backing_file(tmp_path):
    base = qemu.create(tmp_path / "base.qcow2", "16M")
    top = qemu.create(tmp_path / "top.qcow2", "16M", backing=str(base), backing_fmt="qcow2")
    img, m = _model(top)
    with img:
        assert _row(m, "backing_file")["meaning"] == str(base)
        assert "found" in _row(m, "backing:1")["meaning"]
        ext = _row(m, "name")       # the backing format extension's item
        assert ext["meaning"] == "qcow2"
    base.unlink()
    img, m = _model(top)
    with img:
        assert "NOT FOUND" in _row(m, "backing:1")["meaning"]


def test_bitmaps_listed(tmp_path):
    p = qemu.create(tmp_path / "b.qcow2", "16M")
    qemu.qemu_img("bitmap", "--add", "-g", "128k", p, "b0")
    info = qemu.info(p)
    bm = info["format-specific"]["data"]["bitmaps"][0]
    img, m = _model(p)
    with img:
        row = _row(m, "bitmap:b0")
        assert row["field"] == bm["name"]
        assert "granularity 128 KiB" in row["meaning"]
        assert "auto" in row["meaning"]     # qemu-img bitmap --add makes it enabled
        assert "auto" in bm["flags"]
