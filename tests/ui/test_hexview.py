"""The hex view and editor widgets, offscreen, over real images."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QGuiApplication
from qemu import create, qemu_io, qemu_map

from qcow2view.engine import open_image
from qcow2view.model.bytesource import ImageFileSource
from qcow2view.model.hexdocument import HexDocument
from qcow2view.model.workers import running_workers
from qcow2view.ui.hexeditor import HexEditor
from qcow2view.ui.hexview import SCROLL_MAX

K = 1024

# the offscreen platform cannot resize windows to hints; that is not our warning
pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")


@pytest.fixture
def editor(qtbot):
    """editor(path, writable=False, file_view=False) -> HexEditor, shown and closed."""
    made = []

    def make(path, writable: bool = False, file_view: bool = False) -> HexEditor:
        img = open_image(path, writable=writable)
        doc = HexDocument(img, source=ImageFileSource) if file_view else HexDocument(img)
        ed = HexEditor(doc, file_view=file_view)
        qtbot.addWidget(ed)
        ed.resize(900, 600)
        ed.show()
        qtbot.waitExposed(ed)
        made.append((ed, img))
        return ed

    yield make
    for ed, img in made:
        ed.shutdown()
        img.close()
    assert not running_workers()


@pytest.fixture
def small(tmp_path):
    img = create(tmp_path / "small.qcow2", "1M")
    qemu_io(img, "write -P 0x11 0 64k", "write -P 0x33 256k 64k")
    return img


def test_2t_guest_go_to_last_sector_and_scrollbar_maps_back(editor, tmp_path, qtbot):
    big = create(tmp_path / "big.qcow2", "2T")
    last = (2 << 40) - 512
    qemu_io(big, f"write -P 0x7e {last} 512")
    ed = editor(big)
    v = ed.view
    assert v.total_rows > 1 << 31          # beyond a 32-bit scrollbar
    sb = v.verticalScrollBar()
    assert sb.maximum() <= SCROLL_MAX
    v.goto(last)
    assert v.cursor == last
    rows = v.top_row, v.top_row + v.visible_rows
    assert rows[0] <= last // 16 < rows[1]
    # the scrollbar value maps back to the row shown, and dragging it works
    step = v.max_top // SCROLL_MAX + 1
    assert abs(v._value_to_row(sb.value()) - v.top_row) <= step
    v.setFocus()
    qtbot.keyClick(v, Qt.Key_End, Qt.ControlModifier)
    assert v.cursor == v.size - 1 and v.top_row == v.max_top
    assert sb.value() == sb.maximum()
    assert v._value_to_row(sb.value()) == v.max_top
    sb.setValue(sb.maximum() // 2)
    assert abs(v.top_row - v.max_top // 2) <= v.max_top // SCROLL_MAX + 1
    # arrow and page clicks on the scaled bar move by rows, exactly
    before = v.top_row
    sb.triggerAction(sb.SliderAction.SliderSingleStepAdd)
    assert v.top_row == before + 1
    sb.triggerAction(sb.SliderAction.SliderPageStepSub)
    assert v.top_row == before + 1 - v.visible_rows
    sb.setValue(0)
    assert v.top_row == 0
    v.goto(last)
    ed.grab()                                  # paints the last rows
    assert ed.doc.read(last, 4) == b"\x7e" * 4
    assert v._offset_text(last) == f"{last:x}"
    v.set_sector_mode(512)
    assert v._offset_text(last).strip() == str(last // 512)
    assert "sector 4294967295" in ed.inspector.text() or \
        f"sector {last // 512}" in ed.inspector.text()


def test_keyboard_navigation(editor, small, qtbot):
    ed = editor(small)
    v = ed.view
    v.setFocus()
    qtbot.keyClick(v, Qt.Key_Right)
    qtbot.keyClick(v, Qt.Key_Down)
    assert v.cursor == 17
    qtbot.keyClick(v, Qt.Key_End)
    assert v.cursor == 31
    qtbot.keyClick(v, Qt.Key_Home)
    assert v.cursor == 16
    qtbot.keyClick(v, Qt.Key_PageDown)
    assert v.cursor == 16 + 16 * v.visible_rows
    qtbot.keyClick(v, Qt.Key_End, Qt.ControlModifier)
    assert v.cursor == v.size - 1
    qtbot.keyClick(v, Qt.Key_Home, Qt.ControlModifier)
    assert v.cursor == 0
    # next/previous data cluster, as qemu-img map sees the data
    data = [e["start"] for e in qemu_map(small) if e["data"]]
    assert data == [0, 256 * K]
    qtbot.keyClick(v, Qt.Key_Down, Qt.ControlModifier)
    assert v.cursor == 256 * K
    qtbot.keyClick(v, Qt.Key_Up, Qt.ControlModifier)
    assert v.cursor == 0
    # selection with Shift+arrows and copy per column
    qtbot.keyClick(v, Qt.Key_Right, Qt.ShiftModifier)
    qtbot.keyClick(v, Qt.Key_Right, Qt.ShiftModifier)
    assert v.selection() == (0, 3)
    qtbot.keyClick(v, Qt.Key_C, Qt.ControlModifier)
    assert QGuiApplication.clipboard().text() == "11 11 11"
    assert v.copy("text") == "..."


def test_mouse_click_and_drag_select_bytes(editor, small, qtbot):
    ed = editor(small)
    v = ed.view
    cw, lh = v.cw, v.lh
    # byte 9 of row 2: the hex column has a gap after 8 bytes
    x = v.x_hex + (9 * 3 + 1) * cw + cw // 2
    y = v.header_h + 2 * lh + lh // 2
    qtbot.mouseClick(v.viewport(), Qt.LeftButton, pos=QPoint(x, y))
    assert v.cursor == 2 * 16 + 9 and v.column == "hex"
    tx = v.x_text + 4 * cw + cw // 2
    qtbot.mouseClick(v.viewport(), Qt.LeftButton, pos=QPoint(tx, y))
    assert v.cursor == 36 and v.column == "text"
    qtbot.mouseClick(v.viewport(), Qt.LeftButton, Qt.ShiftModifier,
                     pos=QPoint(tx + 3 * cw, y + lh))
    assert v.selection() == (36, 1 + 16 + 3)


def test_read_only_typing_changes_nothing(editor, small, qtbot):
    ed = editor(small)
    v = ed.view
    v.setFocus()
    qtbot.keyClicks(v, "ab")
    assert not ed.doc.modified
    assert "Ctrl+E" in ed.last_message
    assert ed.doc.read(0, 1) == b"\x11"


def test_typing_in_both_columns_with_undo(editor, small, qtbot, monkeypatch):
    ed = editor(small, writable=True)
    v = ed.view
    v.setFocus()
    qtbot.keyClicks(v, "deadbeef")
    assert ed.doc.read(0, 4) == b"\xde\xad\xbe\xef"
    assert v.cursor == 4
    qtbot.keyClick(v, Qt.Key_Tab)
    assert v.column == "text"
    qtbot.keyClicks(v, "Hi")
    assert ed.doc.read(0, 6) == b"\xde\xad\xbe\xefHi"
    assert ed.doc.undo_stack.count() == 1            # one merged typing step
    qtbot.keyClick(v, Qt.Key_Z, Qt.ControlModifier)
    assert ed.doc.read(0, 6) == b"\x11" * 6 and not ed.doc.modified
    qtbot.keyClick(v, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert ed.doc.read(0, 6) == b"\xde\xad\xbe\xefHi"
    # typing at the last byte stops there: the disk never grows
    v.goto(v.size - 1)
    qtbot.keyClick(v, Qt.Key_Tab)
    qtbot.keyClicks(v, "xyz")
    assert ed.doc.read(v.size - 1, 1) == b"x"
    assert "never changes" in ed.last_message
    # paste hex over a selection, fill a selection
    v.goto(32)
    qtbot.keyClick(v, Qt.Key_Right, Qt.ShiftModifier)
    assert v.paste("01 02 03") == 2                 # clipped to the 2-byte selection
    assert ed.doc.read(32, 3) == b"\x01\x02\x11"
    v.goto(48)
    qtbot.keyClick(v, Qt.Key_End, Qt.ShiftModifier)
    assert v.fill_selection(0xAB) == 16
    assert ed.doc.read(48, 16) == b"\xab" * 16
    assert ed.doc.pending_bytes() == 6 + 1 + 2 + 16
    # a fill larger than the editor's limit is refused (the overlay holds every byte)
    import qcow2view.model.hexdocument as hexdocument
    monkeypatch.setattr(hexdocument, "MAX_EDIT", 64 * K)
    v.anchor, v.cursor = 0, v.size - 1
    assert v.fill_selection(0) == 0 and "too large" in ed.last_message
    ed.show_history()
    assert ed.history.isVisible()
    ed.doc.revert()


def test_go_to_then_type_edits_that_byte(editor, small, qtbot):
    ed = editor(small, writable=True)
    v = ed.view
    v.setFocus()
    qtbot.keyClick(v, Qt.Key_G, Qt.ControlModifier)
    dlg = ed.goto_dialog
    assert dlg.isVisible()
    qtbot.keyClicks(dlg.edit, "LBA 3")
    qtbot.keyClick(dlg.edit, Qt.Key_Return)
    assert not dlg.isVisible()
    assert v.cursor == 1536 and v.column == "hex"
    qtbot.waitUntil(v.hasFocus)
    qtbot.keyClicks(v, "c3")
    assert ed.doc.read(1535, 3) == b"\x11\xc3\x11"
    # relative jumps
    dlg = ed.open_goto()
    qtbot.keyClicks(dlg.edit, "+1K")
    qtbot.keyClick(dlg.edit, Qt.Key_Return)
    assert v.cursor == 1537 + 1024
    dlg = ed.open_goto()
    qtbot.keyClicks(dlg.edit, "5M")
    assert not dlg.buttons.button(dlg.buttons.StandardButton.Ok).isEnabled()
    assert "past the end" in dlg.hint.text()
    dlg.reject()
    ed.doc.revert()


def test_find_bar_runs_in_a_worker_and_selects_the_match(editor, tmp_path, qtbot):
    img = create(tmp_path / "f.qcow2", "8G")
    (tmp_path / "pat").write_bytes(b"qcow2view was here")
    qemu_io(img, f"write -s {tmp_path / 'pat'} {(6 << 30) + 5} 18")
    ed = editor(img)
    v = ed.view
    v.setFocus()
    qtbot.keyClick(v, Qt.Key_F, Qt.ControlModifier)
    assert ed.findbar.isVisible()
    ed.findbar.mode.setCurrentIndex(1)
    qtbot.keyClicks(ed.findbar.edit, "was here")
    with qtbot.waitSignal(ed.findbar.found, timeout=20000) as sig:
        qtbot.keyClick(ed.findbar.edit, Qt.Key_Return)
    assert sig.args == [(6 << 30) + 15, 8]
    qtbot.waitUntil(lambda: not ed.findbar.running)
    assert v.selection() == ((6 << 30) + 15, 8)
    # hex, backward from the end
    v.goto(v.size - 1)
    ed.findbar.mode.setCurrentIndex(0)
    ed.findbar.edit.setText("71 63 6f 77")
    with qtbot.waitSignal(ed.findbar.found, timeout=20000) as sig:
        ed.findbar.start(False)
    assert sig.args[0] == (6 << 30) + 5
    qtbot.waitUntil(lambda: not ed.findbar.running)
    # not found, and a bad pattern is explained without a search
    ed.findbar.edit.setText("71 63 6f 77 00 ff")
    ed.findbar.start(True)
    qtbot.waitUntil(lambda: not ed.findbar.running, timeout=20000)
    assert ed.findbar.status.text() == "not found"
    ed.findbar.edit.setText("7")
    assert not ed.findbar.start(True)
    assert "odd" in ed.findbar.status.text()


def test_find_cancel_joins_the_worker(editor, tmp_path, qtbot):
    img = create(tmp_path / "z.qcow2", "256M")
    qemu_io(img, "write -P 0x01 0 128M")       # data everywhere: a long scan
    ed = editor(img)
    ed.findbar.edit.setText("de ad be ef 00 11")
    assert ed.findbar.start(True)
    ed.findbar.cancel()
    assert not ed.findbar.running
    assert not running_workers()


def test_file_view_selects_a_structure(editor, small):
    ed = editor(small, file_view=True)
    with open_image(small) as img:
        l1 = img.l1_table
    ed.view.select_range(l1.offset, l1.size * 8)
    assert ed.view.selection() == (l1.offset, l1.size * 8)
    assert ed.doc.read(0, 4) == b"QFI\xfb"
    assert not ed.doc.set_editable(True)
    ed.grab()


def test_bytes_per_row_and_lba_offsets(editor, small):
    ed = editor(small)
    v = ed.view
    ed.bpr_combo.setCurrentIndex(1)
    assert v.bytes_per_row == 32
    v.goto(1000)
    assert v.top_row <= 1000 // 32 < v.top_row + v.visible_rows
    ed.mode_combo.setCurrentIndex(2)
    assert v.sector_size == 4096
    assert v._offset_text(8192).strip() == "2"
    assert v._offset_text(8192 + 32).strip() == "+20"
    ed.grab()


def test_unreadable_bytes_are_not_shown_as_values(editor, tmp_path):
    """An encrypted disk cannot be read: the inspector says why and shows no numbers
    (the buffer's zeros are not the guest's bytes); at the disk's last byte only u8 has
    all its bytes."""
    from qemu import create_luks
    p = create_luks(tmp_path / "luks.qcow2", "1M")
    ed = editor(p)
    text = ed.inspector.text()
    assert "unreadable" in text and "encrypted" in text
    assert "u8 ?" in text and "u64 ?" in text and "le 0" not in text

    plain = create(tmp_path / "plain.qcow2", "1M")
    qemu_io(plain, f"write -P 0xab {1024 * K - 1} 1")
    ed = editor(plain)
    ed.view.set_cursor(1024 * K - 1)
    text = ed.inspector.text()
    assert "u8 171" in text and "u16 ?" in text
