"""HexDocument: reads, tints, overlay and undo, extents, find; qemu is the oracle."""

from __future__ import annotations

import random
import shutil

import pytest
from qemu import create, qemu_img, qemu_io, qemu_map, to_raw

from qcow2view.engine import CancelledError, open_image
from qcow2view.model.extents import GuestKind, extents
from qcow2view.model.bytesource import ImageFileSource
from qcow2view.model.hexdocument import BLOCK_SIZE, HexDocument
from qcow2view.model.hexsearch import find, parse_pattern
from qcow2view.ui.goto import parse_goto

K = 1024


@pytest.fixture
def layered(tmp_path):
    """A top image over a compressed backing file: every kind of guest range.

    backing (compressed): 0..64K 'A'.  top: 60K..68K 0x22 (copy-on-write of
    clusters 0,1), 128K zero, 192K..256K 0x55, 300K 'needle' text; 512K..576K
    only in the backing file (compressed 'B').
    """
    plain = create(tmp_path / "plain.qcow2", "1M")
    qemu_io(plain, "write -P 0x41 0 64k", "write -P 0x42 512k 64k")
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", plain, base)
    top = create(tmp_path / "top.qcow2", "1M", backing=str(base))
    qemu_io(top, "write -P 0x22 60k 8k", "write -z 128k 64k", "write -P 0x55 192k 64k")
    (tmp_path / "needle").write_bytes(b"xx needle in a haystack xx")
    qemu_io(top, f"write -s {tmp_path / 'needle'} {300 * K} 26")
    return top


def _qemu_kind(ext: dict) -> set[GuestKind]:
    if not ext["present"]:
        return {GuestKind.UNALLOCATED}
    if ext["zero"] and not ext["data"]:
        return {GuestKind.ZERO, GuestKind.UNALLOCATED} if ext["depth"] else {GuestKind.ZERO}
    if ext["depth"] > 0:
        return {GuestKind.BACKING}
    # qemu-img map gives no "offset" for compressed clusters
    return {GuestKind.DATA} if "offset" in ext else {GuestKind.COMPRESSED}


def test_reads_and_tints_match_qemu(layered, tmp_path):
    raw = to_raw(layered, tmp_path / "top.raw")
    with open_image(layered) as img:
        doc = HexDocument(img, cache_blocks=4)
        assert doc.read(0, len(raw)) == raw
        rnd = random.Random(1)
        for _ in range(40):   # odd spans across block boundaries, small cache
            off = rnd.randrange(len(raw))
            n = rnd.randrange(1, 3 * BLOCK_SIZE)
            assert doc.read(off, n) == raw[off:off + n]
        for ext in qemu_map(layered):
            for off in (ext["start"], ext["start"] + ext["length"] - 1):
                _, kinds, pend = doc.span(off, 1)
                assert GuestKind(int(kinds[0])) in _qemu_kind(ext), (off, ext)
                assert not pend.any()
        # the extents walk agrees with qemu-img map range by range
        for s, e, kind in extents(img, 0, img.virtual_size):
            for ext in qemu_map(layered):
                if ext["start"] <= s < ext["start"] + ext["length"]:
                    assert kind in _qemu_kind(ext) | {GuestKind.MIXED}, (s, e, kind, ext)
        assert len(doc._cache) <= 4


def test_file_document_shows_the_image_file(layered):
    with open_image(layered) as img:
        doc = HexDocument(img, source=ImageFileSource)
        data = layered.read_bytes()
        assert doc.size == len(data)
        assert doc.read(0, 4) == b"QFI\xfb"
        assert doc.read(len(data) - 100, 100) == data[-100:]
        assert not doc.editable
        with pytest.raises(PermissionError):
            doc.replace(0, b"x")
        # find searches the file's bytes, not the guest's
        assert find(doc, b"QFI\xfb", 0) == 0
        name = b"base.qcow2"
        assert find(doc, name, 1) == data.index(name)
        assert find(doc, b"needle", len(data) - 1, forward=False) == data.rindex(b"needle")


