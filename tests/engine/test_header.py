"""The header, its extensions and feature bits, compared with qemu-img info."""

from __future__ import annotations

import struct
import subprocess

import pytest

import qemu
from conftest import guest_data
from qcow2view.engine import EncryptedImageError, UnsupportedFeatureError, open_image
from qcow2view.engine.extensions import (EXT_BACKING_FORMAT, EXT_BITMAPS, EXT_DATA_FILE,
                                         EXT_FEATURE_NAME_TABLE, EXT_FULL_DISK_ENCRYPTION)
from qcow2view.engine.header import HEADER_FIELDS

KiB, MiB = 1024, 1024 * 1024


def _extension_chain(buf: bytes, start: int) -> list[tuple[int, int, bytes]]:
    """(offset, type, data) of each extension, decoded independently of the engine."""
    out, off = [], start
    while True:
        t, n = struct.unpack_from(">II", buf, off)
        if t == 0:
            return out
        out.append((off, t, buf[off + 8:off + 8 + n]))
        off += 8 + (n + 7) // 8 * 8


def _relayout(path, header_length: int, trailing: bytes = b"", extra_ext=()) -> None:
    """Rewrite the first cluster with another header_length (unknown bytes after the
    known fields) and optional extra extensions, moving the backing name along."""
    buf = bytearray(path.read_bytes())
    old_len = struct.unpack_from(">I", buf, 100)[0]
    exts = _extension_chain(buf, old_len)
    bf_off, bf_size = struct.unpack_from(">QI", buf, 8)
    name = bytes(buf[bf_off:bf_off + bf_size]) if bf_off else b""
    head = bytearray(buf[:min(old_len, header_length)])
    head += trailing or bytes(header_length - len(head))
    assert len(head) == header_length
    struct.pack_into(">I", head, 100, header_length)
    area = b""
    for t, data in [*((t, d) for _off, t, d in exts), *extra_ext]:
        area += struct.pack(">II", t, len(data)) + data + bytes(-len(data) % 8)
    area += bytes(8)
    new = bytes(head) + area
    if name:
        struct.pack_into(">Q", head, 8, len(new))
        new = bytes(head) + area + name
    cs = 1 << struct.unpack_from(">I", buf, 20)[0]
    assert len(new) <= cs
    buf[:len(new)] = new
    buf[len(new):cs] = bytes(cs - len(new))
    path.write_bytes(bytes(buf))


def test_fields_match_qemu_info_and_bytes(tmp_path):
    base = qemu.create(tmp_path / "base.qcow2", "3M")
    path = qemu.create(tmp_path / "h.qcow2", "5G", "cluster_size=16384", "refcount_bits=32",
                       "lazy_refcounts=on", "compression_type=zstd", backing=str(base))
    info = qemu.info(path)
    fs = info["format-specific"]["data"]
    raw = path.read_bytes()
    with open_image(path) as img:
        h = img.header
        assert h.version == 3 and h.header_length == 112 and h.compat == fs["compat"]
        assert img.virtual_size == info["virtual-size"]
        assert img.cluster_size == info["cluster-size"]
        assert h.refcount_bits == fs["refcount-bits"]
        assert img.lazy_refcounts == fs["lazy-refcounts"] is True
        assert img.corrupt == fs["corrupt"] is False
        assert img.dirty is False
        assert h.compression_type_name == fs["compression-type"]
        assert img.extended_l2 == fs.get("extended-l2", False)
        assert img.backing_filename == info["backing-filename"]
        assert img.backing_format == info["backing-filename-format"]
        # every field's declared place holds its value
        for f in HEADER_FIELDS:
            assert struct.unpack_from(f.fmt, raw, f.offset)[0] == h.field_value(f.name), f.name
        names = {e.type for e in img.extensions}
        assert {EXT_BACKING_FORMAT, EXT_FEATURE_NAME_TABLE} <= names
        for e in img.extensions:
            assert struct.unpack_from(">I", raw, e.offset)[0] == e.type
            assert raw[e.data_offset:e.data_offset + e.length] == e.data
            for it in e.items:
                assert it.offset >= e.data_offset
                assert it.offset + it.size <= e.data_offset + e.length
        fmt = next(e for e in img.extensions if e.type == EXT_BACKING_FORMAT)
        assert fmt.item("name") == "qcow2"
        # the feature name table names each feature qemu knows
        table = img.feature_names
        assert table[(0, 0)] == "dirty bit" and table[(1, 0)] == "lazy refcounts"


def test_version_2_header(tmp_path, guest_write, reads_like_qemu):
    path = qemu.create(tmp_path / "v2.qcow2", "1M", "compat=0.10")
    guest_write(path, 1000, guest_data(5000, 1))
    reads_like_qemu(path)
    with open_image(path) as img:
        assert img.header.version == 2 and img.header.compat == "0.10"
        assert img.header.header_length == 72 and img.header.refcount_bits == 16
        assert img.header.incompatible_features == 0


def test_header_length_104(tmp_path, guest_write, reads_like_qemu):
    base = qemu.create(tmp_path / "base.qcow2", "1M")
    guest_write(base, 0, guest_data(MiB, 2))
    path = qemu.create(tmp_path / "h.qcow2", "1M", backing=str(base))
    guest_write(path, 3000, guest_data(7000, 1))
    _relayout(path, 104)
    assert qemu.check(path)[0] == 0
    reads_like_qemu(path)
    with open_image(path) as img:
        assert img.header.header_length == 104 and img.header.extensions_offset == 104
        assert img.header.compression_type_name == "zlib"
        assert img.backing_format == "qcow2" and img.backing is not None


def test_longer_header_keeps_unknown_bytes(tmp_path, guest_write, reads_like_qemu):
    base = qemu.create(tmp_path / "base.qcow2", "1M")
    path = qemu.create(tmp_path / "h.qcow2", "1M", backing=str(base))
    guest_write(path, 3000, guest_data(7000, 1))
    unknown = bytes(range(1, 1 + 40))
    _relayout(path, 152, unknown)        # after byte 111 (compression_type + padding)
    assert qemu.info(path)["backing-filename"] == str(base)
    reads_like_qemu(path)
    with open_image(path) as img:
        assert img.header.header_length == 152
        # kept verbatim from after compression_type: 7 padding bytes, then the rest
        assert img.header.unknown_header_bytes == bytes(7) + unknown
        assert img.header.pack()[:152] == path.read_bytes()[:152]
        assert img.extensions[0].offset == 152


def test_unknown_extension_is_listed(tmp_path, reads_like_qemu):
    path = qemu.create(tmp_path / "u.qcow2", "1M")
    _relayout(path, 112, extra_ext=[(0x12345678, b"hello, world")])
    reads_like_qemu(path)
    with open_image(path) as img:
        unk = [e for e in img.extensions if not e.known]
        assert len(unk) == 1
        assert (unk[0].type, unk[0].data, unk[0].length) == (0x12345678, b"hello, world", 12)
        assert "Unknown" in unk[0].name
        raw = path.read_bytes()
        assert raw[unk[0].data_offset:unk[0].data_offset + 12] == b"hello, world"


def test_data_file_extension(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = qemu.create(tmp_path / "d.qcow2", "1M", "data_file=d.raw", "data_file_raw=on")
    fs = qemu.info(path)["format-specific"]["data"]
    with open_image(path) as img:
        ext = next(e for e in img.extensions if e.type == EXT_DATA_FILE)
        assert ext.item("name") == fs["data-file"] == img.data_file_name
        assert img.header.data_file_raw == fs["data-file-raw"]


def test_bitmaps_are_listed_like_qemu(tmp_path):
    path = qemu.create(tmp_path / "b.qcow2", "4M")
    qemu.qemu_img("bitmap", "--add", "--granularity", "128K", path, "first")
    qemu.qemu_img("bitmap", "--add", "--disable", path, "second")
    qemu.qemu_img("bitmap", "--add", "--granularity", "512", path, "a" * 200)
    qemu.qemu_io(path, "write -P 1 0 1M")           # marks the enabled bitmaps dirty
    expected = qemu.info(path)["format-specific"]["data"]["bitmaps"]
    with open_image(path) as img:
        assert [(b.name, b.granularity, b.flag_names) for b in img.bitmaps] == [
            (e["name"], e["granularity"], e["flags"]) for e in expected]
        ext = next(e for e in img.extensions if e.type == EXT_BITMAPS)
        assert ext.item("nb_bitmaps") == 3
        assert img.bitmaps[0].offset == ext.item("bitmap_directory_offset")
        assert img.bitmaps_consistent


def test_bitmap_in_use_after_a_crash(tmp_path):
    path = qemu.create(tmp_path / "b.qcow2", "4M")
    qemu.qemu_img("bitmap", "--add", path, "live")
    subprocess.run([qemu.QEMU_IO, "-c", "write -P 1 0 64k", "-c", "abort", str(path)],
                   capture_output=True)
    expected = qemu.info(path, "-U")["format-specific"]["data"]["bitmaps"]
    with open_image(path) as img:
        assert [(b.name, b.flag_names) for b in img.bitmaps] == [
            (e["name"], e["flags"]) for e in expected]
        assert img.bitmaps[0].in_use


def test_dirty_image_with_lazy_refcounts(tmp_path, reads_like_qemu):
    path = qemu.create(tmp_path / "l.qcow2", "1M", "lazy_refcounts=on")
    subprocess.run([qemu.QEMU_IO, "-c", "write -P 1 0 64k", "-c", "abort", str(path)],
                   capture_output=True)
    assert qemu.info(path)["dirty-flag"] is True
    reads_like_qemu(path)
    with open_image(path) as img:
        assert img.dirty and img.lazy_refcounts and not img.corrupt


def test_corrupt_bit_is_reported(tmp_path, reads_like_qemu):
    path = qemu.create(tmp_path / "c.qcow2", "1M")
    qemu.qemu_io(path, "write -P 3 0 64k")
    buf = bytearray(path.read_bytes())
    buf[79] |= 2
    path.write_bytes(bytes(buf))
    assert qemu.info(path)["format-specific"]["data"]["corrupt"] is True
    reads_like_qemu(path)          # qemu still reads a corrupt image read-only
    with open_image(path) as img:
        assert img.corrupt and not img.dirty


def test_unknown_incompatible_bits_name_themselves(tmp_path):
    path = qemu.create(tmp_path / "f.qcow2", "1M")
    buf = bytearray(path.read_bytes())
    # rename one entry of qemu's feature name table to a feature from the future
    off, _t, data = next(e for e in _extension_chain(buf, 112) if e[1] == EXT_FEATURE_NAME_TABLE)
    entry = off + 8                    # its first entry
    buf[entry:entry + 48] = bytes([0, 40]) + b"frobnicated clusters".ljust(46, b"\0")
    buf[72:80] = ((1 << 40) | (1 << 9)).to_bytes(8, "big")
    path.write_bytes(bytes(buf))
    p = qemu.qemu_img("info", path, check=False)
    assert p.returncode != 0 and b"frobnicated clusters" in p.stderr
    with pytest.raises(UnsupportedFeatureError) as e:
        open_image(path)
    assert "frobnicated clusters" in str(e.value) and "unknown bit 9" in str(e.value)
    assert e.value.offset == 72


@pytest.mark.parametrize("fmt, extra", [
    ("luks", ""),
    ("luks", ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
             "encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1"),
    ("aes", ""),
])
def test_encrypted_images_show_details_but_refuse_reads(tmp_path, fmt, extra):
    path = tmp_path / "e.qcow2"
    if fmt == "luks":
        qemu.create_luks(path, "1M", *filter(None, extra.split(",")))
    else:
        qemu.qemu_img("create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=123456",
                      "-o", f"encrypt.format={fmt},encrypt.key-secret=sec0", path, "1M")
    info = qemu.info(path)
    with open_image(path) as img:
        assert img.encryption == info["format-specific"]["data"]["encrypt"]["format"] == fmt
        assert img.encrypted
        fde = img.encryption_extension
        if fmt == "luks":
            assert fde is not None and fde.type == EXT_FULL_DISK_ENCRYPTION
            off, length = fde.item("offset"), fde.item("length")
            raw = path.read_bytes()
            assert raw[off:off + 6] == b"LUKS\xba\xbe"    # the LUKS header lives there
            assert off + length <= len(raw) and off % img.cluster_size == 0
            # the LUKS header's details, as qemu-img info names them
            enc = info["format-specific"]["data"]["encrypt"]
            luks = img.luks_header
            assert (luks.cipher_alg, luks.cipher_mode, luks.ivgen_alg, luks.hash_alg,
                    luks.uuid, luks.payload_offset, luks.master_key_iters) == (
                enc["cipher-alg"], enc["cipher-mode"], enc["ivgen-alg"], enc["hash-alg"],
                enc["uuid"], enc["payload-offset"], enc["master-key-iters"])
            assert luks.ivgen_hash_alg == enc.get("ivgen-hash-alg")
            assert [(s.active, s.key_offset) for s in luks.slots] == [
                (s["active"], s["key-offset"]) for s in enc["slots"]]
            assert [(s.iterations, s.stripes) for s in luks.slots if s.active] == [
                (s["iters"], s["stripes"]) for s in enc["slots"] if s["active"]]
            assert luks.offset == off and luks.slots[0].offset > off
        else:
            assert fde is None and img.luks_header is None
        for args in ((0, 512), (0, 1)):
            with pytest.raises(EncryptedImageError, match="encrypted images are not supported"):
                img.read(*args)
        assert img.l1_table.size >= 1       # tables are still there to look at


def test_header_longer_than_4k(tmp_path, guest_write, reads_like_qemu):
    """header_length may be anything up to the cluster size."""
    path = qemu.create(tmp_path / "h.qcow2", "1M")
    guest_write(path, 3000, guest_data(7000, 1))
    _relayout(path, 5000, bytes(range(256)) * 19 + bytes(5000 - 112 - 256 * 19))
    reads_like_qemu(path)
    with open_image(path) as img:
        assert img.header.header_length == 5000
        assert img.header.unknown_header_bytes[7:7 + 256] == bytes(range(256))
        assert img.extensions[0].offset == 5000
