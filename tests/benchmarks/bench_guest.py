"""Guest index speed and memory against The Sleuth Kit's ``fls -r``, side by side
(not a test).

    python tests/benchmarks/bench_guest.py [--dir /tmp/qcow2view-bench-guest] [--rounds 3]

The guest: an 8 GiB disk with a GPT and one Linux partition holding an ext4 made
with ``mkfs.ext4 -E offset=1M -d /usr`` (no mount), converted with ``qemu-img
convert`` to a plain and a compressed (``-c``) qcow2.  Built once in ``--dir``
and kept for the next run.

Each task runs as a whole process (peak RSS from the child's getrusage):
``build_index`` on each image, and ``fls -r -o 2048`` (every name, recursively)
on the raw disk, the closest peer (it lists names only, without extents,
metadata regions or an index).  Then owner lookups per second on random guest
offsets.  Targets: 140k files <= 3 s and <= 200 MiB on the plain image; a lookup
<= 5 us.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GiB = 1 << 30

INDEX_SCRIPT = """
import json, random, resource, sys, time
from qcow2view.engine import open_image
from qcow2view.guest.index import build_index
with open_image(sys.argv[1]) as im:
    t, c = time.perf_counter(), time.process_time()
    idx = build_index(im)
    took, cpu = time.perf_counter() - t, time.process_time() - c
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    files = sum(len(fs.files) for _v, fs in idx.disk.filesystems())
    r = random.Random(1)
    offs = [r.randrange(idx.disk.size) for _ in range(200000)]
    t = time.perf_counter()
    for o in offs:
        idx.owner(o)
    per = (time.perf_counter() - t) / len(offs)
    t = time.perf_counter()
    idx.what(offs)
    vec = (time.perf_counter() - t) / len(offs)
print(json.dumps({"seconds": took, "cpu": cpu, "rss": rss, "files": files,
                  "lookup_us": per * 1e6,
                  "vector_us": vec * 1e6, "problems": idx.disk.problems[:5]}))
"""


def run_child(argv: list[str], **kw) -> tuple[float, int, str, float]:
    """(seconds, peak RSS in bytes, stdout, CPU seconds) of one child process (output
    through a temporary file so that wait4 reaps the child and reports its own
    rusage).  CPU seconds are the steadier figure on a shared machine."""
    import tempfile
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=err, **kw)
        _pid, status, ru = os.wait4(p.pid, 0)
        took = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        if p.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: {err.read().decode(errors='replace')[-2000:]}")
    return took, ru.ru_maxrss * 1024, text, ru.ru_utime + ru.ru_stime


def build(d: str) -> dict[str, str]:
    os.makedirs(d, exist_ok=True)
    raw = os.path.join(d, "usr.raw")
    plain = os.path.join(d, "usr.qcow2")
    comp = os.path.join(d, "usr-c.qcow2")
    if not os.path.exists(raw + ".done"):
        print("building the 8 GiB guest (mkfs.ext4 -d /usr; a few minutes) ...", flush=True)
        with open(raw, "wb") as f:
            f.truncate(8 * GiB)
        subprocess.run(["sgdisk", "-n", "1:2048:0", "-t", "1:8300", "-c", "1:root", raw],
                       check=True, capture_output=True)
        size_kib = (8 * GiB - 2 * (1 << 20)) // 1024
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "usr", "-E", "offset=1048576",
                        "-d", "/usr", raw, f"{size_kib}k"], check=True)
        open(raw + ".done", "w").close()
    for out, flags in ((plain, []), (comp, ["-c"])):
        if not os.path.exists(out + ".done"):
            print(f"qemu-img convert {' '.join(flags)} -> {out} ...", flush=True)
            subprocess.run(["qemu-img", "convert", *flags, "-O", "qcow2", raw, out], check=True)
            open(out + ".done", "w").close()
    return {"raw": raw, "plain": plain, "compressed": comp}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/qcow2view-bench-guest")
    ap.add_argument("--rounds", type=int, default=3)
    ns = ap.parse_args()
    if not shutil.which("fls"):
        print("fls (sleuthkit) not installed: no peer to compare with", file=sys.stderr)
    imgs = build(ns.dir)
    env = dict(os.environ, PYTHONPATH=ROOT)
    # warm the page cache for both sides (the first run would pay the disk reads)
    run_child([sys.executable, "-c", INDEX_SCRIPT, imgs["plain"]], env=env)
    if shutil.which("fls"):
        run_child(["fls", "-r", "-o", "2048", imgs["raw"]])
    results = {}
    for name in ("plain", "compressed"):
        runs = [run_child([sys.executable, "-c", INDEX_SCRIPT, imgs[name]], env=env)
                for _ in range(ns.rounds)]
        infos = [json.loads(r[2]) for r in runs]     # the build alone, measured inside
        results[name] = (statistics.median(i["seconds"] for i in infos),
                         max(i["rss"] for i in infos), infos[-1],
                         statistics.median(i["cpu"] for i in infos))
    fls = None
    if shutil.which("fls"):
        runs = [run_child(["fls", "-r", "-o", "2048", imgs["raw"]]) for _ in range(ns.rounds)]
        lines = runs[-1][2].count("\n")
        fls = (statistics.median(r[0] for r in runs), max(r[1] for r in runs), lines,
               statistics.median(r[3] for r in runs))
    print()
    print("build_index: measured inside its process (after interpreter start and imports);"
          " fls: the whole process")
    print(f"{'task':44} {'wall s':>7} {'CPU s':>6} {'peak RSS':>10} {'CPU ratio':>9}")
    for name, (med, rss, info, cpu) in results.items():
        ratio = f"{cpu / fls[3]:.2f}" if fls else "-"
        print(f"{'build_index, ' + name + ' qcow2 (' + str(info['files']) + ' files)':44} "
              f"{med:7.2f} {cpu:6.2f} {rss / (1 << 20):6.0f} MiB {ratio:>9}")
    if fls:
        print(f"{'fls -r on the raw disk (' + str(fls[2]) + ' names)':44} {fls[0]:7.2f} "
              f"{fls[3]:6.2f} {fls[1] / (1 << 20):6.0f} MiB {'1.00':>9}")
    info = results["plain"][2]
    print(f"\nowner(): {info['lookup_us']:.2f} us per lookup "
          f"({1e6 / info['lookup_us']:,.0f}/s); what() vectorised: "
          f"{info['vector_us']:.3f} us per offset")
    print("targets: <= 3 s and <= 200 MiB on the plain image, <= 5 us per lookup")
    if info["problems"]:
        print("problems:", info["problems"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
