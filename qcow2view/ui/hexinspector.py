"""Read-outs under a hex view: the tint legend and the value inspector."""

from __future__ import annotations

import struct

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QWidget

from ..model.bytesource import ImageFileSource
from ..model.extents import GuestKind
from ..model.hexdocument import HexDocument
from .hexstyle import CLUSTER_LINE, KIND_STYLE, PENDING_STYLE, SECTOR_LINE
from .hexview import HexView


class HexLegend(QWidget):
    """Swatches for the tints and boundary lines."""

    PER_ROW = 4     # swatches per row: one long row made the window 1,200 px wide at least

    def __init__(self, kinds: tuple[GuestKind, ...], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QGridLayout(self)
        lay.setContentsMargins(4, 0, 4, 0)
        lay.setHorizontalSpacing(6)
        lay.setVerticalSpacing(0)
        pairs: list[tuple[QLabel, QLabel]] = []
        items = [KIND_STYLE[k] for k in kinds] + [PENDING_STYLE]
        for bg, fg, text in items:
            sw = QLabel("ab", self)
            sw.setStyleSheet(f"background:{bg}; color:{fg}; border:1px solid #b0b0b0;"
                             "padding:0 3px; font-family:monospace")
            pairs.append((sw, QLabel(text, self)))
        for color, text, style in ((CLUSTER_LINE.name(), "cluster start", "solid"),
                                   (SECTOR_LINE.name(), "sector start", "dashed")):
            line = QLabel(self)
            line.setFixedSize(22, 8)
            line.setStyleSheet(f"border-top:2px {style} {color}")
            pairs.append((line, QLabel(text, self)))
        for i, (mark, label) in enumerate(pairs):
            r, c = divmod(i, self.PER_ROW)
            lay.addWidget(mark, r, 2 * c)
            lay.addWidget(label, r, 2 * c + 1)
        lay.setColumnStretch(2 * self.PER_ROW, 1)


class Inspector(QLabel):
    """Offset, sector, cluster, host offset and the value under the caret."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        font = QFontDatabase.systemFont(QFontDatabase.FixedFont)
        self.setFont(font)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        self.setStyleSheet("background:#fafafa; border-top:1px solid #d8d8d8; padding:3px")
        # wrap rather than widen the window: its lines are long
        self.setWordWrap(True)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.summary = ""
        self._namer = None

    def set_namer(self, namer) -> None:
        """``namer(guest offset) -> str | None``: what the guest keeps there
        ("partition 2 (ext4), block 5 of 4 KiB, /etc/fstab +0x10"), a line of its own."""
        self._namer = namer

    def show_at(self, view: HexView) -> None:
        doc = view.doc
        if doc is None or doc.size == 0:
            self.setText("")
            return
        off = view.cursor
        ss = view.sector_size
        cs = doc.cluster_size
        lines = [f"offset {off:#x} ({off:,})   sector {off // ss} (+{off % ss:#x}, {ss} B)   "
                 f"cluster {off // cs} (+{off % cs:#x})   " + self._host(doc, off)]
        raw = doc.read(off, 8).ljust(8, b"\0")
        # a value is shown only where all its bytes were read
        readable = next((n for n in range(8) if off + n >= doc.size
                         or doc.block_error(off + n)), 8)
        vals = []
        for n, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q")):
            if n > readable:
                vals.append(f"u{8 * n} ?")
                continue
            le = struct.unpack("<" + code, raw[:n])[0]
            be = struct.unpack(">" + code, raw[:n])[0]
            vals.append(f"u{8 * n} {le}" if n == 1 else f"u{8 * n} le {le} be {be}")
        lines.append("   ".join(vals))
        if self._namer is not None and not isinstance(doc.source, ImageFileSource):
            name = self._namer(off)
            if name:
                lines.append(name)
        start, sl = view.selection()
        if sl:
            lines[0] += f"   selection {start:#x}+{sl:#x} ({sl:,} bytes)"
        if doc.modified:
            lines[0] += f"   {doc.pending_bytes():,} byte(s) pending"
        self.summary = lines[0]
        self.setText("\n".join(lines))

    @staticmethod
    def _host(doc: HexDocument, off: int) -> str:
        if isinstance(doc.source, ImageFileSource):
            return f"image file byte {off:#x} (host cluster {off // doc.cluster_size})"
        err = doc.block_error(off)
        if err:
            return f"unreadable: {err}"
        m = doc.mapping_at(off)
        if m is None:
            return "host: ?"
        where = "" if m.depth <= 0 else f" in backing file {m.depth}"
        if m.depth < 0:
            return "host: unallocated (reads as zeros)"
        t = m.type.name
        if t == "COMPRESSED":
            return f"host: compressed at {m.host_offset:#x} ({m.compressed_size} B){where}"
        if t == "ZERO_PLAIN":
            return f"host: zero cluster, no host cluster{where}"
        if t == "ZERO_ALLOC":
            return f"host: zero cluster, preallocated at {m.host_offset:#x}{where}"
        if m.host_offset is None:
            return f"host: {t.lower()}{where}"
        return f"host: {m.host_offset:#x}{where}"
