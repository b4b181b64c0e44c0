"""Crash safety: a writer killed at random moments, and a file layer that fails.

Afterwards ``qemu-img check`` must find no corruption (leaked clusters are
allowed) and every guest byte must hold a value it held before or after one
of the writes that may have been in flight.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest

import qemu
from qcow2view.engine import Qcow2Error, open_image
from qcow2view.engine.fileio import HostFile

KiB, MiB = 1 << 10, 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ops(seed: int, size: int, count: int):
    """The writer's deterministic request list: (zero?, offset, length, fill byte)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        n = rng.choice([1, 512, 4096, 65536, rng.randrange(1, 200 * KiB)])
        off = rng.randrange(0, size - n + 1)
        zero = rng.random() < 0.2
        out.append((zero, off, n, 0 if zero else i % 250 + 1))
    return out


CHILD = r"""
import os, struct, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.join(sys.argv[1], "tests", "engine"))
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from test_crash import _ops
from qcow2view.engine import open_image
img, seed, size, count, progress = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
pfd = os.open(progress, os.O_RDWR | os.O_CREAT)
last = 0
with open_image(img, writable=True) as im:
    for i, (zero, off, n, fill) in enumerate(_ops(seed, size, count)):
        if zero:
            im.write_zeroes(off, n)
        else:
            im.write(off, bytes([fill]) * n)
        flushed = i % 7 == 0
        if flushed:
            im.flush()
        os.pwrite(pfd, struct.pack("<qq", i + 1, i + 1 if flushed else last), 0)
        last = i + 1 if flushed else last
"""


def _check_no_corruption(img):
    rc, report = qemu.check(img)
    assert rc in (0, 3), report          # 3: leaks only
    assert report.get("corruptions", 0) == 0 and report.get("check-errors", 0) == 0


def _apply(model: bytearray, op) -> None:
    zero, off, n, fill = op
    model[off:off + n] = bytes(n) if zero else bytes([fill]) * n


def _check_bytes(actual: bytes, candidates: list[bytes]) -> None:
    import numpy as np
    a = np.frombuffer(actual, dtype=np.uint8)
    ok = np.zeros(len(a), dtype=bool)
    for c in candidates:
        ok |= a == np.frombuffer(c, dtype=np.uint8)
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, f"{bad.size} guest bytes hold neither old nor new data, " \
                          f"first at {int(bad[0]):#x}"


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path):
    size = 4 * MiB
    img = qemu.create(tmp_path / "k.qcow2", size)
    qemu.qemu_io(img, "write -P 0x11 0 1M", "write -c -P 0x22 2M 64k", "write -z 3M 64k")
    qemu.qemu_img("snapshot", "-c", "s", img)
    snap = qemu.to_raw(img, tmp_path / "snap.raw", snapshot="s")
    model = bytearray(qemu.to_raw(img, tmp_path / "start.raw"))
    rng = random.Random(7)
    count = 400
    for rnd in range(5):
        progress = tmp_path / "progress"
        progress.write_bytes(struct.pack("<qq", 0, 0))
        child = subprocess.Popen([sys.executable, "-c", CHILD, ROOT, str(img), str(rnd), str(size),
                                  str(count), str(progress)])
        try:
            deadline = time.monotonic() + 30
            while struct.unpack("<q", progress.read_bytes()[:8])[0] < 2:
                assert child.poll() is None, "the writer died on its own"
                assert time.monotonic() < deadline
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
        done, flushed = struct.unpack("<qq", progress.read_bytes()[:16])
        ops = _ops(rnd, size, count)
        _check_no_corruption(img)
        actual = qemu.to_raw(img, tmp_path / "now.raw")
        # writes since the last flush may be lost, the one in flight (and the next:
        # the progress note lags by one) may be half done: every byte must hold
        # a value of one of those states
        for op in ops[:flushed]:
            _apply(model, op)
        cands = [bytes(model)]
        m = bytearray(model)
        for op in ops[flushed:done + 2]:
            _apply(m, op)
            cands.append(bytes(m))
        _check_bytes(actual, cands)
        model = bytearray(actual)
        assert qemu.to_raw(img, tmp_path / "snap2.raw", snapshot="s") == snap
    # the leaks a crash may leave are harmless: qemu repairs them
    qemu.qemu_img("check", "-r", "leaks", img, check=False)
    assert qemu.check(img)[0] == 0


def _fault_scenarios(tmp_path):
    """(name, image, list of operations) exercising every stage of the write path."""
    out = []
    a = qemu.create(tmp_path / "a.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(a, "write -P 1 0 1M", "write -c -P 2 2M 4k", "write -z 16k 4k")
    qemu.qemu_img("snapshot", "-c", "s", a)
    out.append(("cow-compressed-l2", a, [("w", 2 * MiB - 6 * KiB, 12 * KiB),
                                          ("w", 10 * KiB, 9 * KiB), ("z", 0, 8 * KiB)]))
    b = qemu.create(tmp_path / "b.qcow2", "4M", "cluster_size=512", "refcount_bits=64")
    qemu.qemu_io(b, "write -P 3 0 1900k")
    out.append(("refcount-growth", b, [("w", 1900 * KiB, 400 * KiB)]))
    base = qemu.create(tmp_path / "base.qcow2", "4M")
    qemu.qemu_io(base, "write -P 4 0 4M")
    c = qemu.create(tmp_path / "c.qcow2", "4M", "extended_l2=on", "cluster_size=32k",
                    backing=str(base), backing_fmt="qcow2")
    qemu.qemu_io(c, "write -P 5 33k 1k")
    out.append(("extended-l2-backing", c, [("w", 30 * KiB, 6 * KiB), ("z", 64 * KiB, 32 * KiB)]))
    return out


@pytest.mark.slow
def test_io_errors_at_every_step(tmp_path):
    for name, img, ops in _fault_scenarios(tmp_path):
        pristine = img.read_bytes()
        old = qemu.to_raw(img, tmp_path / "old.raw")
        new = bytearray(old)
        for kind, off, n in ops:
            new[off:off + n] = bytes(n) if kind == "z" else b"\xee" * n
        # how many file operations the whole sequence takes
        steps = []
        HostFile.fault_hook = steps.append
        try:
            with open_image(img, writable=True) as im:
                steps.clear()
                for kind, off, n in ops:
                    im.write_zeroes(off, n) if kind == "z" else im.write(off, b"\xee" * n)
                im.flush()
                total = len(steps)
        finally:
            HostFile.fault_hook = None
        assert qemu.to_raw(img, tmp_path / "full.raw") == bytes(new)
        assert total > 3
        for fail_at in range(total):
            img.write_bytes(pristine)
            im = open_image(img, writable=True)
            try:
                HostFile.fault_after = fail_at
                with pytest.raises(Qcow2Error):
                    for kind, off, n in ops:
                        im.write_zeroes(off, n) if kind == "z" else im.write(off, b"\xee" * n)
                    im.flush()
            finally:
                HostFile.fault_after = None
                try:
                    im.close()
                except Qcow2Error:
                    pass
            _check_no_corruption(img)
            # every byte holds the old or the new data, nothing else
            _check_bytes(qemu.to_raw(img, tmp_path / "now.raw"), [old, bytes(new)])
