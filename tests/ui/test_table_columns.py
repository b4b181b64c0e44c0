"""The Tables pane at the window's default size: entry, flags, host offset and the whole
guest range side by side without scrolling; names cut short are whole in a tooltip."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QEvent
from PySide6.QtGui import QHelpEvent
from PySide6.QtWidgets import QApplication, QToolTip

import qemu
from qcow2view.model.table_tree_model import COL_FLAGS, COL_GUEST, COL_HOST, COL_INDEX
from qcow2view.ui.mainwindow import MainWindow

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")

SNAPSHOT = "before-the-kernel-upgrade-of-2026"


@pytest.fixture
def image(tmp_path):
    """1 GiB with data near its end (the longest guest ranges) and a snapshot with a
    long name (a long root label)."""
    p = qemu.create(tmp_path / "wide.qcow2", "1G")
    qemu.qemu_io(p, "write -P 1 0 64k", "write -c -P 2 1M 64k", "write -P 3 1023M 64k")
    qemu.qemu_img("snapshot", "-c", SNAPSHOT, p)
    return p


@pytest.fixture
def tab(qtbot, image):
    w = MainWindow(remember=False)
    qtbot.addWidget(w)
    w.resize(1600, 960)            # the --screenshot size
    w.show()
    t = w.open_path(str(image))
    qtbot.waitExposed(w)
    qtbot.waitUntil(lambda: t.document.analysis is not None and not t.document.busy,
                    timeout=30000)
    yield t
    w.close_all()


def _right_edge(view, col) -> int:
    hh = view.header()
    return hh.sectionViewportPosition(col) + hh.sectionSize(col)


def _fits(view, index) -> bool:
    text = index.data()
    return view.fontMetrics().horizontalAdvance(text) + 6 <= view.header().sectionSize(
        index.column())


def test_guest_range_is_in_view_at_the_default_size(tab, qtbot):
    view = tab.table_panel.view
    hh = view.header()
    cols = (COL_INDEX, COL_FLAGS, COL_HOST, COL_GUEST)
    assert [hh.visualIndex(c) for c in cols] == [0, 1, 2, 3]
    assert _right_edge(view, COL_GUEST) <= view.viewport().width()
    assert view.horizontalScrollBar().value() == 0
    # no guest range of the disk is cut: the last, and one of wide digits (the font is
    # proportional: "0x3888..." is wider than "0x3fff...")
    for offset, text in (((1 << 30) - 1, "0x3fff0000 – 0x3fffffff"),
                         (0x38880000, "0x38880000 – 0x3888ffff")):
        assert tab.table_panel.go_to_guest(offset)
        last = view.currentIndex().siblingAtColumn(COL_GUEST)
        assert last.data() == text
        assert _fits(view, last)
    assert _fits(view, last.siblingAtColumn(COL_INDEX).parent().siblingAtColumn(COL_HOST))
    # and the first rows' flags are whole too
    first = view.model().index(0, COL_FLAGS, view.model().index(0, 0, view.model().index(0, 0)))
    assert first.data().startswith("data") and _fits(view, first)


def test_columns_follow_the_pane_until_the_user_sizes_one(tab, qtbot):
    view = tab.table_panel.view
    hh = view.header()
    w = tab.splitter.sizes()
    tab.splitter.setSizes([w[0] - 100, w[1] + 100, w[2]])      # a wider pane
    qtbot.waitUntil(lambda: view.viewport().width() > 450)
    flags = hh.sectionSize(COL_FLAGS)
    assert _right_edge(view, COL_GUEST) <= view.viewport().width()
    hh.resizeSection(COL_FLAGS, flags + 40)                     # the user's choice...
    assert tab.table_panel.user_sized
    wide = view.viewport().width()
    w = tab.splitter.sizes()
    tab.splitter.setSizes([w[0] + 150, w[1] - 150, w[2]])
    qtbot.waitUntil(lambda: view.viewport().width() < wide - 100)
    assert hh.sectionSize(COL_FLAGS) == flags + 40             # ...is kept


def test_a_name_cut_short_is_whole_in_its_tooltip(tab, qtbot):
    view = tab.table_panel.view
    model = view.model()
    root = next(model.index(r, 0) for r in range(model.rowCount())
                if SNAPSHOT in model.index(r, 0).data())
    assert not _fits(view, root)
    rect = view.visualRect(root)
    pos = rect.center()
    QApplication.sendEvent(view.viewport(), QHelpEvent(
        QEvent.ToolTip, pos, view.viewport().mapToGlobal(pos)))
    qtbot.waitUntil(lambda: QToolTip.isVisible())
    assert QToolTip.text() == root.data()
    QToolTip.hideText()
    # a text that fits gets no tooltip of ours
    host = root.siblingAtColumn(COL_HOST)
    assert _fits(view, host)
    p = view.visualRect(host).center()
    QApplication.sendEvent(view.viewport(), QHelpEvent(
        QEvent.ToolTip, p, view.viewport().mapToGlobal(p)))
    assert not QToolTip.isVisible() or QToolTip.text() != host.data()
