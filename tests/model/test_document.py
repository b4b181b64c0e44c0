"""ImageDocument: opening, background maps, cancel/close joins, refresh and reopen."""

from __future__ import annotations

import pytest

import qemu
from qcow2view.engine import NotQcow2Error, Qcow2Error
from qcow2view.model.document import ImageDocument
from qcow2view.model.workers import running_workers


@pytest.fixture
def doc(sample_image, qtbot):
    d = ImageDocument(sample_image)
    yield d
    d.close()


def test_load_then_maps_and_check_in_background(doc, qtbot, sample_image):
    with qtbot.waitSignal(doc.loaded, timeout=5000):
        with qtbot.waitSignal(doc.mapsReady, timeout=30000):
            doc.load()
            assert doc.image is not None           # the header is there at once
    rc, want = qemu.check(sample_image)
    c = doc.check_result
    assert (c.corruptions, c.leaks) == (want.get("corruptions", 0), want.get("leaks", 0))
    assert len(doc.host_map) >= doc.image.host_clusters
    assert len(doc.guest_map.states) == (64 << 20) // 65536
    assert doc.problems() == []
    qtbot.waitUntil(lambda: not doc.busy, timeout=5000)


def test_close_joins_the_worker(doc):
    doc.load()
    doc.close()
    assert running_workers() == []
    assert doc.image is None


def test_cancel(tmp_path, qtbot):
    p = qemu.create(tmp_path / "big.qcow2", "64G", "preallocation=metadata")
    d = ImageDocument(p)
    cancelled, ready = [], []
    d.analysisCancelled.connect(lambda: cancelled.append(1))
    d.mapsReady.connect(lambda: ready.append(1))
    d.load()
    d.cancel_analysis()
    qtbot.waitUntil(lambda: not d.busy, timeout=30000)
    assert cancelled or ready          # it may have finished before the cancel landed
    if cancelled:
        assert d.host_map is None
    d.close()


def test_busy_until_the_result_is_delivered(sample_image, qtbot):
    """A view waiting for 'not busy' then finds the maps (or the cancellation) in."""
    d = ImageDocument(sample_image)
    ready = []
    d.mapsReady.connect(lambda: ready.append(1))
    d.load()
    assert d.wait_analysis(30000)       # the thread is over; its result is queued
    assert d.busy and not ready
    qtbot.waitUntil(lambda: not d.busy, timeout=30000)
    assert ready and d.host_map is not None
    d.close()


def test_not_qcow2(garbage_file):
    d = ImageDocument(garbage_file)
    with pytest.raises(NotQcow2Error) as e:
        d.load()
    assert "not a QCOW2 image" in str(e.value)
    d.close()


def test_missing_backing_file_opens_with_a_problem(tmp_path, qtbot):
    base = qemu.create(tmp_path / "base.qcow2", "16M")
    top = qemu.create(tmp_path / "top.qcow2", "16M", backing=str(base), backing_fmt="qcow2")
    base.unlink()
    d = ImageDocument(top)
    with qtbot.waitSignal(d.mapsReady, timeout=30000):
        d.load()
    assert any("not found" in p for p in d.problems())
    assert not d.writable
    d.close()


def test_refresh_sees_new_writes(doc, qtbot, sample_image):
    with qtbot.waitSignal(doc.mapsReady, timeout=30000):
        doc.load()
    before = int((doc.guest_map.states == 2).sum())
    qemu.qemu_io(sample_image, "write 48M 64k")
    with qtbot.waitSignal(doc.mapsReady, timeout=30000):
        with qtbot.waitSignal(doc.changed, timeout=5000):
            doc.refresh()
    assert int((doc.guest_map.states == 2).sum()) == before + 1
    assert doc.image.guest_mapping(48 << 20).host_offset is not None


def test_reopen_writable(doc, qtbot):
    doc.load_header()
    assert not doc.image.writable
    with qtbot.waitSignal(doc.writableChanged, timeout=5000) as sig:
        doc.reopen(True)
    assert sig.args == [True]
    assert doc.writable and doc.image.writable
    doc.reopen(False)
    assert not doc.image.writable


def test_reopen_failure_keeps_the_old_image(garbage_file, tmp_path):
    p = qemu.create(tmp_path / "ro.qcow2", "1M")
    p.chmod(0o444)
    d = ImageDocument(p)
    d.load_header()
    img = d.image
    import os
    if os.geteuid() == 0:
        pytest.skip("root can write read-only files")
    with pytest.raises(Qcow2Error):
        d.reopen(True)
    assert d.image is img and not d.writable
    d.close()


def test_the_document_owns_what_the_window_shows(doc, qtbot, sample_image):
    """Header, tables, problems, allocation and both hex documents come with the
    document and follow it: filled on load, the maps in when the check is, and the
    hex documents on the new Image after a refresh (no view wires them)."""
    with qtbot.waitSignal(doc.mapsReady, timeout=30000):
        doc.load()
    info = qemu.info(sample_image)
    assert doc.header_model.rowCount() > 10
    assert doc.tree_model.rowCount() == 3      # active L1, the snapshot's L1, refcount table
    assert doc.allocation.host_map is doc.host_map and doc.allocation.guest_map is doc.guest_map
    assert doc.problems_model.checked and doc.problems_model.rowCount() == 0
    assert doc.hex_guest.size == info["virtual-size"]
    assert doc.hex_file.size == sample_image.stat().st_size
    raw = qemu.to_raw(sample_image, sample_image.with_name("guest.raw"))
    assert doc.hex_guest.read(0, 128 << 10) == raw[:128 << 10]
    assert doc.hex_file.read(0, 4) == b"QFI\xfb"
    qtbot.waitUntil(lambda: not doc.busy, timeout=5000)
    with qtbot.waitSignal(doc.mapsReady, timeout=30000):
        doc.refresh()
    assert doc.hex_guest.image is doc.image and doc.hex_file.image is doc.image


def test_a_dropped_document_is_freed_at_once(sample_image, qtbot):
    """No reference cycle keeps a closed document for the garbage collector, which may
    run on a worker thread and must never delete a QObject there."""
    import gc
    import weakref
    d = ImageDocument(sample_image)
    d.load_header()
    gone = weakref.ref(d)
    d.close()
    gc.disable()
    try:
        del d
        assert gone() is None
    finally:
        gc.enable()
