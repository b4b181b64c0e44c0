"""Layers on the heatmap for the guest's files: the selection's clusters lit and the
rest dimmed (:class:`MapHighlight`), and where partitions start (:class:`PartitionMarks`).

The highlight is an RGBA :class:`pyqtgraph.ImageItem` on top of the map's overview
picture: cells holding none of the clusters are veiled in white, the others stay as
they are.  Both follow the map's picture (a mode switch, a resize) through
:attr:`HeatmapView.pictureChanged`.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

VEIL = (255, 255, 255, 185)     # over cells that hold none of the clusters


class MapHighlight:
    """The highlight layer of one :class:`~.heatmap.HeatmapView`."""

    def __init__(self, view) -> None:
        self.view = view
        self.guest = np.zeros(0, np.int64)
        self.host = np.zeros(0, np.int64)
        self.active = False
        self.item = pg.ImageItem(axisOrder="row-major")
        self.item.setZValue(8)
        self.item.setAcceptHoverEvents(False)
        self.item.setAcceptedMouseButtons(pg.QtCore.Qt.NoButton)
        self.item.hide()
        view.plot.addItem(self.item)
        view.pictureChanged.connect(self.redraw)
        view.modeChanged.connect(lambda _m: self.redraw())

    def set(self, guest_clusters, host_clusters) -> None:
        """Light up these guest clusters (guest view) and host clusters (host views)."""
        self.guest = np.asarray(guest_clusters, np.int64)
        self.host = np.asarray(host_clusters, np.int64)
        self.active = True
        self.redraw()

    def clear(self) -> None:
        self.active = False
        self.item.hide()

    def cells(self) -> np.ndarray:
        """(rows, width) bool: the overview cells lit in the current mode."""
        pic = self.view.picture
        lit = np.zeros((pic.rows, pic.width), bool)
        clusters = self.guest if pic.mode in ("guest", "fs") else self.host
        clusters = clusters[(clusters >= 0) & (clusters < pic.count)]
        k = clusters // pic.bin
        r, c = np.divmod(k, pic.width)
        ok = r < pic.rows
        lit[r[ok], c[ok]] = True
        return lit

    def redraw(self) -> None:
        pic = self.view.picture
        if not self.active or pic is None:
            self.item.hide()
            return
        lit = self.cells()
        rgba = np.empty(lit.shape + (4,), np.uint8)
        rgba[...] = VEIL
        rgba[lit] = (0, 0, 0, 0)
        self.item.setImage(rgba, autoLevels=False, levels=(0, 255))
        self.item.setRect(0, 0, pic.width, pic.rows)
        self.item.show()


class PartitionMarks:
    """Where each partition starts on the guest views of the map: a bar on the left edge
    of the cell holding its first cluster, and its name ("2 ext4")."""

    def __init__(self, view) -> None:
        self.view = view
        self.partitions: list[tuple[int, int, str]] = []
        self.items: list = []
        view.pictureChanged.connect(self.redraw)
        view.modeChanged.connect(lambda _m: self.redraw())

    def set(self, partitions: list[tuple[int, int, str]]) -> None:
        """(guest start, size, name) of each partition."""
        self.partitions = list(partitions)
        self.redraw()

    def _clear(self) -> None:
        for it in self.items:
            self.view.plot.removeItem(it)
        self.items = []

    def redraw(self) -> None:
        self._clear()
        pic = self.view.picture
        if pic is None or pic.mode not in ("guest", "fs"):
            return
        pen = pg.mkPen("#d50000", width=3)
        for start, _size, name in self.partitions:
            cluster = start // pic.cluster_size
            if cluster >= pic.count:
                continue
            r, c = pic.cell_of(cluster)
            line = pg.PlotCurveItem([c, c], [r, r + 1], pen=pen)
            # above the cell, or below it on the first row (above is outside the plot)
            label = pg.TextItem(name, color="#b71c1c", anchor=(0, 1) if r else (0, 0))
            label.setPos(c, r)
            for it in (line, label):
                it.setZValue(9)
                self.view.plot.addItem(it)
                self.items.append(it)
