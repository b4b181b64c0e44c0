"""Editing guest bytes in the hex editor and saving through the write engine.

Every save is judged by qemu: ``qemu-img check`` is clean and ``qemu-img
convert``/``qemu-io read -P`` see exactly the bytes typed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from PySide6.QtCore import Qt
from qemu import QEMU_IO, check, create, info, qemu_img, qemu_io, to_raw

from qcow2view.engine import open_image
from qcow2view.engine.fileio import HostFile
from qcow2view.model.hexdocument import HexDocument
from qcow2view.model.workers import running_workers
from qcow2view.ui.hexeditor import HexEditor

K = 1024
pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")


@pytest.fixture
def editor(qtbot):
    """editor(path) -> HexEditor over a read-only image; editing is enabled by the test."""
    made = []

    def make(path) -> HexEditor:
        doc = HexDocument(open_image(path))
        ed = HexEditor(doc)
        qtbot.addWidget(ed)
        ed.resize(900, 600)
        ed.show()
        qtbot.waitExposed(ed)
        made.append(ed)
        return ed

    yield make
    HexEditor.ask_unsaved = None
    for ed in made:
        ed.shutdown()
        if ed.message_box is not None:
            ed.message_box.close()
        ed.doc.image.close()
    assert not running_workers()


def _type_at(qtbot, ed: HexEditor, offset: int, hexdigits: str) -> None:
    ed.view.goto(offset)
    qtbot.keyClicks(ed.view, hexdigits)


def _assert_clean(path) -> None:
    rc, data = check(path)
    assert rc == 0, data
    assert not data.get("corruptions") and not data.get("leaks"), data


def _edit_save_and_compare(qtbot, ed, path, tmp_path, edits: dict[int, bytes]):
    before = to_raw(path, tmp_path / "before.raw")
    assert ed.set_editing(True), ed.last_message
    for off, data in edits.items():
        _type_at(qtbot, ed, off, data.hex())
    expected = bytearray(before)
    for off, data in edits.items():
        expected[off:off + len(data)] = data
    assert ed.doc.read(0, len(before)) == bytes(expected)
    assert ed.save(), ed.last_message
    assert not ed.doc.modified
    assert ed.doc.read(0, len(before)) == bytes(expected)
    assert ed.set_editing(False)              # drop the writer locks for qemu
    _assert_clean(path)
    assert to_raw(path, tmp_path / "after.raw") == bytes(expected)
    qemu_io(path, *(f"read -P {data[0]:#x} {off} 1" for off, data in edits.items()))
    return before


def test_type_undo_redo_save_in_an_unallocated_cluster(editor, tmp_path, qtbot):
    img = create(tmp_path / "a.qcow2", "1M")
    qemu_io(img, "write -P 0x11 0 64k")
    ed = editor(img)
    assert ed.set_editing(True), ed.last_message
    v = ed.view
    _type_at(qtbot, ed, 0x20000 + 5, "deadbeef")
    qtbot.keyClick(v, Qt.Key_Z, Qt.ControlModifier)
    assert not ed.doc.modified
    qtbot.keyClick(v, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert ed.doc.read(0x20005, 4) == b"\xde\xad\xbe\xef"
    _type_at(qtbot, ed, 7, "a5")
    qtbot.keyClick(v, Qt.Key_S, Qt.ControlModifier)
    assert not ed.doc.modified and ed.doc.undo_stack.count() == 0
    ed.set_editing(False)                     # drop the writer locks
    _assert_clean(img)
    qemu_io(img, "read -P 0xde 0x20005 1", "read -P 0xad 0x20006 1", "read -P 0xbe 0x20007 1",
            "read -P 0xef 0x20008 1", "read -P 0x00 0x20009 0xfff7", "read -P 0x11 0 7",
            "read -P 0xa5 7 1", "read -P 0x11 8 0xfff8")


@pytest.mark.parametrize("kind", ["compressed", "backing", "snapshot", "extended_l2"])
def test_save_edits_in_special_clusters(editor, tmp_path, qtbot, kind):
    plain = create(tmp_path / "plain.qcow2", "1M",
                   *(("extended_l2=on", "cluster_size=64k") if kind == "extended_l2" else ()))
    qemu_io(plain, "write -P 0x41 0 128k", "write -P 0x42 256k 64k")
    if kind == "compressed":
        path = tmp_path / "c.qcow2"
        qemu_img("convert", "-c", "-O", "qcow2", plain, path)
    elif kind == "backing":
        path = create(tmp_path / "top.qcow2", "1M", backing=str(plain))
        qemu_io(path, "write -P 0x43 512k 4k")
    elif kind == "snapshot":
        path = plain
        qemu_img("snapshot", "-c", "s1", path)
    else:
        path = plain
        qemu_io(path, "write -P 0x44 600k 2k")     # one sub-cluster only
    ed = editor(path)
    edits = {100: b"\x01\x02", 64 * K - 1: b"\xfe\xfd", 260 * K: b"\x99", 900 * K: b"\x77",
             601 * K: b"\x55\x66"}
    before = _edit_save_and_compare(qtbot, ed, path, tmp_path, edits)
    if kind == "backing":        # the backing file is untouched
        assert to_raw(plain, tmp_path / "base.raw")[:64 * K] == b"\x41" * 64 * K
    if kind == "snapshot":       # the snapshot still sees the old bytes
        assert to_raw(path, tmp_path / "s1.raw", snapshot="s1") == before


def test_enabling_editing_on_an_image_in_use_is_refused(editor, tmp_path, qtbot):
    img = create(tmp_path / "busy.qcow2", "1M")
    proc = subprocess.Popen([QEMU_IO, "-f", "qcow2", "-c", "sleep 100000", str(img)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with open_image(img) as probe:
                if probe.in_use:
                    break
            assert time.monotonic() < deadline, "qemu-io did not take its locks"
            time.sleep(0.05)
        ed = editor(img)
        ed.view.setFocus()
        qtbot.keyClick(ed.view, Qt.Key_E, Qt.ControlModifier)
        assert not ed.doc.editable and not ed.act_edit.isChecked()
        assert ed.banner.isVisible()
        reason = ed.banner.text()
        assert "Cannot enable editing" in reason and "lock" in reason.lower() or \
            "in use" in reason.lower(), reason
        assert ed.message_box is not None and ed.message_box.isVisible()
        assert ed.message_box.text() == reason
        qtbot.keyClicks(ed.view, "00")
        assert not ed.doc.modified
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_corrupt_image_is_refused(editor, tmp_path):
    img = create(tmp_path / "bad.qcow2", "1M")
    with open(img, "r+b") as f:                 # incompatible feature bit 1: corrupt
        f.seek(79)
        b = f.read(1)[0]
        f.seek(79)
        f.write(bytes([b | 2]))
    ed = editor(img)
    assert not ed.set_editing(True)
    assert "corrupt" in ed.banner.text().lower()
    assert not ed.doc.editable


def test_failed_save_keeps_the_edits_pending(editor, tmp_path, qtbot):
    img = create(tmp_path / "f.qcow2", "1M")
    ed = editor(img)
    assert ed.set_editing(True)
    _type_at(qtbot, ed, 300 * K, "c0ffee")
    HostFile.fault_after = 0
    try:
        assert not ed.save()
    finally:
        HostFile.fault_after = None
    assert ed.doc.modified and ed.doc.read(300 * K, 3) == b"\xc0\xff\xee"
    assert "still pending" in ed.banner.text() and "injected" in ed.banner.text()
    assert ed.save(), ed.last_message
    ed.set_editing(False)
    _assert_clean(img)
    qemu_io(img, f"read -P 0xc0 {300 * K} 1", f"read -P 0xee {300 * K + 2} 1")


def test_closing_with_pending_edits_asks(editor, tmp_path, qtbot):
    img = create(tmp_path / "q.qcow2", "1M")
    ed = editor(img)
    assert ed.set_editing(True)
    _type_at(qtbot, ed, 10, "ab")
    answers = []
    HexEditor.ask_unsaved = lambda e: answers.pop(0)
    answers.append("cancel")
    assert not ed.confirm_close() and ed.doc.modified
    answers.append("discard")
    assert ed.confirm_close() and not ed.doc.modified
    _type_at(qtbot, ed, 10, "cd")
    answers.append("save")
    assert ed.confirm_close() and not ed.doc.modified
    ed.set_editing(False)
    qemu_io(img, "read -P 0xcd 10 1")


def test_scattered_edits_save_as_coalesced_runs(tmp_path):
    img = create(tmp_path / "s.qcow2", "64M")
    shutil.copyfile(img, tmp_path / "ref.qcow2")
    with open_image(img, writable=True) as im:
        doc = HexDocument(im)
        for i in range(100):
            doc.replace(i * 640 * K + i, bytes([i + 1]))
        doc.replace(5 * 65536 - 1, b"\xaa\xbb")    # across a block boundary: one run
        assert sum(1 for off, d in doc.pending_runs() if len(d) == 2) == 1
        assert doc.save()
    _assert_clean(img)
    cmds = [f"read -P {i + 1:#x} {i * 640 * K + i} 1" for i in range(100)]
    qemu_io(img, *cmds, "read -P 0xaa 327679 1", "read -P 0xbb 327680 1")
    os.unlink(tmp_path / "ref.qcow2")


def test_main_window_edit_save_and_close(qtbot, tmp_path):
    from qcow2view.ui.hexeditor import FILE_VIEW, GUEST_VIEW
    from qcow2view.ui.mainwindow import MainWindow
    img = create(tmp_path / "w.qcow2", "4M")
    qemu_io(img, "write -P 0x61 0 64k")
    qemu_img("snapshot", "-c", "before", img)
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    tab = win.open_path(str(img))
    guest, filev = tab.view(GUEST_VIEW), tab.view(FILE_VIEW)
    assert guest is not None and filev is not None
    assert not win.act_save.isEnabled()
    win.act_edit.trigger()
    assert tab.document.writable and guest.doc.editable and win.act_edit.isChecked()
    tab.show_view(GUEST_VIEW)
    guest.view.goto(0x10)
    qtbot.keyClicks(guest.view, "0102")
    assert win.act_save.isEnabled() and win.act_undo.isEnabled()
    win.act_undo.trigger()
    assert not guest.doc.modified
    win.act_redo.trigger()
    win.act_history.trigger()
    assert guest.history.isVisible()
    old_image = tab.document.image
    win.act_save.trigger()
    assert not guest.doc.modified
    assert tab.document.image is not old_image          # refreshed after the save
    assert guest.doc.image is tab.document.image
    assert guest.doc.read(0x10, 2) == b"\x01\x02"
    tab.document.wait_analysis()
    # the header panel / heatmap ask for file bytes: the file view selects them
    l1 = tab.document.image.l1_table
    tab.showFileBytes.emit(l1.offset, 8)
    assert tab.views.currentWidget() is filev
    assert filev.view.selection() == (l1.offset, 8)
    # unsaved edits: closing asks (Cancel keeps the tab, Discard closes it)
    tab.show_view(GUEST_VIEW)
    guest.view.goto(0x20)
    qtbot.keyClicks(guest.view, "ff")
    HexEditor.ask_unsaved = lambda e: "cancel"
    try:
        win.close_current()
        assert win.tabs.count() == 1
        HexEditor.ask_unsaved = lambda e: "discard"
        win.close_current()
        assert win.tabs.count() == 0
    finally:
        HexEditor.ask_unsaved = None
    _assert_clean(img)
    qemu_io(img, "read -P 0x01 0x10 1", "read -P 0x02 0x11 1", "read -P 0x61 0x20 1")
    assert to_raw(img, tmp_path / "s.raw", snapshot="before")[:64 * K] == b"\x61" * 64 * K


def test_snapshot_view_and_encrypted_images_are_refused(qtbot, tmp_path):
    img = create(tmp_path / "s.qcow2", "1M")
    qemu_io(img, "write -P 0x11 0 4k")
    qemu_img("snapshot", "-c", "s1", img)
    # an AES (crypt_method 1) header: as old qemu made them, without a slow LUKS setup
    enc = create(tmp_path / "enc.qcow2", "1M", "compat=0.10")
    with open(enc, "r+b") as f:
        f.seek(32)
        f.write((1).to_bytes(4, "big"))
    assert info(enc)["encrypted"]
    for path, kw, word in ((img, {"snapshot": "s1"}, "snapshot"), (enc, {}, "encrypted")):
        image = open_image(path, **kw)
        doc = HexDocument(image)
        ed = HexEditor(doc)
        qtbot.addWidget(ed)
        try:
            assert not ed.set_editing(True)
            assert word in ed.banner.text().lower() and not doc.editable
            if word == "encrypted":   # guest bytes cannot be shown; the view says why
                assert doc.block_error(0) and "encrypt" in doc.block_error(0)
                assert "unreadable" in ed.inspector.text()
            ed.message_box.close()
        finally:
            image.close()
