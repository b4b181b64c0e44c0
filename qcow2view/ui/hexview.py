"""The hex view of guest sectors (and of the raw image file), with editing keys.

:class:`HexView` is a ``QAbstractScrollArea`` that paints only the visible rows
of a :class:`~qcow2view.model.hexdocument.HexDocument`.  Its vertical scrollbar
is scaled (range capped at :data:`SCROLL_MAX`) so a 2 TiB disk, beyond 2^31
rows, still scrolls and jumps exactly.  :mod:`.hexeditor` puts the view together
with a toolbar, the find bar and the read-outs of :mod:`.hexinspector`.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import (QColor, QFont, QFontDatabase, QFontMetrics, QFontMetricsF,
                           QGuiApplication, QKeySequence, QPainter, QPen, QStaticText)
from PySide6.QtWidgets import QAbstractScrollArea, QInputDialog, QMenu, QToolTip, QWidget

from ..model.hexdocument import HexDocument
from .hexruler import WIDTH_CHARS as RULER_CHARS
from .hexstyle import (CLUSTER_LINE, ERROR_KEY, SECTOR_LINE, SELECTION, STYLES, UNKNOWN,
                       grid_font, printable, style_of)

SCROLL_MAX = 1 << 28          # scrollbar range cap; rows beyond are mapped proportionally
WHEEL_ROWS = 3

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
        self._describe = None                  # set_tooltip
        self.ruler = None                      # set_ruler: a FileRuler or None
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
            self.doc.disconnect(self)       # the old document's signals stop coming here
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
        self.x_ruler = self.x_off + (self.off_chars + 2) * cw     # the file ruler, if any
        self.x_hex = self.x_ruler + (RULER_CHARS * cw if self.ruler is not None else 0)
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

    def set_ruler(self, ruler) -> None:
        """A :class:`~.hexruler.FileRuler` (file offsets beside the rows while the caret
        is in a guest file) or None; the columns move right to make room."""
        self.ruler = ruler
        self._metrics()
        self._update_scroll()
        self.viewport().update()

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

    def select_range(self, offset: int, length: int, *, caret_at_start: bool = False) -> None:
        """Select ``length`` bytes from ``offset`` (e.g. a metadata structure), the caret
        on the last byte (or, with ``caret_at_start``, on the first: a find match)."""
        if length <= 0:
            self.goto(offset, focus=False)
            return
        end = min(self.size - 1, offset + length - 1)
        self.goto(offset, focus=False)
        self.anchor, self.cursor = (end, offset) if caret_at_start else (offset, end)
        if (end - offset) // self.bytes_per_row < self.visible_rows:
            self.ensure_visible(end)
        self.ensure_visible(offset)
        self.viewport().update()
        self.cursorChanged.emit(self.cursor)
        self.selectionChanged.emit(*self.selection())

    # -- painting ----------------------------------------------------------------------
    def paintEvent(self, e) -> None:  # noqa: N802
        p = QPainter(self.viewport())
        vw, vh = self.viewport().width(), self.viewport().height()
        p.fillRect(0, 0, vw, vh, QColor("#ffffff"))
        p.setFont(self.font())
        p.translate(-self.horizontalScrollBar().value(), 0)
        self._paint_header(p, vw)
        if self.doc is not None and self.size > 0:
            self._paint_rows(p)
        p.setPen(QColor("#e0e0e0"))
        cw = self.cw
        p.drawLine(self.x_hex - cw, 0, self.x_hex - cw, vh)
        p.drawLine(self.x_text - cw - cw // 2, 0, self.x_text - cw - cw // 2, vh)

    def _paint_header(self, p: QPainter, vw: int) -> None:
        bpr = self.bytes_per_row
        p.fillRect(0, 0, self.total_w + vw, self.header_h, QColor("#f4f4f4"))
        p.setPen(QColor("#606060"))
        head = ("LBA" if self.sector_mode else "Offset").rjust(self.off_chars)
        p.drawText(self.x_off, self.ascent, head)
        if self.ruler is not None:
            self.ruler.paint_header(p, self)
            p.setPen(QColor("#606060"))
        cols = [f"{i:02X}" for i in range(bpr)]
        hexhead = "  ".join(" ".join(cols[i:i + 8]) for i in range(0, bpr, 8))
        p.drawText(self.x_hex, self.ascent, hexhead)
        p.drawText(self.x_text, self.ascent,
                   "Text" if self.sector_mode == 0 else f"Text ({self.sector_mode}-byte sectors)")
        p.setPen(QColor("#d0d0d0"))
        p.drawLine(0, self.header_h - 1, self.total_w + vw, self.header_h - 1)

    def _paint_rows(self, p: QPainter) -> None:
        bpr = self.bytes_per_row
        rows = min(self.visible_rows + 1, self.total_rows - self.top_row)
        first = self.top_row * bpr
        data, kinds, pend = self.doc.span(first, rows * bpr)
        raw = data.tobytes()
        keys = (kinds * 2 + pend).astype("uint8").tobytes()
        if self.ruler is not None:
            self.ruler.paint_rows(p, self, first, rows)
        for r in range(rows):
            a = r * bpr
            n = min(bpr, len(raw) - a)
            if n <= 0:
                break
            off, y = first + a, self.header_h + r * self.lh
            self._paint_bytes(p, y, raw[a:a + n], keys[a:a + n])
            self._paint_selection(p, y, off, n)
            p.setPen(QColor("#5a5a5a"))
            p.drawText(self.x_off, y + self.ascent, self._offset_text(off))
            self._paint_boundary(p, y, off)
            if off <= self.cursor < off + n:
                self._paint_caret(p, y, self.cursor - off)

    @staticmethod
    def _runs(keys: bytes) -> list[tuple[int, int, int]]:
        """(start, end, key) runs of equal tint keys (usually one per row)."""
        n = len(keys)
        if keys.count(keys[0]) == n:
            return [(0, n, keys[0])]
        runs, i = [], 0
        for j in range(1, n + 1):
            if j == n or keys[j] != keys[i]:
                runs.append((i, j, keys[i]))
                i = j
        return runs

    def _paint_bytes(self, p: QPainter, y: int, chunk: bytes, keys: bytes) -> None:
        """One row's hex and text, tinted by what backs each byte and pending edits."""
        cw, lh, x_hex, x_text = self.cw, self.lh, self.x_hex, self.x_text
        n = len(chunk)
        rowhex = "  ".join(chunk[i:i + 8].hex(" ") for i in range(0, n, 8))
        rowtxt = printable(chunk)
        for i, j, key in self._runs(keys):
            style = STYLES.get(key)
            if style is None:
                style = STYLES[key] = style_of(key)
            bg, fg = style
            ci, cj = i * 3 + i // 8, (j - 1) * 3 + (j - 1) // 8 + 2
            if bg is not None:
                hx0 = x_hex + ci * cw - cw // 2
                p.fillRect(hx0, y, x_hex + cj * cw + cw // 2 - hx0, lh, bg)
                p.fillRect(x_text + i * cw, y, (j - i) * cw, lh, bg)
            p.setPen(fg)
            if key == ERROR_KEY:
                p.drawStaticText(x_hex + ci * cw, y + 1,
                                 self._static(rowhex[ci:cj].translate(UNKNOWN)))
                p.drawStaticText(x_text + i * cw, y + 1, self._static("?" * (j - i)))
            else:
                p.drawStaticText(x_hex + ci * cw, y + 1, self._static(rowhex[ci:cj]))
                p.drawStaticText(x_text + i * cw, y + 1, self._static(rowtxt[i:j]))

    def _paint_selection(self, p: QPainter, y: int, off: int, n: int) -> None:
        sel_start, sel_len = self.selection()
        if not sel_len:
            return
        lo, hi = max(sel_start, off), min(sel_start + sel_len, off + n)
        if lo >= hi:
            return
        cw = self.cw
        i, j = lo - off, hi - off
        hx0 = self.x_hex + (i * 3 + i // 8) * cw - cw // 2
        hx1 = self.x_hex + ((j - 1) * 3 + (j - 1) // 8 + 2) * cw + cw // 2
        p.fillRect(hx0, y, hx1 - hx0, self.lh, SELECTION)
        p.fillRect(self.x_text + i * cw, y, (j - i) * cw, self.lh, SELECTION)

    def _paint_boundary(self, p: QPainter, y: int, off: int) -> None:
        """A line above the row where a cluster (solid) or a sector (dashed) starts."""
        if not off:
            return
        if off % self.doc.cluster_size == 0:
            p.setPen(QPen(CLUSTER_LINE, 1))
            p.drawLine(self.x_off, y, self.total_w, y)
        elif off % self.sector_size == 0:
            p.setPen(QPen(SECTOR_LINE, 1, Qt.DashLine))
            p.drawLine(self.x_hex - self.cw, y, self.total_w, y)

    def _paint_caret(self, p: QPainter, y: int, i: int) -> None:
        """The caret on byte ``i`` of the row: solid in the column with the focus."""
        cw, lh = self.cw, self.lh
        focus = self.hasFocus()
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

    def set_tooltip(self, describe) -> None:
        """``describe(offset) -> str | None``: the hover text of a byte (the guest's
        names: a GPT header field, a file and its offset)."""
        self._describe = describe

    def viewportEvent(self, e) -> bool:  # noqa: N802
        if e.type() == QEvent.ToolTip and self._describe is not None:
            pos = e.pos()          # a QHelpEvent
            h = self.hit(pos.x(), pos.y()) if pos.y() >= self.header_h else None
            text = self._describe(h[0]) if h is not None else None
            if text:
                QToolTip.showText(e.globalPos(), f"{h[0]:#x}: {text}", self.viewport())
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(e)

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

    def _command_key(self, e) -> bool:
        """Undo, redo, clipboard, select all, find, go to, save, edit: True if ``e`` was one."""
        key, mods = e.key(), e.modifiers()
        ctrl = bool(mods & Qt.ControlModifier)
        shift = bool(mods & Qt.ShiftModifier)
        if e.matches(QKeySequence.Undo):
            self.doc.undo_stack.undo()
        elif e.matches(QKeySequence.Redo) or (ctrl and shift and key == Qt.Key_Z):
            self.doc.undo_stack.redo()
        elif e.matches(QKeySequence.Copy):
            self.copy(self.column)
        elif e.matches(QKeySequence.Paste):
            self.paste()
        elif e.matches(QKeySequence.SelectAll):
            self.anchor, self.cursor = 0, self.size - 1
            self.viewport().update()
            self.selectionChanged.emit(*self.selection())
        elif e.matches(QKeySequence.Find):
            self.requestFind.emit(self.column == "text")
        elif ctrl and key == Qt.Key_G and not shift:   # before FindNext (Ctrl+G on some desktops)
            self.requestGoto.emit()
        elif e.matches(QKeySequence.FindNext) or e.matches(QKeySequence.FindPrevious):
            self.requestFindNext.emit(not shift)
        elif e.matches(QKeySequence.Save):
            self.requestSave.emit()
        elif ctrl and key == Qt.Key_E:
            self.requestEditable.emit()
        else:
            return False
        return True

    def keyPressEvent(self, e) -> None:  # noqa: N802
        if self.doc is None or self.size == 0:
            return
        if self._command_key(e):
            return
        key, mods = e.key(), e.modifiers()
        ctrl = bool(mods & Qt.ControlModifier)
        shift = bool(mods & Qt.ShiftModifier)
        bpr = self.bytes_per_row
        c = self.cursor
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
        try:
            return self._type(ch)
        except ValueError as e:     # the document refused the edit, with the reason
            self.message.emit(str(e))
            return False

    def _type(self, ch: str) -> bool:
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
