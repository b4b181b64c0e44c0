"""The engine (and the terminal commands built on it) never load Qt or pyqtgraph."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUI_PACKAGES = ("PySide6", "shiboken6", "pyqtgraph", "PyQt5", "PyQt6")

PROBE = """
import importlib, json, pkgutil, sys
mods = sys.argv[1:]
for name in mods:
    importlib.import_module(name)
import qcow2view.engine as engine
for info in pkgutil.iter_modules(engine.__path__):   # every engine module, new ones too
    importlib.import_module("qcow2view.engine." + info.name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in %r)))
""" % (GUI_PACKAGES,)


def _loaded_gui_modules(*modules: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_engine_loads_no_gui_module():
    assert _loaded_gui_modules("qcow2view.engine") == []


@pytest.mark.parametrize("module", ["qcow2view.cmd_info", "qcow2view.cmd_create",
                                    "qcow2view.cli"])
def test_terminal_commands_load_no_gui_module(module):
    if not os.path.exists(os.path.join(ROOT, *module.split(".")) + ".py"):
        pytest.skip(f"{module} does not exist yet")
    assert _loaded_gui_modules(module) == []


def test_engine_source_names_no_gui_package():
    """Also catch imports hidden in functions that the probe above never runs."""
    engine_dir = os.path.join(ROOT, "qcow2view", "engine")
    for name in sorted(os.listdir(engine_dir)):
        if name.endswith(".py"):
            text = open(os.path.join(engine_dir, name), encoding="utf-8").read()
            for pkg in GUI_PACKAGES:
                assert f"import {pkg}" not in text and f"from {pkg}" not in text, (name, pkg)
