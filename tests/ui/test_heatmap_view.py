"""The heatmap widget: colours on screen, hover tooltips, click navigation, mode switch."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QRectF, Qt

import qemu
from gui_fixtures import wait_ready
from qcow2view.model.allocation import colour
from qcow2view.model.workers import running_workers
from qcow2view.ui.heatmap import HeatmapView
from qcow2view.ui.mainwindow import MainWindow

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")
DATA = 11
LEAKED = 13


@pytest.fixture
def tab(qtbot, sample_image):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1500, 900)
    w.show()
    t = w.open_path(str(sample_image))
    qtbot.waitUntil(lambda: t.document.analysis is not None and not t.document.busy,
                    timeout=30000)
    t.views.setCurrentWidget(t.heatmap)
    t.heatmap.redraw()
    qtbot.wait(50)
    yield t
    w.close_all()


def _view_pos(hm, cluster):
    scene = hm.cell_center(cluster)
    return hm.graphics.mapFromScene(scene)


def test_pixels_on_screen_have_the_kind_colour(tab, sample_image):
    hm = tab.heatmap
    img = hm.graphics.grab().toImage()
    for e in qemu.qemu_map(sample_image):
        if e["data"]:
            p = _view_pos(hm, e["offset"] // 65536)
            assert img.pixelColor(p.x(), p.y()) == colour(DATA)
    p = _view_pos(hm, 0)
    assert img.pixelColor(p.x(), p.y()) == colour(1)     # header


def test_hover_tooltip_and_click_navigates(tab, qtbot, sample_image):
    hm = tab.heatmap
    host = next(e for e in qemu.qemu_map(sample_image) if e["start"] == 32 << 20)["offset"]
    cluster = host // 65536
    pos = _view_pos(hm, cluster)
    qtbot.mouseMove(hm.graphics.viewport(), pos)
    qtbot.waitUntil(lambda: f"host cluster {cluster}" in hm.item.toolTip(), timeout=3000)
    assert f"host cluster {cluster}" in hm.hover.text()
    with qtbot.waitSignal(tab.showFileBytes, timeout=3000) as sig:
        with qtbot.waitSignal(hm.clusterClicked, timeout=3000) as clicked:
            qtbot.mouseClick(hm.graphics.viewport(), Qt.LeftButton, pos=pos)
    assert clicked.args == [cluster, "kind"]
    assert sig.args == [host, 65536]
    cur = tab.table_panel.view.currentIndex()        # the tree went to the owning L2 entry
    assert int(cur.siblingAtColumn(3).data(), 16) == host
    assert hm.marker.isVisible()


def test_mode_switch_redraws(tab, qtbot):
    hm = tab.heatmap
    hm.buttons.button(2).click()
    assert hm.mode() == "guest" and hm.picture.mode == "guest"
    assert hm.picture.count == (64 << 20) // 65536
    assert any(name == "data" for name, _, _ in hm.legend.entries)
    hm.set_mode("refcount")
    assert any(name == "refcount 2" for name, _, _ in hm.legend.entries)


def test_guest_click_goes_to_the_guest_offset(tab, qtbot):
    hm = tab.heatmap
    hm.set_mode("guest")
    qtbot.wait(50)          # let the view box apply its new range
    cluster = (32 << 20) // 65536
    pos = _view_pos(hm, cluster)
    with qtbot.waitSignal(tab.showGuestOffset, timeout=3000) as sig:
        qtbot.mouseClick(hm.graphics.viewport(), Qt.LeftButton, pos=pos)
    assert sig.args == [32 << 20]
    assert tab.table_panel.view.currentIndex().siblingAtColumn(0).data() == str(cluster % 8192)


def test_mapping_plot(tab, sample_image):
    runs = [e for e in qemu.qemu_map(sample_image) if e["data"]]
    assert tab.mapping.runs == len(runs)


@pytest.fixture
def fine_leak(tmp_path):
    """64 MiB preallocated with 512-byte clusters (~134,000 host clusters); the L2 entry
    of guest offset 40M cleared, so its data cluster is a leak (refcount 1, no owner)."""
    from qcow2view.engine import open_image
    p = qemu.create(tmp_path / "fine.qcow2", "64M", "cluster_size=512",
                    "preallocation=metadata")
    guest = 40 << 20
    host = qemu.host_offset(p, guest)
    with open_image(p) as img:
        entry = img.guest_mapping(guest).l2_entry_offset
    with open(p, "r+b") as f:
        f.seek(entry)
        f.write(bytes(8))
    code, result = qemu.check(p)
    assert code == 3 and result["leaks"] == 1          # qemu-img: one leaked cluster
    return p, host // 512


def test_zooming_in_shows_a_single_leaked_cluster_as_its_own_cell(qtbot, window, fine_leak):
    path, leak = fine_leak
    t = window.open_path(str(path))
    wait_ready(qtbot, t)
    # a small map of the tab's allocation model: many clusters per overview cell
    window.hide()
    hm = HeatmapView(t.allocation)
    qtbot.addWidget(hm)
    hm.resize(320, 420)
    hm.show()
    qtbot.waitExposed(hm)
    hm.redraw()
    qtbot.waitUntil(lambda: hm.picture is not None and hm.picture.mode == "kind")
    pic = hm.picture
    assert pic.bin >= 4                      # the overview bins several clusters a cell
    r, c = pic.cell_of(leak)
    assert pic.data[r, c] == LEAKED          # severity binning: the leak shows at once...
    assert len(pic.clusters_of(r, c)) > 1    # ...but as a cell of many clusters
    assert hm.detail is None

    # zoom in around it (what the mouse wheel does to the view box)
    hm.plot.getViewBox().setRange(QRectF(c - 2, r - 2, 5, 5), padding=0)
    qtbot.waitUntil(lambda: hm.detail is not None, timeout=3000)
    d = hm.detail
    dr, dc = d.cell_of(leak)
    assert d.clusters_of(dr, dc) == range(leak, leak + 1)     # one cluster, one cell
    assert d.data[dr, dc] == LEAKED
    # the sub-cells next to it are its neighbours, coloured as what they are
    data = {c for e in qemu.qemu_map(path) if e["data"]
            for c in range(e["offset"] // 512, (e["offset"] + e["length"]) // 512)}
    checked = []
    for nr, nc in ((dr, dc - 1), (dr, dc + 1), (dr - 1, dc), (dr + 1, dc)):
        (n,) = d.clusters_of(nr, nc)
        assert n != leak and d.data[nr, nc] != LEAKED
        if n in data:
            assert d.data[nr, nc] == DATA
            checked.append((nr, nc))
    assert checked
    qtbot.wait(50)
    img = hm.graphics.grab().toImage()
    p = hm.graphics.mapFromScene(hm.cell_center(leak))
    assert img.pixelColor(p.x(), p.y()) == colour(LEAKED)
    nr, nc = checked[0]
    q = hm.graphics.mapFromScene(hm.detail_item.mapToScene(nc + 0.5, nr + 0.5))
    assert img.pixelColor(q.x(), q.y()) == colour(DATA)
    # hovering the sub-cell names that one cluster
    qtbot.mouseMove(hm.graphics.viewport(), p)
    qtbot.waitUntil(lambda: f"host cluster {leak:,}" in hm.hover.text(), timeout=3000)
    assert "leaked" in hm.hover.text()

    # zooming back out drops the refinement
    hm.plot.getViewBox().autoRange()
    qtbot.waitUntil(lambda: hm.detail is None, timeout=3000)
    hm.stop_prefetch()


def test_a_picture_delivered_after_the_tab_closed_starts_no_worker(tab, qtbot):
    """A picture binned just before the close arrives as a queued signal after it: the
    closed map must not start binning again (a thread running at exit aborts)."""
    hm = tab.heatmap
    qtbot.waitUntil(lambda: not running_workers(), timeout=30000)
    tab.close_document()
    hm.resize(hm.width() // 2, hm.height() // 2)     # other pictures wanted...
    hm._prefetched(None)            # ...by the queued 'binned' signal
    hm.redraw()                     # or a resize timer firing late
    assert not running_workers()
