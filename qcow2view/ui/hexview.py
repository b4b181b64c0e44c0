"""The hex view of guest sectors (and of the raw image file), with editing.

:class:`HexView` is a ``QAbstractScrollArea`` that paints only the visible rows
of a :class:`~qcow2view.model.hexdocument.HexDocument`.  Its vertical scrollbar
is scaled (range capped at :data:`SCROLL_MAX`) so a 2 TiB disk, beyond 2^31
rows, still scrolls and jumps exactly.  :class:`HexEditor` puts the view
together with a toolbar, the find bar, a legend and a value inspector.
"""

from __future__ import annotations

import math
import struct

from PySide6.QtCore import QEvent, QRect, Qt, Signal
from PySide6.QtGui import (QAction, QColor, QFont, QFontDatabase, QFontMetrics, QFontMetricsF,
                           QGuiApplication,
                           QKeySequence, QPainter, QPen, QStaticText)
from PySide6.QtWidgets import (QAbstractScrollArea, QComboBox, QDialog, QGridLayout,
                               QInputDialog, QLabel, QMenu, QMessageBox,
                               QSizePolicy, QToolBar, QUndoView, QVBoxLayout, QWidget)

from ..model.extents import ByteKind
from ..model.hexdocument import FileHexDocument, HexDocument
from .find import FindBar
from .goto import GotoDialog

SCROLL_MAX = 1 << 28          # scrollbar range cap; rows beyond are mapped proportionally
WHEEL_ROWS = 3

#: background and text colour of each ByteKind (light theme)
KIND_STYLE: dict[int, tuple[str, str, str]] = {
    ByteKind.DATA: ("#ffffff", "#111111", "Data"),
    ByteKind.COMPRESSED: ("#eadcf8", "#3a1760", "Compressed"),
    ByteKind.BACKING: ("#fff1cc", "#5a4300", "Backing file"),
    ByteKind.ZERO: ("#e3ebf5", "#7a8aa0", "Zero"),
    ByteKind.UNALLOCATED: ("#f1f1f1", "#a0a0a0", "Unallocated"),
    ByteKind.FILE: ("#ffffff", "#111111", "Image file"),
    ByteKind.ERROR: ("#f8d0d0", "#900000", "Unreadable"),
}
PENDING_STYLE = ("#ffb86b", "#5c1a00", "Pending edit")
SELECTION = QColor(30, 100, 230, 80)
CLUSTER_LINE = QColor("#2f6fce")
SECTOR_LINE = QColor("#c8c8c8")

OFFSET_MODES = (("Byte offset (hex)", 0), ("LBA, 512-byte sectors", 512),
                ("LBA, 4 KiB sectors", 4096))


# non-printable bytes show as a middle dot (latin-1 0xB7)
_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0xB7 for b in range(256))


def _printable(data: bytes) -> str:
    return data.translate(_PRINTABLE).decode("latin-1")


# bytes that could not be read show as ?? (not as the zeros the buffer holds)
_UNKNOWN = str.maketrans("0123456789abcdef", "?" * 16)
_ERROR_KEY = int(ByteKind.ERROR) * 2


def grid_font(font: QFont) -> QFont:
    """``font`` with a whole-pixel character advance, so column ``i`` of a row
    drawn as one string is exactly at ``i * advance`` (fractional advances
    drift by several characters over a 32-byte row)."""
    font = QFont(font)
    font.setHintingPreference(QFont.PreferFullHinting)
    adv = QFontMetricsF(font).horizontalAdvance("0")
    if adv != int(adv):
        font.setLetterSpacing(QFont.AbsoluteSpacing, math.ceil(adv) - adv)
    return font


def _style(key: int) -> tuple[QColor | None, QColor]:
    """(background or None for white, text colour) of a kind*2+pending key."""
    kind, pending = divmod(key, 2)
    bg, fg, _ = PENDING_STYLE if pending else KIND_STYLE.get(kind, KIND_STYLE[ByteKind.DATA])
    return (None if bg == "#ffffff" else QColor(bg)), QColor(fg)


_STYLES: dict[int, tuple[QColor | None, QColor]] = {}


