"""Heatmap pictures: the colour at a cluster is the kind qemu says it is."""

from __future__ import annotations

import os
import struct

import pytest

import check_images
import qemu
from qcow2view.engine import GuestKind, open_image
from qcow2view.model.allocation import (BACKING_BASE, CORRUPT, GUEST_BASE, LEAKED, PAST_EOF,
                                        PAST_EOF_NAME, RC_BASE, AllocationModel, colour)

DATA, HEADER, L1, REFTABLE = 11, 1, 2, 4


_open = []


@pytest.fixture(autouse=True)
def _close_images():
    yield
    while _open:
        _open.pop().close()


def _model(path, mode_maps=("host", "guest")):
    img = open_image(path, ignore_backing_errors=True)
    _open.append(img)      # owners() reads the tables again, so keep it open
    hm = img.host_map() if "host" in mode_maps else None
    gm = img.guest_map() if "guest" in mode_maps else None
    m = AllocationModel()
    m.set_maps(hm, gm)
    return m


def _pixel(m, pic, cluster):
    qimg = m.to_qimage(pic)
    r, c = pic.cell_of(cluster)
    return qimg.pixelColor(c, r)


def test_host_kinds_at_known_clusters(sample_image):
    head = sample_image.read_bytes()[:64]
    l1_off = struct.unpack_from(">Q", head, 40)[0]
    rt_off = struct.unpack_from(">Q", head, 48)[0]
    m = _model(sample_image)
    pic = m.picture("kind")
    assert pic.bin == 1
    assert _pixel(m, pic, 0) == colour(HEADER)
    assert _pixel(m, pic, l1_off // 65536) == colour(L1)
    assert _pixel(m, pic, rt_off // 65536) == colour(REFTABLE)
    for e in qemu.qemu_map(sample_image):
        if e["data"]:
            for off in range(e["offset"], e["offset"] + e["length"], 65536):
                assert _pixel(m, pic, off // 65536) == colour(DATA)


def test_refcount_mode_shows_shared_clusters(sample_image):
    m = _model(sample_image)
    pic = m.picture("refcount")
    ext = [e for e in qemu.qemu_map(sample_image) if e["data"]]
    # guest 64K..128K is shared with the snapshot (refcount 2); guest 0 was rewritten
    shared = next(e for e in ext if e["start"] == 65536)["offset"] // 65536
    own = next(e for e in ext if e["start"] == 0)["offset"] // 65536
    assert _pixel(m, pic, shared) == colour(RC_BASE + 2)
    assert _pixel(m, pic, own) == colour(RC_BASE + 1)


def test_guest_view(tmp_path):
    base = qemu.create(tmp_path / "base.qcow2", "8M")
    qemu.qemu_io(base, "write -P 1 1M 64k")
    top = qemu.create(tmp_path / "top.qcow2", "8M", backing=str(base), backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 2 0 64k", "write -z 2M 64k", "write -c -P 3 3M 64k")
    m = _model(top)
    pic = m.picture("guest")
    want = {0: GUEST_BASE + GuestKind.DATA, 1: BACKING_BASE + 0, 2: GUEST_BASE + GuestKind.ZERO,
            3: GUEST_BASE + GuestKind.COMPRESSED, 5: GUEST_BASE + GuestKind.UNALLOCATED}
    ext = qemu.qemu_map(top)

    def at(off):
        return next(e for e in ext if e["start"] <= off < e["start"] + e["length"])
    # the oracle agrees with the layout above
    assert at(0)["data"] and at(0)["depth"] == 0
    assert at(1 << 20)["data"] and at(1 << 20)["depth"] == 1
    assert at(2 << 20)["zero"] and at(2 << 20)["depth"] == 0
    assert at(3 << 20)["data"] and at(3 << 20)["depth"] == 0
    assert not at(5 << 20)["data"] and at(5 << 20)["depth"] == 1
    for mb, idx in want.items():
        assert _pixel(m, pic, (mb << 20) // 65536) == colour(idx), mb


def test_a_leak_stays_red_when_binned(sample_image, make_leak):
    leak = make_leak(sample_image)
    rc, out = qemu.check(sample_image)
    assert out["leaks"] == 1
    m = _model(sample_image, ("host",))
    fine = m.picture("kind")
    assert _pixel(m, fine, leak) == colour(LEAKED)
    coarse = m.picture("kind", width=2, max_rows=1)     # 2 cells for the whole file
    assert coarse.bin > 1
    assert _pixel(m, coarse, leak) == colour(LEAKED)
    assert m.representative(coarse, *coarse.cell_of(leak)) == leak
    assert "leaked" in m.describe(coarse, *coarse.cell_of(leak))
    assert any(name == "leaked" and n == 1 for name, _, n in m.legend("kind"))


def test_corrupt_cluster_is_red(tmp_path):
    p = qemu.create(tmp_path / "c.qcow2", "8M")
    qemu.qemu_io(p, "write 0 64k")
    data = bytearray(p.read_bytes())
    host = next(e for e in qemu.qemu_map(p) if e["data"])["offset"]
    rt_off = struct.unpack_from(">Q", data, 48)[0]
    blk = struct.unpack_from(">Q", data, rt_off)[0]
    struct.pack_into(">H", data, blk + 2 * (host // 65536), 0)   # referenced, refcount 0
    p.write_bytes(bytes(data))
    assert qemu.check(p)[1]["corruptions"] >= 1
    m = _model(p, ("host",))
    pic = m.picture("kind", width=1, max_rows=1)
    assert _pixel(m, pic, host // 65536) == colour(CORRUPT)
    assert _pixel(m, m.picture("refcount"), host // 65536) == colour(CORRUPT)


def test_hover_text_names_cluster_and_owner(sample_image):
    m = _model(sample_image)
    pic = m.picture("kind")
    host = next(e for e in qemu.qemu_map(sample_image) if e["start"] == 32 << 20)["offset"]
    text = m.describe(pic, *pic.cell_of(host // 65536))
    assert f"host cluster {host // 65536}" in text
    assert "kind: data" in text
    assert f"guest {32 << 20:#x}" in text


@pytest.mark.parametrize("chunk", [1, 3, 16, 1 << 20])
def test_mapping_segments_follow_qemu_map(tmp_path, monkeypatch, chunk):
    from qcow2view.model import allocation
    monkeypatch.setattr(allocation, "SEGMENT_CHUNK", chunk)   # runs across chunk edges
    p = qemu.create(tmp_path / "m.qcow2", "16M")
    qemu.qemu_io(p, "write 0 1M", "write 8M 64k", "write 1M 64k")
    runs_qemu = [e for e in qemu.qemu_map(p) if e["data"]]
    m = _model(p, ("guest",))
    x, y, runs = m.mapping_segments()
    assert runs == len(runs_qemu)
    starts = sorted(zip(x[0::2], y[0::2]))
    assert starts == sorted((e["start"], e["offset"]) for e in runs_qemu)


@pytest.mark.parametrize("mode", ["kind", "refcount", "guest"])
def test_picture_layout(sample_image, mode):
    m = _model(sample_image)
    pic = m.picture(mode)
    assert pic.data.flags.c_contiguous and pic.data.dtype.name == "uint8"
    assert pic.rows * pic.width >= pic.count


def test_summarised_guest_map_of_a_huge_disk(tmp_path):
    """On a disk with more clusters than the guest map holds, one cell stands for several
    clusters: the hover says so, and the mapping plot gives a lone data cluster its own
    host height (one cluster, where qemu-img map puts it), not the cell's guest span."""
    from qcow2view.engine.maps import guest_map
    p = qemu.create(tmp_path / "h.qcow2", "16M")
    qemu.qemu_io(p, "write -P 7 8M 64k")
    host = next(e for e in qemu.qemu_map(p) if e["data"])["offset"]
    img = open_image(p)
    _open.append(img)
    gm = guest_map(img, max_entries=64)           # 256 clusters -> 4 per entry
    assert gm.clusters_per_entry == 4 and len(gm) == 64
    m = AllocationModel()
    m.set_maps(None, gm)
    x, y, runs = m.mapping_segments()
    assert runs == 1
    assert (x[0], x[1]) == (8 << 20, (8 << 20) + 4 * 65536)
    assert (y[0], y[1]) == (host, host + 65536)
    pic = m.picture("guest")
    text = m.describe(pic, *pic.cell_of(32))
    assert "guest clusters 128 – 131" in text and "4 clusters" in text and "data" in text


def test_every_engine_kind_has_a_name_and_colour():
    """The picture's tables index the engine's enums by member: every host kind and
    every kind a guest map holds is named and coloured (no int copied by hand)."""
    from qcow2view.engine import HostKind
    from qcow2view.model.allocation import GUEST_STATES, HOST_KINDS
    assert set(HOST_KINDS) == set(HostKind)
    held = set(GuestKind) - {GuestKind.FILE, GuestKind.ERROR, GuestKind.BACKING}
    assert set(GUEST_STATES) == held        # BACKING is coloured by depth


def _truncated(p):
    """A refcount past the end of the file: the last clusters cut off (qemu-img check
    counts no leak for them, it compares refcounts up to the end of the file only)."""
    os.truncate(p, os.path.getsize(p) - 3 * 4096)


@pytest.mark.parametrize("damage", [check_images.dmg_leak, check_images.dmg_refblock_on_l2,
                                    _truncated], ids=lambda f: f.__name__)
def test_legend_counts_leaks_as_qemu_img_check(tmp_path, damage):
    """The map's legend says as many leaked clusters as qemu-img check finds: a refcount
    past the end of the file is its own kind, a leaked cluster that also overlaps other
    metadata (drawn corrupt) is still one of the leaks."""
    p = check_images.build_damaged(tmp_path)
    end = qemu.check(p)[1]["image-end-offset"]
    damage(p)
    leaks = qemu.check(p)[1].get("leaks", 0)
    m = _model(p, ("host",))
    for mode in ("kind", "refcount"):
        legend = {name: n for name, _, n in m.legend(mode)}
        assert legend.get("leaked", 0) == leaks, mode
        if damage is _truncated:        # every cluster cut off had its refcount
            assert legend[PAST_EOF_NAME] == (end - os.path.getsize(p)) // 4096, mode
    if damage is _truncated:
        pic = m.picture("kind")
        last = end // 4096 - 1
        assert _pixel(m, pic, last) == colour(PAST_EOF)
        assert "past end of file" in m.describe(pic, *pic.cell_of(last))
