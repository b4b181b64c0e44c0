"""The table tree in its real view: batches load as the view scrolls, not on every relayout."""

from __future__ import annotations

import pytest

import qemu
from qcow2view.engine import open_image
from qcow2view.model.table_tree_model import BATCH, TableTreeModel
from qcow2view.ui.tablepanel import TablePanel

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")


@pytest.fixture
def panel(qtbot, tmp_path):
    p = qemu.create(tmp_path / "t.qcow2", "4G")       # 8 L1 entries, 8192-entry L2 tables
    qemu.qemu_io(p, "write 0 64k", "write 1G 64k", "write 2G 64k")
    img = open_image(p)
    model = TableTreeModel()
    w = TablePanel(model)
    qtbot.addWidget(w)
    w.resize(900, 600)
    w.show()
    model.set_image(img)
    qtbot.waitExposed(w)
    yield w
    w.close()
    img.close()


def _settle(qtbot) -> None:
    for _ in range(5):
        qtbot.wait(10)


def test_expanding_loads_one_batch_however_often_the_view_relays_out(panel, qtbot):
    m, view = panel.model, panel.view
    root = m.index(0, 0)
    first = m.index(0, 0, root)                  # opened at launch
    assert view.isExpanded(first) and m.rowCount(first) == BATCH
    l1 = m.index(2, 0, root)                     # the L2 table mapping 1G
    view.expand(l1)
    _settle(qtbot)
    view.expand(m.index(4, 0, root))             # another L2 table: the view relays out
    _settle(qtbot)
    assert m.rowCount(l1) == BATCH
    assert m.rowCount(first) == BATCH


def test_scrolling_to_the_end_of_a_batch_loads_the_next(panel, qtbot):
    m, view = panel.model, panel.view
    root = m.index(0, 0)
    for r in range(m.rowCount(root)):            # only the last L2 table open
        view.collapse(m.index(r, 0, root))
    l1 = m.index(4, 0, root)                     # the L2 table mapping 2G
    view.expand(l1)
    _settle(qtbot)
    assert m.rowCount(l1) == BATCH
    view.scrollToBottom()
    qtbot.waitUntil(lambda: m.rowCount(l1) > BATCH, timeout=2000)
    assert m.rowCount(l1) <= 2 * BATCH



def test_paced_model_passes_the_model_tester(panel, qtmodeltester):
    qtmodeltester.check(panel.model)
