"""The maps and the window cost what an image uses, not its file's length (issue 16):
a 1 MiB image in a file with a sparse 1 TiB tail (2^31 clusters of 512 bytes) is
drawn, in every mode, by a process limited to 1 GiB of address space; the clusters
past the last one used are summarised in a line, not drawn.  And ``map --width``
has bounds that its help and its error name."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtGui import QImage

import qemu
from gui_fixtures import run_app, wait_ready

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1 << 30          # address space for the child: the old per-cluster arrays needed 4+ GiB


@pytest.fixture(scope="module")
def sparse_tail(tmp_path_factory):
    d = tmp_path_factory.mktemp("tail")
    p = qemu.create(d / "tail.qcow2", "1M", "cluster_size=512")
    qemu.qemu_io(p, "write -P 5 0 8k", "write -P 6 512k 4k")
    used = -(-p.stat().st_size // 512)
    os.truncate(p, 1 << 40)
    return p, used


def _run_limited(*args, tmp_path) -> subprocess.CompletedProcess:
    """``python -m qcow2view ARGS`` offscreen under RLIMIT_AS = 1 GiB."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "qcow2view", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env,
                          preexec_fn=limit)


@pytest.mark.parametrize("mode", ["kind", "refcount", "guest"])
def test_map_of_a_sparse_tail_stays_bounded(tmp_path, sparse_tail, mode):
    path, used = sparse_tail
    out = tmp_path / f"{mode}.png"
    p = _run_limited("map", path, "--png", out, "--mode", mode, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert QImage(str(out)).width() == 1024
    if mode == "guest":
        assert "2,048 clusters" in p.stdout            # 1 MiB of 512-byte guest clusters
    else:
        # the clusters qemu-img wrote, then one line for the 2^31 - n unused ones
        n = int(p.stdout.split(": ", 1)[1].split(" clusters")[0].replace(",", ""))
        assert 0 < n <= used
        assert f"then {(1 << 31) - n:,} unused clusters" in p.stdout


def test_window_of_a_sparse_tail_stays_bounded(tmp_path, sparse_tail):
    path, _ = sparse_tail
    out = tmp_path / "shot.png"
    p = _run_limited(path, "--screenshot", out, tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert QImage(str(out)).width() >= 800


@pytest.mark.parametrize("width", [15, 4097, 100000])
def test_map_width_is_bounded(tmp_path, sparse_tail, width):
    p = run_app("map", sparse_tail[0], "--png", tmp_path / "w.png", "--width", width,
                tmp_path=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip() == "qcow2view map: --width must be between 16 and 4096 pixels"
    assert not (tmp_path / "w.png").exists()
    h = run_app("map", "--help", tmp_path=tmp_path)
    assert "16 to 4096" in h.stdout


@pytest.mark.qt_log_ignore("This plugin does not support")
def test_heatmap_says_what_follows_the_map(qtbot, window, sparse_tail):
    path, used = sparse_tail
    t = window.open_path(str(path))
    wait_ready(qtbot, t)
    t.views.setCurrentWidget(t.heatmap)
    t.heatmap.redraw()
    n = t.allocation.count("kind")
    assert 0 < n <= used
    assert f"then {(1 << 31) - n:,} unused clusters" in t.heatmap.info.text()
