"""End to end through the command line: --screenshot and ``map --png``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtGui import QImage

import qemu
from gui_fixtures import run_app
from qcow2view.model.allocation import colour

ROOT = Path(__file__).resolve().parents[2]



def test_screenshot_of_a_real_image(tmp_path, sample_image):
    out = tmp_path / "shot.png"
    p = run_app(sample_image, "--screenshot", out, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    img = QImage(str(out))
    assert img.width() >= 800 and img.height() >= 500
    assert "propagateSizeHints" not in p.stderr      # the offscreen plugin's noise is filtered


def test_message_filter_passes_real_warnings_through(tmp_path):
    script = (
        "import sys\n"
        "from qcow2view.app import make_app\n"
        "from PySide6.QtCore import qWarning\n"
        "app = make_app()\n"
        "qWarning('This plugin does not support propagateSizeHints()')\n"
        "qWarning('This plugin does not support propagateSizeHints() at all')\n"
        "qWarning('a real warning')\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("QT_MESSAGE_PATTERN", None)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert "This plugin does not support propagateSizeHints()" not in lines
    assert "This plugin does not support propagateSizeHints() at all" in lines
    assert "a real warning" in lines


def test_screenshot_of_garbage_fails_cleanly(tmp_path, garbage_file):
    out = tmp_path / "shot.png"
    p = run_app(garbage_file, "--screenshot", out, tmp_path=tmp_path)
    assert p.returncode != 0
    assert "not a QCOW2 image" in p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()


def test_screenshot_of_a_missing_file(tmp_path):
    p = run_app(tmp_path / "nope.qcow2", "--screenshot", tmp_path / "s.png", tmp_path=tmp_path)
    assert p.returncode != 0 and "nope.qcow2" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("mode", ["kind", "refcount", "guest"])
def test_map_png(tmp_path, sample_image, mode):
    out = tmp_path / f"{mode}.png"
    p = run_app("map", sample_image, "--png", out, "--mode", mode, "--width", 256,
            tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    img = QImage(str(out))
    assert img.width() == 256
    if mode == "kind":
        # 4 cells a row for this 12-cluster file, 64 pixels each: cluster 0 is the header
        assert img.pixelColor(10, 10) == colour(1)
        host = next(e for e in qemu.qemu_map(sample_image) if e["start"] == 32 << 20)["offset"]
        r, c = divmod(host // 65536, 4)
        assert img.pixelColor(c * 64 + 32, r * 64 + 32) == colour(11)


def test_map_png_of_garbage(tmp_path, garbage_file):
    p = run_app("map", garbage_file, "--png", tmp_path / "x.png", tmp_path=tmp_path)
    assert p.returncode != 0 and "not a QCOW2 image" in p.stderr
    assert "Traceback" not in p.stderr