def test_overlay_undo_redo_and_typing_merge(layered, tmp_path):
    img_path = tmp_path / "copy.qcow2"
    shutil.copyfile(layered, img_path)
    shutil.copyfile(tmp_path / "base.qcow2", tmp_path / "base2.qcow2")
    with open_image(layered, writable=True) as img:
        doc = HexDocument(img)
        before = doc.read(0, 256 * K)
        assert doc.editable and not doc.modified
        doc.replace(100, b"\x01")
        doc.replace(101, b"\x02", typing=True)
        doc.replace(101, b"\x03", typing=True)      # second nibble of the same byte
        doc.replace(102, b"\x04", typing=True)
        assert doc.read(100, 3) == b"\x01\x03\x04"
        assert doc.modified and doc.pending_bytes() == 3
        assert doc.undo_stack.count() == 2         # the typing merged into one step
        doc.undo_stack.undo()
        assert doc.read(100, 3) == b"\x01" + before[101:103]
        doc.undo_stack.undo()
        assert doc.read(0, 256 * K) == before and not doc.modified
        doc.undo_stack.redo()
        doc.undo_stack.redo()
        assert doc.read(100, 3) == b"\x01\x03\x04"
        # a replace over a pending byte undoes back to the pending value
        doc.replace(100, b"\xff\xff")
        doc.undo_stack.undo()
        assert doc.read(100, 3) == b"\x01\x03\x04"
        # runs coalesce across block boundaries; the disk never grows
        doc.fill(BLOCK_SIZE - 2, 4, 0xEE)
        assert doc.replace(doc.size - 2, b"abcdef") == 2
        assert doc.read(doc.size - 2, 2) == b"ab"
        runs = doc.pending_runs()
        assert (BLOCK_SIZE - 2, b"\xee" * 4) in runs
        assert runs[0] == (100, b"\x01\x03\x04")
        assert runs[-1] == (doc.size - 2, b"ab")
        doc.revert()
        assert doc.read(0, 256 * K) == before and not doc.modified
        assert doc.undo_stack.count() == 0
    # nothing was written: qemu sees the image as it was
    assert to_raw(layered, tmp_path / "a.raw") == to_raw(img_path, tmp_path / "b.raw")


def test_read_only_document_refuses_edits(layered):
    with open_image(layered) as img:
        doc = HexDocument(img)
        with pytest.raises(PermissionError):
            doc.replace(0, b"x")
        assert not doc.modified


def test_next_content_skips_by_table_on_a_2t_disk(tmp_path):
    big = create(tmp_path / "big.qcow2", "2T")
    last = (2 << 40) - 64 * K
    qemu_io(big, "write -P 0x11 1M 4k", f"write -P 0x22 {last} 64k", "write -z 5M 64k")
    with open_image(big) as img:
        doc = HexDocument(img)
        assert doc.next_content(0) == 1 << 20
        assert doc.next_content(1 << 20) == last          # zero cluster at 5M is skipped
        assert doc.next_content(last) is None
        assert doc.next_content(doc.size - 1, forward=False) == 1 << 20
        assert doc.next_content(1 << 20, forward=False) is None
        data = [(e["start"], e["length"]) for e in qemu_map(big) if e["data"]]
        assert data == [(1 << 20, 64 * K), (last, 64 * K)]


