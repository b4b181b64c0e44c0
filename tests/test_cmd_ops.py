"""The operation commands as a terminal user meets them: qemu-img's argument forms,
one-line errors, no Qt loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import qemu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "qcow2view", *map(str, args)],
                          capture_output=True, text=True, env=env)


def test_relative_shrink_and_errors(tmp_path):
    img = qemu.create(tmp_path / "a.qcow2", "4M")
    p = _cli("resize", "--shrink", img, "-1M")          # a negative size, as qemu-img takes it
    assert p.returncode == 0 and p.stdout == "Image resized.\n", p.stderr
    assert qemu.info(img)["virtual-size"] == 3 << 20
    p = _cli("snapshot", "-d", "nope", img)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    p = _cli("commit", tmp_path / "missing.qcow2")
    assert p.returncode == 1 and "no such file" in p.stderr


def test_operations_load_no_gui_module():
    probe = ("import json, sys; import qcow2view.cmd_ops, qcow2view.engine.ops.snapshot, "
             "qcow2view.engine.ops.resize, qcow2view.engine.ops.commit, "
             "qcow2view.engine.ops.rebase, qcow2view.engine.ops.convert, "
             "qcow2view.engine.ops.amend, qcow2view.engine.ops.measure, "
             "qcow2view.engine.metadata_ops; print(json.dumps(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph'))))")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []
