"""The hex view's file ruler: a column beside the offsets that shows, while the caret is
inside a guest file, each row's offset in that file ("+10", hex as the offsets are),
headed by the file's name.

A column of its own (not the offset column re-labelled) so the disk offsets stay in view;
it is there only once the guest index knows files, so moving the caret never shifts the
layout.  Painting lives here to keep :mod:`.hexview` small.
"""

from __future__ import annotations

from PySide6.QtGui import QColor, QPainter

WIDTH_CHARS = 10            # "+12345678" (a 4 GiB file) and a gap
RULER_BG = QColor("#eef6ee")
RULER_FG = QColor("#2e6b2e")
SLACK_FG = QColor("#9aa89a")        # past the file's size: its last block's slack


class FileRuler:
    """``where(guest offset) -> (key, path, file offset, size) | None`` names the file
    holding a byte; rows of the caret's file (same key) get their file offset, greyed
    past its size."""

    def __init__(self, where) -> None:
        self.where = where

    def header(self, cursor: int) -> str:
        """The column head: the caret's file's name (cut to fit) or "file +"."""
        hit = self.where(cursor)
        if hit is None:
            return "file +"
        name = hit[1].rsplit("/", 1)[-1] or hit[1]
        return name if len(name) <= WIDTH_CHARS - 2 else name[:WIDTH_CHARS - 3] + "…"

    def paint_header(self, p: QPainter, view) -> None:
        p.setPen(RULER_FG if self.where(view.cursor) is not None else QColor("#909090"))
        p.drawText(view.x_ruler, view.ascent, self.header(view.cursor))

    def row_text(self, cursor: int, offset: int) -> tuple[str, bool] | None:
        """The ruler's text beside the row starting at ``offset`` (hex, as the offset
        column's) and whether it lies in the slack past the file's size; None for a row
        outside the caret's file."""
        hit = self.where(cursor)
        row = self.where(offset) if hit is not None else None
        if row is None or row[0] != hit[0]:
            return None
        return f"+{row[2]:x}", row[3] is not None and row[2] >= row[3]

    def paint_rows(self, p: QPainter, view, first: int, rows: int) -> None:
        """The file offset of each visible row's first byte in the caret's file."""
        if self.where(view.cursor) is None:
            return
        bpr, lh, cw = view.bytes_per_row, view.lh, view.cw
        for r in range(rows):
            off = first + r * bpr
            if off >= view.size:
                break
            got = self.row_text(view.cursor, off)
            if got is None:
                continue
            y = view.header_h + r * lh
            p.fillRect(view.x_ruler - cw // 2, y, (WIDTH_CHARS - 1) * cw, lh, RULER_BG)
            p.setPen(SLACK_FG if got[1] else RULER_FG)
            p.drawText(view.x_ruler, y + view.ascent, got[0])