def test_find_skips_holes_and_sees_backing_and_pending(layered, tmp_path):
    big = create(tmp_path / "big.qcow2", "64G")
    (tmp_path / "pat").write_bytes(b"\xde\xad\xbe\xef")
    qemu_io(big, f"write -s {tmp_path / 'pat'} {40 << 30} 4",
            f"write -s {tmp_path / 'pat'} {10 << 30} 4")
    with open_image(big) as img:
        doc = HexDocument(img)
        seen = []
        hit = find(doc, parse_pattern("de ad be ef", "hex"), 0,
                   progress=lambda d, t: seen.append((d, t)))
        assert hit == 10 << 30
        assert find(doc, b"\xde\xad\xbe\xef", hit + 1) == 40 << 30
        assert find(doc, b"\xde\xad\xbe\xef", doc.size - 1, forward=False) == 40 << 30
        assert find(doc, b"\xde\xad\xbe\xef", (40 << 30) - 1, forward=False) == 10 << 30
        assert find(doc, b"\xde\xad\xbe\xef", (10 << 30) - 1, forward=False) is None
        assert seen and all(d <= t for d, t in seen)
        # the all-zero pattern is found in the unallocated start
        assert find(doc, b"\0\0", 5) == 5
        with pytest.raises(CancelledError):
            find(doc, b"zz", 0, cancel=lambda: True)
    with open_image(layered, writable=True) as img:
        doc = HexDocument(img)
        assert find(doc, b"needle", 0) == 300 * K + 3
        assert find(doc, parse_pattern("needle", "text"), 300 * K + 4) is None
        # backing-file data (compressed) is searched: 'B' run at 512K
        assert find(doc, b"BBBB", 0) == 512 * K
        # a pattern across the data/backing boundary at 64K..68K written 0x22
        assert find(doc, b"\x22\x22\x22\x41", 0) is None
        assert find(doc, b"\x55\x00", 0) == 256 * K - 1          # data -> unallocated
        assert find(doc, b"\x00\x55", 0) == 192 * K - 1          # zero cluster -> data
        assert find(doc, b"\x00\x55", doc.size - 1, forward=False) == 192 * K - 1
        # pending edits are found, even in an unallocated cluster
        doc.replace(900 * K, b"pending!")
        assert find(doc, b"pending!", 0) == 900 * K
        assert find(doc, b"pending!", doc.size - 1, forward=False) == 900 * K


def test_parse_pattern():
    assert parse_pattern("de ad BE:ef", "hex") == b"\xde\xad\xbe\xef"
    assert parse_pattern("0xdead", "hex") == b"\xde\xad"
    assert parse_pattern("héllo", "text") == "héllo".encode()
    for bad in ("", "abc", "zz"):
        with pytest.raises(ValueError):
            parse_pattern(bad, "hex")


@pytest.mark.parametrize("text,expected", [
    ("4096", 4096), ("0x1000", 4096), ("1M", 1 << 20), ("4KiB", 4096), ("2G", 2 << 30),
    ("LBA 2048", 2048 * 512), ("sector 3", 1536), ("10s", 5120), ("+4K", 1000 + 4096),
    ("-1000", 0), ("1.5M", 3 << 19), ("1T", 1 << 40),
])
def test_parse_goto(text, expected):
    assert parse_goto(text, current=1000, size=2 << 40, sector_size=512) == expected


def test_parse_goto_rejects():
    for bad in ("", "abc", "-2K", "3T", "LBA 1M", "1.5"):
        with pytest.raises(ValueError):
            parse_goto(bad, current=1000, size=2 << 40)
    assert parse_goto("LBA 2", sector_size=4096) == 8192


def test_many_void_qt_calls_do_not_abort():
    """PySide6 6.12 on Python 3.11 drops a reference to None on every void call;
    a few thousand repaints of the hex view used to abort the interpreter."""
    import subprocess
    import sys
    script = ("import qcow2view.model\n"
              "from PySide6.QtCore import QObject\n"
              "o = QObject()\n"
              "for _ in range(200000):\n"
              "    o.setObjectName('x')\n"
              "print('done')\n")
    root = __file__.rsplit("/tests/", 1)[0]
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, env={"QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": root})
    assert p.returncode == 0 and "done" in p.stdout, p.stderr


def test_missing_backing_file_marks_only_those_clusters(tmp_path):
    base = create(tmp_path / "base.qcow2", "1M", "cluster_size=4k")
    qemu_io(base, "write -P 0x61 0 64k")
    top = create(tmp_path / "top.qcow2", "1M", "cluster_size=4k", backing=str(base))
    qemu_io(top, "write -P 0x62 8k 4k")
    base.unlink()
    with open_image(top, ignore_backing_errors=True) as img:
        doc = HexDocument(img)
        data, kinds, _ = doc.span(0, 16 * K)
        assert data[8 * K:12 * K].tobytes() == b"\x62" * 4 * K
        assert set(kinds[8 * K:12 * K].tolist()) == {GuestKind.DATA}
        assert set(kinds[:8 * K].tolist()) == {GuestKind.ERROR}
        assert "backing" in doc.block_error(0)
