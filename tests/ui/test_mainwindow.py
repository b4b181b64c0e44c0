"""The main window: tabs, titles, error dialogs, recent files, drag and drop, settings."""

from __future__ import annotations

import sys
import threading

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QKeySequence
from PySide6.QtWidgets import QMessageBox

import qemu
from gui_fixtures import wait_ready
from qcow2view.model.header_model import OffsetRole
from qcow2view.model.workers import running_workers
from qcow2view.ui import dialogs
from qcow2view.ui.mainwindow import MainWindow
from qcow2view.ui.settings import recent_files, settings

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")




def test_start_page_then_tabs(window, qtbot, sample_image, tmp_path):
    assert window.stack.currentWidget() is window.start
    assert window.windowTitle() == "qcow2view"
    tab = window.open_path(str(sample_image))
    assert tab is not None and window.stack.currentWidget() is window.tabs
    # the header and the top of the tree are there before the maps
    assert tab.header_model.rowCount() > 10
    assert tab.tree_model.rowCount() == 3
    assert "sample.qcow2" in window.windowTitle() and "read-only" in window.windowTitle()
    other = qemu.create(tmp_path / "other.qcow2", "1M")
    window.open_path(str(other))
    assert window.tabs.count() == 2
    assert window.open_path(str(sample_image)) is tab      # already open: its tab
    assert window.tabs.count() == 2
    wait_ready(qtbot, tab)
    window.close_all()
    assert window.tabs.count() == 0 and window.stack.currentWidget() is window.start
    assert running_workers() == []


def test_not_qcow2_shows_a_dialog_and_the_app_goes_on(window, qtbot, garbage_file,
                                                      sample_image):
    assert window.open_path(str(garbage_file)) is None
    boxes = dialogs.open_message_boxes()
    assert len(boxes) == 1
    assert "not a QCOW2 image" in boxes[0].text()
    assert "Traceback" not in boxes[0].text()
    boxes[0].button(QMessageBox.Ok).click()
    qtbot.waitUntil(lambda: not dialogs.open_message_boxes())
    assert window.open_path(str(sample_image)) is not None


def test_damaged_image_opens_read_only_with_a_banner(window, qtbot, sample_image):
    import struct
    data = bytearray(sample_image.read_bytes())
    struct.pack_into(">Q", data, 72, 2)           # set the corrupt bit
    sample_image.write_bytes(bytes(data))
    assert qemu.info(sample_image)["format-specific"]["data"]["corrupt"] is True
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    assert tab.banner.isVisible()
    assert "corrupt bit" in tab.banner.text()
    assert not tab.document.writable
    assert "Problems (" in tab.views.tabText(tab.views.indexOf(tab.problems))


def test_leak_in_banner_and_problems(window, qtbot, sample_image, make_leak):
    make_leak(sample_image)
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    assert "1 leaked cluster" in tab.banner.text()
    assert tab.problems_model.rowCount() >= 1
    assert tab.problems.summary.text().startswith("qcow2 structure: ")


def test_problems_tab_says_what_was_checked(window, qtbot, sample_image):
    """A clean image: the Problems tab names the check that found nothing (the guest's
    filesystems may still be damaged; this is about the qcow2 structure)."""
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    text = tab.problems.summary.text()
    assert text.startswith("qcow2 structure: no problems found")
    assert "qemu-img check" in text


def test_recent_files_and_settings(window, qtbot, sample_image, _scratch_settings):
    window.open_path(str(sample_image))
    assert recent_files()[0] == str(sample_image)
    actions = [a for a in window.recent_menu.actions() if a.data()]
    assert actions[0].data() == str(sample_image)
    assert str(_scratch_settings) in settings().fileName()    # never the user's file
    window.save_settings()
    assert settings().value("geometry") is not None
    window.close_all()
    w2 = MainWindow()
    qtbot.addWidget(w2)
    assert w2.start.recent.item(0).data(Qt.UserRole) == str(sample_image)


def test_drop_files_opens_them(window, qtbot, sample_image):
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(sample_image))])
    ev = QDropEvent(QPointF(50, 50), Qt.CopyAction, md, Qt.LeftButton, Qt.NoModifier)
    window.dropEvent(ev)
    assert window.tabs.count() == 1
    wait_ready(qtbot, window.current_tab())


