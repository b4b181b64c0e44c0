"""The map fills its plot from row 0: no empty band above the first row, whatever the
plot's shape, and no axis labels past the end of the file."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QRectF

import qemu
from qcow2view.engine import open_image
from qcow2view.model.allocation import AllocationModel
from qcow2view.ui.heatmap import HeatmapView

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")


@pytest.fixture
def model(tmp_path):
    """A small image (about a dozen host clusters): a few short rows of big cells."""
    p = qemu.create(tmp_path / "small.qcow2", "16M")
    qemu.qemu_io(p, *(f"write -P {i + 1} {off}M 64k" for i, off in enumerate((9, 1, 5, 12))))
    m = AllocationModel()
    with open_image(p) as img:
        m.set_maps(img.host_map(), img.guest_map())
    return m


def _shown(qtbot, model, w, h):
    hm = HeatmapView(model)
    qtbot.addWidget(hm)
    hm.resize(w, h)
    hm.show()
    qtbot.waitExposed(hm)
    hm.redraw()
    qtbot.waitUntil(lambda: hm.picture is not None)
    return hm


def _top_gap(hm) -> float:
    """Pixels between the top of the plot and the top edge of row 0."""
    vb = hm.plot.getViewBox()
    plot_top = vb.mapToScene(vb.rect().topLeft()).y()
    row0 = hm.item.mapToScene(0, 0).y()
    return row0 - plot_top


def _margin(hm) -> float:
    return 0.02 * max(hm.picture.width, hm.picture.rows)


def test_a_tall_plot_keeps_row_0_at_the_top(qtbot, model):
    hm = _shown(qtbot, model, 420, 900)
    pic = hm.picture
    vb = hm.plot.getViewBox()
    assert pic.rows * vb.width() < pic.width * vb.height()     # room to spare vertically
    (x0, x1), (y0, y1) = vb.viewRange()
    m = _margin(hm)
    assert y0 == pytest.approx(-m) and x0 == pytest.approx(-m)
    assert x1 == pytest.approx(pic.width + m)                  # the width is filled
    assert y1 > pic.rows + 2 * m                               # what is left is below
    qtbot.waitUntil(lambda: 0 <= _top_gap(hm) < 0.03 * vb.height())      # once painted
    # no labels for rows that are not there
    ticks = [v for _, vals in hm.axis.tickValues(y0, y1, vb.height()) for v in vals]
    assert ticks and max(ticks) <= pic.rows and min(ticks) >= 0


def test_row_0_stays_at_the_top_when_the_plot_is_resized(qtbot, model):
    hm = _shown(qtbot, model, 900, 600)
    hm.resize(420, 1000)
    vb = hm.plot.getViewBox()
    qtbot.waitUntil(lambda: vb.height() > vb.width() and abs(vb.viewRange()[1][0]
                                                               + _margin(hm)) < 1e-6)
    qtbot.waitUntil(lambda: 0 <= _top_gap(hm) < 0.03 * vb.height())


def test_a_zoom_is_not_undone_by_a_resize(qtbot, model):
    hm = _shown(qtbot, model, 420, 800)
    vb = hm.plot.getViewBox()
    vb.setRange(QRectF(1, 1, 2, 2), padding=0)
    hm.resize(430, 800)
    qtbot.waitUntil(lambda: vb.width() > 0 and hm.width() == 430)
    (x0, x1), (y0, y1) = vb.viewRange()
    # still zoomed in on the same spot (the locked aspect widens it about its centre)
    assert (x0 + x1) / 2 == pytest.approx(2) and (y0 + y1) / 2 == pytest.approx(2)
    assert x1 - x0 < 3
