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
from ..model.workers import Worker
from .axes import ByteAxis

SYNC_CLUSTERS = 1 << 20      # above this, pictures are binned in a worker
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
    """Colour swatches with labels and counts in a fixed grid.

    The slots are made once and only their text and colour change, so a mode
    switch does not relayout (and repaint) the whole window.
    """

    COLUMNS = 3
    ROWS = 6

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(14)
        grid.setVerticalSpacing(2)
        self.entries: list[tuple[str, QColor, int]] = []
        self._slots: list[tuple[QLabel, QLabel]] = []
        for i in range(self.ROWS * self.COLUMNS):
            swatch = QLabel()
            swatch.setFixedSize(14, 14)
            text = QLabel()
            text.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
            r, c = divmod(i, self.COLUMNS)
            grid.addWidget(swatch, r, 2 * c)
            grid.addWidget(text, r, 2 * c + 1)
            self._slots.append((swatch, text))
        for c in range(self.COLUMNS):
            grid.setColumnStretch(2 * c + 1, 1)
        line = self.fontMetrics().height() + 2
        self.setFixedHeight(self.ROWS * line + (self.ROWS - 1) * 2)
        self.set_entries([])

    def set_entries(self, entries: list[tuple[str, QColor, int]]) -> None:
        self.entries = list(entries)
        for i, (swatch, text) in enumerate(self._slots):
            if i < len(entries):
                name, col, count = entries[i]
                swatch.setStyleSheet(f"background: {col.name()}; border: 1px solid #607d8b;")
                text.setText(f"{name} <span style='color:#78909c'>{count:,}</span>")
            else:
                swatch.setStyleSheet("background: transparent; border: none;")
                text.setText("")


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
        self.info = QLabel()
        self.info.setStyleSheet("color: #546e7a")
        self.info.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        # its text changes with the mode: it must not resize (and repaint) the window
        self.info.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        bar.addWidget(self.info, 1)

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
        self._prefetch: Worker | None = None
        self._prefetch_key = None

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

    # sizes from the whole widget, not the plot: the legend's height changes with the
    # mode and must not change the binning (pictures are cached per size)
    def _max_rows(self) -> int:
        h = max(self.height() - 160, 256)
        return max(128, (h // 128) * 128)

    def _max_width(self) -> int:
        w = max(self.width() - 80, 64)
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
        rows, width = self._max_rows(), self._width_for(mode)
        pic = m.cached_picture(mode, max_rows=rows, width=width)
        if pic is None and m.count(mode) > SYNC_CLUSTERS:
            # millions of clusters: bin in a worker and draw when it is done
            self._start_prefetch()
            if self.picture is None or self.picture.mode != mode:
                self.placeholder.setText("Drawing…")
                self.placeholder.show()
            return
        self.placeholder.hide()
        if pic is None:
            pic = m.picture(mode, max_rows=rows, width=width)
        n = pic.count
        self.picture = pic
        self.item.set_picture(pic)
        self.axis.bytes_per_unit = pic.width * pic.bin * pic.cluster_size
        self.plot.getViewBox().setRange(QRectF(0, 0, pic.width, pic.rows), padding=0.02)
        self.legend.set_entries(m.legend(mode))
        what = "guest" if mode == "guest" else "host"
        cell = ("1 cell = 1 cluster" if pic.bin == 1
                else f"1 cell = {pic.bin:,} clusters ({human_size(pic.bin * pic.cluster_size)})")
        self.info.setText(f"{n:,} {what} clusters of {human_size(pic.cluster_size)} · {cell}")
        self.info.setToolTip(f"{MODE_TITLES[mode]}. " + (
            "" if pic.bin == 1 else "Each cell shows the most severe kind among its clusters: "
            "corrupt, then leaked, then metadata, compressed, data, free."))
        if self.selected is not None and mode != "guest":
            self._mark(self.selected)

        self._start_prefetch()

    def _width_for(self, mode: str) -> int:
        return min(auto_width(self.model.count(mode)), self._max_width())

    def _start_prefetch(self) -> None:
        """Bin the other modes in a worker so a mode switch only swaps arrays."""
        rows = self._max_rows()
        todo = [(mode, rows, self._width_for(mode)) for mode in MODES
                if self.model.available(mode)]
        key = (id(self.model.host_map), id(self.model.guest_map), tuple(todo))
        if key == self._prefetch_key:
            return
        self.stop_prefetch()
        self._prefetch_key = key
        if not todo:
            return
        model = self.model
        # the shown mode first
        todo.sort(key=lambda t: t[0] != self._mode)
        self._prefetch = Worker("Preparing pictures",
                                lambda _p, cancel: model.prefetch(todo, cancel), self)
        self._prefetch.succeeded.connect(self._prefetched)
        self._prefetch.start()

    def _prefetched(self, _result) -> None:
        pic = self.picture
        if pic is None or pic.mode != self._mode or self.model.cached_picture(
                self._mode, max_rows=self._max_rows(),
                width=self._width_for(self._mode)) is not pic:
            self.redraw()

    @property
    def ready(self) -> bool:
        """The picture of the current mode is on screen (or there is no map to draw)."""
        if not self.model.available(self._mode):
            return True
        return self.picture is not None and self.picture.mode == self._mode

    def stop_prefetch(self) -> None:
        w = self._prefetch
        if w is not None:
            self._prefetch = None
            w.stop()
            w.deleteLater()

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
