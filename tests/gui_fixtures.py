"""Fixtures shared by the model and view tests (star-imported by their conftest.py):
scratch settings and log folder, no dangling threads or dialogs, sample images."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings, QThreadPool

from qcow2view.model.workers import running_workers


@pytest.fixture(autouse=True)
def _scratch_settings(tmp_path_factory, monkeypatch):
    """QSettings and the log file go to a folder of this test, never the user's."""
    base = tmp_path_factory.mktemp("settings")
    for fmt in (QSettings.IniFormat, QSettings.NativeFormat):
        QSettings.setPath(fmt, QSettings.UserScope, str(base))
    monkeypatch.setenv("XDG_STATE_HOME", str(base / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "cache"))
    yield base


@pytest.fixture(autouse=True)
def _no_dangling_threads(request):
    """Fail a test that leaves a background worker or a thread-pool job running
    (like napari's _dangling_qthreads)."""
    yield
    left = running_workers()
    for w in left:
        w.stop()
    pool = QThreadPool.globalInstance()
    busy = pool.activeThreadCount()
    pool.waitForDone(10000)
    assert not left, f"workers still running after the test: {[w.task for w in left]}"
    assert busy == 0, f"{busy} QThreadPool job(s) still running after the test"


@pytest.fixture(autouse=True)
def _no_dialogs_left(request):
    """Close message boxes a test left open (the error path must never block)."""
    yield
    from PySide6.QtWidgets import QApplication, QMessageBox
    app = QApplication.instance()
    if app is None:
        return
    for w in QApplication.topLevelWidgets():
        if isinstance(w, QMessageBox):
            w.close()
            w.deleteLater()
    from qcow2view.ui import dialogs
    dialogs.set_hook(None)


@pytest.fixture
def held_index(monkeypatch):
    """The guest index's build waits until the returned event is set (the first look
    is not held): a test sees the Files tree while the index is still building."""
    import threading

    import qcow2view.model.guest_files as gf
    gate = threading.Event()
    real = gf.build_index

    def held(image, progress):
        gate.wait(30)
        return real(image, progress)
    monkeypatch.setattr(gf, "build_index", held)
    yield gate
    gate.set()


@pytest.fixture
def sample_image(tmp_path):
    """64 MiB, 64 KiB clusters: data at 0-128K and 32M, a zero cluster at 1M, and a
    snapshot taken before the first cluster was rewritten (so it has refcount 1
    and COPIED while the second cluster is shared, refcount 2)."""
    import qemu
    p = qemu.create(tmp_path / "sample.qcow2", "64M")
    qemu.qemu_io(p, "write -P 0xab 0 128k", "write -P 1 32M 64k", "write -z 1M 64k")
    qemu.qemu_img("snapshot", "-c", "snap1", p)
    qemu.qemu_io(p, "write -P 2 0 64k")
    return p


@pytest.fixture
def garbage_file(tmp_path):
    p = tmp_path / "garbage.qcow2"
    p.write_bytes(b"this is not a disk image\n" * 100)
    return p


def set_refcount(path, cluster: int, value: int) -> int:
    """Write ``value`` as the 16-bit refcount of host ``cluster`` (the file grown to
    hold the cluster); returns the old one."""
    import struct
    data = bytearray(path.read_bytes())
    cs = 1 << struct.unpack_from(">I", data, 20)[0]
    assert struct.unpack_from(">I", data, 96)[0] == 4          # 16-bit refcounts
    rt = struct.unpack_from(">Q", data, 48)[0]
    block = struct.unpack_from(">Q", data, rt)[0]
    assert cluster < cs // 2                                   # in refcount block 0
    old = struct.unpack_from(">H", data, block + 2 * cluster)[0]
    struct.pack_into(">H", data, block + 2 * cluster, value)
    if len(data) < (cluster + 1) * cs:
        data += bytes((cluster + 1) * cs - len(data))
    path.write_bytes(bytes(data))
    return old


def _make_leak(path) -> int:
    """Append a cluster nothing references and give it refcount 1 (a leak for qemu-img)."""
    import struct
    with open(path, "rb") as f:
        cs = 1 << struct.unpack_from(">I", f.read(24), 20)[0]
    idx = -(-path.stat().st_size // cs)
    assert set_refcount(path, idx, 1) == 0
    return idx


@pytest.fixture
def make_leak():
    return _make_leak


# -- the main window (view tests) ----------------------------------------------------
@pytest.fixture
def window(qtbot):
    """A shown main window, every tab closed afterwards."""
    from qcow2view.ui.mainwindow import MainWindow
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1300, 800)
    w.show()
    yield w
    w.close_all()


def wait_ready(qtbot, tab) -> None:
    """Until the tab's check and maps are done and no repair is running."""
    qtbot.waitUntil(lambda: tab.document.analysis is not None and not tab.document.busy
                    and tab.repair_job is None, timeout=30000)


def run_app(*args, tmp_path):
    """``python -m qcow2view ARGS`` in a child process, offscreen, with scratch XDG folders."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(root),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "qcow2view", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)
