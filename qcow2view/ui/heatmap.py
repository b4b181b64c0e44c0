"""The cluster-allocation heatmap: a pyqtgraph ImageItem of palette indices.

Following pyqtgraph's ImageItem performance notes: the image is C-contiguous
uint8, ``axisOrder='row-major'``, fixed levels and one 256-entry lookup table,
so it is drawn as an Indexed8 QImage and a mode change only swaps the array.

Zooming in (mouse wheel, drag) refines what is on screen: once an overview cell
is a few pixels wide, a second item on top shows the visible cells split into
sub-cells at about screen resolution (debounced, one numpy pass over the kinds
of the visible clusters), down to one cluster per sub-cell, still binned by
severity, so a single leaked cluster among millions becomes its own red cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import (QButtonGroup, QGraphicsRectItem, QGridLayout, QHBoxLayout,
                               QLabel, QSizePolicy, QToolButton, QVBoxLayout, QWidget)

from ..model.allocation import (GUEST_MODES, MODE_TITLES, MODES, PALETTE, AllocationModel,
                                DetailPicture, Picture, auto_width)
from ..model.units import human_size
from ..model.workers import Worker
from .axes import ByteAxis

SYNC_CLUSTERS = 1 << 20      # above this, pictures are binned in a worker
DETAIL_MIN_PIXELS = 3        # refine once an overview cell is this many pixels wide
DETAIL_MAX_CLUSTERS = 1 << 22    # clusters binned per refinement (~30 ms of numpy)
DETAIL_MAX_SIDE = 2048       # sub-cells per side of the refined picture
DETAIL_DELAY_MS = 120        # after the last range change (wheel steps come in bursts)
MODE_LABELS = {"kind": "By kind", "refcount": "By refcount", "guest": "Guest view",
               "fs": "FS view"}     # by file system (short: the map pane may be narrow)


class HeatmapItem(pg.ImageItem):
    """ImageItem that knows its Picture: tooltips on hover, a signal on click."""

    cellClicked = Signal(int, int)    # row, col
    cellHovered = Signal(int, int)    # row, col (-1, -1 on leave)

    def __init__(self, describe: Callable[[Picture | DetailPicture, int, int], str]) -> None:
        super().__init__(axisOrder="row-major")
        self.setLookupTable(PALETTE)
        self.setLevels([0, 255])
        self.picture: Picture | None = None
        self.describe = describe      # the tooltip of a cell
        self._last = (-1, -1)

    def set_picture(self, pic: Picture | DetailPicture) -> None:
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
    pictureChanged = Signal()                # a new overview picture is drawn

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
        self.info.setAlignment(Qt.AlignLeft | Qt.AlignVCenter)
        # its text changes with the mode: it must not resize (and repaint) the window
        self.info.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        bar.addStretch(1)

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
        self._add_items()
        self.detail: DetailPicture | None = None
        self._info_text = ""
        self._detail_timer = QTimer(self)
        self._detail_timer.setSingleShot(True)
        self._detail_timer.setInterval(DETAIL_DELAY_MS)
        self._detail_timer.timeout.connect(self.update_detail)
        vb.sigRangeChanged.connect(lambda *_: self._detail_timer.start())
        self._fit_rect: QRectF | None = None
        vb.sigResized.connect(lambda *_: self._view_resized())
        self.placeholder = pg.TextItem("Building maps…", color="#607d8b", anchor=(0.5, 0.5))
        self.plot.addItem(self.placeholder)

        self.legend = Legend()
        self.hover = QLabel(" ")
        self.hover.setStyleSheet("color: #37474f")
        self.hover.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(bar)
        # its own line: next to the buttons a narrow pane cut off the cluster count
        lay.addWidget(self.info)
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
        self._closed = False        # a closed map starts no more work

    def _add_items(self) -> None:
        """The picture, the marker of the selected cluster, and the zoomed-in detail."""
        self.item = HeatmapItem(self.model.describe)
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
        self.detail_item = HeatmapItem(self.model.describe)
        self.detail_item.setZValue(5)
        self.detail_item.cellClicked.connect(self._detail_clicked)
        self.detail_item.cellHovered.connect(self._detail_hovered)
        self.detail_item.hide()
        self.plot.addItem(self.detail_item)

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
        self._drop_detail()
        if not m.available(mode):
            self.picture = None
            self.item.clear()
            self.placeholder.setText(
                "Building maps…" if m.host_map is None and m.guest_map is None else
                "Waits for the guest's files (see Files)" if mode == "fs" else
                "Map not available")
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
        self.pictureChanged.emit()
        self.axis.set_scale(pic.width * pic.bin * pic.cluster_size, (0, pic.rows))
        self.fit()
        self.legend.set_entries(m.legend(mode))
        what = "guest" if mode in GUEST_MODES else "host"
        cell = ("1 cell = 1 cluster" if pic.bin == 1
                else f"1 cell = {pic.bin:,} clusters ({human_size(pic.bin * pic.cluster_size)})")
        self._info_text = f"{n:,} {what} clusters of {human_size(pic.cluster_size)} · {cell}"
        tail = m.free_tail(mode)
        if tail:
            self._info_text += f" · then {tail:,} unused clusters to the end of the file"
        self.info.setText(self._info_text)
        self.info.setToolTip(f"{MODE_TITLES[mode]}. " + (
            "" if pic.bin == 1 else "Each cell shows the most severe kind among its clusters: "
            "corrupt, then leaked, then a refcount past the end of the file, then metadata, "
            "compressed, data, free."))
        if self.selected is not None and mode not in GUEST_MODES:
            self._mark(self.selected)

        self._start_prefetch()

    def fit(self) -> None:
        """Show the whole picture from row 0 at the top left.

        With the aspect locked, pyqtgraph would widen the range on both sides of the
        picture, leaving an empty band above the first row; here the range is made
        with the plot's own shape, so what is left over goes below (or to the right)."""
        pic = self.picture
        if pic is None:
            return
        vb = self.plot.getViewBox()
        m = 0.02 * max(pic.width, pic.rows)         # a small margin all round
        w, h = pic.width + 2 * m, pic.rows + 2 * m
        pw, ph = vb.width(), vb.height()
        if pw > 0 and ph > 0:
            if w / h > pw / ph:
                h = w * ph / pw
            else:
                w = h * pw / ph
        vb.setRange(QRectF(-m, -m, w, h), padding=0)
        self._fit_rect = vb.targetRect()

    def _view_resized(self) -> None:
        # the view keeps the range's centre on a resize: keep row 0 at the top instead
        # (unless the range was changed, by a zoom or pan, since the last fit)
        if self._fit_rect is not None \
                and self.plot.getViewBox().targetRect() == self._fit_rect:
            self.fit()

    # -- zoom: a finer picture of what is on screen -------------------------------------
    def _drop_detail(self) -> None:
        if self.detail is not None:
            self.info.setText(self._info_text)
        self.detail = None
        self.detail_item.hide()

    def update_detail(self) -> None:
        """Refine the visible overview cells to about screen resolution (or drop the
        refinement when the overview is fine enough)."""
        pic = self.picture
        vb = self.plot.getViewBox()
        if pic is None or pic.bin == 1 or not self.isVisible():
            self._drop_detail()
            return
        px = vb.viewPixelSize()[0]           # cells per screen pixel
        per_cell = 1.0 / px if px > 0 else 0.0
        (x0, x1), (y0, y1) = vb.viewRange()
        c0, c1 = max(0, math.floor(x0)), min(pic.width, math.ceil(x1))
        r0, r1 = max(0, math.floor(y0)), min(pic.rows, math.ceil(y1))
        if per_cell < DETAIL_MIN_PIXELS or c1 <= c0 or r1 <= r0:
            self._drop_detail()
            return
        # one sub-cell per pixel or so, never finer than one cluster per sub-cell
        sub = min(math.ceil(per_cell), math.ceil(math.sqrt(pic.bin)),
                  DETAIL_MAX_SIDE // max(c1 - c0, r1 - r0))
        if sub < 2 or (r1 - r0) * pic.width * pic.bin > DETAIL_MAX_CLUSTERS:
            self._drop_detail()
            return
        d = self.detail
        if d is not None and d.base is pic and (d.r0, d.c0, d.sub) == (r0, c0, sub) \
                and d.data.shape == ((r1 - r0) * sub, (c1 - c0) * sub):
            return
        self.detail = d = self.model.detail(pic, r0, r1, c0, c1, sub)
        self.detail_item.set_picture(d)
        self.detail_item.setRect(QRectF(c0, r0, c1 - c0, r1 - r0))
        self.detail_item.show()
        each = "1 cluster" if d.bin == 1 else f"up to {d.bin:,} clusters"
        self.info.setText(f"{self._info_text} · zoomed in: 1 small cell = {each}")
        if self.selected is not None and self._mode not in GUEST_MODES:
            self._mark(self.selected)

    def _width_for(self, mode: str) -> int:
        return min(auto_width(self.model.count(mode)), self._max_width())

    def _start_prefetch(self) -> None:
        """Bin the other modes in a worker so a mode switch only swaps arrays."""
        if self._closed:
            return
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
                                lambda p, cancel: model.prefetch(todo, cancel, p), self)
        self._prefetch.succeeded.connect(self._prefetched)
        # the shown mode's picture is drawn as soon as it is binned, not after all
        self._prefetch.progressed.connect(self._picture_binned)
        self._prefetch.start()

    def _picture_binned(self, _task: str, _done: int, _total: int) -> None:
        self._prefetched(None)

    def _prefetched(self, _result) -> None:
        if self._closed:    # a picture binned just before the close, delivered after it
            return
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

    def showEvent(self, ev) -> None:  # noqa: N802
        self._closed = False        # shown again after a close: pictures are wanted again
        super().showEvent(ev)

    def shut(self) -> None:
        """No more pictures: the worker stops, and a redraw that a queued signal asks
        for later (a picture binned just before) starts none (a thread left running
        at exit aborts the process)."""
        self._closed = True
        self.stop_prefetch()

    def closeEvent(self, ev) -> None:  # noqa: N802
        self.shut()                 # a closed map needs no pictures (and leaves no thread)
        super().closeEvent(ev)

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        if self.picture is not None:
            self._resize_timer.start()

    # -- interaction ---------------------------------------------------------------------
    def _in_detail(self, row: int, col: int) -> bool:
        d = self.detail
        return d is not None and d.r0 <= row < d.r0 + d.rows // d.sub \
            and d.c0 <= col < d.c0 + d.width // d.sub

    def _hovered(self, row: int, col: int) -> None:
        if row >= 0 and self._in_detail(row, col):
            return      # the finer picture on top answers
        if row < 0 or self.picture is None:
            self.hover.setText(" ")
            return
        text = self.model.describe(self.picture, row, col)
        self.hover.setText(" · ".join(t for t in text.splitlines()[:3] if t))

    def _detail_hovered(self, row: int, col: int) -> None:
        if row < 0 or self.detail is None:
            self.hover.setText(" ")
            return
        text = self.model.describe(self.detail, row, col)
        self.hover.setText(" · ".join(t for t in text.splitlines()[:3] if t))

    def _mark(self, cluster: int) -> None:
        pic = self.picture
        if pic is None or cluster >= pic.count:
            self.marker.hide()
            return
        r, c = pic.cell_of(cluster)
        d = self.detail
        if d is not None and self._in_detail(r, c):
            dr, dc = d.cell_of(cluster)
            self.marker.setRect(QRectF(d.c0 + dc / d.sub, d.r0 + dr / d.sub,
                                       1 / d.sub, 1 / d.sub))
        else:
            self.marker.setRect(QRectF(c, r, 1, 1))
        self.marker.show()

    def _detail_clicked(self, row: int, col: int) -> None:
        if self.detail is None:
            return
        cluster = self.model.representative(self.detail, row, col)
        if cluster is None:
            return
        self.select_cluster(cluster)
        self.clusterClicked.emit(cluster, self._mode)

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
        """Scene position of the cell holding ``cluster`` (tests drive hover/click with it):
        its sub-cell when the zoomed-in picture shows it."""
        r, c = self.picture.cell_of(cluster)
        if self._in_detail(r, c):
            dr, dc = self.detail.cell_of(cluster)
            return self.detail_item.mapToScene(dc + 0.5, dr + 0.5)
        return self.item.mapToScene(c + 0.5, r + 0.5)
