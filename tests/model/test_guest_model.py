"""The Files tree over a GPT disk made by sgdisk + mkfs.vfat/mcopy + mkfs.ext4 -d."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QModelIndex, Qt

from guest.guestdisks import gpt_disk  # noqa: F401 - the session fixture, reused
from qcow2view.model.document import ImageDocument
from qcow2view.model.guest_model import (DIR, FILE, FS, NAME, NODE_ROLE, PART, SIZE,
                                         FilesModel)


@pytest.fixture
def contents(qtbot, gpt_disk):  # noqa: F811
    doc = ImageDocument(gpt_disk.qcow2)
    doc.load_header()
    c = doc.guest
    with qtbot.waitSignal(c.ready, timeout=30000):
        c.ensure()
    assert c.state == "ready"
    yield c
    doc.close()


def _walk(model, parent=QModelIndex()):
    while model.canFetchMore(parent):
        model.fetchMore(parent)
    for r in range(model.rowCount(parent)):
        i = model.index(r, 0, parent)
        yield i
        yield from _walk(model, i)


def test_tree_lists_partitions_filesystems_and_the_source_tree(contents, gpt_disk, qtmodeltester):  # noqa: F811,E501
    model = FilesModel(contents)
    qtmodeltester.check(model)
    nodes = [i.data(NODE_ROLE) for i in _walk(model)]
    parts = [n for n in nodes if n.kind == PART]
    assert [p.name for p in parts] == ["Partition 1: EFI", "Partition 2: root"]
    fss = [n for n in nodes if n.kind == FS]
    assert [n.name for n in fss] == ["vfat “EFI”", "ext4 “rootfs”"]
    ext = {n.path for n in nodes if n.kind in (DIR, FILE) and n.vol == fss[1].vol}
    # the oracle is the directory mkfs.ext4 -d was made from
    src = {"/" + str(p.relative_to(gpt_disk.src)) for p in gpt_disk.src.rglob("*")}
    assert src <= ext
    size = {n.path: n.file.info.size for n in nodes if n.kind == FILE and n.vol == fss[1].vol}
    assert size["/data/big.bin"] == (gpt_disk.src / "data/big.bin").stat().st_size


def test_filter_finds_a_name_anywhere_and_sorting_puts_big_files_first(contents, qtmodeltester):  # noqa: E501
    model = FilesModel(contents)
    model.set_filter("fstab")
    qtmodeltester.check(model)
    shown = [i.data(NODE_ROLE) for i in _walk(model)]
    files = [n.path for n in shown if n.kind == FILE]
    assert files == ["/etc/fstab", "/etc/fstab"]         # in the FAT and the ext4 tree
    model = FilesModel(contents)        # (Qt's tester fetches inside a reset: a new model)
    model.sort(SIZE, Qt.DescendingOrder)
    qtmodeltester.check(model)
    ext = next(i for i in _walk(model) if i.data(NODE_ROLE).kind == FS
               and "ext4" in i.data(NODE_ROLE).name)
    data = next(model.index(r, 0, ext) for r in range(model.rowCount(ext))
                if model.index(r, 0, ext).data() == "data")
    while model.canFetchMore(data):
        model.fetchMore(data)
    names = [model.index(r, NAME, data).data() for r in range(model.rowCount(data))]
    assert names[0] in ("big.bin", "hard")


def test_summary_names_extents_and_host_clusters(contents, qtbot, gpt_disk):  # noqa: F811
    doc = contents.document
    doc.start_analysis()
    qtbot.waitUntil(lambda: doc.analysis is not None and not doc.busy, timeout=30000)
    f = contents.resolve("2:/data/big.bin")[0]
    ranges = [(g, n) for _fo, g, n in f.info.extents]
    s = contents.summary(ranges, f.info.size, len(f.info.extents))
    assert s.text.startswith(f"1.4 MiB in {len(f.info.extents)} extent")
    assert "host cluster" in s.text
    assert len(s.host_clusters) >= 1 and s.first_offset == f.info.extents[0][1]
    assert contents.read_file(f) == (gpt_disk.src / "data/big.bin").read_bytes()


def test_sorting_orders_rows_still_to_fetch(contents, gpt_disk, monkeypatch):  # noqa: F811
    """A directory is fetched in batches: sorted, the first batch already holds the
    largest files of the whole directory, not of the rows fetched so far."""
    import qcow2view.model.guest_model as gm
    monkeypatch.setattr(gm, "BATCH", 2)
    model = FilesModel(contents)
    model.sort(SIZE, Qt.DescendingOrder)
    ext = next(i for i in _walk(model) if i.data(NODE_ROLE).kind == FS
               and "ext4" in i.data(NODE_ROLE).name)
    model.fetchMore(ext)
    first = [model.index(r, 0, ext).data(NODE_ROLE) for r in range(model.rowCount(ext))]
    files = sorted((p for p in gpt_disk.src.iterdir() if p.is_file() and not p.is_symlink()),
                   key=lambda p: -p.stat().st_size)
    # directories first (by size as their entries say), then the largest files
    assert all(n.kind == DIR for n in first)
    while model.canFetchMore(ext):
        model.fetchMore(ext)
    rows = [model.index(r, 0, ext).data(NODE_ROLE) for r in range(model.rowCount(ext))]
    got = [n.name for n in rows if n.kind == FILE and n.file.info.type == "file"]
    assert got == [p.name for p in files]


def test_first_rows_come_before_the_index_and_a_filter_waits_for_it(qtbot, gpt_disk, held_index, qtmodeltester):  # noqa: F811,E501
    """While the index builds (held here until released) the tree shows the first look:
    partitions, filesystems, the root directories; a deeper directory says it is being
    read; a filter says the index is building, never an empty result."""
    from qcow2view.model.guest_model import NOTE, READING
    gate = held_index
    doc = ImageDocument(gpt_disk.qcow2)
    doc.load_header()
    c = doc.guest
    model = FilesModel(c)
    try:
        with qtbot.waitSignal(c.previewed, timeout=30000):
            c.ensure()
        assert c.state == "building" and c.index is None and model.previewing
        checked = FilesModel(c)
        qtmodeltester.check(checked)
        for sig in (c.reset, c.ready, c.previewed):     # (Qt's tester fetches inside a
            sig.disconnect(checked._rebuild)            # reset: no more resets for it;
        c.dirs.read.disconnect(checked._dir_read)       # nor rows inserted, the same)
        nodes = [i.data(NODE_ROLE) for i in _walk(model)]
        assert [n.name for n in nodes if n.kind == PART] == ["Partition 1: EFI",
                                                             "Partition 2: root"]
        ext = next(n for n in nodes if n.kind == FS and n.name.startswith("ext4"))
        top = [n for n in ext.children if n.kind in (DIR, FILE)]
        # the oracle: the tree mkfs.ext4 -d was made from (and mkfs's lost+found)
        assert {n.path for n in top} == \
            {"/" + p.name for p in gpt_disk.src.iterdir()} | {"/lost+found"}
        etc = next(n for n in top if n.path == "/etc")
        assert [(n.kind, n.name) for n in etc.children] == [(NOTE, READING)]
        model.set_filter("fstab")
        shown = [i.data(NODE_ROLE) for i in _walk(model)]
        assert [n.kind for n in shown] == [NOTE] and "building the index" in shown[0].name
        assert model.matches == 0
    finally:
        gate.set()
    qtbot.waitUntil(lambda: c.state == "ready", timeout=30000)
    assert not model.previewing
    model.set_filter("fstab")
    files = [i.data(NODE_ROLE).path for i in _walk(model) if i.data(NODE_ROLE).kind == FILE]
    assert files == ["/etc/fstab", "/etc/fstab"]
    doc.close()


def test_cancel_stops_the_build_and_read_again_starts_it(qtbot, gpt_disk, monkeypatch):  # noqa: F811,E501
    import time

    import qcow2view.model.guest_files as gf
    real = gf.build_index

    def slow(image, progress):
        for i in range(1000):          # a big disk: progress until the user cancels
            if progress(i, 1000) is False:
                raise gf.Cancelled("cancelled")
            time.sleep(0.01)
        return real(image, progress)
    monkeypatch.setattr(gf, "build_index", slow)
    doc = ImageDocument(gpt_disk.qcow2)
    doc.load_header()
    c = doc.guest
    model = FilesModel(c)
    with qtbot.waitSignal(c.ready, timeout=30000):
        c.ensure()
        qtbot.waitUntil(lambda: c.busy)
        c.cancel()
    assert c.state == "cancelled" and c.index is None
    assert model.index(0, 0).data() == "cancelled"         # a note, not a problem
    c.ensure()                          # cancelled stays cancelled until asked again
    assert c.state == "cancelled"
    monkeypatch.setattr(gf, "build_index", real)
    with qtbot.waitSignal(c.ready, timeout=30000):
        c.rebuild()                     # "Read again"
    assert c.state == "ready" and c.index is not None
    doc.close()


def test_an_unreadable_disk_says_why(qtbot, tmp_path, gpt_disk):  # noqa: F811
    """An overlay whose backing file is gone: the tree says so, naming the file."""
    import shutil

    from qemu import qemu_img
    base = tmp_path / "gone.qcow2"
    shutil.copyfile(gpt_disk.qcow2, base)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top)
    base.unlink()
    doc = ImageDocument(top)
    doc.load_header()
    with qtbot.waitSignal(doc.guest.ready, timeout=30000):
        doc.guest.ensure()
    model = FilesModel(doc.guest)
    disk = model.index(0, 0)
    notes = [model.index(r, 0, disk).data() for r in range(model.rowCount(disk))]
    assert any(n.startswith("⚠ unreadable: ") and "gone.qcow2" in n for n in notes), notes
    doc.close()
