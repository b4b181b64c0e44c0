"""Check and map speed and memory against qemu-img, side by side (not a test).

    python tests/benchmarks/bench_check.py [--rounds 3] [--images 1t,8t,frag,thin32t,snap1t]
                                           [--frag-clusters 1000000] [--load 1] [--dir D]
                                           [--keep]

Images (in a scratch folder under /tmp, deleted afterwards unless --keep or --dir):

* ``1t``, ``8t``: ``qemu-img create -o preallocation=metadata`` of 1 TiB and 8 TiB
  (16,777,216 and 134,217,728 clusters of 64 KiB; sparse files, 0.16 and 1.3 GiB
  of metadata: check ``df -h /tmp`` first);
* ``frag``: 512-byte clusters, about a million data clusters written by qemu-io
  in reverse guest order at every other cluster, so every one is fragmented;
* ``thin32t``: a 32 TiB image without preallocation, 1 GiB written by qemu-io in
  16,384 clusters scattered over the disk: cost must follow the clusters
  allocated, not the virtual size;
* ``snap1t``: ``1t`` with one internal snapshot (``qemu-img snapshot -c``): every
  L2 table and data cluster shared, refcount 2, COPIED flags clear (not in the
  default list: about 10 s to make).

Each task runs as a whole process (``python -m qcow2view check IMG``, or a tiny
script for the maps) interleaved with its peer (``qemu-img check``, or
``qemu-img map --output=json`` for the guest map) for several rounds; the table
shows medians of wall and CPU time, the ratio ours/peer, and the peak memory of
each child (getrusage of the child).  Then, per image, where our check's memory
goes (a child that times each stage and reports tracemalloc's peak and the
numpy arrays it keeps), and a fit of our check's peak memory over the images:
"check: N bytes per host cluster + M MiB".  ``check+1hog`` is the check again
with ``--load`` processes spinning on the CPU meanwhile (a loaded machine: our
check can no longer lean on the second core).  Targets (issue 15): the 8 TiB check
at <= 0.30x qemu-img's wall time and <= its peak memory; 1 TiB at <= 0.25x.
"""

from __future__ import annotations

import argparse
import contextlib
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
MiB = 1 << 20

MAP_SCRIPT = """
import sys
from qcow2view.engine import open_image
with open_image(sys.argv[2]) as im:
    m = im.host_map() if sys.argv[1] == "host" else im.guest_map()
    print(len(m))
"""

# where the check's memory goes: one line of JSON per stage
STAGES_SCRIPT = """
import json, resource, sys, time, tracemalloc
from qcow2view.engine import open_image
from qcow2view.engine import check as CK
from qcow2view.engine.refscan import DiskRefcounts, Scanner
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = {"import_rss": rss()}
tracemalloc.start()
with open_image(sys.argv[1]) as im:
    nb = -(-im.file.size // im.cluster_size)
    out["host_clusters"] = nb
    t = time.process_time()
    disk = DiskRefcounts(im, nb + 1)
    scan = Scanner(im, disk=disk, check_copied=True, compact=True).run()
    out["walk_cpu"] = time.process_time() - t
    out["walk_peak"] = tracemalloc.get_traced_memory()[1]
    out["refs_bytes"] = scan.refs.nbytes
    out["refs_dtype"] = str(scan.refs.dtype)
    cache = getattr(disk, "_cache", {}).values()
    out["refcount_cache_bytes"] = sum(b.nbytes for b in cache if b is not None)
    tracemalloc.reset_peak()
    t = time.process_time()
    CK._result(im, scan, disk)
    out["compare_cpu"] = time.process_time() - t
    out["compare_peak"] = tracemalloc.get_traced_memory()[1]
out["rss"] = rss()
print(json.dumps(out))
"""


