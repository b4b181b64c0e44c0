#!/usr/bin/env python3
"""Render resources/qcow2view.svg to the PNG sizes the app and the icon theme use.

    QT_QPA_PLATFORM=offscreen python packaging/render_icons.py

Uses PySide6's QtSvg; falls back to rsvg-convert (Debian: librsvg2-bin).
The PNGs are committed, so this only needs running after the SVG changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SIZES = (16, 32, 48, 64, 128, 256)
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
SVG = RESOURCES / "qcow2view.svg"


def render_qt() -> bool:
    try:
        from PySide6.QtCore import QRectF, Qt
        from PySide6.QtGui import QGuiApplication, QImage, QPainter
        from PySide6.QtSvg import QSvgRenderer
    except ImportError:
        return False
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841 (kept alive)
    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        sys.exit(f"{SVG}: not a valid SVG")
    for n in SIZES:
        img = QImage(n, n, QImage.Format.Format_ARGB32_Premultiplied)
        img.fill(Qt.GlobalColor.transparent)
        painter = QPainter(img)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter, QRectF(0, 0, n, n))
        painter.end()
        if not img.save(str(RESOURCES / f"qcow2view-{n}.png")):
            sys.exit(f"could not write qcow2view-{n}.png")
    return True


def render_rsvg() -> bool:
    exe = shutil.which("rsvg-convert")
    if exe is None:
        return False
    for n in SIZES:
        subprocess.run([exe, "-w", str(n), "-h", str(n), "-o",
                        str(RESOURCES / f"qcow2view-{n}.png"), str(SVG)], check=True)
    return True


if __name__ == "__main__":
    if not (render_qt() or render_rsvg()):
        sys.exit("need PySide6 (QtSvg) or rsvg-convert (apt-get install librsvg2-bin)")
    for n in SIZES:
        print(RESOURCES / f"qcow2view-{n}.png")
