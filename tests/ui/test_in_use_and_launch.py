"""What the README promises about images in use, and how the window starts and stops
(issue 16 items 2 and 4): an image a VM holds opens read-only and says so, --edit on it
opens read-only with the reason, Ctrl+C in the terminal quits an idle window, --edit is
honoured with --screenshot, and an unexpected error in the analysis ends --screenshot."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import qemu
from gui_fixtures import wait_ready
from qcow2view.engine.locking import held_lock_bytes
from qcow2view.ui.mainwindow import MainWindow

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def held_by_qemu(tmp_path):
    """An image a real qemu-io holds open for writing, as a running VM does."""
    img = qemu.create(tmp_path / "vm.qcow2", "1M")
    p = subprocess.Popen([qemu.QEMU_IO, "-f", "qcow2", "-c", "sleep 100000", str(img)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        with open(img, "rb") as f:
            while not held_lock_bytes(f.fileno()):
                assert time.monotonic() < deadline, "qemu-io never took its locks"
                time.sleep(0.05)
        yield img
    finally:
        p.kill()
        p.wait()


def _child(script: str, *args, tmp_path, **kw) -> subprocess.Popen:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=f"{ROOT}",
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"),
               XDG_CACHE_HOME=str(tmp_path / "cache"), QCOW2VIEW_TIMING="1")
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# the app's own entry point, with a spy saying how each image was opened
_SPY = """
import sys
from qcow2view.ui import mainwindow
from qcow2view.cli import main
opened = mainwindow.MainWindow.open_path
def spy(self, *a, **k):
    tab = opened(self, *a, **k)
    if tab is not None:
        print("writable", tab.document.writable, flush=True)
    return tab
mainwindow.MainWindow.open_path = spy
sys.exit(main(sys.argv[1:]))
"""


def test_image_in_use_opens_read_only_and_says_so(qtbot, held_by_qemu):
    w = MainWindow(remember=False)
    qtbot.addWidget(w)
    w.show()
    try:
        tab = w.open_path(str(held_by_qemu))
        assert tab is not None and not tab.document.writable
        assert tab.banner.isVisible()
        text = tab.banner.text()
        assert "in use" in text and "writing to this image" in text and "read-only" in text
        wait_ready(qtbot, tab)
        assert tab.banner.isVisible() and "in use" in tab.banner.text()
    finally:
        w.close_all()


def test_edit_on_an_image_in_use_opens_read_only_with_the_reason(qtbot, tmp_path):
    img = qemu.create(tmp_path / "vm.qcow2", "1M")
    vm = subprocess.Popen([qemu.QEMU_IO, "-f", "qcow2", "-c", "sleep 100000", str(img)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w = MainWindow(remember=False, edit=True)
    qtbot.addWidget(w)
    w.show()
    try:
        deadline = time.monotonic() + 20
        with open(img, "rb") as f:
            while not held_lock_bytes(f.fileno()):
                assert time.monotonic() < deadline, "qemu-io never took its locks"
                time.sleep(0.05)
        tab = w.open_path(str(img))
        assert tab is not None, "refused to open at all"
        assert not tab.document.writable
        text = tab.banner.text()
        assert tab.banner.isVisible() and "not for editing" in text
        assert re.search('Failed to get (shared )?"write" lock', text.replace("&quot;", '"'))
        assert "read-only" in w.windowTitle()
        wait_ready(qtbot, tab)
        vm.kill()                       # the VM is gone: editing may begin, said no more
        vm.wait()
        tab.document.reopen(writable=True)
        assert tab.document.writable and not tab.banner.isVisible()
    finally:
        vm.kill()
        vm.wait()
        w.close_all()


def test_edit_is_honoured_with_screenshot(tmp_path, held_by_qemu):
    free = qemu.create(tmp_path / "free.qcow2", "1M")
    for img, writable in ((free, True), (held_by_qemu, False)):
        p = _child(_SPY, img, "--edit", "--screenshot", tmp_path / "shot.png",
                   tmp_path=tmp_path)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert f"writable {writable}" in out.splitlines()


def test_ctrl_c_in_the_terminal_quits_an_idle_window(tmp_path):
    img = qemu.create(tmp_path / "a.qcow2", "1M")
    p = _child("import sys; from qcow2view.cli import main; sys.exit(main(sys.argv[1:]))",
               img, tmp_path=tmp_path)
    watchdog = threading.Timer(90, p.kill)      # never hang the suite on a stuck window
    watchdog.start()
    try:
        for line in p.stderr:          # the launch milestones (QCOW2VIEW_TIMING)
            if "maps ready" in line:
                break
        else:
            pytest.fail("the window never came up")
        time.sleep(0.5)                # idle: nothing left for the event loop to do
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_unexpected_error_in_the_analysis_ends_screenshot_at_once(tmp_path):
    """A MemoryError in the worker: reported, and --screenshot exits (it waited 120 s)."""
    img = qemu.create(tmp_path / "a.qcow2", "1M")
    script = """
import sys
from qcow2view import app
from qcow2view.engine.image import Image
app.SCREENSHOT_TIMEOUT = 1e6       # only the error may end the wait
def out_of_memory(self, *a, **k):
    raise MemoryError("no room for the host map")
Image.host_map = out_of_memory
from qcow2view.cli import main
sys.exit(main(sys.argv[1:]))
"""
    p = _child(script, img, "--screenshot", tmp_path / "shot.png", tmp_path=tmp_path)
    try:
        _, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1
    assert "MemoryError: no room for the host map" in err
    assert not (tmp_path / "shot.png").exists()
