"""Check and map speed and memory against qemu-img, side by side (not a test).

    python tests/benchmarks/bench_check.py [--rounds 5] [--frag-clusters 1000000] [--keep]

Images (in a scratch folder under /tmp, deleted afterwards unless --keep):

* a 1 TiB image made with ``qemu-img create -o preallocation=metadata``
  (16,777,216 clusters of 64 KiB, a sparse file);
* a fragmented image: 512-byte clusters, about a million data clusters
  written by qemu-io in reverse guest order at every other cluster, so every
  data cluster is fragmented.

Each task runs as a whole process (``python -m qcow2view check IMG`` or a tiny
script for the maps) interleaved with its peer (``qemu-img check`` for the
check and the host map, ``qemu-img map --output=json`` for the guest map) for
several rounds; the table shows medians, the ratio ours/peer and the peak
memory of each child (getrusage of the child).  Targets: check ratio <= 0.3 on
the 1 TiB image, peak memory <= 256 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")

MAP_SCRIPT = """
import sys
from qcow2view.engine import open_image
with open_image(sys.argv[2]) as im:
    m = im.host_map() if sys.argv[1] == "host" else im.guest_map()
    print(len(m))
"""


def run(cmd: list[str]) -> tuple[float, float, int, float]:
    """(wall seconds, peak MiB, exit code, CPU seconds) of one child process."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return dt, ru.ru_maxrss / 1024, p.returncode, ru.ru_utime + ru.ru_stime


def make_big(d: str) -> str:
    path = os.path.join(d, "1t-prealloc.qcow2")
    if not os.path.exists(path):
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
                        "preallocation=metadata", path, "1T"], check=True)
    return path


def make_fragmented(d: str, n: int) -> str:
    path = os.path.join(d, f"frag-{n}.qcow2")
    if os.path.exists(path):
        return path
    size = 2 * n * 512
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
                    path, str(size)], check=True)
    # the commands go through a file so that this (parent) process stays small:
    # a child's peak memory as getrusage reports it starts from its parent's
    cmds = path + ".cmds"
    with open(cmds, "w") as f:
        for i in range(n - 1, -1, -1):
            f.write(f"write -q -P {i % 251 + 1} {2 * i * 512} 512\n")
    print(f"writing {n} scattered clusters with qemu-io (takes a while)...", flush=True)
    with open(cmds, "rb") as f:
        subprocess.run([QEMU_IO, "-t", "unsafe", "-f", "qcow2", path], stdin=f,
                       stdout=subprocess.DEVNULL, check=True)
    os.remove(cmds)
    return path


def same_as_qemu(path: str) -> bool:
    env = dict(os.environ, PYTHONPATH=ROOT)
    ours = subprocess.run([sys.executable, "-m", "qcow2view", "check", "--json", path],
                          capture_output=True, text=True, env=env)
    peer = subprocess.run([QEMU_IMG, "check", "--output=json", path], capture_output=True,
                          text=True)
    return json.loads(ours.stdout) == json.loads(peer.stdout)


def bench(path: str, rounds: int) -> list[tuple]:
    py = sys.executable
    tasks = [
        ("check", [py, "-m", "qcow2view", "check", path], [QEMU_IMG, "check", path]),
        ("host map", [py, "-c", MAP_SCRIPT, "host", path], [QEMU_IMG, "check", path]),
        ("guest map", [py, "-c", MAP_SCRIPT, "guest", path],
         [QEMU_IMG, "map", "--output=json", path]),
    ]
    rows = []
    for name, ours, peer in tasks:
        run(ours), run(peer)          # warm the page cache
        a, b, ma, mb, ca, cb = [], [], [], [], [], []
        for _ in range(rounds):
            t, m, rc, c = run(ours)
            if rc not in (0, 2, 3):
                raise SystemExit(f"{name}: our command failed ({rc})")
            a.append(t)
            ma.append(m)
            ca.append(c)
            t, m, _, c = run(peer)
            b.append(t)
            mb.append(m)
            cb.append(c)
        ratios = [x / y for x, y in zip(a, b)]
        cpu_ratios = [x / y for x, y in zip(ca, cb)]
        rows.append((os.path.basename(path), name, statistics.median(a), statistics.median(b),
                     statistics.median(ratios), max(ma), max(mb),
                     statistics.median(cpu_ratios)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frag-clusters", type=int, default=1_000_000)
    ap.add_argument("--dir", help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the images")
    ns = ap.parse_args()
    d = ns.dir or tempfile.mkdtemp(prefix="qcow2view-bench-", dir="/tmp")
    os.makedirs(d, exist_ok=True)
    try:
        images = [make_big(d)]
        if ns.frag_clusters:
            images.append(make_fragmented(d, ns.frag_clusters))
        rows = []
        for p in images:
            ok = same_as_qemu(p)
            print(f"{os.path.basename(p)}: check output equals qemu-img check: {ok}",
                  flush=True)
            rows += bench(p, ns.rounds)
        print()
        print(f"{'image':<26}{'task':<11}{'ours s':>9}{'qemu s':>9}{'ratio':>8}"
              f"{'cpu ratio':>11}{'ours MiB':>10}{'qemu MiB':>10}")
        for img, task, a, b, r, ma, mb, cr in rows:
            print(f"{img:<26}{task:<11}{a:>9.3f}{b:>9.3f}{r:>8.2f}{cr:>11.2f}{ma:>10.0f}"
                  f"{mb:>10.0f}")
        print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
              "cores; wall times suffer from other load, CPU ratios much less)")
        big_check = rows[0]
        print(f"\n1 TiB check: wall ratio {big_check[4]:.2f} (target <= 0.30), "
              f"peak {big_check[5]:.0f} MiB (target <= 256)")
    finally:
        if not ns.keep and not ns.dir:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
