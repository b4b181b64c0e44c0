"""Layering: the model layer has no widgets; the window's views reach the engine only
through the model layer."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "qcow2view"
VIEWS = ("mainwindow", "imagetab", "headerpanel", "tablepanel", "heatmap", "mappingplot",
         "problemspanel", "startpage", "dialogs", "settings", "axes", "filespanel", "gotofile",
         "maphighlight")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_model_layer_has_no_widgets():
    for f in (PKG / "model").glob("*.py"):
        bad = {m for m in _imports(f) if "QtWidgets" in m or m.startswith("pyqtgraph")}
        assert not bad, f"{f.name} imports {bad}"


def test_views_do_not_import_the_engine():
    for name in VIEWS:
        bad = {m for m in _imports(PKG / "ui" / f"{name}.py") if "engine" in m or "guest" in m
               and not m.startswith("..model")}
        assert not bad, f"ui/{name}.py imports {bad}"
