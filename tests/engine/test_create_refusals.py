"""``create`` refuses what qemu-img refuses, and a failed create leaves nothing behind
(issue 16 item 3): a FIFO or a folder as the backing file, a data file it made."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

import qemu

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(argv, cwd, limit: int | None = None) -> subprocess.CompletedProcess:
    def small_files() -> None:       # as on a full disk: writes past it fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          preexec_fn=small_files if limit else None,
                          env={**os.environ, "PYTHONPATH": ROOT})


def ours(*args, cwd, limit=None):
    return run([sys.executable, "-m", "qcow2view", "create", *args], cwd, limit)


def theirs(*args, cwd, limit=None):
    return run([qemu.QEMU_IMG, "create", "-f", "qcow2", *args], cwd, limit)


@pytest.mark.parametrize("kind", ["fifo", "dir"])
@pytest.mark.parametrize("size", [None, "1M"])
def test_backing_file_that_is_no_disk(tmp_path, kind, size):
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        # a writer keeps qemu-img's open of the FIFO from waiting for one
        holder = os.open(tmp_path / "fifo", os.O_RDWR | os.O_NONBLOCK)
    else:
        (tmp_path / "dir").mkdir()
        holder = None
    try:
        sz = [size] if size else []
        q = theirs("-b", kind, "-F", "raw", "q.qcow2", *sz, cwd=tmp_path)
        o = ours("o.qcow2", *sz, "-b", kind, "-F", "raw", cwd=tmp_path)
    finally:
        if holder is not None:
            os.close(holder)
    assert q.returncode == o.returncode == 1, o.stdout
    why = f"'file' driver requires '{kind}' to be a regular file"
    assert why in q.stderr
    assert why.replace(f"'{kind}'", f"{kind!r}") in o.stderr
    assert len(o.stderr.strip().splitlines()) == 1 and "Traceback" not in o.stderr
    assert not (tmp_path / "q.qcow2").exists() and not (tmp_path / "o.qcow2").exists()


def test_failed_create_leaves_no_data_file(tmp_path):
    limit = 1 << 20      # the 16 MiB data file cannot be made that long
    q = theirs("-o", "data_file=q.raw", "q.qcow2", "16M", cwd=tmp_path, limit=limit)
    o = ours("o.qcow2", "16M", "-o", "data_file=o.raw", cwd=tmp_path, limit=limit)
    assert q.returncode == o.returncode == 1
    assert "File too large" in o.stderr and "Traceback" not in o.stderr
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("where", ["image", "data file"])
def test_nul_byte_in_a_name_is_a_typed_error(tmp_path, where):
    from qcow2view.engine import RequestError
    from qcow2view.engine.create import create_image
    kw = {"data_file": str(tmp_path / "d\0.raw")} if where == "data file" else {}
    name = "a\0.qcow2" if where == "image" else "a.qcow2"
    with pytest.raises(RequestError, match=f"the {where} name cannot contain a NUL byte"):
        create_image(tmp_path / name if where != "image" else str(tmp_path) + "/" + name,
                     "1M", **kw)
    assert os.listdir(tmp_path) == []
