"""Naming leaked clusters (what each once held) against qemu-img check, side by side
(not a test).

    python tests/benchmarks/bench_leaks.py [--gib 1] [--rounds 3]   (GIB <= 1: the leak
    helper raises a refcount in refcount block 0)

A qcow2 of GIB GiB written by qemu-io (64 KiB clusters, four patterns) and an overlay
on it, each given a leaked cluster nothing equals (the worst case: every data cluster
is probed) by appending a cluster and raising its refcount.  Per image: the median
wall time of ``qemu-img check`` (the peer, which finds the leak) and of
``leaked_fates`` (which then tells what it held), and the ratio ours/peer.  Ours runs
in the guest index's worker, not on the GUI thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from gui_fixtures import _make_leak  # noqa: E402
from qcow2view.engine import open_image  # noqa: E402
from qcow2view.guest.leaked import leaked_fates  # noqa: E402


def _leak(path: str) -> int:
    from pathlib import Path
    idx = _make_leak(Path(path))
    with open(path, "r+b") as f:
        f.seek(idx * 65536)
        f.write(os.urandom(65536))
    return idx


def _ours(path: str, leak: int) -> float:
    with open_image(path) as img:
        gm = img.guest_map()
        t = time.perf_counter()
        fate = leaked_fates(img, [leak], gm)[leak]
        took = time.perf_counter() - t
    assert fate.what == "?", fate
    return took


def _peer(path: str) -> float:
    t = time.perf_counter()
    subprocess.run(["qemu-img", "check", path], capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-leaks-") as d:
        base, top = os.path.join(d, "base.qcow2"), os.path.join(d, "top.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, f"{a.gib}G"],
                       check=True)
        quarter = a.gib * 256
        cmds = []
        for i in range(4):
            cmds += ["-c", f"write -P {0x5a + i} {i * quarter}M {quarter}M"]
        subprocess.run(["qemu-io", "-f", "qcow2", *cmds, base], check=True,
                       capture_output=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2",
                        "-F", "qcow2", top], check=True, cwd=d)
        print(f"{'image':28} {'clusters':>9} {'qemu-img check':>15} {'name leaks':>11} "
              f"{'ratio':>6}")
        for name, path in ((f"{a.gib} GiB written", base),
                           ("overlay on it (via backing)", top)):
            leak = _leak(path)
            peer = statistics.median(_peer(path) for _ in range(a.rounds))
            ours = statistics.median(_ours(path, leak) for _ in range(a.rounds))
            n = a.gib << 14
            print(f"{name:28} {n:>9,} {peer * 1e3:>12.1f} ms {ours * 1e3:>8.1f} ms "
                  f"{ours / peer:>6.2f}")


if __name__ == "__main__":
    main()
