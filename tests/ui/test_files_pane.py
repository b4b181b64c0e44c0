"""The Files pane and Go to file, driven as a user would, judged by the real tools:
debugfs reads the edited file, e2fsck -fn and qemu-img check are clean, the backing
file is untouched.  The disk is the guest tests' GPT fixture (sgdisk, mkfs.vfat +
mcopy, mkfs.ext4 -d, qemu-img convert) with a qcow2 overlay on top."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication
from qemu import check, host_offset, qemu_img, to_raw

from guest.guestdisks import debugfs, gpt_disk, tool  # noqa: F401 - the session fixture
from gui_fixtures import run_app, wait_ready
from qcow2view.model.guest_model import FILE, NODE_ROLE
from qcow2view.ui.filespanel import FilesPanel
from qcow2view.ui.gotofile import GotoFileDialog

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")


@pytest.fixture
def overlay(tmp_path, gpt_disk):  # noqa: F811
    base = tmp_path / "base.qcow2"
    shutil.copyfile(gpt_disk.qcow2, base)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top)
    return base, top


def _files_ready(qtbot, tab):
    c = tab.document.guest
    qtbot.waitUntil(lambda: c.state == "ready", timeout=30000)
    return c


def _goto_dialog(tab) -> GotoFileDialog:
    """The Go to file dialog on show (an earlier one may await its deferred delete)."""
    return [d for d in tab.findChildren(GotoFileDialog) if d.isVisible()][-1]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _partition(raw: bytes, gpt_disk, n: int, out):  # noqa: F811
    start = gpt_disk.starts[n]
    out.write_bytes(raw[start:start + gpt_disk.parts[n].stat().st_size])
    return out


def test_keyboard_path_edits_a_file_in_place(qtbot, window, overlay, gpt_disk, tmp_path):  # noqa: F811,E501
    base, top = overlay
    before = _sha(base)
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    contents = _files_ready(qtbot, tab)
    index_before = contents.index
    hexed = tab.pane("hex")

    qtbot.keyClick(window, Qt.Key_E, Qt.ControlModifier)                 # Enable editing
    qtbot.waitUntil(lambda: tab.document.writable)
    qtbot.keyClick(window, Qt.Key_G, Qt.ControlModifier | Qt.ShiftModifier)   # Go to file
    dlg = _goto_dialog(tab)
    assert dlg is not None and dlg.isVisible()
    qtbot.keyClicks(dlg.edit, "2:/etc/hostname")
    qtbot.keyClick(dlg.edit, Qt.Key_Return)
    f = contents.resolve("2:/etc/hostname")[0]
    first = f.info.extents[0][1]
    assert QApplication.focusWidget() is hexed.view
    assert hexed.view.cursor == first
    qtbot.keyClicks(hexed.view, "47")                                    # 'g' -> 'G'
    qtbot.keyClick(hexed.view, Qt.Key_S, Qt.ControlModifier)             # Save
    qtbot.waitUntil(lambda: not hexed.doc.modified)
    # the index is read again from the saved file
    qtbot.waitUntil(lambda: contents.state == "ready" and contents.index is not index_before,
                    timeout=30000)
    window.close_all()                                                   # the locks go

    raw = to_raw(top, tmp_path / "top.raw")
    part = _partition(raw, gpt_disk, 2, tmp_path / "p2.img")
    assert debugfs(part, "cat /etc/hostname") == "Guest-host\n"
    fsck = subprocess.run([tool("e2fsck"), "-fn", part], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    rc, data = check(top)
    assert rc == 0 and not data.get("corruptions") and not data.get("leaks"), data
    assert _sha(base) == before                                          # backing untouched


def test_files_pane_finds_selects_lights_and_saves(qtbot, window, overlay, gpt_disk, tmp_path):  # noqa: F811,E501
    base, top = overlay
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    assert tab.show_pane("files")
    panel: FilesPanel = tab.pane("files")
    _files_ready(qtbot, tab)
    qtbot.keyClicks(panel.filter, "fstab")
    qtbot.waitUntil(lambda: panel.model.matches == 2)          # the FAT's and the ext4's
    node = panel.current_node()
    assert node.kind == FILE and node.path == "/etc/fstab"
    # the overlay maps nothing itself: every cluster comes from the backing file
    assert "in 1 extent, 0 host clusters" in panel.summary_label.text()
    assert "from backing file base.qcow2" in panel.summary_label.text()
    layer = panel.map_layer
    assert layer is not None and layer.active and tab.heatmap.mode() == "kind"
    tab.heatmap.set_mode("guest")
    lit = layer.cells()
    assert 0 < lit.sum() < lit.size                            # its clusters lit, others dim
    panel.copy_path(node)
    assert QGuiApplication.clipboard().text() == "/etc/fstab"
    assert panel.show_in_hex(node)                             # the context menu's first
    assert tab.views.currentWidget() is tab.pane("hex")
    assert tab.pane("hex").view.cursor == node.file.info.extents[0][1]
    tab.show_pane("files")
    out = tmp_path / "copy"
    FilesPanel.ask_save_path = staticmethod(lambda name: str(out))
    try:
        assert panel.save_copy(node) == str(out)
    finally:
        FilesPanel.ask_save_path = None
    src = gpt_disk.src if node.vol == 1 else gpt_disk.extra["fat_src"]
    assert out.read_bytes() == (src / "etc/fstab").read_bytes()
    # inline data (a fast symlink's target lives in its inode) is refused, with the reason
    qtbot.keyClick(window, Qt.Key_G, Qt.ControlModifier | Qt.ShiftModifier)
    dlg = _goto_dialog(tab)
    qtbot.keyClicks(dlg.edit, "2:/link")
    qtbot.keyClick(dlg.edit, Qt.Key_Return)
    assert dlg.isVisible() and "inline" in dlg.note.text()
    dlg.edit.setText("/etc/fstab")
    qtbot.keyClick(dlg.edit, Qt.Key_Return)
    assert "2 filesystems" in dlg.note.text() and "1:/etc/fstab" in dlg.note.text()
    dlg.reject()


def test_goto_file_on_the_command_line(overlay, tmp_path):
    _base, top = overlay
    r = run_app(top, "--goto-file", "/etc/nope", "--screenshot", tmp_path / "x.png",
                tmp_path=tmp_path)
    assert r.returncode == 2 and "/etc/nope" in r.stderr
    r = run_app(top, "--view", "files", "--goto-file", "2:/etc/fstab", "--screenshot",
                tmp_path / "f.png", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f.png").stat().st_size > 10000


def test_map_hover_names_the_file_a_cluster_holds(qtbot, window, gpt_disk):  # noqa: F811
    tab = window.open_path(str(gpt_disk.qcow2))
    wait_ready(qtbot, tab)
    contents = _files_ready(qtbot, tab)
    f = contents.resolve("2:/data/big.bin")[0]
    fo, g0, n = f.info.extents[0]
    cs = tab.document.image.cluster_size
    g = (g0 // cs + 2) * cs                     # a cluster wholly inside the file
    assert g + cs <= g0 + n
    # where qemu-img map puts that guest byte is the host cluster to hover
    import qemu
    host = qemu.host_offset(gpt_disk.qcow2, g)
    pic = tab.heatmap.picture
    r, c = pic.cell_of(host // cs)
    text = tab.allocation.describe(pic, r, c)
    first = text.splitlines()[0]
    assert first.startswith(f"host cluster {host // cs:#x}: guest {g:#x}, partition 2 (ext4), ")
    assert first.endswith(f" +{fo + g - g0:#x}")
    assert "/data/big.bin +" in first or "/data/hard +" in first          # hard links


def test_changed_files_of_an_overlay_largest_first(qtbot, window, overlay, gpt_disk):  # noqa: F811,E501
    _base, top = overlay
    src = (gpt_disk.src / "data/big.bin").read_bytes()
    host = (gpt_disk.src / "etc/fstab").read_bytes()
    # qemu-io writes into the overlay: 8 KiB of big.bin and 3 bytes of /etc/fstab
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    contents = _files_ready(qtbot, tab)
    big = contents.resolve("2:/data/big.bin")[0].info.extents[0][1]
    fstab = contents.resolve("2:/etc/fstab")[0].info.extents[0][1]
    window.close_all()
    import qemu
    qemu.qemu_io(top, f"write -P 0x41 {big + 4096} 8192", f"write -P 0x23 {fstab} 3")
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    _files_ready(qtbot, tab)
    tab.show_pane("files")
    panel: FilesPanel = tab.pane("files")
    assert panel.show_what.itemText(1) == "Changed vs backing file base.qcow2"
    panel.show_changes(None)
    qtbot.waitUntil(lambda: panel.model.changes is not None, timeout=30000)
    rows = [n for n in (i.data(NODE_ROLE) for i in _all(panel.model)) if n.kind == FILE]
    # the oracle: the bytes that differ from what mkfs.ext4 -d copied in
    want_big = sum(b != 0x41 for b in src[4096:4096 + 8192])
    want_fstab = sum(b != 0x23 for b in host[:3])
    got = {n.path: panel.model.bytes_changed(n) for n in rows}
    assert [n.path for n in rows] in (["/data/big.bin", "/etc/fstab"],
                                      ["/data/hard", "/etc/fstab"])
    assert sorted(got.values()) == sorted([want_big, want_fstab])


def _all(model, parent=None):
    from PySide6.QtCore import QModelIndex
    parent = parent or QModelIndex()
    for r in range(model.rowCount(parent)):
        i = model.index(r, 0, parent)
        yield i
        yield from _all(model, i)


def test_hex_inspector_names_partition_block_and_file(qtbot, window, gpt_disk):  # noqa: F811
    tab = window.open_path(str(gpt_disk.qcow2))
    wait_ready(qtbot, tab)
    contents = _files_ready(qtbot, tab)
    f = contents.resolve("2:/etc/fstab")[0]
    g = f.info.extents[0][1] + 0x10
    hexed = tab.pane("hex")
    tab.show_pane("hex")
    hexed.view.goto(g)
    # the oracle for the block: debugfs's block map of the file (bmap of block 0)
    block = int(debugfs(gpt_disk.parts[2], "bmap /etc/fstab 0").strip())
    stats = debugfs(gpt_disk.parts[2], "stats")
    bs = int(stats.split("Block size:")[1].split()[0])
    last = hexed.inspector.text().splitlines()[-1]
    assert last == f"partition 2 (ext4), block {block} of {bs // 1024} KiB, /etc/fstab +0x10"


@pytest.fixture
def needs_recovery(tmp_path, gpt_disk):  # noqa: F811
    """The GPT disk with its ext4 flagged needs_recovery (debugfs -w 'feature
    needs_recovery'), as after a guest crash."""
    part = tmp_path / "p2.img"
    shutil.copyfile(gpt_disk.parts[2], part)
    subprocess.run([tool("debugfs"), "-w", "-R", "feature needs_recovery", part],
                   check=True, capture_output=True)
    raw = bytearray(gpt_disk.raw.read_bytes())
    start = gpt_disk.starts[2]
    data = part.read_bytes()
    raw[start:start + len(data)] = data
    (tmp_path / "disk.raw").write_bytes(bytes(raw))
    q = tmp_path / "recover.qcow2"
    qemu_img("convert", "-O", "qcow2", tmp_path / "disk.raw", q)
    return q


def test_goto_file_warns_when_the_journal_needs_recovery(qtbot, window, needs_recovery):
    tab = window.open_path(str(needs_recovery))
    wait_ready(qtbot, tab)
    contents = _files_ready(qtbot, tab)
    qtbot.keyClick(window, Qt.Key_G, Qt.ControlModifier | Qt.ShiftModifier)
    dlg = _goto_dialog(tab)
    qtbot.keyClicks(dlg.edit, "2:/etc/hostname")
    qtbot.keyClick(dlg.edit, Qt.Key_Return)
    assert dlg.isVisible() and "journal needs recovery" in dlg.note.text()
    qtbot.keyClick(dlg.edit, Qt.Key_Return)                # again: go there anyway
    assert not dlg.isVisible()
    f = contents.resolve("2:/etc/hostname")[0]
    assert tab.pane("hex").view.cursor == f.info.extents[0][1]
    # the FAT partition has no journal: no warning
    qtbot.keyClick(window, Qt.Key_G, Qt.ControlModifier | Qt.ShiftModifier)
    dlg = _goto_dialog(tab)
    qtbot.keyClicks(dlg.edit, "1:/etc/hostname")
    qtbot.keyClick(dlg.edit, Qt.Key_Return)
    assert not dlg.isVisible()


def test_map_by_file_system(qtbot, window, gpt_disk):  # noqa: F811
    tab = window.open_path(str(gpt_disk.qcow2))
    wait_ready(qtbot, tab)
    contents = _files_ready(qtbot, tab)
    heat = tab.heatmap
    heat.set_mode("fs")
    legend = {name: n for name, _c, n in tab.allocation.legend("fs")}
    cs = tab.document.image.cluster_size
    # the oracle: sgdisk's table (the clusters before partition 1 hold the table) and the
    # source tree (file data somewhere in each filesystem)
    assert legend["partition table"] >= 1
    assert legend["file data"] >= (gpt_disk.src / "data/big.bin").stat().st_size // cs
    assert sum(legend.values()) == -(-gpt_disk.raw.stat().st_size // cs)
    f = contents.resolve("2:/data/big.bin")[0]
    g = f.info.extents[0][1] // cs + 1
    r, c = heat.picture.cell_of(g)
    assert tab.allocation.describe(heat.picture, r, c).startswith(
        f"guest cluster {g:#x}: guest {g * cs:#x}, partition 2 (ext4), /data/")


def test_guest_map_marks_where_partitions_start(qtbot, window, gpt_disk):  # noqa: F811
    tab = window.open_path(str(gpt_disk.qcow2))
    wait_ready(qtbot, tab)
    _files_ready(qtbot, tab)
    tab.heatmap.set_mode("guest")
    marks = tab.pane("files").partition_marks
    import pyqtgraph as pg
    labels = [it.textItem.toPlainText() for it in marks.items if isinstance(it, pg.TextItem)]
    assert labels == ["1 vfat", "2 ext4"]            # sgdisk's two partitions, blkid's types
    tab.heatmap.set_mode("kind")
    assert not marks.items                           # host views: no guest partitions


def test_hex_inspector_names_gpt_header_fields(qtbot, window, gpt_disk):  # noqa: F811
    tab = window.open_path(str(gpt_disk.qcow2))
    wait_ready(qtbot, tab)
    _files_ready(qtbot, tab)
    hexed = tab.pane("hex")
    tab.show_pane("hex")
    hexed.view.goto(512 + 72)               # LBA 1: the GPT header; +72 partition_entry_lba
    last = hexed.inspector.text().splitlines()[-1]
    assert last.endswith("GPT header partition_entry_lba = 2"), last   # as sgdisk makes it


def test_header_panel_has_a_guest_section(qtbot, window, gpt_disk):  # noqa: F811
    tab = window.open_path(str(gpt_disk.qcow2))
    wait_ready(qtbot, tab)
    _files_ready(qtbot, tab)
    m = tab.header_model
    rows = [m.row(i) for i in range(m.rowCount())]
    start = next(i for i, r in enumerate(rows) if r.section and r.field.startswith("Guest"))
    assert rows[start].field == "Guest (GPT, 2 volumes)"
    p1, p2 = rows[start + 1], rows[start + 2]
    # sgdisk's names and starts, mkfs's labels
    assert (p1.field, int(p1.raw, 16)) == ("partition 1: EFI", gpt_disk.starts[1])
    assert (p2.field, int(p2.raw, 16)) == ("partition 2: root", gpt_disk.starts[2])
    assert "vfat “EFI”" in p1.meaning and "ext4 “rootfs”" in p2.meaning
    # clicking a partition there shows its filesystem in the Files pane
    view = tab.header_panel.view
    view.scrollTo(m.index(start + 2, 0))
    qtbot.mouseClick(view.viewport(), Qt.LeftButton,
                     pos=view.visualRect(m.index(start + 2, 0)).center())
    assert tab.views.currentWidget() is tab.pane("files")
    assert tab.pane("files").current_node().name == "ext4 “rootfs”"


def test_typing_into_inline_data_is_refused(qtbot, window, overlay, gpt_disk):  # noqa: F811
    """/link is a fast symlink: its target lives in its inode.  debugfs imap says where
    that inode is; typing there is refused with the reason and changes nothing."""
    _base, top = overlay
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    _files_ready(qtbot, tab)
    imap = debugfs(gpt_disk.parts[2], "imap /link")
    block = int(imap.split("located at block ")[1].split(",")[0])
    within = int(imap.split("offset ")[1].split()[0], 16)
    bs = int(debugfs(gpt_disk.parts[2], "stats").split("Block size:")[1].split()[0])
    at = gpt_disk.starts[2] + block * bs + within + 0x28        # i_block: the target
    hexed = tab.pane("hex")
    qtbot.keyClick(window, Qt.Key_E, Qt.ControlModifier)
    qtbot.waitUntil(lambda: tab.document.writable)
    tab.show_pane("hex")
    hexed.view.goto(at)
    with qtbot.waitSignal(hexed.view.message) as said:
        qtbot.keyClicks(hexed.view, "00")
    assert "/link" in said.args[0] and "inline data in inode" in said.args[0]
    assert not hexed.doc.modified


def test_hovering_a_byte_names_its_field(qtbot, window, gpt_disk, monkeypatch):  # noqa: F811
    from PySide6.QtCore import QEvent, QPoint
    from PySide6.QtGui import QHelpEvent

    import qcow2view.ui.hexview as hv
    tab = window.open_path(str(gpt_disk.qcow2))
    wait_ready(qtbot, tab)
    _files_ready(qtbot, tab)
    tab.show_pane("hex")
    v = tab.pane("hex").view
    v.goto(512)                                 # the GPT header (LBA 1) in view
    shown = []
    monkeypatch.setattr(hv.QToolTip, "showText",
                        staticmethod(lambda pos, text, w=None: shown.append(text)))
    y = next(y for y in range(v.header_h, v.viewport().height())
             if (v.hit(v.x_hex + 1, y) or (None,))[0] == 512)
    v.viewportEvent(QHelpEvent(QEvent.ToolTip, QPoint(v.x_hex + 1, y), QPoint(0, 0)))
    assert shown and shown[0].startswith("0x200: ") and "GPT header signature" in shown[0]


def test_snapshot_sharing_and_changes_against_a_snapshot(qtbot, window, gpt_disk, tmp_path):  # noqa: F811,E501
    """qemu-img snapshot -c s1: every cluster of a file is shared with s1; after qemu-io
    rewrites part of /etc/fstab, 'Changed vs snapshot s1' lists it."""
    img = tmp_path / "snap.qcow2"
    shutil.copyfile(gpt_disk.qcow2, img)
    qemu_img("snapshot", "-c", "s1", img)
    tab = window.open_path(str(img))
    wait_ready(qtbot, tab)
    contents = _files_ready(qtbot, tab)
    f = contents.resolve("2:/data/big.bin")[0]
    s = contents.describe_file(f, "/data/big.bin")
    n = len(s.host_clusters)
    assert f"{n} host clusters, {n} shared with snapshot s1" in s.text
    fstab = contents.resolve("2:/etc/fstab")[0].info.extents[0][1]
    window.close_all()
    import qemu
    qemu.qemu_io(img, f"write -P 0x23 {fstab} 5")
    tab = window.open_path(str(img))
    wait_ready(qtbot, tab)
    _files_ready(qtbot, tab)
    panel: FilesPanel = tab.pane("files")
    panel.show_changes("s1")
    qtbot.waitUntil(lambda: panel.model.changes is not None, timeout=30000)
    rows = [n for n in (i.data(NODE_ROLE) for i in _all(panel.model)) if n.kind == FILE]
    want = sum(b != 0x23 for b in (gpt_disk.src / "etc/fstab").read_bytes()[:5])
    assert [(n.path, panel.model.bytes_changed(n)) for n in rows] == [("/etc/fstab", want)]


def test_hex_ruler_shows_file_offsets_while_the_caret_is_in_a_file(qtbot, window, gpt_disk):  # noqa: F811,E501
    tab = window.open_path(str(gpt_disk.qcow2))
    wait_ready(qtbot, tab)
    _files_ready(qtbot, tab)
    view = tab.pane("hex").view
    ruler = view.ruler
    assert ruler is not None
    # the oracle: debugfs's block map and size of the file, and sgdisk's partition start
    bs = int(debugfs(gpt_disk.parts[2], "stats").split("Block size:")[1].split()[0])
    block = int(debugfs(gpt_disk.parts[2], "bmap /etc/fstab 0").strip())
    size = int(debugfs(gpt_disk.parts[2], "stat /etc/fstab").split("Size:")[1].split()[0])
    first = gpt_disk.starts[2] + block * bs
    view.goto(first + 0x25)
    assert ruler.header(view.cursor) == "fstab"
    assert ruler.row_text(view.cursor, first + 0x20) == ("+20", False)
    tail = -(-size // 16) * 16                  # the first row past the file's size
    if tail < bs:
        assert ruler.row_text(view.cursor, first + tail) == (f"+{tail:x}", True)
    assert ruler.row_text(view.cursor, first - 16) is None     # not the file's row
    view.goto(0)                                # the protective MBR: no file, no ruler
    assert ruler.header(view.cursor) == "file +"
    assert ruler.row_text(view.cursor, first) is None


@pytest.fixture
def leaky(tmp_path, gpt_disk):  # noqa: F811
    """The GPT disk with three leaked clusters appended: a copy of the host cluster that
    holds part of /bin/tool (a copy-on-write's leftover), of an L2 table and of the
    refcount block; and /bin/tool's cluster itself gets refcount 0 (corrupt)."""
    import struct

    from gui_fixtures import set_refcount
    path = tmp_path / "leaky.qcow2"
    shutil.copyfile(gpt_disk.qcow2, path)
    raw = path.read_bytes()
    cs = 1 << struct.unpack_from(">I", raw, 20)[0]
    bs = int(debugfs(gpt_disk.parts[2], "stats").split("Block size:")[1].split()[0])
    block = int(debugfs(gpt_disk.parts[2], "bmap /bin/tool 100").strip())
    g = gpt_disk.starts[2] + block * bs
    cluster = g - g % cs                        # the guest cluster holding block 100
    first = 100 - (g - cluster) // bs           # the file block at its start, if contiguous
    for k in (first, first + cs // bs - 1):     # debugfs: the whole cluster is /bin/tool's
        got = int(debugfs(gpt_disk.parts[2], f"bmap /bin/tool {k}"))
        want = gpt_disk.starts[2] + got * bs
        assert want == cluster + (k - first) * bs
    host = host_offset(path, cluster)           # qemu-img map: where the image keeps it
    l1 = struct.unpack_from(">Q", raw, 40)[0]
    l2 = struct.unpack_from(">Q", raw, l1)[0] & 0x00FFFFFFFFFFFE00
    rb = struct.unpack_from(">Q", raw, struct.unpack_from(">Q", raw, 48)[0])[0]
    leaks = []
    for src in (host, l2, rb):
        data = path.read_bytes()[src:src + cs]
        idx = -(-path.stat().st_size // cs)
        with open(path, "r+b") as f:
            f.seek(idx * cs)
            f.write(data)
        set_refcount(path, idx, 1)
        leaks.append(idx)
    set_refcount(path, host // cs, 0)           # and /bin/tool's own cluster: corrupt
    rc, report = check(path)
    assert rc == 2 and report["leaks"] == 3 and report["corruptions"] >= 1   # + its COPIED flag
    return path, leaks, cluster, host, first * bs


def test_leaked_and_corrupt_clusters_are_named_by_what_they_held(qtbot, window, leaky):
    path, (copy, table, counts), cluster, host, file_off = leaky
    tab = window.open_path(str(path))
    wait_ready(qtbot, tab)
    _files_ready(qtbot, tab)
    contents = tab.document.guest
    assert set(contents.built.leak_fates) == {copy, table, counts}   # read off the GUI thread
    model = tab.problems_model
    rows = {model.problem(r).cluster: model.message(r) for r in range(model.rowCount())}
    held = (f"leaked: once held /bin/tool +{file_off:#x} (its bytes equal guest cluster "
            f"{cluster:#x}, now at host {host:#x})")
    assert rows[copy].startswith(held + " — ")
    assert rows[table].startswith("leaked: looks like an old L2 table")
    assert rows[counts].startswith("leaked: looks like an old refcount block")
    assert rows[host // 65536].startswith(f"holds /bin/tool +{file_off:#x} — ")  # corrupt
    pic = tab.heatmap.picture                   # the host map's hover: its first line
    assert tab.allocation.describe(pic, *pic.cell_of(copy)).splitlines()[0] == \
        f"host cluster {copy:#x}: {held}"
    coarse = tab.allocation.picture("kind", width=2, max_rows=1)   # a cell of many
    assert coarse.bin > 1
    text = tab.allocation.describe(coarse, *coarse.cell_of(host // 65536))
    assert f"most severe:\nhost cluster {host // 65536:#x}: guest {cluster:#x}, " in text


def _first_look(qtbot, tab):
    """The Files pane of a ready ``tab`` once it shows the first look (the index's
    build held): (the panel, the document's guest contents)."""
    wait_ready(qtbot, tab)
    assert tab.show_pane("files")
    panel: FilesPanel = tab.pane("files")
    qtbot.waitUntil(lambda: panel.model.previewing, timeout=30000)
    return panel, tab.document.guest


def test_first_rows_while_the_index_builds(qtbot, window, gpt_disk, held_index):  # noqa: F811
    """The tree shows the root directories before the index is in (the build is held
    here until released); a directory opened then stays open, with its files, once the
    index is in; a name typed meanwhile says 'building index…', then finds its files."""
    from qcow2view.model.guest_model import DIR, NOTE, READING
    gate = held_index
    tab = window.open_path(str(gpt_disk.qcow2))
    try:
        panel, c = _first_look(qtbot, tab)
        assert c.state == "building"
        vol = next(i for i, gv in enumerate(c.preview.index.volumes)
                   if gv.filesystem is not None and gv.filesystem.type == "ext4")
        etc = panel.model.find_path(vol, "/etc")
        assert etc.isValid() and panel.tree.isVisible()
        assert panel.tree.isExpanded(etc.parent())              # the root directory shown
        panel.tree.expand(etc)
        assert [(n.kind, n.name) for n in etc.data(NODE_ROLE).children] == [(NOTE, READING)]
        panel.tree.setCurrentIndex(etc)
        # where its bytes live is said before the index is in (the extents are read)
        assert panel.summary_label.text().startswith("/etc: ")
        assert "host cluster" in panel.summary_label.text()
        gate.set()
        _files_ready(qtbot, tab)
        etc = panel.model.find_path(vol, "/etc")
        assert panel.tree.isExpanded(etc)
        assert {n.name for n in etc.data(NODE_ROLE).children} == \
            {p.name for p in (gpt_disk.src / "etc").iterdir()}
        node = panel.current_node()
        assert (node.kind, node.vol, node.path) == (DIR, vol, "/etc")
        # a name typed before the index is in: said, then found
        gate.clear()
        c.rebuild()
        qtbot.waitUntil(lambda: panel.model.previewing, timeout=30000)
        qtbot.keyClicks(panel.filter, "fstab")
        qtbot.waitUntil(lambda: panel.matches.text() == "building index…")
        assert panel.model.matches == 0 and panel._first_file().isValid() is False
        gate.set()
        qtbot.waitUntil(lambda: panel.matches.text() == "2 found", timeout=30000)
        assert panel.current_node().path == "/etc/fstab"
    finally:
        gate.set()


def _debugfs_names(image, path) -> set[str]:
    """The entries `debugfs -R "ls -l PATH"` lists (its last column), without . and .."""
    lines = [ln.split() for ln in debugfs(image, f"ls -l {path}").splitlines() if ln.strip()]
    return {ln[-1] for ln in lines} - {".", ".."}


def _mdir_names(image, path) -> set[str]:
    """The entries `mdir -b` lists in ``path`` of a FAT image (bare ::/path/name lines)."""
    out = subprocess.run([tool("mdir"), "-b", "-i", str(image), f"::{path}"],
                         capture_output=True, text=True, check=True).stdout
    return {ln.rstrip("/").rsplit("/", 1)[-1] for ln in out.splitlines() if ln.strip()}


def test_a_directory_opened_before_the_index_is_in_is_read_at_once(qtbot, window, gpt_disk,  # noqa: F811,E501
                                                                   held_index, tmp_path):
    """Opening a directory of the first look (the index's build held) lists it from the
    disk at once, ext4 and FAT, two levels deep; the entries are the ones debugfs and
    mdir list.  When the index comes in, what was open stays open and current."""
    gate = held_index
    tab = window.open_path(str(gpt_disk.qcow2))
    try:
        panel, c = _first_look(qtbot, tab)
        vols = {gv.filesystem.type: i for i, gv in enumerate(c.preview.index.volumes)
                if gv.filesystem is not None}
        ext, fat = vols["ext4"], vols["vfat"]

        def opened(vol, path):
            i = panel.model.find_path(vol, path)
            assert i.isValid(), path
            panel.tree.expand(i)
            qtbot.waitUntil(lambda: not c.dirs.busy, timeout=10000)
            i = panel.model.find_path(vol, path)
            assert panel.tree.isExpanded(i), path
            return {n.name for n in i.data(NODE_ROLE).children}

        assert opened(ext, "/etc") == _debugfs_names(gpt_disk.parts[2], "/etc")
        assert opened(ext, "/deep") == _debugfs_names(gpt_disk.parts[2], "/deep")
        assert opened(ext, "/deep/a") == _debugfs_names(gpt_disk.parts[2], "/deep/a") == {"b"}
        assert opened(fat, "/etc") == _mdir_names(gpt_disk.parts[1], "/etc")
        assert opened(fat, "/deep") == _mdir_names(gpt_disk.parts[1], "/deep")
        assert opened(fat, "/deep/a") == _mdir_names(gpt_disk.parts[1], "/deep/a")
        assert c.state == "building" and c.index is None       # all before the index
        b = panel.model.find_path(ext, "/deep/a/b")
        panel.tree.setCurrentIndex(b)
        assert panel.summary_label.text().startswith("/deep/a/b: ")
        shot = tmp_path / "files-first-look.png"
        assert panel.grab().save(str(shot))

        gate.set()
        _files_ready(qtbot, tab)
        for vol, path in ((ext, "/etc"), (ext, "/deep"), (ext, "/deep/a"), (fat, "/etc"),
                          (fat, "/deep"), (fat, "/deep/a")):
            assert panel.tree.isExpanded(panel.model.find_path(vol, path)), path
        assert {n.name for n in panel.model.find_path(ext, "/deep/a").data(NODE_ROLE)
                .children} == {"b"}
        node = panel.current_node()
        assert (node.vol, node.path) == (ext, "/deep/a/b")
    finally:
        gate.set()
