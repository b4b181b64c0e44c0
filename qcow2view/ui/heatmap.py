"""The cluster-allocation heatmap: a pyqtgraph ImageItem of palette indices.

Following pyqtgraph's ImageItem performance notes: the image is C-contiguous
uint8, ``axisOrder='row-major'``, fixed levels and one 256-entry lookup table,
so it is drawn as an Indexed8 QImage and a mode change only swaps the array.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import (QButtonGroup, QGraphicsRectItem, QGridLayout, QHBoxLayout,
                               QLabel, QSizePolicy, QToolButton, QVBoxLayout, QWidget)

from ..model.allocation import (MODE_TITLES, MODES, PALETTE, AllocationModel, Picture,
                                auto_width)
from ..model.units import human_size
from .axes import ByteAxis

MODE_LABELS = {"kind": "By kind", "refcount": "By refcount", "guest": "Guest view"}


class HeatmapItem(pg.ImageItem):
    """ImageItem that knows its Picture: tooltips on hover, a signal on click."""

    cellClicked = Signal(int, int)    # row, col
    cellHovered = Signal(int, int)    # row, col (-1, -1 on leave)

    def __init__(self) -> None:
        super().__init__(axisOrder="row-major")
        self.setLookupTable(PALETTE)
        self.setLevels([0, 255])
        self.picture: Picture | None = None
        self.describe = None          # callable(pic, row, col) -> str
        self._last = (-1, -1)

    def set_picture(self, pic: Picture) -> None:
        self.picture = pic
        self.setImage(pic.data, autoLevels=False, levels=[0, 255], lut=PALETTE)

    def _cell(self, pos) -> tuple[int, int] | None:
        pic = self.picture
        if pic is None:
            return None
        col, row = int(np.floor(pos.x())), int(np.floor(pos.y()))
        if 0 <= row < pic.rows and 0 <= col < pic.width and len(pic.clusters_of(row, col)):
            return row, col
        return None

    def hoverEvent(self, ev) -> None:
        if ev.isExit():
            self._last = (-1, -1)
            self.setToolTip("")
            self.cellHovered.emit(-1, -1)
            return
        cell = self._cell(ev.pos())
        if cell is None:
            self.setToolTip("")
            return
        if cell != self._last:
            self._last = cell
            if self.describe is not None:
                self.setToolTip(self.describe(self.picture, *cell))
            self.cellHovered.emit(*cell)

    def mouseClickEvent(self, ev) -> None:
        if ev.button() != Qt.LeftButton:
            return
        cell = self._cell(ev.pos())
        if cell is not None:
            ev.accept()
            self.cellClicked.emit(*cell)


class Legend(QWidget):
    """Colour swatches with labels and counts, in a grid."""

    COLUMNS = 3

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setHorizontalSpacing(14)
        self._grid.setVerticalSpacing(2)
        self.entries: list[tuple[str, QColor, int]] = []

    def set_entries(self, entries: list[tuple[str, QColor, int]]) -> None:
        while self._grid.count():
            w = self._grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.entries = list(entries)
        for i, (name, col, count) in enumerate(entries):
            swatch = QLabel()
            swatch.setFixedSize(14, 14)
            swatch.setStyleSheet(f"background: {col.name()}; border: 1px solid #607d8b;")
            text = QLabel(f"{name} <span style='color:#78909c'>{count:,}</span>")
            r, c = divmod(i, self.COLUMNS)
            self._grid.addWidget(swatch, r, 2 * c)
            self._grid.addWidget(text, r, 2 * c + 1)
        for c in range(self.COLUMNS):
            self._grid.setColumnStretch(2 * c + 1, 1)


class HeatmapView(QWidget):
    """Mode switch, the picture, a legend and a status line."""

    clusterClicked = Signal(object, str)     # cluster index, mode
    modeChanged = Signal(str)

    def __init__(self, model: AllocationModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self._mode = "kind"
        self.picture: Picture | None = None

        bar = QHBoxLayout()
        self.buttons = QButtonGroup(self)
        self.buttons.setExclusive(True)
        for i, mode in enumerate(MODES):
            b = QToolButton()
            b.setText(MODE_LABELS[mode])
            b.setCheckable(True)
            b.setChecked(mode == self._mode)
            b.setToolButtonStyle(Qt.ToolButtonTextOnly)
            b.setObjectName(f"mode-{mode}")
            self.buttons.addButton(b, i)
            bar.addWidget(b)
        self.buttons.idClicked.connect(lambda i: self.set_mode(MODES[i]))
        bar.addStretch(1)
        self.info = QLabel()
        self.info.setStyleSheet("color: #546e7a")
        bar.addWidget(self.info)

        self.axis = ByteAxis("left")
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("w")
        self.plot = self.graphics.addPlot(axisItems={"left": self.axis})
        self.plot.hideAxis("bottom")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        vb = self.plot.getViewBox()
        vb.invertY(True)
        vb.setAspectLocked(True)
        vb.setMouseEnabled(x=True, y=True)
        self.item = HeatmapItem()
        self.item.describe = self.model.describe
        self.item.cellClicked.connect(self._clicked)
        self.item.cellHovered.connect(self._hovered)
        self.plot.addItem(self.item)
        self.marker = QGraphicsRectItem()
        pen = QPen(QColor("#d50000"))
        pen.setCosmetic(True)
        pen.setWidth(2)
        self.marker.setPen(pen)
        self.marker.setZValue(10)
        self.marker.hide()
        self.plot.addItem(self.marker)
        self.placeholder = pg.TextItem("Building maps…", color="#607d8b", anchor=(0.5, 0.5))
        self.plot.addItem(self.placeholder)

        self.legend = Legend()
        self.hover = QLabel(" ")
        self.hover.setStyleSheet("color: #37474f")
        self.hover.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(bar)
        lay.addWidget(self.graphics, 1)
        lay.addWidget(self.hover)
        lay.addWidget(self.legend)

        self._resize_timer = QTimer(self)
        self._resize_timer.setSingleShot(True)
        self._resize_timer.setInterval(150)
        self._resize_timer.timeout.connect(self.redraw)
        model.changed.connect(self.redraw)
        self.selected: int | None = None

    # -- mode and drawing ---------------------------------------------------------------
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        self._mode = mode
        self.buttons.button(MODES.index(mode)).setChecked(True)
        self.marker.hide()
        self.redraw()
        self.modeChanged.emit(mode)

    def _max_rows(self) -> int:
        h = max(self.graphics.height(), 256)
        return max(128, (h // 64) * 64)

    def _max_width(self) -> int:
        w = max(self.graphics.width() - 60, 64)
        p = 16
        while p * 2 <= min(w, 512):
            p *= 2
        return p

    def redraw(self) -> None:
        m = self.model
        mode = self._mode
        if not m.available(mode):
            self.picture = None
            self.item.clear()
            self.placeholder.setText("Building maps…" if m.host_map is None
                                     and m.guest_map is None else "Map not available")
            self.placeholder.show()
            self.legend.set_entries([])
            self.info.setText("")
            return
        self.placeholder.hide()
        n = m.count(mode)
        width = min(auto_width(n), self._max_width())
        pic = m.picture(mode, max_rows=self._max_rows(), width=width)
        self.picture = pic
        self.item.set_picture(pic)
        self.axis.bytes_per_unit = pic.width * pic.bin * pic.cluster_size
        self.plot.getViewBox().setRange(QRectF(0, 0, pic.width, pic.rows), padding=0.02)
        self.legend.set_entries(m.legend(mode))
        what = "guest" if mode == "guest" else "host"
        cell = ("1 cell = 1 cluster" if pic.bin == 1
                else f"1 cell = {pic.bin:,} clusters ({human_size(pic.bin * pic.cluster_size)}), "
                     "most severe shown")
        self.info.setText(f"{MODE_TITLES[mode]}: {n:,} {what} clusters of "
                          f"{human_size(pic.cluster_size)} · {cell}")
        if self.selected is not None and mode != "guest":
            self._mark(self.selected)

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        if self.picture is not None:
            self._resize_timer.start()

    # -- interaction ---------------------------------------------------------------------
    def _hovered(self, row: int, col: int) -> None:
        if row < 0 or self.picture is None:
            self.hover.setText(" ")
            return
        text = self.model.describe(self.picture, row, col)
        self.hover.setText(" · ".join(t for t in text.splitlines()[:3] if t))

    def _mark(self, cluster: int) -> None:
        pic = self.picture
        if pic is None or cluster >= pic.count:
            self.marker.hide()
            return
        r, c = pic.cell_of(cluster)
        self.marker.setRect(QRectF(c, r, 1, 1))
        self.marker.show()

    def _clicked(self, row: int, col: int) -> None:
        if self.picture is None:
            return
        cluster = self.model.representative(self.picture, row, col)
        if cluster is None:
            return
        self.select_cluster(cluster)
        self.clusterClicked.emit(cluster, self._mode)

    def select_cluster(self, cluster: int) -> None:
        self.selected = cluster
        self._mark(cluster)

    def cell_center(self, cluster: int):
        """Scene position of the cell holding ``cluster`` (tests drive hover/click with it)."""
        r, c = self.picture.cell_of(cluster)
        return self.item.mapToScene(c + 0.5, r + 0.5)
