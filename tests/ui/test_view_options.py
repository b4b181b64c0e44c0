"""``--view`` and ``--goto``: the window opens on the asked tab at the asked guest offset,
with or without ``--screenshot``."""

from __future__ import annotations

import pytest

import qemu
from gui_fixtures import run_app
from qcow2view.app import open_window
from qcow2view.cli import VIEWS, _gui_parser
from qcow2view.model.table_tree_model import GuestOffsetRole
from qcow2view.ui.imagetab import ImageTab

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def scattered(tmp_path):
    """8 MiB, 64 KiB clusters, written back to front so guest and host order differ;
    the first MiB is left to a backing file."""
    base = qemu.create(tmp_path / "base.qcow2", "8M")
    qemu.qemu_io(base, "write -P 0x11 0 1M")
    p = qemu.create(tmp_path / "scattered.qcow2", "8M", backing=str(base))
    qemu.qemu_io(p, *(f"write -P {0x20 + i} {off}M 64k"
                      for i, off in enumerate((6, 4, 2, 1))))
    return p


@pytest.fixture
def launch(qtbot):
    windows = []

    def run(*argv):
        from PySide6.QtWidgets import QApplication
        win, why = open_window(QApplication.instance(), _gui_parser().parse_args(
            [str(a) for a in argv]))
        qtbot.addWidget(win)
        windows.append(win)
        return win, why
    yield run
    for w in windows:
        w.close_all()


def _ready(qtbot, tab) -> None:
    qtbot.waitUntil(lambda: tab.ready, timeout=30000)


def test_the_command_line_names_every_pane():
    assert VIEWS == ImageTab.PANES


@pytest.mark.parametrize("view", VIEWS)
def test_view_opens_the_window_on_that_tab(launch, qtbot, scattered, view):
    win, why = launch(scattered, "--view", view)
    assert why is None
    tab = win.current_tab()
    assert tab.views.currentWidget() is tab.pane(view)
    _ready(qtbot, tab)        # the map and the mapping plot replace their placeholders
    assert tab.views.currentWidget() is tab.pane(view)


def test_goto_shows_the_offset_in_the_tree_the_hex_view_and_the_map(launch, qtbot,
                                                                      scattered):
    guest = 4 * MiB + 0x1234
    host = qemu.host_offset(scattered, guest)
    assert host is not None and host // (64 * KiB) != guest // (64 * KiB)
    win, why = launch(scattered, "--goto", hex(guest))
    assert why is None
    tab = win.current_tab()
    assert tab.views.currentWidget() is tab.hex_guest        # no --view: the bytes
    assert tab.hex_guest.view.cursor == guest
    assert f"offset {guest:#x}" in tab.hex_guest.inspector.text()
    assert tab.table_panel.view.currentIndex().data(GuestOffsetRole) == 4 * MiB
    _ready(qtbot, tab)
    assert tab.heatmap.selected == host // (64 * KiB)
    assert tab.heatmap.marker.isVisible()


def test_goto_with_view_map(launch, qtbot, scattered):
    win, why = launch(scattered, "--view", "map", "--goto", "LBA 4096")    # 2 MiB
    assert why is None
    tab = win.current_tab()
    _ready(qtbot, tab)
    assert tab.views.currentWidget() is tab.heatmap
    assert tab.heatmap.selected == qemu.host_offset(scattered, 2 * MiB) // (64 * KiB)
    assert tab.hex_guest.view.cursor == 2 * MiB


def test_goto_into_the_backing_file_marks_no_host_cluster(launch, qtbot, scattered):
    assert qemu.host_offset(scattered, 0x1b8) is None
    win, why = launch(scattered, "--view", "map", "--goto", "0x1b8")
    assert why is None
    tab = win.current_tab()
    _ready(qtbot, tab)
    assert tab.heatmap.selected is None and not tab.heatmap.marker.isVisible()
    assert tab.hex_guest.view.cursor == 0x1b8


@pytest.mark.parametrize("where, says", [("8M", "past the end"), ("nowhere", "expected an offset")])
def test_goto_outside_the_disk_is_refused(launch, scattered, where, says):
    _, why = launch(scattered, "--goto", where)
    assert why is not None and says in why and where in why



def test_screenshot_of_each_view_differs(tmp_path, scattered):
    from PySide6.QtGui import QImage
    shots = {}
    for view in ("map", "hex"):
        out = tmp_path / f"{view}.png"
        p = run_app(scattered, "--view", view, "--goto", "2M", "--screenshot", out,
                tmp_path=tmp_path)
        assert p.returncode == 0, p.stderr
        shots[view] = QImage(str(out))
        assert shots[view].width() >= 800
    assert shots["map"] != shots["hex"]


def test_screenshot_with_a_bad_goto_fails_cleanly(tmp_path, scattered):
    out = tmp_path / "shot.png"
    p = run_app(scattered, "--goto", "1T", "--screenshot", out, tmp_path=tmp_path)
    assert p.returncode == 2
    assert "--goto 1T" in p.stderr and "past the end" in p.stderr
    assert "Traceback" not in p.stderr and not out.exists()


def test_unknown_view_is_an_argument_error(tmp_path, scattered):
    p = run_app(scattered, "--view", "bogus", "--screenshot", tmp_path / "x.png", tmp_path=tmp_path)
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_the_hex_pane_keeps_its_tools_in_view(launch, qtbot, scattered):
    """One Enable editing / Save / Undo / Redo per window (the main toolbar's); the hex
    toolbar's own tools, offset mode included, fit the default window."""
    win, _ = launch(scattered, "--view", "hex")
    win.resize(1400, 860)
    tab = win.current_tab()
    ed = tab.hex_guest
    qtbot.waitUntil(lambda: ed.toolbar.width() > 0 and ed.mode_combo.isVisible())
    assert ed.toolbar.sizeHint().width() <= ed.toolbar.width()
    for a in (ed.act_edit, ed.act_save, ed.act_undo, ed.act_redo):
        assert a not in ed.toolbar.actions()
    assert win.act_edit in win.toolbar.actions()
    assert not ed.act_revert.isVisible()             # nothing to revert while read-only
    win.act_edit.trigger()
    assert tab.document.writable and ed.act_revert.isVisible()
    win.act_edit.trigger()
