"""The heatmap widget: colours on screen, hover tooltips, click navigation, mode switch."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt

import qemu
from qcow2view.model.allocation import colour
from qcow2view.ui.mainwindow import MainWindow

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")
DATA = 11


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
