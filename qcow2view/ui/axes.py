"""pyqtgraph axes that label byte offsets in binary units."""

from __future__ import annotations

import math

import pyqtgraph as pg

from ..model.units import human_size


class ByteAxis(pg.AxisItem):
    """Ticks in bytes (``scale`` bytes per unit of the view), labelled 0, 64 KiB, 1 GiB..."""

    def __init__(self, orientation: str, scale: float = 1.0, **kw) -> None:
        super().__init__(orientation, **kw)
        self.bytes_per_unit = scale
        #: (first, last) view units that hold something: no ticks outside (an axis
        #: labelled past the end of the file would promise bytes that are not there)
        self.extent: tuple[float, float] | None = None
        self.enableAutoSIPrefix(False)

    def set_scale(self, bytes_per_unit: float, extent: tuple[float, float] | None = None) -> None:
        """Bytes per view unit and the units that hold something; the ticks are redrawn."""
        self.bytes_per_unit = bytes_per_unit
        self.extent = extent
        self.picture = None         # pyqtgraph's cached drawing of the ticks
        self.update()

    def tickValues(self, minVal, maxVal, size):
        levels = super().tickValues(minVal, maxVal, size)
        if self.extent is None:
            return levels
        lo, hi = self.extent
        eps = (hi - lo) * 1e-9
        return [(spacing, [v for v in values if lo - eps <= v <= hi + eps])
                for spacing, values in levels]

    def tickSpacing(self, minVal, maxVal, size):
        """Ticks at powers of two bytes (64 MiB, 128 MiB, ...), about one per 80 pixels."""
        bpu = self.bytes_per_unit or 1.0
        span = (maxVal - minVal) * bpu
        if span <= 0 or size <= 0:
            return super().tickSpacing(minVal, maxVal, size)
        target = span / max(2.0, size / 80.0)
        major = 2.0 ** math.ceil(math.log2(max(target, 1.0)))
        self._major = major / bpu
        return [(major / bpu, 0), (major / 4 / bpu, 0)]

    def tickStrings(self, values, scale, spacing):
        major = getattr(self, "_major", None)
        if major is not None and spacing < major * 0.99:
            return [""] * len(values)       # minor ticks: marks, no labels
        out = []
        for v in values:
            b = v * self.bytes_per_unit
            out.append("" if b < 0 else ("0" if b == 0 else human_size(int(round(b)))))
        return out