class HexView(QAbstractScrollArea):
    """Offset, hex and text columns over a HexDocument."""

    cursorChanged = Signal(object)      # offsets exceed 2^31: object, not int
    selectionChanged = Signal(object, object)       # start, length (0 = none)
    message = Signal(str)                      # short notices for the status bar
    requestGoto = Signal()
    requestFind = Signal(bool)                 # text column?
    requestFindNext = Signal(bool)             # forward?
    requestEditable = Signal()
    requestSave = Signal()

    def __init__(self, doc: HexDocument | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.doc: HexDocument | None = None
        self.bytes_per_row = 16
        self.sector_mode = 0                   # 0: byte offsets, else sector size of LBAs
        self.top_row = 0
        self.cursor = 0
        self.nibble = 0
        self.anchor: int | None = None
        self.column = "hex"
        self._at_end = False
        self._dragging = False
        self._syncing = False
        self._statics: dict[str, QStaticText] = {}
        self._exact_row: int | None = None
        font = QFontDatabase.systemFont(QFontDatabase.FixedFont)
        font.setStyleHint(QFont.Monospace)
        font.setPointSizeF(max(9.0, font.pointSizeF()))
        self.setFont(grid_font(font))
        self.setFocusPolicy(Qt.StrongFocus)
        self.viewport().setCursor(Qt.IBeamCursor)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        self.verticalScrollBar().valueChanged.connect(self._scrolled)
        self.verticalScrollBar().actionTriggered.connect(self._scroll_action)
        self.horizontalScrollBar().valueChanged.connect(lambda _: self.viewport().update())
        self._metrics()
        if doc is not None:
            self.set_document(doc)

    # -- document ----------------------------------------------------------------------
    def set_document(self, doc: HexDocument) -> None:
        if self.doc is not None:
            for sig in (self.doc.contentChanged, self.doc.reloaded):
                try:
                    sig.disconnect(self)
                except (RuntimeError, TypeError):
                    pass
        self.doc = doc
        doc.contentChanged.connect(self._content_changed)
        doc.reloaded.connect(self._reloaded)
        self.cursor = min(self.cursor, max(0, doc.size - 1))
        self._update_scroll()
        self.viewport().update()

    def _content_changed(self, offset: int, length: int) -> None:
        self.viewport().update()
        if offset <= self.cursor < offset + length:
            self.cursorChanged.emit(self.cursor)

    def _reloaded(self) -> None:
        self.cursor = min(self.cursor, max(0, self.size - 1))
        self._update_scroll()
        self.viewport().update()
        self.cursorChanged.emit(self.cursor)

    @property
    def size(self) -> int:
        return 0 if self.doc is None else self.doc.size

    # -- geometry ----------------------------------------------------------------------
    def _metrics(self) -> None:
        fm = QFontMetrics(self.font())
        self.cw = math.ceil(QFontMetricsF(self.font()).horizontalAdvance("0"))
        self.lh = fm.height() + 2
        self.ascent = fm.ascent() + 1
        size = self.size
        if self.sector_mode:
            self.off_chars = max(9, len(str(max(0, size - 1) // self.sector_mode)) + 1)
        else:
            self.off_chars = max(8, len(f"{max(0, size - 1):x}"))
        cw, bpr = self.cw, self.bytes_per_row
        self.x_off = 6
        self.x_hex = self.x_off + (self.off_chars + 2) * cw
        self.hex_chars = bpr * 3 + bpr // 8 - 2
        self.x_text = self.x_hex + (self.hex_chars + 3) * cw
        self.total_w = self.x_text + (bpr + 1) * cw
        self.header_h = self.lh + 2

    def setFont(self, font: QFont) -> None:  # noqa: N802
        super().setFont(font)
        if hasattr(self, "_statics"):
            self._statics.clear()
        if hasattr(self, "bytes_per_row"):
            self._metrics()
            self._update_scroll()

    def set_bytes_per_row(self, n: int) -> None:
        if n not in (16, 32):
            raise ValueError("16 or 32 bytes per row")
        self.bytes_per_row = n
        self._metrics()
        self._update_scroll()
        self.ensure_visible(self.cursor)
        self.viewport().update()

    def set_sector_mode(self, sector_size: int) -> None:
        """0 for byte offsets, 512 or 4096 for LBA numbers in the offset column."""
        self.sector_mode = sector_size
        self._metrics()
        self._update_scroll()
        self.viewport().update()

    @property
    def sector_size(self) -> int:
        return self.sector_mode or 512

    @property
    def total_rows(self) -> int:
        return -(-self.size // self.bytes_per_row)

    @property
    def visible_rows(self) -> int:
        return max(1, (self.viewport().height() - self.header_h) // self.lh)

    @property
    def max_top(self) -> int:
        return max(0, self.total_rows - self.visible_rows)

    def _update_scroll(self) -> None:
        sb = self.verticalScrollBar()
        mt = self.max_top
        self._syncing = True
        try:
            sb.setRange(0, min(mt, SCROLL_MAX))
            sb.setPageStep(min(self.visible_rows, SCROLL_MAX))
            sb.setSingleStep(1)
            self.top_row = min(self.top_row, mt)
            sb.setValue(self._row_to_value(self.top_row))
        finally:
            self._syncing = False
        hb = self.horizontalScrollBar()
        hb.setRange(0, max(0, self.total_w - self.viewport().width()))
        hb.setPageStep(self.viewport().width())

    def _row_to_value(self, row: int) -> int:
        mt = self.max_top
        if mt <= SCROLL_MAX:
            return row
        return row * SCROLL_MAX // mt

    def _value_to_row(self, value: int) -> int:
        mt = self.max_top
        if mt <= SCROLL_MAX:
            return value
        return min(mt, value * mt // SCROLL_MAX)

    def _scrolled(self, value: int) -> None:
        if self._syncing:
            return
        exact, self._exact_row = self._exact_row, None
        if exact is not None and self._row_to_value(exact) == value:
            self.top_row = exact           # set by _scroll_action: keep the exact row
        else:
            self.top_row = self._value_to_row(value)
        self.viewport().update()

    def _scroll_action(self, action: int) -> None:
        """Arrow and page clicks on a scaled scrollbar move by rows, not by
        (hundreds of rows per) scrollbar units."""
        if self.max_top <= SCROLL_MAX:
            return
        A = self.verticalScrollBar().SliderAction
        step = {A.SliderSingleStepAdd.value: 1, A.SliderSingleStepSub.value: -1,
                A.SliderPageStepAdd.value: self.visible_rows,
                A.SliderPageStepSub.value: -self.visible_rows}.get(int(action))
        if step is None:
            return
        row = max(0, min(self.top_row + step, self.max_top))
        # QAbstractSlider sets the value from the slider position after this slot
        self._exact_row = row
        self.verticalScrollBar().setSliderPosition(self._row_to_value(row))
        self.top_row = row
        self.viewport().update()

    def set_top_row(self, row: int) -> None:
        self.top_row = max(0, min(row, self.max_top))
        self._syncing = True
        try:
            self.verticalScrollBar().setValue(self._row_to_value(self.top_row))
        finally:
            self._syncing = False
        self.viewport().update()

    def resizeEvent(self, e) -> None:  # noqa: N802
        super().resizeEvent(e)
        self._update_scroll()

    def ensure_visible(self, offset: int) -> None:
        row = offset // self.bytes_per_row
        if row < self.top_row:
            self.set_top_row(row)
        elif row >= self.top_row + self.visible_rows:
            self.set_top_row(row - self.visible_rows + 1)

    # -- cursor and selection ------------------------------------------------------------
    def selection(self) -> tuple[int, int]:
        """(start, length) of the selection; length 0 when nothing is selected."""
        if self.anchor is None or self.anchor == self.cursor:
            return self.cursor, 0
        lo, hi = sorted((self.anchor, self.cursor))
        return lo, hi - lo + 1

    def set_cursor(self, offset: int, *, extend: bool = False, nibble: int = 0) -> None:
        if self.size == 0:
            return
        offset = max(0, min(offset, self.size - 1))
        if extend:
            if self.anchor is None:
                self.anchor = self.cursor
        else:
            self.anchor = None
        self.cursor = offset
        self.nibble = nibble
        self._at_end = False
        self.ensure_visible(offset)
        self.viewport().update()
        self.cursorChanged.emit(offset)
        self.selectionChanged.emit(*self.selection())

    def goto(self, offset: int, *, focus: bool = True) -> None:
        """Put the caret on ``offset`` in the hex column (and take the focus)."""
        self.column = "hex"
        row = max(0, min(offset, self.size - 1)) // self.bytes_per_row
        if not (self.top_row <= row < self.top_row + self.visible_rows):
            self.set_top_row(row - self.visible_rows // 3)
        self.set_cursor(offset)
        if focus:
            self.setFocus(Qt.OtherFocusReason)
            self.activateWindow()

    def select_range(self, offset: int, length: int) -> None:
        """Select ``length`` bytes from ``offset`` (e.g. a metadata structure)."""
        if length <= 0:
            self.goto(offset, focus=False)
            return
        end = min(self.size - 1, offset + length - 1)
        self.goto(offset, focus=False)
        self.anchor = offset
        self.cursor = end
        if (end - offset) // self.bytes_per_row < self.visible_rows:
            self.ensure_visible(end)
        self.ensure_visible(offset)
        self.viewport().update()
        self.cursorChanged.emit(self.cursor)
        self.selectionChanged.emit(*self.selection())

    # -- painting ----------------------------------------------------------------------
    def paintEvent(self, e) -> None:  # noqa: N802
        p = QPainter(self.viewport())
        pal = self.palette()
        vw, vh = self.viewport().width(), self.viewport().height()
        p.fillRect(0, 0, vw, vh, QColor("#ffffff"))
        p.setFont(self.font())
        p.translate(-self.horizontalScrollBar().value(), 0)
        cw, lh, bpr = self.cw, self.lh, self.bytes_per_row
        # header
        p.fillRect(0, 0, self.total_w + vw, self.header_h, QColor("#f4f4f4"))
        p.setPen(QColor("#606060"))
        head = ("LBA" if self.sector_mode else "Offset").rjust(self.off_chars)
        p.drawText(self.x_off, self.ascent, head)
        cols = [f"{i:02X}" for i in range(bpr)]
        hexhead = "  ".join(" ".join(cols[i:i + 8]) for i in range(0, bpr, 8))
        p.drawText(self.x_hex, self.ascent, hexhead)
        p.drawText(self.x_text, self.ascent,
                   "Text" if self.sector_mode == 0 else f"Text ({self.sector_mode}-byte sectors)")
        p.setPen(QColor("#d0d0d0"))
        p.drawLine(0, self.header_h - 1, self.total_w + vw, self.header_h - 1)
        if self.doc is None or self.size == 0:
            return
        rows = min(self.visible_rows + 1, self.total_rows - self.top_row)
        first = self.top_row * bpr
        data, kinds, pend = self.doc.span(first, rows * bpr)
        raw = data.tobytes()
        keys = (kinds * 2 + pend).astype("uint8").tobytes()
        sel_start, sel_len = self.selection()
        cs = self.doc.cluster_size
        ss = self.sector_size
        focus = self.hasFocus()
        x_hex, x_text, asc = self.x_hex, self.x_text, self.ascent
        for r in range(rows):
            off = first + r * bpr
            a = r * bpr
            n = min(bpr, len(raw) - a)
            if n <= 0:
                break
            y = self.header_h + r * lh
            chunk = raw[a:a + n]
            rowhex = "  ".join(chunk[i:i + 8].hex(" ") for i in range(0, n, 8))
            rowtxt = _printable(chunk)
            # tinted runs: same kind and pending state (usually one per row)
            k = keys[a:a + n]
            if k.count(k[0]) == n:
                runs = ((0, n, k[0]),)
            else:
                runs, i = [], 0
                for j in range(1, n + 1):
                    if j == n or k[j] != k[i]:
                        runs.append((i, j, k[i]))
                        i = j
            for i, j, key in runs:
                st = _STYLES.get(key)
                if st is None:
                    st = _STYLES[key] = _style(key)
                bg, fg = st
                ci, cj = i * 3 + i // 8, (j - 1) * 3 + (j - 1) // 8 + 2
                if bg is not None:
                    hx0 = x_hex + ci * cw - cw // 2
                    p.fillRect(hx0, y, x_hex + cj * cw + cw // 2 - hx0, lh, bg)
                    p.fillRect(x_text + i * cw, y, (j - i) * cw, lh, bg)
                p.setPen(fg)
                if key == _ERROR_KEY:
                    p.drawStaticText(x_hex + ci * cw, y + 1,
                                     self._static(rowhex[ci:cj].translate(_UNKNOWN)))
                    p.drawStaticText(x_text + i * cw, y + 1, self._static("?" * (j - i)))
                    continue
                p.drawStaticText(x_hex + ci * cw, y + 1, self._static(rowhex[ci:cj]))
                p.drawStaticText(x_text + i * cw, y + 1, self._static(rowtxt[i:j]))
            # selection
            if sel_len:
                lo, hi = max(sel_start, off), min(sel_start + sel_len, off + n)
                if lo < hi:
                    i, j = lo - off, hi - off
                    hx0 = self.x_hex + (i * 3 + i // 8) * cw - cw // 2
                    hx1 = self.x_hex + ((j - 1) * 3 + (j - 1) // 8 + 2) * cw + cw // 2
                    p.fillRect(hx0, y, hx1 - hx0, lh, SELECTION)
                    p.fillRect(self.x_text + i * cw, y, (j - i) * cw, lh, SELECTION)
            # offset column
            p.setPen(QColor("#5a5a5a"))
            p.drawText(self.x_off, y + self.ascent, self._offset_text(off))
            # boundaries: a line above the row where a cluster (sector) starts
            if off % cs == 0 and off:
                p.setPen(QPen(CLUSTER_LINE, 1))
                p.drawLine(self.x_off, y, self.total_w, y)
            elif off % ss == 0 and off:
                p.setPen(QPen(SECTOR_LINE, 1, Qt.DashLine))
                p.drawLine(self.x_hex - cw, y, self.total_w, y)
            # caret
            if off <= self.cursor < off + n:
                i = self.cursor - off
                hx = self.x_hex + (i * 3 + i // 8) * cw
                tx = self.x_text + i * cw
                active = QPen(QColor("#000000"), 2)
                passive = QPen(QColor("#707070"), 1, Qt.DotLine)
                p.setBrush(Qt.NoBrush)
                p.setPen(active if self.column == "hex" and focus else passive)
                p.drawRect(hx - 1, y + 1, 2 * cw + 2, lh - 2)
                if self.column == "hex" and focus:
                    p.fillRect(hx + self.nibble * cw, y + lh - 4, cw, 2, QColor("#000000"))
                p.setPen(active if self.column == "text" and focus else passive)
                p.drawRect(tx - 1, y + 1, cw + 2, lh - 2)
        p.setPen(QColor("#e0e0e0"))
        p.drawLine(self.x_hex - cw, 0, self.x_hex - cw, vh)
        p.drawLine(self.x_text - cw - cw // 2, 0, self.x_text - cw - cw // 2, vh)
        del pal

    def _static(self, text: str) -> QStaticText:
        """Laid-out text, cached: scrolling by a row repaints mostly the same rows."""
        st = self._statics.get(text)
        if st is None:
            if len(self._statics) > 1024:
                self._statics.clear()
            st = self._statics[text] = QStaticText(text)
            st.setTextFormat(Qt.PlainText)
        return st

    def _offset_text(self, off: int) -> str:
        if not self.sector_mode:
            return f"{off:0{self.off_chars}x}"
        ss = self.sector_mode
        if off % ss == 0:
            return f"{off // ss}".rjust(self.off_chars)
        return f"+{off % ss:x}".rjust(self.off_chars)

    # -- hit testing -------------------------------------------------------------------
    def hit(self, x: int, y: int) -> tuple[int, str, int] | None:
        """(offset, column, nibble) under viewport point (x, y)."""
        x += self.horizontalScrollBar().value()
        # above the rows (while dragging): the row before the first, so it scrolls
        row = max(0, self.top_row + (y - self.header_h) // self.lh)
        cw, bpr = self.cw, self.bytes_per_row
        if x >= self.x_text - cw:
            i = max(0, min(bpr - 1, (x - self.x_text) // cw))
            col, nib = "text", 0
        else:
            c = max(0, (x - self.x_hex) // cw)
            group, rest = divmod(c, 25)          # 8 bytes take 24 chars + 1 gap
            i = min(bpr - 1, group * 8 + min(7, rest // 3))
            nib = 1 if rest < 24 and rest % 3 == 1 else 0
            col = "hex"
        off = row * bpr + i
        if self.size == 0:
            return None
        return min(off, self.size - 1), col, nib

    def mousePressEvent(self, e) -> None:  # noqa: N802
        if e.button() not in (Qt.LeftButton, Qt.RightButton):
            return
        h = self.hit(int(e.position().x()), int(e.position().y()))
        if h is None:
            return
        off, col, nib = h
        if e.button() == Qt.RightButton:
            start, n = self.selection()
            if n and start <= off < start + n:
                return       # keep the selection for the context menu
        self.column = col
        self.set_cursor(off, extend=bool(e.modifiers() & Qt.ShiftModifier),
                        nibble=nib if col == "hex" else 0)
        self._dragging = e.button() == Qt.LeftButton

    def mouseMoveEvent(self, e) -> None:  # noqa: N802
        if not self._dragging:
            return
        h = self.hit(int(e.position().x()), int(e.position().y()))
        if h is not None and h[0] != self.cursor:
            self.set_cursor(h[0], extend=True)

    def mouseReleaseEvent(self, e) -> None:  # noqa: N802
        self._dragging = False

    def wheelEvent(self, e) -> None:  # noqa: N802
        steps = e.angleDelta().y() / 120
        if steps:
            self.set_top_row(self.top_row - int(round(steps * WHEEL_ROWS)) or
                             self.top_row - (1 if steps > 0 else -1))
        e.accept()

    # -- keyboard ----------------------------------------------------------------------
    _CLAIMED = (QKeySequence.Undo, QKeySequence.Redo, QKeySequence.Copy, QKeySequence.Paste,
                QKeySequence.Find, QKeySequence.FindNext, QKeySequence.FindPrevious,
                QKeySequence.Save, QKeySequence.SelectAll)

    def event(self, e) -> bool:  # noqa: D401
        if e.type() == QEvent.ShortcutOverride:
            # keys the hex view handles itself while it has the focus
            if any(e.matches(k) for k in self._CLAIMED) or self._is_typing(e) or \
                    e.key() in (Qt.Key_G, Qt.Key_E) and e.modifiers() == Qt.ControlModifier or \
                    e.key() in (Qt.Key_Z,) and e.modifiers() & Qt.ControlModifier:
                e.accept()
                return True
        if e.type() == QEvent.KeyPress and e.key() in (Qt.Key_Tab, Qt.Key_Backtab):
            self.column = "text" if self.column == "hex" else "hex"
            self.nibble = 0
            self.viewport().update()
            return True
        return super().event(e)

    def _is_typing(self, e) -> bool:
        t = e.text()
        return bool(t) and t.isprintable() and not (
            e.modifiers() & (Qt.ControlModifier | Qt.AltModifier | Qt.MetaModifier))

    def keyPressEvent(self, e) -> None:  # noqa: N802
        if self.doc is None or self.size == 0:
            return
        key, mods = e.key(), e.modifiers()
        ctrl = bool(mods & Qt.ControlModifier)
        shift = bool(mods & Qt.ShiftModifier)
        bpr = self.bytes_per_row
        c = self.cursor
        if e.matches(QKeySequence.Undo):
            self.doc.undo_stack.undo()
            return
        if e.matches(QKeySequence.Redo) or (ctrl and shift and key == Qt.Key_Z):
            self.doc.undo_stack.redo()
            return
        if e.matches(QKeySequence.Copy):
            self.copy(self.column)
            return
        if e.matches(QKeySequence.Paste):
            self.paste()
            return
        if e.matches(QKeySequence.SelectAll):
            self.anchor, self.cursor = 0, self.size - 1
            self.viewport().update()
            self.selectionChanged.emit(*self.selection())
            return
        if e.matches(QKeySequence.Find):
            self.requestFind.emit(self.column == "text")
            return
        if ctrl and key == Qt.Key_G and not shift:   # before FindNext (Ctrl+G on some desktops)
            self.requestGoto.emit()
            return
        if e.matches(QKeySequence.FindNext) or e.matches(QKeySequence.FindPrevious):
            self.requestFindNext.emit(not shift)
            return
        if e.matches(QKeySequence.Save):
            self.requestSave.emit()
            return
        if ctrl and key == Qt.Key_E:
            self.requestEditable.emit()
            return
        move = None
        if key == Qt.Key_Left:
            move = c - 1
        elif key == Qt.Key_Right:
            move = c + 1
        elif key == Qt.Key_Up and ctrl:
            nxt = self.doc.next_content(c, forward=False)
            if nxt is None:
                self.message.emit("no data before this cluster")
                return
            move = nxt
        elif key == Qt.Key_Down and ctrl:
            nxt = self.doc.next_content(c, forward=True)
            if nxt is None:
                self.message.emit("no data after this cluster")
                return
            move = nxt
        elif key == Qt.Key_Up:
            move = c - bpr if c >= bpr else c
        elif key == Qt.Key_Down:
            move = c + bpr if c + bpr < self.size else c
        elif key == Qt.Key_PageUp:
            move = max(c % bpr, c - self.visible_rows * bpr)
            self.set_top_row(self.top_row - self.visible_rows)
        elif key == Qt.Key_PageDown:
            step = self.visible_rows * bpr
            move = c + step if c + step < self.size else c
            self.set_top_row(self.top_row + self.visible_rows)
        elif key == Qt.Key_Home:
            move = 0 if ctrl else c - c % bpr
        elif key == Qt.Key_End:
            move = self.size - 1 if ctrl else min(self.size - 1, c - c % bpr + bpr - 1)
        if move is not None:
            self.set_cursor(move, extend=shift)
            return
        if key == Qt.Key_Escape:
            self.set_cursor(c)
            return
        if self._is_typing(e):
            self.type_text(e.text())
            return
        super().keyPressEvent(e)

    def type_text(self, text: str) -> None:
        """Overwrite at the caret as if typed (hex digits or characters)."""
        for ch in text:
            if not self._type_char(ch):
                break

    def _type_char(self, ch: str) -> bool:
        doc = self.doc
        if not doc.editable:
            self.message.emit("Read-only: press Ctrl+E to enable editing")
            return False
        if self._at_end:
            self.message.emit("End of the disk: the size never changes")
            return False
        c = self.cursor
        if self.column == "hex":
            if ch.lower() not in "0123456789abcdef":
                return True
            d = int(ch, 16)
            v = doc.read(c, 1)[0]
            if self.nibble == 0:
                doc.replace(c, bytes([(d << 4) | (v & 0x0F)]), typing=True)
                self.nibble = 1
                self.anchor = None
                self.viewport().update()
                self.cursorChanged.emit(c)
                return True
            doc.replace(c, bytes([(v & 0xF0) | d]), typing=True)
        else:
            code = ord(ch)
            if code > 0xFF:
                self.message.emit("only single-byte characters can be typed")
                return True
            doc.replace(c, bytes([code]), typing=True)
        if c + 1 >= self.size:
            self.nibble = 0
            self._at_end = True
            self.anchor = None
            self.viewport().update()
            self.cursorChanged.emit(c)
            return True
        self.set_cursor(c + 1)
        return True

    # -- clipboard and fill ------------------------------------------------------------
    def selected_bytes(self) -> tuple[int, bytes]:
        start, n = self.selection()
        n = max(n, 1)
        if n > 64 * 1024 * 1024:
            raise ValueError("selection too large to copy (over 64 MiB)")
        return start, self.doc.read(start, n)

    def copy(self, column: str | None = None) -> str:
        try:
            _, data = self.selected_bytes()
        except ValueError as e:
            self.message.emit(str(e))
            return ""
        text = data.hex(" ") if (column or self.column) == "hex" else \
            data.decode("latin-1").translate({i: "." for i in
                                              [*range(0x20), *range(0x7F, 0x100)]})
        QGuiApplication.clipboard().setText(text)
        return text

    def paste(self, text: str | None = None) -> int:
        """Overwrite from the selection start (or caret) with clipboard hex/text."""
        from ..model.hexsearch import parse_pattern
        if text is None:
            text = QGuiApplication.clipboard().text()
        if not self.doc.editable:
            self.message.emit("Read-only: press Ctrl+E to enable editing")
            return 0
        try:
            data = parse_pattern(text, "hex" if self.column == "hex" else "text")
        except ValueError as e:
            self.message.emit(f"cannot paste: {e}")
            return 0
        start, n = self.selection()
        if n:
            data = data[:n]
        try:
            done = self.doc.replace(start, data, text=f"Paste {len(data)} byte(s) at {start:#x}")
        except ValueError as e:
            self.message.emit(str(e))
            return 0
        if done:
            self.set_cursor(min(self.size - 1, start + done))
        return done

    def fill_selection(self, value: int) -> int:
        start, n = self.selection()
        if not self.doc.editable:
            self.message.emit("Read-only: press Ctrl+E to enable editing")
            return 0
        try:
            return self.doc.fill(start, max(n, 1), value)
        except ValueError as e:
            self.message.emit(str(e))
            return 0

    def contextMenuEvent(self, e) -> None:  # noqa: N802
        menu = QMenu(self)
        menu.addAction("Copy as hex", lambda: self.copy("hex"))
        menu.addAction("Copy as text", lambda: self.copy("text"))
        menu.addSeparator()
        paste = menu.addAction("Paste (overwrite)", self.paste)
        fill = menu.addAction("Fill selection with byte\u2026", self._ask_fill)
        paste.setEnabled(self.doc is not None and self.doc.editable)
        fill.setEnabled(self.doc is not None and self.doc.editable)
        menu.addSeparator()
        menu.addAction("Go to\u2026", self.requestGoto.emit)
        menu.addAction("Next data cluster", lambda: self._jump(True))
        menu.addAction("Previous data cluster", lambda: self._jump(False))
        menu.exec(e.globalPos())

    def _jump(self, forward: bool) -> None:
        nxt = self.doc.next_content(self.cursor, forward)
        if nxt is not None:
            self.goto(nxt)

    def _ask_fill(self) -> None:
        text, ok = QInputDialog.getText(self, "Fill selection", "Byte value (hex, e.g. 00 or ff):")
        if ok:
            try:
                v = int(text.strip().removeprefix("0x"), 16)
                if not 0 <= v <= 255:
                    raise ValueError
            except ValueError:
                self.message.emit("a byte is 00..ff")
                return
            self.fill_selection(v)

    def focusInEvent(self, e) -> None:  # noqa: N802
        super().focusInEvent(e)
        self.viewport().update()

    def focusOutEvent(self, e) -> None:  # noqa: N802
        super().focusOutEvent(e)
        self.viewport().update()


class HexLegend(QWidget):
    """Swatches for the tints and boundary lines."""

    PER_ROW = 4     # swatches per row: one long row made the window 1,200 px wide at least

    def __init__(self, kinds: tuple[int, ...], parent: QWidget | None = None) -> None:
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
                         or (not isinstance(doc, FileHexDocument) and doc.block_error(off + n))), 8)
        vals = []
        for n, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q")):
            if n > readable:
                vals.append(f"u{8 * n} ?")
                continue
            le = struct.unpack("<" + code, raw[:n])[0]
            be = struct.unpack(">" + code, raw[:n])[0]
            vals.append(f"u{8 * n} {le}" if n == 1 else f"u{8 * n} le {le} be {be}")
        lines.append("   ".join(vals))
        start, sl = view.selection()
        if sl:
            lines[0] += f"   selection {start:#x}+{sl:#x} ({sl:,} bytes)"
        if doc.modified:
            lines[0] += f"   {doc.pending_bytes():,} byte(s) pending"
        self.summary = lines[0]
        self.setText("\n".join(lines))

    @staticmethod
    def _host(doc: HexDocument, off: int) -> str:
        if isinstance(doc, FileHexDocument):
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


class HexEditor(QWidget):
    """A hex view with its toolbar, find bar, legend and inspector.

    ``file_view=True`` makes the read-only view of the raw image file.
    """

    status = Signal(str)            # one-line summary for a status bar
    openRequested = Signal(str)

    #: tests replace this to answer the Save/Discard/Cancel question
    ask_unsaved = None

    def __init__(self, doc: HexDocument, parent: QWidget | None = None, *,
                 file_view: bool = False) -> None:
        super().__init__(parent)
        self.doc = doc
        self.file_view = file_view
        self.last_message = ""
        self.message_box: QMessageBox | None = None
        self.history: QDialog | None = None
        self.view = HexView(doc, self)
        self.banner = QLabel(self)
        self.banner.setWordWrap(True)
        self.banner.hide()
        self.findbar = FindBar(self)
        self.findbar.doc = doc
        self.findbar.caret = lambda: self.view.cursor
        self.findbar.hide()
        self.legend = HexLegend(
            (ByteKind.FILE,) if file_view else
            (ByteKind.DATA, ByteKind.COMPRESSED, ByteKind.BACKING, ByteKind.ZERO,
             ByteKind.UNALLOCATED), self)
        if file_view:
            self.legend.hide()
        self.inspector = Inspector(self)
        self.toolbar = QToolBar(self)
        self._make_actions()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.toolbar)
        lay.addWidget(self.banner)
        lay.addWidget(self.findbar)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.legend)
        lay.addWidget(self.inspector)
        v = self.view
        v.cursorChanged.connect(self._update_inspector)
        v.selectionChanged.connect(lambda *_: self._update_inspector())
        v.message.connect(self.notify)
        v.requestGoto.connect(self.open_goto)
        v.requestFind.connect(lambda text: self.open_find("text" if text else None))
        v.requestFindNext.connect(self.find_next)
        v.requestEditable.connect(lambda: self.act_edit.trigger())
        v.requestSave.connect(self.save)
        self.findbar.found.connect(self._found)
        self.findbar.finished.connect(lambda: self.view.setFocus())
        doc.editableChanged.connect(self._editable_changed)
        doc.editingRefused.connect(self._refused)
        doc.modifiedChanged.connect(self._modified_changed)
        doc.saveFailed.connect(self._save_failed)
        # bound methods, not lambdas: Qt drops them with the editor (the document lives on)
        doc.saved.connect(self._saved)
        doc.contentChanged.connect(self._update_inspector)
        self._editable_changed(doc.editable)
        self._modified_changed(doc.modified)
        self._update_inspector()

    def _make_actions(self) -> None:
        tb, doc = self.toolbar, self.doc
        tb.setToolButtonStyle(Qt.ToolButtonTextOnly)
        self.act_edit = QAction("Enable editing", self, checkable=True)
        self.act_edit.setToolTip("Re-open the image for writing (Ctrl+E)")
        self.act_edit.triggered.connect(self.set_editing)
        self.act_save = QAction("Save", self, toolTip="Write the pending edits (Ctrl+S)")
        self.act_save.triggered.connect(self.save)
        self.act_revert = QAction("Revert", self, toolTip="Discard the pending edits")
        self.act_revert.triggered.connect(self.revert)
        # short texts (the command goes in the tooltip) keep the toolbar narrow
        st = doc.undo_stack
        self.act_undo = QAction("Undo", self, enabled=False)
        self.act_undo.triggered.connect(st.undo)
        st.canUndoChanged.connect(self.act_undo.setEnabled)
        st.undoTextChanged.connect(self._undo_tip)
        self.act_redo = QAction("Redo", self, enabled=False)
        self.act_redo.triggered.connect(st.redo)
        st.canRedoChanged.connect(self.act_redo.setEnabled)
        st.redoTextChanged.connect(self._redo_tip)
        self.act_history = QAction("History", self, toolTip="The undo history")
        self.act_history.triggered.connect(self.show_history)
        self.act_goto = QAction("Go to\u2026", self, toolTip="Go to offset or sector (Ctrl+G)")
        self.act_goto.triggered.connect(self.open_goto)
        self.act_find = QAction("Find\u2026", self, toolTip="Find hex bytes or text (Ctrl+F)")
        self.act_find.triggered.connect(lambda: self.open_find())
        if not self.file_view:
            for a in (self.act_edit, self.act_save, self.act_revert, self.act_undo,
                      self.act_redo, self.act_history):
                tb.addAction(a)
            tb.addSeparator()
        tb.addAction(self.act_goto)
        tb.addAction(self.act_find)
        tb.addSeparator()
        self.bpr_combo = QComboBox(self)
        self.bpr_combo.addItems(["16 bytes/row", "32 bytes/row"])
        self.bpr_combo.currentIndexChanged.connect(
            lambda i: self.view.set_bytes_per_row(16 if i == 0 else 32))
        self.mode_combo = QComboBox(self)
        for text, _ in OFFSET_MODES:
            self.mode_combo.addItem(text)
        self.mode_combo.currentIndexChanged.connect(
            lambda i: (self.view.set_sector_mode(OFFSET_MODES[i][1]), self._update_inspector()))
        tb.addWidget(self.bpr_combo)
        tb.addWidget(self.mode_combo)

    def _saved(self) -> None:
        self.notify("Saved")

    def _undo_tip(self, text: str) -> None:
        self.act_undo.setToolTip(f"Undo {text} (Ctrl+Z)")

    def _redo_tip(self, text: str) -> None:
        self.act_redo.setToolTip(f"Redo {text} (Ctrl+Shift+Z)")

    # -- notices -----------------------------------------------------------------------
    def notify(self, text: str) -> None:
        self.last_message = text
        self.status.emit(text)

    def _show_banner(self, text: str, error: bool) -> None:
        self.banner.setText(text)
        self.banner.setStyleSheet(
            "padding:4px 8px; " + ("background:#fde2e1; color:#8a0010; border-bottom:1px solid"
                                   " #e6a0a0" if error else
                                   "background:#e8f1fd; color:#123; border-bottom:1px solid "
                                   "#b0c8e8"))
        self.banner.show()

    def _refused(self, reason: str) -> None:
        self.notify(reason)
        self._show_banner(reason, True)
        self.act_edit.setChecked(self.doc.editable)
        box = QMessageBox(QMessageBox.Warning, "Editing not possible", reason,
                          QMessageBox.Ok, self)
        box.setAttribute(Qt.WA_DeleteOnClose)
        self.message_box = box
        box.open()              # non-modal for the event loop: tests can read it

    def _save_failed(self, reason: str) -> None:
        self.notify(reason)
        self._show_banner(reason, True)

    def _editable_changed(self, on: bool) -> None:
        self.act_edit.setChecked(on)
        for a in (self.act_save, self.act_revert):
            a.setEnabled(on and self.doc.modified)
        if on:
            self._show_banner("Editing enabled: edits stay pending (orange) until you "
                              "Save (Ctrl+S).", False)
        elif not self.file_view:
            self.banner.hide()
        self.view.viewport().update()

    def _modified_changed(self, m: bool) -> None:
        for a in (self.act_save, self.act_revert):
            a.setEnabled(m and self.doc.editable)
        self._update_inspector()

    def _update_inspector(self, *_) -> None:
        self.inspector.show_at(self.view)
        self.status.emit(self.inspector.summary)

    # -- commands ----------------------------------------------------------------------
    def set_editing(self, on: bool = True) -> bool:
        if not on and self.doc.modified and not self.confirm_close():
            self.act_edit.setChecked(True)
            return False
        self.findbar.cancel()          # the image is reopened
        ok = self.doc.set_editable(on)
        self.act_edit.setChecked(self.doc.editable)
        return ok

    def save(self) -> bool:
        self.findbar.cancel()          # the image may be reopened after the save
        ok = self.doc.save()
        self.view.viewport().update()
        return ok

    def revert(self) -> None:
        self.doc.revert()
        self.notify("Pending edits discarded")

    def open_goto(self) -> GotoDialog:
        dlg = GotoDialog(self, current=self.view.cursor, size=self.doc.size,
                         sector_size=self.view.sector_size)
        dlg.setAttribute(Qt.WA_DeleteOnClose)
        dlg.chosen.connect(self.view.goto)
        self.goto_dialog = dlg
        dlg.open()
        return dlg

    def open_find(self, mode: str | None = None) -> None:
        self.findbar.open_bar(mode)

    def find_next(self, forward: bool = True) -> None:
        if not self.findbar.edit.text():
            self.open_find()
            return
        self.findbar.show()
        self.findbar.start(forward)

    def _found(self, offset: int, length: int) -> None:
        self.view.select_range(offset, length)
        self.view.cursor = offset
        self.view.anchor = offset + length - 1 if length > 1 else None
        self.view.ensure_visible(offset)
        self.view.viewport().update()
        self._update_inspector()

    def show_history(self) -> QDialog:
        if self.history is None:
            dlg = QDialog(self)
            dlg.setWindowTitle("Edit history")
            lay = QVBoxLayout(dlg)
            undo_view = QUndoView(self.doc.undo_stack, dlg)
            undo_view.setEmptyLabel("<saved / opened>")
            lay.addWidget(undo_view)
            dlg.resize(320, 360)
            self.history = dlg
        self.history.show()
        self.history.raise_()
        return self.history

    def confirm_close(self) -> bool:
        """Ask Save / Discard / Cancel when edits are pending; True to go on."""
        if not self.doc.modified:
            return True
        if HexEditor.ask_unsaved is not None:
            answer = HexEditor.ask_unsaved(self)
        else:
            r = QMessageBox.question(
                self, "Unsaved edits",
                f"{self.doc.pending_bytes():,} byte(s) of edits are not saved.",
                QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel, QMessageBox.Save)
            answer = {QMessageBox.Save: "save", QMessageBox.Discard: "discard"}.get(r, "cancel")
        if answer == "save":
            return self.save()
        if answer == "discard":
            self.doc.revert()
            return True
        return False

    def shutdown(self) -> None:
        """Stop the find worker (and join it); call before the widget goes away."""
        self.findbar.cancel()

    def closeEvent(self, e) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(e)


GUEST_VIEW = "Hex (guest)"
FILE_VIEW = "Hex (file)"


def attach_hex_views(tab) -> tuple[HexEditor, HexEditor]:
    """Add the guest and file hex views to an ImageTab and wire its hooks:
    window actions (save, revert, find, goto, edit), Undo/Redo, navigation
    requests from the other panels, and the unsaved-edits question on close."""
    from ..model.hexdocument import hex_document_for
    document = tab.document
    gdoc = hex_document_for(document, tab)
    fdoc = hex_document_for(document, tab, file_view=True)
    guest = HexEditor(gdoc, tab)
    filev = HexEditor(fdoc, tab, file_view=True)
    tab.add_view(GUEST_VIEW, guest)
    tab.add_view(FILE_VIEW, filev)
    # the window's toolbar has Enable editing, Save, Undo and Redo for this tab: one button
    # each (two "Enable editing" in one window read as two different things), and the
    # offset mode stays in view on the narrow pane
    for a in (guest.act_edit, guest.act_save, guest.act_undo, guest.act_redo):
        guest.toolbar.removeAction(a)
    tab.hex_guest, tab.hex_file = guest, filev

    def current() -> HexEditor:
        return filev if tab.views.currentWidget() is filev else guest

    def goto() -> None:
        ed = current()
        tab.views.setCurrentWidget(ed)
        ed.open_goto()

    def find() -> None:
        ed = current()
        tab.views.setCurrentWidget(ed)
        ed.open_find()

    def edit() -> None:
        tab.views.setCurrentWidget(guest)
        guest.set_editing(not gdoc.editable)

    def sync() -> None:
        pending = gdoc.modified and gdoc.editable
        tab.set_action_enabled("save", pending)
        tab.set_action_enabled("revert", pending)
        guest.act_revert.setVisible(gdoc.editable)      # a lone greyed Revert says nothing

    tab.register_action("save", guest.save, False)
    tab.register_action("revert", guest.revert, False)
    tab.register_action("find", find, True)
    tab.register_action("goto", goto, True)
    tab.register_action("edit", edit, True)
    tab.register_action("history", guest.show_history, True)
    tab.set_undo_stack(gdoc.undo_stack)
    sync()
    gdoc.modifiedChanged.connect(lambda _m: sync())
    gdoc.editableChanged.connect(lambda _e: (sync(), tab.titleChanged.emit()))
    tab.confirm_close = guest.confirm_close

    def show_file(offset, length) -> None:
        tab.views.setCurrentWidget(filev)
        filev.view.select_range(int(offset), int(length))

    def show_guest(offset) -> None:
        tab.views.setCurrentWidget(guest)
        guest.view.goto(int(offset), focus=False)

    tab.showFileBytes.connect(show_file)
    tab.showGuestOffset.connect(show_guest)
    document.closed.connect(guest.shutdown)
    document.closed.connect(filev.shutdown)
    return guest, filev
