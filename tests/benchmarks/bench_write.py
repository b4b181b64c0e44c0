"""Write-path figures side by side with QEMU (not a test: run it by hand).

    python tests/benchmarks/bench_write.py [--dir /dev/shm] [--size-gib 1]

1. sequential guest write into an empty image, 1 MiB requests, then flush,
   vs ``qemu-io -c 'write -P 0x5a 0 1G'`` (which also flushes when it closes);
2. one 512-byte edit committed with its flush barriers (allocating and in
   place), median over many edits;
3. ``create_image(size=1 TiB, preallocation="metadata")`` vs ``qemu-img create``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from qcow2view.engine import create_image, open_image  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30


def _t(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _row(what: str, ours: float, peer: float, unit: str = "s") -> None:
    ratio = peer / ours if ours else float("inf")
    print(f"{what:<48} ours {ours:9.4f} {unit}   qemu {peer:9.4f} {unit}   "
          f"speed ratio (qemu time / ours) {ratio:5.2f}x")


def bench_sequential(d: str, size: int) -> None:
    ours, theirs = os.path.join(d, "seq-ours.qcow2"), os.path.join(d, "seq-qemu.qcow2")
    create_image(ours, size, overwrite=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", theirs, str(size)], check=True)
    buf = b"\x5a" * MiB

    def run_ours():
        with open_image(ours, writable=True) as im:
            for off in range(0, size, MiB):
                im.write(off, buf)
            im.flush()
    t_ours = _t(run_ours)
    t_qemu = _t(lambda: subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                                        f"write -P 0x5a 0 {size}", theirs],
                                       check=True, capture_output=True))
    same = subprocess.run(["qemu-img", "compare", ours, theirs], capture_output=True)
    _row(f"sequential {size // MiB} MiB write, 1 MiB requests", t_ours, t_qemu)
    print(f"{'':<48} {size / MiB / t_ours:7.0f} MiB/s vs {size / MiB / t_qemu:7.0f} MiB/s; "
          f"images equal: {same.returncode == 0}")
    os.unlink(ours)
    os.unlink(theirs)


def bench_small_edit(d: str) -> None:
    img = os.path.join(d, "edit.qcow2")
    create_image(img, 1 * GiB, overwrite=True)
    alloc, inplace = [], []
    with open_image(img, writable=True) as im:
        for i in range(300):          # each edit lands in a fresh cluster
            off = i * 3 * 65536 + 1024
            t = time.perf_counter()
            im.write(off, b"e" * 512)
            im.flush()
            alloc.append(time.perf_counter() - t)
        for i in range(300):          # and again, in place
            off = i * 3 * 65536 + 1024
            t = time.perf_counter()
            im.write(off, b"f" * 512)
            im.flush()
            inplace.append(time.perf_counter() - t)
    q = []
    for i in range(20):
        t = time.perf_counter()
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 1 {i * 196608 + 1024} 512",
                        "-c", "flush", img], check=True, capture_output=True)
        q.append(time.perf_counter() - t)
    print(f"512-byte edit + flush, allocating:             median "
          f"{statistics.median(alloc) * 1e3:6.3f} ms  (max {max(alloc) * 1e3:.3f} ms)")
    print(f"512-byte edit + flush, in place:               median "
          f"{statistics.median(inplace) * 1e3:6.3f} ms  (max {max(inplace) * 1e3:.3f} ms)")
    print(f"  (qemu-io process start + open + edit + flush + close: median "
          f"{statistics.median(q) * 1e3:.1f} ms, for scale only)")
    os.unlink(img)


def bench_create(d: str) -> None:
    ours, theirs = os.path.join(d, "big-ours.qcow2"), os.path.join(d, "big-qemu.qcow2")
    t_ours = _t(lambda: create_image(ours, 1 << 40, preallocation="metadata", overwrite=True))
    t_qemu = _t(lambda: subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                                        "preallocation=metadata", theirs, "1T"], check=True))
    ok = subprocess.run(["qemu-img", "check", ours], capture_output=True).returncode == 0
    _row("create 1 TiB, preallocation=metadata", t_ours, t_qemu)
    print(f"{'':<48} qemu-img check of ours clean: {ok}")
    os.unlink(ours)
    os.unlink(theirs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ns = ap.parse_args()
    d = tempfile.mkdtemp(prefix="qcow2view-bench-", dir=ns.dir)
    fs = subprocess.run(["df", "-T", d], capture_output=True, text=True).stdout.splitlines()[-1]
    print(f"scratch directory {d} ({fs.split()[1]})")
    try:
        bench_sequential(d, int(ns.size_gib * GiB))
        bench_small_edit(d)
        bench_create(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
