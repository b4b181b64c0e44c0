"""Huge tables are shown in pages (issue 16 item 2): going to a guest offset of an image
with a 4M-entry L1 table opens only the path to its entry, not four million rows."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

import qemu
from qcow2view.engine import open_image
from qcow2view.engine.create import create_image
from qcow2view.model import table_nodes
from qcow2view.model.table_tree_model import (COL_GUEST, COL_HOST, COL_INDEX, PAGE_KIND,
                                              GuestOffsetRole, HostOffsetRole, KindRole,
                                              TableTreeModel)
from qcow2view.ui.tablepanel import TablePanel

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")
G = 1 << 30


def _nodes(model: TableTreeModel) -> int:
    """Container nodes the model holds (roots, pages, L1 and refcount table entries)."""
    todo, n = [model._root], 0
    while todo:
        node = todo.pop()
        n += 1
        todo.extend(node.kids.values())
    return n


@pytest.fixture(scope="module")
def l1max(tmp_path_factory):
    """``qemu-img create -o cluster_size=512 l1max.qcow2 128G``: the largest L1 table
    QEMU allows (4M entries), with one cluster written at 127G."""
    # made by our create (qemu-img check and info agree with it, see test_create): 0.4 s where
    # qemu-img takes 10 s writing the 32 MiB L1 table; qemu-io writes the cluster
    p = tmp_path_factory.mktemp("l1max") / "l1max.qcow2"
    create_image(p, "128G", cluster_size=512)
    qemu.qemu_io(p, "write -P 0x5a 127G 512")
    return p


def _panel(qtbot, path):
    img = open_image(path)
    model = TableTreeModel()
    w = TablePanel(model)
    qtbot.addWidget(w)
    w.resize(900, 600)
    w.show()
    model.set_image(img)
    qtbot.waitExposed(w)
    return w, img


def test_go_to_127g_on_the_largest_l1_table(qtbot, l1max):
    w, img = _panel(qtbot, l1max)
    try:
        before = _nodes(w.model)
        w.jump.setText("127G")              # the tables' jump box (--goto, Ctrl+G and a
        w.jump.returnPressed.emit()         # guest-map click take the same road)
        idx = w.view.currentIndex()
        assert idx.data(KindRole) == "l2" and idx.data(GuestOffsetRole) == 127 * G
        assert idx.data(HostOffsetRole) == qemu.host_offset(l1max, 127 * G)
        page, root = idx.parent().parent(), idx.parent().parent().parent()
        assert page.data(KindRole) == PAGE_KIND and root.data(KindRole) == "l1_table"
        first = 127 * G // (512 * 64) // table_nodes.PAGE * table_nodes.PAGE
        assert page.data() == f"entries {first:,} – {first + table_nodes.PAGE - 1:,}"
        # bounded by the pages, not by the table: a node per container on the path
        assert _nodes(w.model) - before <= 4
        assert w.model.rowCount(root) <= table_nodes.PAGE
        assert w.model.rowCount(page) <= table_nodes.PAGE
        assert w.view.isExpanded(page) and not w.status.isVisible()
    finally:
        w.close()
        img.close()


@pytest.fixture
def small_pages(monkeypatch):
    """Pages of 8 entries above 40: a 16 MiB image of 512-byte clusters (512 L1 entries,
    64-entry L2 tables) has pages at both levels and pages of pages."""
    monkeypatch.setattr(table_nodes, "PAGED_ABOVE", 40)
    monkeypatch.setattr(table_nodes, "PAGE", 8)


@pytest.fixture
def small(tmp_path):
    p = qemu.create(tmp_path / "small.qcow2", "16M", "cluster_size=512")
    qemu.qemu_io(p, "write -P 1 0 4k", "write -P 2 9M 512", "write -P 3 16383k 1k")
    return p


@pytest.mark.parametrize("allocated_only", [False, True])
def test_pages_pass_the_model_tester(small_pages, small, qtmodeltester, allocated_only):
    model = TableTreeModel()
    with open_image(small) as img:
        model.set_image(img)
        model.set_allocated_only(allocated_only)
        qtmodeltester.check(model)


def test_entries_in_pages_say_what_qemu_img_map_says(small_pages, small):
    model = TableTreeModel()
    with open_image(small) as img:
        model.set_image(img)
        for guest in (0, 9 << 20, (16 << 20) - 512):
            idx = model.index_for_guest(guest)
            assert idx.data(KindRole) == "l2" and idx.data(GuestOffsetRole) == guest
            assert idx.data(HostOffsetRole) == qemu.host_offset(small, guest)
            host_text = idx.siblingAtColumn(COL_HOST).data()
            assert host_text == f"{qemu.host_offset(small, guest):#x}"
            # back from its entry bytes to the same row, through the pages
            again = model.index_for_entry_offset(idx.data(Qt.UserRole + 1))
            assert again == idx
        # a page of pages: L1 entries 0-63 (64 > 8 x 8 would need a third level)
        root = model.root_index()
        model.fetchMore(root)
        top = model.index(0, 0, root)
        assert top.data(KindRole) == PAGE_KIND
        assert top.siblingAtColumn(COL_INDEX).data() == "entries 0 – 63"
        assert top.siblingAtColumn(COL_GUEST).data() == "0x0 – 0x1fffff"


def test_allocated_only_pages_count_what_they_show(small_pages, small):
    model = TableTreeModel()
    with open_image(small) as img:
        model.set_image(img)
        model.set_allocated_only(True)
        idx = model.index_for_guest(9 << 20)
        assert idx.data(GuestOffsetRole) == 9 << 20
        l1 = idx.parent()
        assert l1.data(KindRole) == "l1"
        # the L1 entries with an L2 table: 3 of 512, so no pages at that level
        assert l1.parent() == model.root_index()


def test_a_page_marks_the_problems_of_its_entries(small_pages, small):
    """A refcount of 0 on the L2 table of the L1 entry for 9M: the pages on the way to
    that entry say so (as the entry's own row does), the other pages do not."""
    from gui_fixtures import set_refcount
    with open_image(small) as img:
        l2_table = int(img.l1_table.entries[(9 << 20) // (512 * 64)]) & ((1 << 56) - 512)
    set_refcount(small, l2_table // 512, 0)
    model = TableTreeModel()
    with open_image(small) as img:
        model.set_image(img)
        findings = img.check().findings
        model.set_analysis(None, findings)
        assert [f.kind for f in findings] == ["copied_flag_wrong_l1", "refcount_zero"]
        l1 = model.index_for_guest(9 << 20)
        while l1.data(KindRole) != "l1":
            l1 = l1.parent()
        assert l1.siblingAtColumn(6).data().endswith("(+1)")   # both, on the entry's row
        sub, page = l1.parent(), l1.parent().parent()
        assert sub.data(KindRole) == page.data(KindRole) == PAGE_KIND
        for p in (sub, page):
            assert p.siblingAtColumn(6).data() == "⚠ 2 in these entries"
        root = model.root_index()
        assert model.index(0, 6, root).data() == ""
