#!/usr/bin/env python3
"""Read-engine benchmark: qcow2view's engine side by side with QEMU and dissect.hypervisor.

Not a pytest test (benchmarks never assert wall-clock times); run it by hand:

    python3 tests/benchmarks/bench_read.py [--size 1G] [--dir /tmp/bench-read] [--keep]

What is measured, on a qcow2 image of random (incompressible) data made by
``qemu-img convert`` from a raw file of ``os.urandom`` bytes, with the image in
the page cache for every reader (each reader gets a warm-up pass first):

* sequential guest reads in 1 MiB requests, one at a time, over the whole disk.
  Peers: ``qemu-img bench -c N -s 1M -d 1`` (the same pattern inside QEMU's block
  layer: sequential 1 MiB reads, queue depth 1, page cache; this is the fair
  comparison), ``qemu-io -c 'read 0 SIZE'`` (one huge request, QEMU's best case) and
  ``qemu-io`` with one ``read OFF 1M`` command per MiB (per-command overhead of
  qemu-io's command loop included, its own reported times summed), and
  dissect.hypervisor's QCow2 stream (installed with pip into a throwaway venv,
  /tmp/bench-venv, never into the project);
* random 4 KiB reads per second (4 KiB-aligned offsets over the whole disk);
* time to open a 1 TiB image and decode its header and L1 table (empty, and
  with preallocation=metadata), next to the time ``qemu-io`` takes to open and
  close it (process start included, so only a rough reference).

Correctness is checked too: the engine's sequential read must hash like the raw
source file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from qcow2view.engine import open_image  # noqa: E402

MiB = 1 << 20
VENV = Path("/tmp/bench-venv")
REQ = MiB

DISSECT_PROBE = textwrap.dedent("""
    import random, sys, time
    from pathlib import Path
    from dissect.hypervisor.disk.qcow2 import QCow2
    path, size, n_random = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with open(path, "rb") as fh:
        q = QCow2(fh)
        stream = q.open() if hasattr(q, "open") else q
        best = None
        for _ in range(2):                       # first pass warms up
            t = time.perf_counter()
            stream.seek(0)
            for _off in range(0, size, 1 << 20):
                stream.read(1 << 20)
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        rng = random.Random(1)
        offs = [rng.randrange(size // 4096) * 4096 for _ in range(n_random)]
        rnd = None
        for _ in range(3):
            t = time.perf_counter()
            for o in offs:
                stream.seek(o)
                stream.read(4096)
            dt = time.perf_counter() - t
            rnd = dt if rnd is None else min(rnd, dt)
    print(best, n_random / rnd)
""")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)", text.upper())
    if not m:
        raise SystemExit(f"bad size {text!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          **kw)


def make_image(workdir: Path, size: int) -> tuple[Path, str]:
    img = workdir / f"random-{size >> 20}M.qcow2"
    digest_file = img.with_suffix(".sha256")
    if img.exists() and digest_file.exists():
        return img, digest_file.read_text().strip()
    raw = workdir / "random.raw"
    h = hashlib.sha256()
    with open(raw, "wb") as f:
        for _ in range(0, size, 64 * MiB):
            chunk = os.urandom(min(64 * MiB, size - f.tell()))
            h.update(chunk)
            f.write(chunk)
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
    raw.unlink()
    digest_file.write_text(h.hexdigest())
    return img, h.hexdigest()


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def ours_sequential(img_path: Path, size: int, digest: str) -> float:
    with open_image(img_path) as img:
        h = hashlib.sha256()
        for off in range(0, size, REQ):              # correctness + warm-up pass
            h.update(img.read(off, REQ))
        if h.hexdigest() != digest:
            raise SystemExit("engine read does not match the raw source")
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for off in range(0, size, REQ):
                img.read(off, REQ)
            best = min(best, time.perf_counter() - t)
    return best


def ours_random(img_path: Path, size: int, n: int) -> float:
    rng = random.Random(1)
    offs = [rng.randrange(size // 4096) * 4096 for _ in range(n)]
    with open_image(img_path) as img:
        best = float("inf")
        for _ in range(3):                   # best of three, as for dissect
            t = time.perf_counter()
            for o in offs:
                img.read(o, 4096)
            best = min(best, time.perf_counter() - t)
    return n / best


def qemu_img_bench(img_path: Path, size: int) -> float:
    best = float("inf")
    for _ in range(3):
        out = run("qemu-img", "bench", "-f", "qcow2", "-t", "writeback", "-c", size // REQ,
                  "-d", 1, "-s", REQ, img_path).stdout
        best = min(best, float(re.search(r"Run completed in ([\d.]+) seconds", out).group(1)))
    return best


def qemu_io_whole(img_path: Path, size: int) -> float:
    best = float("inf")
    for _ in range(3):
        out = run("qemu-io", "-r", "-f", "qcow2", "-c", f"read -C 0 {size}", img_path).stdout
        nbytes, _ops, _t, rate, _ = out.strip().splitlines()[-1].split(",")
        best = min(best, int(nbytes) / float(rate))
    return best


def qemu_io_per_mib(img_path: Path, size: int) -> tuple[float, float]:
    """(sum of qemu-io's own per-command times, wall time of the process minus startup)."""
    cmds = []
    for off in range(0, size, REQ):
        cmds += ["-c", f"read -C {off} {REQ}"]
    start = time.perf_counter()
    run("qemu-io", "-r", "-f", "qcow2", "-c", "read -q 0 512", img_path)
    startup = time.perf_counter() - start
    best_sum = best_wall = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        out = run("qemu-io", "-r", "-f", "qcow2", *cmds, img_path).stdout
        wall = time.perf_counter() - t - startup
        total = 0.0
        for line in out.splitlines():
            nbytes, _ops, _t, rate, _ = line.split(",")
            total += int(nbytes) / float(rate)
        best_sum, best_wall = min(best_sum, total), min(best_wall, wall)
    return best_sum, best_wall


def dissect(img_path: Path, size: int, n_random: int) -> tuple[float, float] | None:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", VENV],
                       check=True)
    try:
        subprocess.run([py, "-c", "import dissect.hypervisor"], check=True,
                       capture_output=True)
    except subprocess.CalledProcessError:
        p = subprocess.run([py, "-m", "pip", "install", "-q", "dissect.hypervisor"],
                           capture_output=True, text=True)
        if p.returncode:
            print(f"(dissect.hypervisor could not be installed: {p.stderr.strip()[-300:]})")
            return None
    out = run(py, "-c", DISSECT_PROBE, img_path, size, n_random).stdout.split()
    return float(out[0]), float(out[1])


def open_times(workdir: Path) -> list[tuple[str, float, float]]:
    rows = []
    for label, opts in (("1 TiB, empty", []),
                        ("1 TiB, preallocation=metadata", ["-o", "preallocation=metadata"])):
        path = workdir / f"open-{len(rows)}.qcow2"
        if not path.exists():
            run("qemu-img", "create", "-q", "-f", "qcow2", *opts, path, "1T")
        samples = []
        open_image(path).close()           # warm the metadata pages (the file is sparse)
        for _ in range(30):
            t = time.perf_counter()
            with open_image(path) as img:
                img.l1_table.entries       # header + L1 decoded by open
            samples.append(time.perf_counter() - t)
        qemu_samples = []
        for _ in range(5):
            t = time.perf_counter()
            run("qemu-io", "-r", "-f", "qcow2", "-c", "quit", path)
            qemu_samples.append(time.perf_counter() - t)
        rows.append((label, statistics.median(samples), statistics.median(qemu_samples)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G", help="virtual disk size (default 1G)")
    ap.add_argument("--dir", default="/tmp/bench-read", help="scratch folder")
    ap.add_argument("--random", type=int, default=100_000,
                    help="random 4 KiB reads per pass (best of three passes)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch images")
    ap.add_argument("--no-dissect", action="store_true")
    args = ap.parse_args()
    size = parse_size(args.size)
    workdir = Path(args.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def step(name: str, fn, *a):
        t = time.perf_counter()
        r = fn(*a)
        print(f"[{time.perf_counter() - t0:6.1f} s] {name} ({time.perf_counter() - t:.1f} s)",
              file=sys.stderr, flush=True)
        return r
    try:
        img, digest = step("image made", make_image, workdir, size)
        warm(img)
        mib = size / MiB
        seq_ours = step("engine sequential", ours_sequential, img, size, digest)
        seq_bench = step("qemu-img bench", qemu_img_bench, img, size)
        seq_io = step("qemu-io whole", qemu_io_whole, img, size)
        per_sum, per_wall = step("qemu-io per MiB", qemu_io_per_mib, img, size)
        rnd_ours = step("engine random", ours_random, img, size, args.random)
        d = None if args.no_dissect else step("dissect", dissect, img, size, args.random)
        opens = step("open times", open_times, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    def rate(t: float) -> str:
        return f"{mib / t:8.0f} MiB/s"

    print(f"\nqcow2view read engine, {args.size} qcow2 of random data, 64 KiB clusters, "
          f"page cache warm, {os.cpu_count()} CPUs\n")
    print(f"{'measure':44} {'qcow2view':>14} {'peer':>14}  {'ours/peer':>9}  target")
    rows = [
        ("seq 1 MiB reads vs qemu-img bench -d 1 -s 1M", rate(seq_ours), rate(seq_bench),
         seq_bench / seq_ours, ">= 0.7"),
        ("seq 1 MiB reads vs qemu-io 'read 0 SIZE'", rate(seq_ours), rate(seq_io),
         seq_io / seq_ours, ""),
        ("seq 1 MiB reads vs qemu-io 'read OFF 1M' x N", rate(seq_ours), rate(per_sum),
         per_sum / seq_ours, "(own times)"),
        ("   same, qemu-io wall time minus startup", rate(seq_ours), rate(per_wall),
         per_wall / seq_ours, ""),
    ]
    if d is not None:
        rows.append(("seq 1 MiB reads vs dissect.hypervisor", rate(seq_ours), rate(d[0]),
                     d[0] / seq_ours, ">= 2"))
        rows.append(("random 4 KiB reads/s vs dissect.hypervisor", f"{rnd_ours:10.0f}/s",
                     f"{d[1]:10.0f}/s", rnd_ours / d[1], ">= 50000/s"))
    else:
        rows.append(("random 4 KiB reads/s", f"{rnd_ours:10.0f}/s", "-", float("nan"),
                     ">= 50000/s"))
    for label, t_ours, t_qemu in opens:
        rows.append((f"open + header + L1: {label}", f"{t_ours * 1e3:9.2f} ms",
                     f"{t_qemu * 1e3:9.2f} ms", t_qemu / t_ours, "< 20 ms"))
    for label, a, b, ratio, target in rows:
        print(f"{label:44} {a:>14} {b:>14}  {ratio:9.2f}  {target}")
    print("\npeer for 'open' is a whole qemu-io process (start + open + quit): a rough "
          "reference only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
