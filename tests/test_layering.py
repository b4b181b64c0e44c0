"""Layering: file -> engine -> model -> views, with the guest layer beside the engine.

The contracts live in pyproject.toml ([tool.importlinter]) and cover every module of
each package, new ones too; this runs the tool.  What it cannot express is checked
here over every file or module, never a hand-kept list: the model layer names no
QtWidgets, and the engine and the terminal commands load no GUI module when they run
(an import inside a function counts only if it runs).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "qcow2view"
GUI_PACKAGES = ("PySide6", "shiboken6", "pyqtgraph", "PyQt5", "PyQt6")
TERMINAL_COMMANDS = sorted(f"qcow2view.{p.stem}" for p in PKG.glob("cmd_*.py")) + \
    ["qcow2view.cli"]

PROBE = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
import qcow2view.engine as engine
for info in pkgutil.walk_packages(engine.__path__, "qcow2view.engine."):
    importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in %r)))
""" % (GUI_PACKAGES,)


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
            out.update(f"{node.module}.{a.name}" for a in node.names if node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_model_layer_has_no_widgets():
    for f in sorted((PKG / "model").rglob("*.py")):
        bad = {m for m in _imports(f) if "QtWidgets" in m}
        assert not bad, f"{f.relative_to(PKG)} imports {bad}"


def _loaded_gui_modules(*modules: str) -> list[str]:
    p = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_engine_loads_no_gui_module():
    assert _loaded_gui_modules("qcow2view.engine") == []


@pytest.mark.parametrize("module", TERMINAL_COMMANDS)
def test_terminal_commands_load_no_gui_module(module):
    assert _loaded_gui_modules(module) == []
