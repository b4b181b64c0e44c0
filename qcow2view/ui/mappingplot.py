"""Guest offset against host offset for this image's data clusters.

A contiguous run of clusters is one straight segment, so a fresh sequential
image is one diagonal line and a fragmented one a scatter of short strokes.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..model.allocation import AllocationModel
from ..model.units import count
from .axes import ByteAxis

MAX_SEGMENTS = 50000


class MappingPlot(QWidget):
    def __init__(self, model: AllocationModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.plot = pg.PlotWidget(axisItems={"bottom": ByteAxis("bottom"),
                                             "left": ByteAxis("left")})
        self.plot.setBackground("w")
        self.plot.setLabel("bottom", "guest offset")
        self.plot.setLabel("left", "host offset")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setMenuEnabled(False)
        self.curve = self.plot.plot([], [], connect="pairs",
                                    pen=pg.mkPen("#1e88e5", width=2))
        self.info = QLabel()
        self.info.setStyleSheet("color: #546e7a")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.info)
        lay.addWidget(self.plot, 1)
        self.runs = 0
        model.changed.connect(self.redraw)
        self.redraw()

    def redraw(self) -> None:
        if self.model.guest_map is None:
            self.curve.setData([], [])
            self.info.setText("Building maps…" if self.model.host_map is None
                              else "Guest map not available")
            return
        x, y, runs = self.model.mapping_segments(MAX_SEGMENTS)
        self.runs = runs
        self.curve.setData(x, y, connect="pairs")
        if runs == 0:
            self.info.setText("No data clusters in this image (everything is unallocated, "
                              "zero or in the backing file)")
        else:
            shown = "" if runs <= MAX_SEGMENTS else f" (every {runs // MAX_SEGMENTS}th shown)"
            self.info.setText(f"{count(runs, 'contiguous run')} of data clusters{shown}: "
                              "one diagonal line means no fragmentation")
        self.plot.enableAutoRange()
