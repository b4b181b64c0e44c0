"""Nothing acknowledged is lost: a write that returned, followed by a flush that
returned, is on disk whatever fails later (a full disk, an I/O error).

Failures come from the real thing -- ``RLIMIT_FSIZE``, which makes a write past
the limit fail with EFBIG as a full disk does -- and from the file layer's fault
injection.  A *log* of what each call did is replayed against a model; the image
is then judged by qemu: ``qemu-img check`` finds no corruption (leaks allowed)
and ``qemu-img convert`` shows every byte as the model allows it:

* bytes last written by a write that returned before a flush that returned hold
  that write's data;
* bytes touched since the last good flush, or by a write that failed, hold their
  durable value or the value of one of those writes, nothing else.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

import qemu
from qcow2view.engine import Qcow2Error, open_image
from qcow2view.engine.fileio import HostFile
from test_write_random import KINDS, _kind

KiB, MiB = 1 << 10, 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS_PER_KIND = 5


def _ops(seed: int, size: int, cs: int, count: int = 40):
    """(kind, offset, length, fill): 'w' writes fill bytes, 'z' zeroes, 'f' flushes."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if rng.random() < 0.2:
            out.append(("f", 0, 0, 0))
            continue
        n = rng.choice([1, 512, cs, 3 * cs, rng.randrange(1, 300 * KiB)])
        n = min(n, size)
        off = rng.randrange(0, size - n + 1)
        if rng.random() < 0.5:
            off = off // cs * cs
        if rng.random() < 0.25:
            out.append(("z", off, n, 0))
        else:
            out.append(("w", off, n, i % 250 + 1))
    out.append(("f", 0, 0, 0))
    return out


def _run_ops(im, ops) -> list[dict]:
    """Run ``ops`` on an open image; the log says what returned and what raised."""
    log = []
    for kind, off, n, fill in ops:
        try:
            if kind == "f":
                im.flush()
            elif kind == "z":
                im.write_zeroes(off, n)
            else:
                im.write(off, bytes([fill]) * n)
            ok, error = True, None
        except Qcow2Error as e:
            ok, error = False, str(e)
        log.append({"op": [kind, off, n, fill], "ok": ok, "error": error})
    return log


def _judge(img, start: bytes, log: list[dict], tmp_path) -> None:
    """The image holds what the log allows (see the module docstring)."""
    rc, report = qemu.check(img)
    assert rc in (0, 3), report
    assert report.get("corruptions", 0) == 0 and report.get("check-errors", 0) == 0, report
    durable = np.frombuffer(start, dtype=np.uint8).copy()
    current = durable.copy()              # returned writes applied in order
    since: list[tuple[int, int, int, bool]] = []   # (off, n, value, returned)
    maybe: list[tuple[np.ndarray, int]] = []       # failed writes: where they may show
    for entry in log:
        kind, off, n, fill = entry["op"]
        if kind == "f":
            if entry["ok"]:
                for mask, _ in maybe:                 # overwritten by a returned write
                    for o, k, _, returned in since:
                        if returned:
                            mask[o:o + k] = False
                for i, (o, k, value, returned) in enumerate(since):
                    if not returned:
                        mask = np.zeros(len(durable), dtype=bool)
                        mask[o:o + k] = True
                        for o2, k2, _, r2 in since[i + 1:]:
                            if r2:
                                mask[o2:o2 + k2] = False
                        maybe.append((mask, value))
                durable = current.copy()
                since = []
            continue
        value = 0 if kind == "z" else fill
        since.append((off, n, value, entry["ok"]))
        if entry["ok"]:
            current[off:off + n] = value
    actual = np.frombuffer(qemu.to_raw(img, tmp_path / "judged.raw"), dtype=np.uint8)
    ok = actual == durable
    for mask, value in maybe:
        ok |= mask & (actual == value)
    for off, n, value, _ in since:
        ok[off:off + n] |= actual[off:off + n] == value
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, (
        f"{bad.size} guest bytes lost or wrong, first at {int(bad[0]):#x}: "
        f"{int(actual[bad[0]]):#x} on disk, {int(durable[bad[0]]):#x} acknowledged; log: "
        + json.dumps([e for e in log if not e["ok"]])[:2000])