def test_standard_shortcuts(window):
    assert window.act_open.shortcut() == QKeySequence(QKeySequence.Open)
    assert window.act_save.shortcut() == QKeySequence(QKeySequence.Save)
    assert window.act_quit.shortcut() == QKeySequence(QKeySequence.Quit)
    assert window.act_undo.shortcut() == QKeySequence(QKeySequence.Undo)
    assert window.act_find.shortcut() == QKeySequence(QKeySequence.Find)
    assert window.act_edit.shortcut() == QKeySequence("Ctrl+E")
    assert window.act_goto.shortcut() == QKeySequence("Ctrl+G")
    assert window.act_new.shortcut() == QKeySequence(QKeySequence.New)


def test_enable_editing_changes_the_title(window, qtbot, sample_image):
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    window.act_edit.trigger()
    assert tab.document.writable
    assert "editing" in window.windowTitle()
    window.act_edit.trigger()
    assert "read-only" in window.windowTitle()


def test_header_click_asks_for_the_file_bytes(window, qtbot, sample_image):
    tab = window.open_path(str(sample_image))
    row = tab.header_model.find("l1_table_offset")
    idx = tab.header_model.index(row, 0)
    with qtbot.waitSignal(tab.showFileBytes, timeout=2000) as sig:
        tab.header_panel.view.clicked.emit(idx)
    assert sig.args == [40, 8]
    assert idx.data(OffsetRole) == (40, 8)
    wait_ready(qtbot, tab)


def test_goto_guest_offset_in_the_tree(window, qtbot, sample_image):
    tab = window.open_path(str(sample_image))
    panel = tab.table_panel
    panel.jump.setText("32M")
    panel.jump.returnPressed.emit()
    cur = panel.view.currentIndex()
    host = next(e for e in qemu.qemu_map(sample_image) if e["start"] == 32 << 20)["offset"]
    assert int(cur.siblingAtColumn(3).data(), 16) == host
    panel.jump.setText("nonsense")
    panel.jump.returnPressed.emit()
    assert not panel.status.isHidden()
    wait_ready(qtbot, tab)


def test_excepthook_shows_a_dialog_and_logs(qtbot, tmp_path, monkeypatch):
    got = []
    dialogs.set_hook(lambda title, text, details: got.append((title, text, details)))
    hook = dialogs.ExceptHook()
    path = dialogs.setup_logging()
    try:
        raise ValueError("boom")
    except ValueError:
        hook.handle(*sys.exc_info())
    qtbot.waitUntil(lambda: len(got) == 1, timeout=2000)
    assert got[0][0] == "Unexpected error" and "ValueError: boom" in got[0][1]
    assert "Traceback" in got[0][2]              # only in the details
    # from another thread: delivered to the GUI thread
    t = threading.Thread(target=lambda: hook.handle(RuntimeError, RuntimeError("bg"), None))
    t.start()
    t.join()
    qtbot.waitUntil(lambda: len(got) == 2, timeout=2000)
    assert "RuntimeError: bg" in got[1][1]
    assert path is not None and "ValueError: boom" in path.read_text()
    import logging
    for h in list(logging.getLogger("qcow2view").handlers):
        if getattr(h, "baseFilename", None) == str(path):
            logging.getLogger("qcow2view").removeHandler(h)
            h.close()


def test_new_image_opens_the_dialog(window, qtbot):
    window.act_new.trigger()
    from PySide6.QtWidgets import QApplication, QDialog
    dlgs = [w for w in QApplication.topLevelWidgets() if isinstance(w, QDialog)
            and w.isVisible() and not isinstance(w, QMessageBox)]
    assert dlgs or dialogs.open_message_boxes()
    for d in dlgs:
        d.reject()


def test_first_run_opens_the_demo_image(window, qtbot, sample_image):
    from types import SimpleNamespace
    from qcow2view.app import open_initial
    open_initial(window, SimpleNamespace(images=[], demo=False), first_run=False)
    assert window.tabs.count() == 0                      # not the first run: start page
    open_initial(window, SimpleNamespace(images=[], demo=False), first_run=True)
    assert window.tabs.count() == 1
    tab = window.current_tab()
    assert tab.document.name.endswith(".qcow2")
    assert qemu.info(tab.document.path)["format"] == "qcow2"
    wait_ready(qtbot, tab)
    window.close_all()
    open_initial(window, SimpleNamespace(images=[str(sample_image)], demo=False),
                 first_run=True)
    assert [t.document.name for t in window.tabs_list()] == ["sample.qcow2"]
    wait_ready(qtbot, window.current_tab())
