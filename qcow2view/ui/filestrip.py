"""Where the selection lives, at a glance: two bands under the Files tree, the guest
disk (partitions marked) and the image file, with the selection's bytes lit."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QSizePolicy, QWidget

BAND = 14           # pixels per band
LABEL = 70          # pixels for the band's name
PART_FILL = (QColor("#e3f2fd"), QColor("#e8f5e9"))
EDGE = QColor("#90a4ae")


class FileStrip(QWidget):
    """Guest disk and image file as two bands; :meth:`set_lit` lights byte ranges."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("filesStrip")
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setFixedHeight(2 * BAND + 10)
        self.disk_size = 0
        self.file_size = 0
        self.partitions: list[tuple[int, int, str]] = []
        self.guest: list[tuple[int, int]] = []      # lit guest byte ranges
        self.host = np.zeros(0, np.int64)           # lit host clusters
        self.cluster_size = 1
        self.setToolTip("Where the selection lives: on the guest disk (partitions "
                        "outlined) and in the image file, lit in the selection's colour")

    def set_layout(self, disk_size: int, partitions: list[tuple[int, int, str]],
                   file_size: int, cluster_size: int) -> None:
        self.disk_size, self.partitions = disk_size, partitions
        self.file_size, self.cluster_size = file_size, max(1, cluster_size)
        self.update()

    def set_lit(self, guest: list[tuple[int, int]], host_clusters) -> None:
        self.guest = list(guest)
        self.host = np.asarray(host_clusters, np.int64)
        self.update()

    def _x(self, offset: int, size: int, width: float) -> float:
        return LABEL + width * offset / size if size else LABEL

    def paintEvent(self, _e) -> None:  # noqa: N802
        p = QPainter(self)
        lit = self.palette().highlight().color()      # the colour of the selected row
        w = max(1.0, self.width() - LABEL - 4.0)
        p.setPen(QColor("#546e7a"))
        for i, name in enumerate(("guest disk", "image file")):
            p.drawText(QRectF(0, 4 + i * (BAND + 2), LABEL - 4, BAND),
                       Qt.AlignRight | Qt.AlignVCenter, name)
        y0, y1 = 4.0, 4.0 + BAND + 2
        p.fillRect(QRectF(LABEL, y0, w, BAND), QColor("#f5f5f5"))
        p.fillRect(QRectF(LABEL, y1, w, BAND), QColor("#f5f5f5"))
        if self.disk_size:
            boxes = []
            for i, (start, size, name) in enumerate(self.partitions):
                x0 = self._x(start, self.disk_size, w)
                x1 = self._x(start + size, self.disk_size, w)
                boxes.append((QRectF(x0, y0, max(1.0, x1 - x0), BAND), name))
                p.fillRect(boxes[-1][0], PART_FILL[i % 2])
            for g, n in self.guest:
                x0 = self._x(g, self.disk_size, w)
                x1 = self._x(g + n, self.disk_size, w)
                p.fillRect(QRectF(x0, y0, max(3.0, x1 - x0), BAND), lit)
            for r, name in boxes:       # names over the lit bytes, so they stay readable
                p.setPen(EDGE)
                p.drawRect(r)
                p.setPen(QColor("#37474f"))
                p.drawText(r.adjusted(3, 0, 0, 0), Qt.AlignLeft | Qt.AlignVCenter, name)
        if self.file_size and len(self.host):
            cs = self.cluster_size
            px = np.unique((self.host * cs * w / self.file_size).astype(np.int64))
            for x in px.tolist():
                p.fillRect(QRectF(LABEL + x, y1, 3.0, BAND), lit)
        p.setPen(EDGE)
        p.drawRect(QRectF(LABEL, y0, w, BAND))
        p.drawRect(QRectF(LABEL, y1, w, BAND))
        p.end()
