"""pyqtgraph axes that label byte offsets in binary units."""

from __future__ import annotations

import pyqtgraph as pg

from ..model.units import human_size


class ByteAxis(pg.AxisItem):
    """Ticks in bytes (``scale`` bytes per unit of the view), labelled 0, 64 KiB, 1 GiB..."""

    def __init__(self, orientation: str, scale: float = 1.0, **kw) -> None:
        super().__init__(orientation, **kw)
        self.bytes_per_unit = scale
        self.enableAutoSIPrefix(False)

    def tickStrings(self, values, scale, spacing):
        out = []
        for v in values:
            b = v * self.bytes_per_unit
            out.append("" if b < 0 else ("0" if b == 0 else human_size(int(round(b)))))
        return out