def run(cmd: list[str]) -> tuple[float, float, int, float]:
    """(wall seconds, peak MiB, exit code, CPU seconds) of one child process."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    return dt, ru.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime


def make_prealloc(d: str, size: str) -> str:
    path = os.path.join(d, f"{size.lower()}-prealloc.qcow2")
    if not os.path.exists(path):
        print(f"making {path} (qemu-img create -o preallocation=metadata {size})...", flush=True)
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
                        "preallocation=metadata", path, size], check=True)
    return path


def _qemu_io_script(path: str, lines) -> None:
    # through a file, and ``lines`` a generator, so this (parent) process stays small:
    # a child's peak memory as getrusage reports it starts from its parent's (a list
    # of the million lines made every later figure read 98 MiB)
    cmds = path + ".cmds"
    with open(cmds, "w") as f:
        f.writelines(line + "\n" for line in lines)
    with open(cmds, "rb") as f:
        subprocess.run([QEMU_IO, "-t", "unsafe", "-f", "qcow2", path], stdin=f,
                       stdout=subprocess.DEVNULL, check=True)
    os.remove(cmds)


def make_snapshotted(d: str) -> str:
    path = os.path.join(d, "1t-snap.qcow2")
    if not os.path.exists(path):
        print(f"making {path} (1 TiB preallocated, then qemu-img snapshot -c)...", flush=True)
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
                        "preallocation=metadata", path, "1T"], check=True)
        subprocess.run([QEMU_IMG, "snapshot", "-c", "s1", path], check=True)
    return path


def make_fragmented(d: str, n: int) -> str:
    path = os.path.join(d, f"frag-{n}.qcow2")
    if os.path.exists(path):
        return path
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
                    path, str(2 * n * 512)], check=True)
    print(f"writing {n} scattered clusters with qemu-io (takes a while)...", flush=True)
    _qemu_io_script(path, (f"write -q -P {i % 251 + 1} {2 * i * 512} 512"
                           for i in range(n - 1, -1, -1)))
    return path


def make_thin(d: str) -> str:
    """32 TiB, no preallocation, 1 GiB written as 16,384 clusters of 64 KiB spread
    evenly over the disk (one every 2 GiB)."""
    path = os.path.join(d, "32t-thin.qcow2")
    if os.path.exists(path):
        return path
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", path, "32T"], check=True)
    print("writing 1 GiB in 16,384 scattered clusters with qemu-io...", flush=True)
    step = (32 << 40) // 16384
    _qemu_io_script(path, (f"write -q -P {i % 251 + 1} {i * step + (i % 7) * 65536} 64k"
                           for i in range(16384)))
    return path


def same_as_qemu(path: str) -> bool:
    env = dict(os.environ, PYTHONPATH=ROOT)
    ours = subprocess.run([sys.executable, "-m", "qcow2view", "check", "--json", path],
                          capture_output=True, text=True, env=env)
    peer = subprocess.run([QEMU_IMG, "check", "--output=json", path], capture_output=True,
                          text=True)
    return json.loads(ours.stdout) == json.loads(peer.stdout)


def stages(path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", STAGES_SCRIPT, path], capture_output=True,
                       text=True, env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def cpu_hogs(n: int):
    """``n`` processes spinning on the CPU (a loaded machine: a build, a VM)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def bench(path: str, rounds: int, maps: bool, load: int = 0) -> list[tuple]:
    py = sys.executable
    tasks = [("check", [py, "-m", "qcow2view", "check", path], [QEMU_IMG, "check", path])]
    if load:
        tasks.append((f"check+{load}hog", tasks[0][1], tasks[0][2]))
    if maps:
        tasks += [("host map", [py, "-c", MAP_SCRIPT, "host", path], [QEMU_IMG, "check", path]),
                  ("guest map", [py, "-c", MAP_SCRIPT, "guest", path],
                   [QEMU_IMG, "map", "--output=json", path])]
    rows = []
    for name, ours, peer in tasks:
        run(ours), run(peer)          # warm the page cache
        a, b, ma, mb, ca, cb = [], [], [], [], [], []
        with cpu_hogs(load if "hog" in name else 0):
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
        rows.append((os.path.basename(path), name, statistics.median(a), statistics.median(b),
                     statistics.median(x / y for x, y in zip(a, b)), max(ma), max(mb),
                     statistics.median(ca), statistics.median(cb),
                     statistics.median(x / y for x, y in zip(ca, cb))))
    return rows


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of peak bytes = a * clusters + b over (clusters, bytes)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    a = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return a, my - a * mx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", default="1t,8t,frag,thin32t")
    ap.add_argument("--frag-clusters", type=int, default=1_000_000)
    ap.add_argument("--maps", action="store_true", help="also time the host and guest maps")
    ap.add_argument("--load", type=int, default=1, metavar="N",
                    help="also time the check with N processes spinning on the CPU "
                         "(default 1, one core of two busy; 0: quiet only)")
    ap.add_argument("--dir", help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the images")
    ns = ap.parse_args()
    d = ns.dir or tempfile.mkdtemp(prefix="qcow2view-bench-", dir="/tmp")
    os.makedirs(d, exist_ok=True)
    makers = {"1t": lambda: make_prealloc(d, "1T"), "8t": lambda: make_prealloc(d, "8T"),
              "frag": lambda: make_fragmented(d, ns.frag_clusters),
              "thin32t": lambda: make_thin(d), "snap1t": lambda: make_snapshotted(d)}
    try:
        images = [makers[k]() for k in ns.images.split(",")]
        rows, probes = [], {}
        for p in images:
            ok = same_as_qemu(p)
            print(f"{os.path.basename(p)}: check output equals qemu-img check: {ok}",
                  flush=True)
            rows += bench(p, ns.rounds, ns.maps, ns.load)
            probes[os.path.basename(p)] = stages(p)
        print()
        print(f"{'image':<22}{'task':<10}{'ours s':>8}{'qemu s':>8}{'ratio':>7}"
              f"{'ours cpu':>9}{'qemu cpu':>9}{'cpu ratio':>10}{'ours MiB':>9}{'qemu MiB':>9}")
        for img, task, a, b, r, ma, mb, ca, cb, cr in rows:
            print(f"{img:<22}{task:<10}{a:>8.2f}{b:>8.2f}{r:>7.2f}{ca:>9.2f}{cb:>9.2f}"
                  f"{cr:>10.2f}{ma:>9.0f}{mb:>9.0f}")
        print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
              "cores; wall times suffer from other load, CPU ratios much less)")
        print("\nwhere our check's memory goes (one child per image; tracemalloc peaks):")
        print(f"{'image':<22}{'host clusters':>14}{'refs':>16}{'walk peak':>11}"
              f"{'compare peak':>13}{'import RSS':>11}{'peak RSS':>10}{'walk cpu':>9}")
        for img, s in probes.items():
            print(f"{img:<22}{s['host_clusters']:>14,}"
                  f"{s['refs_bytes'] / MiB:>9.1f} MiB {s['refs_dtype']:<5}"
                  f"{s['walk_peak'] / MiB:>7.1f} MiB{s['compare_peak'] / MiB:>9.1f} MiB"
                  f"{s['import_rss'] / MiB:>7.0f} MiB{s['rss'] / MiB:>6.0f} MiB"
                  f"{s['walk_cpu']:>8.2f}s")
        peaks = {img: ma for img, task, _, _, _, ma, *_ in rows if task == "check"}
        pts = [(probes[img]["host_clusters"], peaks[img] * MiB) for img in peaks]
        if len(pts) >= 2:
            a, b = fit(pts)
            print(f"\ncheck: {a:.2f} bytes per host cluster + {b / MiB:.0f} MiB "
                  f"(peak RSS fitted over {len(pts)} images)")
        for img, task, a, b, r, ma, mb, ca, cb, cr in rows:
            if task.startswith("check") and img.startswith(("1t-prealloc", "8t-prealloc")):
                goal = 0.30 if img.startswith("8t") else 0.25
                print(f"{img} {task}: wall ratio {r:.2f}, CPU ratio {cr:.2f} (goal <= {goal}); "
                      f"peak {ma:.0f} MiB vs qemu-img {mb:.0f} MiB")
    finally:
        if not ns.keep and not ns.dir:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
