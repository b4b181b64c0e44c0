"""QEMU's image locks, with a real qemu-io holding the image."""

from __future__ import annotations

import subprocess
import time

import pytest

import qemu
from qcow2view.engine import ImageInUseError, open_image
from qcow2view.engine.locking import held_lock_bytes


def _wait_locked(path, timeout=20.0):
    """Wait until some process holds QEMU's lock bytes on ``path``."""
    deadline = time.monotonic() + timeout
    with open(path, "rb") as f:
        while time.monotonic() < deadline:
            if held_lock_bytes(f.fileno()):
                return
            time.sleep(0.05)
    raise AssertionError("qemu-io never took its locks")


@pytest.fixture
def held_by_qemu(tmp_path):
    """An image a background qemu-io holds for writing (killed at the end, always)."""
    img = qemu.create(tmp_path / "busy.qcow2", "1M")
    qemu.qemu_io(img, "write -P 0x42 0 64k")
    p = subprocess.Popen([qemu.QEMU_IO, "-f", "qcow2", "-c", "sleep 5000", str(img)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_locked(img)
        yield img
    finally:
        p.kill()
        p.wait()


def test_writable_open_refused_while_qemu_holds_it(held_by_qemu):
    with pytest.raises(ImageInUseError, match='Failed to get .*"write" lock'):
        open_image(held_by_qemu, writable=True)


def test_read_only_open_works_and_reports_in_use(held_by_qemu):
    with open_image(held_by_qemu) as im:
        assert im.in_use
        assert "writing" in im.in_use_by
        assert im.read(0, 4) == b"\x42" * 4


def test_free_image_is_not_in_use(tmp_path):
    img = qemu.create(tmp_path / "free.qcow2", "1M")
    with open_image(img) as im:
        assert not im.in_use and im.in_use_by is None


def test_our_writer_locks_out_qemu(tmp_path):
    img = qemu.create(tmp_path / "ours.qcow2", "1M")
    with open_image(img, writable=True) as im:
        im.write(0, b"hello")
        im.flush()
        p = qemu.qemu_img("info", img, check=False)
        assert p.returncode != 0
        assert b'Failed to get shared "write" lock' in p.stderr
        assert qemu.qemu_img("info", "-U", img).returncode == 0
        p = subprocess.run([qemu.QEMU_IO, "-c", "write 0 512", str(img)], capture_output=True)
        assert b"lock" in p.stdout + p.stderr
        # a second writer in this process is refused too; a viewer is not
        with pytest.raises(ImageInUseError):
            open_image(img, writable=True)
        with open_image(img) as view:
            assert view.in_use
    # released on close
    assert qemu.qemu_img("info", img).returncode == 0
    qemu.qemu_io(img, "read -P 0x68 0 1")


def test_viewer_does_not_stop_qemu(tmp_path):
    img = qemu.create(tmp_path / "v.qcow2", "1M")
    with open_image(img):
        qemu.qemu_io(img, "write -P 1 0 512")     # a VM could start and write


def test_backing_file_is_protected_while_we_write_the_overlay(tmp_path):
    base = qemu.create(tmp_path / "base.qcow2", "1M")
    top = qemu.create(tmp_path / "top.qcow2", "1M", backing=str(base), backing_fmt="qcow2")
    with open_image(top, writable=True) as im:
        im.write(0, b"x")
        p = subprocess.run([qemu.QEMU_IO, "-c", "write 0 512", str(base)], capture_output=True)
        assert b"lock" in p.stdout + p.stderr              # nobody writes the base
        assert qemu.qemu_img("info", base).returncode == 0   # reading it is fine
    qemu.qemu_io(base, "write 0 512")


def test_overlay_refused_while_qemu_writes_its_backing_file(held_by_qemu, tmp_path):
    top = qemu.create(tmp_path / "top.qcow2", "1M", backing=str(held_by_qemu),
                      backing_fmt="qcow2")
    with pytest.raises(ImageInUseError, match="backing file"):
        open_image(top, writable=True)
