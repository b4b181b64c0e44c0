"""The L1/L2 tree shows the mappings qemu-img map reports, and loads lazily."""

from __future__ import annotations

import pytest

import qemu
from qcow2view.engine import open_image
from qcow2view.model.table_tree_model import (BATCH, COL_FLAGS, COL_HOST, COL_REFCOUNT,
                                              EntryOffsetRole, GuestOffsetRole, TableTreeModel)


@pytest.fixture
def tree(sample_image):
    img = open_image(sample_image)
    m = TableTreeModel()
    m.set_image(img)
    yield m
    img.close()


def test_modeltester(qtmodeltester, tree):
    qtmodeltester.check(tree)


def test_roots(tree, sample_image):
    names = [tree.index(r, 0).data() for r in range(tree.rowCount())]
    assert names[0] == "Active L1 table"
    assert names[-1] == "Refcount table"
    snaps = qemu.info(sample_image)["snapshots"]
    assert len(names) == 2 + len(snaps)
    assert snaps[0]["name"] in names[1]


def test_entries_map_what_qemu_img_map_says(tree, sample_image):
    data = [e for e in qemu.qemu_map(sample_image) if e["data"]]
    assert data
    for e in data:
        for off in range(e["start"], e["start"] + e["length"], 65536):
            idx = tree.index_for_guest(off)
            assert idx.isValid()
            assert idx.data(GuestOffsetRole) == off
            host = idx.siblingAtColumn(COL_HOST).data()
            assert int(host, 16) == e["offset"] + (off - e["start"])
            assert "data" in idx.siblingAtColumn(COL_FLAGS).data()
    zero = [e for e in qemu.qemu_map(sample_image) if e["zero"] and e["present"]]
    idx = tree.index_for_guest(zero[0]["start"])
    assert idx.siblingAtColumn(COL_FLAGS).data().startswith("zero")


def test_copied_and_refcount_after_snapshot(tree):
    rewritten = tree.index_for_guest(0)           # written again after the snapshot
    shared = tree.index_for_guest(65536)          # still shared with the snapshot
    assert "COPIED" in rewritten.siblingAtColumn(COL_FLAGS).data()
    assert rewritten.siblingAtColumn(COL_REFCOUNT).data() == "1"
    assert "COPIED" not in shared.siblingAtColumn(COL_FLAGS).data()
    assert shared.siblingAtColumn(COL_REFCOUNT).data() == "2"


def test_l2_is_read_only_when_expanded(tmp_path):
    p = qemu.create(tmp_path / "big.qcow2", "4G")       # 8 L1 entries, 8192-entry L2s
    qemu.qemu_io(p, "write 0 64k", "write 1G 64k")
    with open_image(p) as img:
        m = TableTreeModel()
        m.set_image(img)
        root = m.index(0, 0)
        assert m.rowCount(root) == 0 and m.canFetchMore(root)
        m.fetchMore(root)
        assert m.rowCount(root) == 8
        assert m.tables_read == 0                   # no L2 read yet
        l1 = m.index(0, 0, root)
        assert m.hasChildren(l1)
        assert m.rowCount(l1) == 0 and m.tables_read == 0
        m.fetchMore(l1)
        assert m.tables_read == 1
        assert m.rowCount(l1) == BATCH               # one batch of the 8192 entries
        while m.canFetchMore(l1):
            m.fetchMore(l1)
        assert m.rowCount(l1) == 8192
        assert not m.hasChildren(m.index(1, 0, root))   # no L2 table there
        assert m.hasChildren(m.index(2, 0, root))       # 1G has one
        assert m.tables_read == 1


def test_allocated_only_filter(tmp_path, qtmodeltester):
    p = qemu.create(tmp_path / "f.qcow2", "2G")
    qemu.qemu_io(p, "write 0 64k", "write 5M 64k", "write 1G 64k")
    with open_image(p) as img:
        m = TableTreeModel()
        m.set_image(img)
        m.set_allocated_only(True)
        qtmodeltester.check(m)
        root = m.index(0, 0)
        m.fetchMore(root)
        assert m.rowCount(root) == 2                 # L1 entries with an L2 table
        l1 = m.index(0, 0, root)
        m.fetchMore(l1)
        guests = [m.index(r, 0, l1).data(GuestOffsetRole) for r in range(m.rowCount(l1))]
        assert guests == [e["start"] for e in qemu.qemu_map(p) if e["data"]
                          and e["start"] < 512 << 20]
        # the jump still finds an allocated entry while filtered
        assert m.index_for_guest(1 << 30).data(GuestOffsetRole) == 1 << 30


def test_entry_offset_lookup_roundtrip(tree):
    idx = tree.index_for_guest(32 << 20)
    off = idx.data(EntryOffsetRole)
    again = tree.index_for_entry_offset(off)
    assert again == idx


def test_refcount_blocks(tree):
    rt = tree.index(tree.rowCount() - 1, 0)
    tree.fetchMore(rt)
    blk = tree.index(0, 0, rt)
    assert tree.hasChildren(blk)
    tree.fetchMore(blk)
    # cluster 0 (the header) has refcount 1
    assert tree.index(0, 2, blk).data() == "1"


def test_problem_marker_on_a_leaked_cluster(sample_image, make_leak, qtbot):
    from qcow2view.model.document import ImageDocument
    from qcow2view.model.table_tree_model import COL_PROBLEM
    leak = make_leak(sample_image)
    assert qemu.check(sample_image)[1]["leaks"] == 1
    d = ImageDocument(sample_image)
    with qtbot.waitSignal(d.mapsReady, timeout=30000):
        d.load()
    m = TableTreeModel()
    m.set_image(d.image)
    m.set_analysis(d.host_map.refcounts, d.check_result.findings)
    rt = m.root_index("refcount_table")
    m.fetchMore(rt)
    blk = m.index(0, 0, rt)
    while m.rowCount(blk) <= leak and m.canFetchMore(blk):
        m.fetchMore(blk)
    assert m.index(leak, 2, blk).data() == "1"           # the refcount on disk
    assert "leak" in m.index(leak, COL_PROBLEM, blk).data()
    assert m.index(0, COL_PROBLEM, blk).data() == ""     # the header cluster is fine
    d.close()


def test_unallocated_entries_of_an_overlay_say_the_backing_file_shows(tmp_path):
    """Where qemu-img map says the data comes from the backing file, the entry says so;
    without a backing file the same entry reads as plain unallocated (zeros)."""
    base = qemu.create(tmp_path / "base.qcow2", "4M")
    qemu.qemu_io(base, "write -P 1 0 1M")
    top = qemu.create(tmp_path / "top.qcow2", "4M", backing=str(base))
    qemu.qemu_io(top, "write -P 2 64k 64k")
    lone = qemu.create(tmp_path / "lone.qcow2", "4M")
    qemu.qemu_io(lone, "write -P 2 64k 64k")
    depth = {e["start"]: e["depth"] for e in qemu.qemu_map(top)}
    assert depth[0] == 1                                   # guest 0 comes from base.qcow2
    for path, want in ((top, "from backing"), (lone, "unallocated")):
        with open_image(path) as img:
            m = TableTreeModel()
            m.set_image(img)
            assert m.index_for_guest(0).siblingAtColumn(COL_FLAGS).data() == want
            assert m.index_for_guest(65536).siblingAtColumn(COL_FLAGS).data().startswith("data")