# -- the two reproductions ---------------------------------------------------------
CHILD = r"""
import json, os, resource, signal, sys
sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests"),
                os.path.join(sys.argv[1], "tests", "engine")]
from test_durability import _run_ops
from qcow2view.engine import Qcow2Error, open_image
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # EFBIG instead of death
jobs = json.loads(sys.stdin.read())
results = []
for job in jobs:
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    im = open_image(job["image"], writable=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["limit"], resource.RLIM_INFINITY))
    log = _run_ops(im, [tuple(op) for op in job["ops"]])
    if job["recover"]:
        # the disk has room again: the kept metadata must now reach it
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        log += _run_ops(im, [("f", 0, 0, 0)])
    closed = True
    try:
        im.close()
    except Qcow2Error as e:
        closed = False
        log.append({"op": ["f", 0, 0, 0], "ok": False, "error": "close: " + str(e)})
        im.close(discard=True)
    results.append({"log": log, "closed": closed})
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
print(json.dumps(results))
"""


def _limit(img, cs: int, clusters: int) -> int:
    """A file size limit that leaves room for ``clusters`` more clusters."""
    return -(-os.path.getsize(img) // cs) * cs + clusters * cs


def _clone(img, dest_dir):
    """A copy of a fixture image with a data file of its own (the header names it by
    absolute path); a backing file stays shared, as nothing writes it."""
    work = dest_dir / img.name
    shutil.copyfile(img, work)
    data = img.parent / "data.raw"
    if data.exists():
        shutil.copyfile(data, dest_dir / "data.raw")
        qemu.qemu_img("amend", "-o", f"data_file={dest_dir / 'data.raw'}", work)
    return work


def _in_child(jobs: list[dict]) -> list[dict]:
    p = subprocess.run([sys.executable, "-c", CHILD, ROOT], input=json.dumps(jobs),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout)


def test_a_write_before_a_failed_one_is_durable_after_flush(tmp_path):
    """Issue 16, A: write(0) returns, write(16M, 1M) fails with EFBIG; the flush that
    then returns has made offset 0 durable (qemu-io reads it back)."""
    img = qemu.create(tmp_path / "t.qcow2", "32M")
    ops = [("w", 0, 512, 0x41), ("w", 16 * MiB, MiB, 0x42), ("f", 0, 0, 0)]
    [result] = _in_child([{"image": str(img), "ops": ops, "limit": _limit(img, 64 * KiB, 4),
                           "recover": False}])
    log = result["log"]
    assert log[0]["ok"] and not log[1]["ok"], log
    assert "File too large" in log[1]["error"]
    assert log[2]["ok"] and result["closed"], log
    qemu.qemu_io(img, "read -P 0x41 0 512")
    _judge(img, bytes(32 * MiB), log, tmp_path)


def test_b_flush_keeps_failing_until_metadata_is_on_disk(tmp_path):
    """Issue 16, B (v2, 4 KiB clusters): when the metadata cannot be committed, every
    flush and the close fail; none reports success for data that is not on disk.
    Once there is room again, the next flush puts it all there."""
    jobs = []
    for recover in (False, True):
        img = qemu.create(tmp_path / f"t{int(recover)}.qcow2", "16M", "compat=0.10",
                          "cluster_size=4k")
        # room for the first write's L2 table and data cluster, not for the zero
        # write's L2 table
        jobs.append({"image": str(img), "limit": _limit(img, 4096, 2), "recover": recover,
                     "ops": [("w", 0x8d9800, 0x200, 0x51), ("z", 0xceda00, 0x4000, 0),
                             ("f", 0, 0, 0), ("f", 0, 0, 0)]})
    stuck, recovered = _in_child(jobs)
    log = stuck["log"]
    assert [e["ok"] for e in log] == [True, True, False, False, False], log
    assert "File too large" in log[2]["error"] and not stuck["closed"]
    _judge(jobs[0]["image"], bytes(16 * MiB), log, tmp_path)
    log = recovered["log"]
    assert [e["ok"] for e in log] == [True, True, False, False, True], log
    assert recovered["closed"]
    qemu.qemu_io(jobs[1]["image"], "read -P 0x51 0x8d9800 0x200", "read -P 0 0xceda00 0x4000")
    _judge(jobs[1]["image"], bytes(16 * MiB), log, tmp_path)


# -- every image kind, random requests, a random limit ------------------------------------
@pytest.fixture(scope="module")
def pristine_kinds(tmp_path_factory):
    """Each kind of image of test_write_random, made once by qemu-img/qemu-io."""
    out = {}
    for kind in KINDS:
        d = tmp_path_factory.mktemp(kind)
        img, size, _ = _kind(d, kind)
        with open_image(img) as im:
            cs = im.cluster_size
        out[kind] = (d, img, size, cs, qemu.to_raw(img, d / "start.raw"))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_full_disk_never_loses_acknowledged_writes(tmp_path, kind, pristine_kinds):
    d, img, size, cs, start = pristine_kinds[kind]
    jobs = []
    for seed in range(SEEDS_PER_KIND):
        rng = random.Random(f"{kind}-{seed}")
        run_dir = tmp_path / f"run{seed}"
        run_dir.mkdir()
        work = _clone(img, run_dir)
        jobs.append({"image": str(work), "ops": _ops(rng.randrange(1 << 30), size, cs),
                     "limit": _limit(work, cs, rng.choice([-32, -4, 0, 1, 2, 4, 8, 16])),
                     "recover": seed % 2 == 1})
    results = _in_child(jobs)
    failures = 0
    for job, result in zip(jobs, results):
        log = result["log"]
        failures += sum(not e["ok"] for e in log)
        if job["recover"]:
            assert log[-1]["ok"], f"flush after the disk has room again failed: {log[-1]}"
        if not result["closed"]:
            assert not log[-2]["ok"] or log[-2]["op"][0] != "f", \
                "close failed right after a flush that reported success"
        _judge(job["image"], start, log, tmp_path)
    assert failures, "the limit never bit: the test tested nothing"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("persistent", [True, False], ids=["stuck", "transient"])
def test_io_errors_never_lose_acknowledged_writes(tmp_path, kind, persistent, pristine_kinds):
    """Fault injection at a random write-side operation: a failed write or flush
    leaves earlier acknowledged writes durable, and (once the fault clears) a flush
    commits everything that returned."""
    d, img, size, cs, start = pristine_kinds[kind]
    rng = random.Random(f"fault-{kind}-{persistent}")
    for run in range(3):
        work = _clone(img, tmp_path)
        ops = _ops(rng.randrange(1 << 30), size, cs, count=25)
        steps = []
        HostFile.fault_hook = steps.append
        try:
            with open_image(work, writable=True) as im:
                steps.clear()
                _run_ops(im, ops)
        finally:
            HostFile.fault_hook = None
        work = _clone(img, tmp_path)
        fail_at = rng.randrange(len(steps))
        im = open_image(work, writable=True)
        if persistent:
            HostFile.fault_after = fail_at          # fails from there on
            try:
                log = _run_ops(im, ops)
            finally:
                HostFile.fault_after = None
        else:
            calls = iter(range(1 << 30))

            def once(what, at=fail_at):
                if next(calls) == at:
                    raise OSError(28, f"injected ENOSPC on {what}")
            HostFile.fault_hook = once
            try:
                log = _run_ops(im, ops)
            finally:
                HostFile.fault_hook = None
        assert not all(e["ok"] for e in log), "the fault never fired"
        log += _run_ops(im, [("f", 0, 0, 0)])
        assert log[-1]["ok"], log[-1]          # the fault is gone: everything commits
        im.close()
        _judge(work, start, log, tmp_path)


def test_close_keeps_the_image_open_while_it_cannot_flush(tmp_path):
    img = qemu.create(tmp_path / "t.qcow2", "8M")
    im = open_image(img, writable=True)
    im.write(0, b"\x61" * 4096)
    HostFile.fault_after = 0
    try:
        with pytest.raises(Qcow2Error, match="not on disk yet"):
            im.close()
        assert not im.closed
        with pytest.raises(Qcow2Error, match="not on disk yet"):
            im.close()
    finally:
        HostFile.fault_after = None
    im.close()
    assert im.closed
    qemu.qemu_io(img, "read -P 0x61 0 4096")
    rc, report = qemu.check(img)
    assert rc == 0, report
