"""Image operations against qemu-img, side by side in one run (not a test).

    python tests/benchmarks/bench_ops.py [--size 4G] [--overlay 1G] [--rounds 3] [--keep]

Images (a scratch folder under /tmp, deleted afterwards unless --keep): a qcow2
image of ``--size`` random (incompressible) data, an empty base with an overlay
holding ``--overlay`` of random data.  Each operation runs as a whole process,
ours (``python -m qcow2view OP ...``) and qemu-img's, on copies of the same
input, alternating for ``--rounds`` rounds; the table prints the median wall
seconds and the median of the rounds' ratios ours/qemu-img (one run is at the
mercy of the page cache's writeback).  Targets: <= 1.5 for each, <= 1.0 for
convert -c.  ``floor`` is what any Python command pays before its first byte
(``python -c 'import numpy'``): it decides the sub-0.1 s operations.
``snapshot -d (warm process)`` times our deletion inside a Python process that
has started already, as the window runs it, against qemu-img's whole command
(not a target: what the floor leaves of the work).
"""

from __future__ import annotations

import argparse
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")
OURS = [sys.executable, "-m", "qcow2view"]
TARGETS = {"convert -c": 1.0}
# an operation timed inside a Python process that has started and imported the
# engine already, as the window runs it (the floor above not paid again)
WARM = """
import sys, time
from qcow2view import cli, cmd_ops
from qcow2view.engine.ops import snapshot
t = time.perf_counter()
rc = cli.main(sys.argv[1:])
print(time.perf_counter() - t)
sys.exit(rc)
"""


def run(cmd: list) -> float:
    env = dict(os.environ, PYTHONPATH=ROOT)
    t = time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{p.stderr.decode()}")
    return wall


def run_warm(cmd: list) -> float:
    """``cmd`` (ours, without the interpreter) timed inside its process (see WARM)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", WARM, *map(str, cmd)], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{p.stderr}")
    return float(p.stdout.split()[-1])


def random_raw(path: str, size: int) -> None:
    chunk = 64 << 20
    with open(path, "wb") as f:
        for _ in range(0, size, chunk):
            f.write(os.urandom(chunk))


def sync_drop(folder: str) -> None:
    """Written data on disk, and the images' pages dropped from the page cache: each
    run reads its input from the disk, as after a reboot (the programs themselves,
    qemu-img's and Python's, stay cached: a full drop made start-up, not the work,
    decide the short operations)."""
    os.sync()
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    from qcow2view.engine.create import parse_size
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="4G")
    ap.add_argument("--overlay", default="1G")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", metavar="NAMES",
                    help="comma-separated operations to time (convert, convert -c, commit, "
                         "snapshot -d, amend); default all")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    size, ov = parse_size(a.size), parse_size(a.overlay)
    total, _, free = shutil.disk_usage(tempfile.gettempdir())
    need = 5 * size + 3 * ov
    if free < need * 1.2:
        raise SystemExit(f"needs about {need >> 30} GiB free in {tempfile.gettempdir()}")
    d = tempfile.mkdtemp(prefix="bench-ops-")
    j = lambda n: os.path.join(d, n)      # noqa: E731
    rows = []
    try:
        random_raw(j("src.raw"), size)
        subprocess.run([QEMU_IMG, "convert", "-O", "qcow2", j("src.raw"), j("src.qcow2")],
                       check=True)
        os.unlink(j("src.raw"))

        def once(cmd, setup, cleanup, timer=run) -> float:
            if setup:
                setup()
            sync_drop(d)
            t = timer(cmd)
            for c in cleanup:
                if os.path.exists(j(c)):
                    os.unlink(j(c))
            return t

        wanted = [w.strip() for w in a.only.split(",") if w.strip()]

        def pair(name, ours_cmd, qemu_cmd, setup=None, cleanup=(), timer=run):
            key = name.split(" (")[0]          # "commit (1G overlay)" -> "commit"
            key = "amend" if key.startswith("amend") else key
            if wanted and key not in wanted:
                return
            qs, os_ = [], []
            for _ in range(a.rounds):
                qs.append(once(qemu_cmd, setup, cleanup))
                os_.append(once(ours_cmd, setup, cleanup, timer))
            o, q = statistics.median(os_), statistics.median(qs)
            r = statistics.median(x / y for x, y in zip(os_, qs))
            rows.append((name, o, q, r))
            print(f"{name:<28} ours {' '.join(f'{x:.2f}' for x in os_)} s   qemu-img "
                  f"{' '.join(f'{x:.2f}' for x in qs)} s   ratio {r:5.2f}", flush=True)

        pair("convert", OURS + ["convert", "-O", "qcow2", j("src.qcow2"), j("out.qcow2")],
             [QEMU_IMG, "convert", "-O", "qcow2", j("src.qcow2"), j("out.qcow2")],
             cleanup=["out.qcow2"])
        pair("convert -c", OURS + ["convert", "-c", "-O", "qcow2", j("src.qcow2"), j("c.qcow2")],
             [QEMU_IMG, "convert", "-c", "-O", "qcow2", j("src.qcow2"), j("c.qcow2")],
             cleanup=["c.qcow2"])

        # commit: an empty base and an overlay of random data
        random_raw(j("ov.raw"), ov)

        def make_chain():
            for n in ("base.qcow2", "top.qcow2"):
                if os.path.exists(j(n)):
                    os.unlink(j(n))
            subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", j("base.qcow2"),
                            str(size)], check=True)
            subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F",
                            "qcow2", j("top.qcow2")], check=True)
            subprocess.run([QEMU_IO, "-c", f"write -s {j('ov.raw')} 0 {ov}", j("top.qcow2")],
                           check=True, capture_output=True)
        pair(f"commit ({a.overlay} overlay)", OURS + ["commit", j("top.qcow2")],
             [QEMU_IMG, "commit", j("top.qcow2")], setup=make_chain)

        def snap_copy():
            shutil.copyfile(j("src.qcow2"), j("s.qcow2"))
            subprocess.run([QEMU_IMG, "snapshot", "-c", "s", j("s.qcow2")], check=True)
        pair("snapshot -d", OURS + ["snapshot", "-d", "s", j("s.qcow2")],
             [QEMU_IMG, "snapshot", "-d", "s", j("s.qcow2")], setup=snap_copy)
        pair("snapshot -d (warm process)", ["snapshot", "-d", "s", j("s.qcow2")],
             [QEMU_IMG, "snapshot", "-d", "s", j("s.qcow2")], setup=snap_copy,
             timer=run_warm)

        def amend_copy():
            shutil.copyfile(j("src.qcow2"), j("a.qcow2"))
        pair("amend refcount_bits 16->64",
             OURS + ["amend", "-o", "refcount_bits=64", j("a.qcow2")],
             [QEMU_IMG, "amend", "-o", "refcount_bits=64", j("a.qcow2")], setup=amend_copy)
    finally:
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)
    floor = statistics.median(run([sys.executable, "-c", "import numpy"]) for _ in range(5))
    print()
    print(f"{'operation':<28}{'ours s':>10}{'qemu-img s':>12}{'ratio':>8}{'target':>8}")
    for name, o, q, r in rows:
        t = TARGETS.get(name, 1.5)
        if "warm" in name:          # a reference figure, not the target
            print(f"{name:<28}{o:10.3f}{q:12.3f}{r:8.2f}{'-':>8}")
            continue
        print(f"{name:<28}{o:10.2f}{q:12.2f}{r:8.2f}{t:8.1f}"
              + ("" if r <= t else "   MISSED"))
    print(f"(medians of {a.rounds} rounds; floor: python -c 'import numpy' {floor:.2f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
