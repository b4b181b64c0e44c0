"""resize --preallocation=metadata, check -r and compare against qemu-img, side by side
in one run (not a test).

    python tests/benchmarks/bench_cli_extras.py [--rounds 3] [--data 1G] [--keep]

Inputs (a scratch folder under /tmp, deleted afterwards unless --keep): an empty
1 GiB image (grown by 256 GiB with metadata preallocation); a 1 TiB image made with
``preallocation=metadata`` and one refcount raised (a leak: check -r leaks repairs
it, printing qemu-img's lines); an image of ``--data`` random data and a copy of it
(compare reads every byte); a 1 GiB preallocated, never written image and a copy
(compare: allocated clusters over holes of the file).  Each command runs as a whole
process, ours (``python -m qcow2view ...``) and qemu-img's, on fresh copies of the
same input, alternating for ``--rounds`` rounds; the table prints median wall
seconds, the median ratio ours/qemu-img and each side's peak memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QEMU_IMG = shutil.which("qemu-img")
OURS = [sys.executable, "-m", "qcow2view"]
TIME = shutil.which("time") or "/usr/bin/time"      # GNU time (apt: time)


def run(cmd: list, ok=(0,)) -> tuple[float, int]:
    """Wall seconds and the command's peak memory (KiB; GNU time's %M: measured in
    the command itself, not the fork of this Python process that started it)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    with tempfile.NamedTemporaryFile("r") as mem, tempfile.TemporaryFile() as out:
        t = time.perf_counter()
        p = subprocess.run([TIME, "-f", "%M", "-o", mem.name, *map(str, cmd)], env=env,
                           stdout=out, stderr=out)
        wall = time.perf_counter() - t
        if p.returncode not in ok:
            out.seek(0)
            raise SystemExit(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n"
                             f"{out.read().decode(errors='replace')}")
        return wall, int(mem.read().split()[-1])


def copy(src: str, dst: str) -> str:
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)
    return dst


def leak_one(path: str) -> None:
    """Raise the refcount of cluster 9 (a data cluster of a preallocated image)."""
    with open(path, "r+b") as f:
        head = f.read(104)
        order = struct.unpack(">I", head[96:100])[0]
        assert order == 4, "16-bit refcounts expected"
        f.seek(struct.unpack(">Q", head[48:56])[0])
        block = struct.unpack(">Q", f.read(8))[0]
        f.seek(block + 2 * 9)
        count = struct.unpack(">H", f.read(2))[0]
        f.seek(block + 2 * 9)
        f.write(struct.pack(">H", count + 1))


def build(d: str, data: str) -> dict[str, str]:
    q = lambda *a: subprocess.run([QEMU_IMG, *a], check=True, capture_output=True)  # noqa
    img = {"empty": f"{d}/empty.qcow2", "1t": f"{d}/1t.qcow2", "data": f"{d}/data.qcow2",
           "prealloc": f"{d}/prealloc.qcow2"}
    q("create", "-q", "-f", "qcow2", img["empty"], "1G")
    q("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", img["1t"], "1T")
    leak_one(img["1t"])
    with open(f"{d}/data.raw", "wb") as f:
        for _ in range(-(-int(q("measure", "--size", data, "-O", "raw").stdout.split()[2])
                         // (64 << 20))):
            f.write(os.urandom(64 << 20))
    q("convert", "-O", "qcow2", f"{d}/data.raw", img["data"])
    os.unlink(f"{d}/data.raw")
    copy(img["data"], f"{d}/data2.qcow2")
    q("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", img["prealloc"], "1G")
    copy(img["prealloc"], f"{d}/prealloc2.qcow2")
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default="1G")
    ap.add_argument("--keep", action="store_true")
    ns = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-cli-extras-", dir="/tmp")
    try:
        img = build(d, ns.data)
        # (name, input to copy first or None, args after the program, accepted exit codes)
        tasks = [
            ("resize --preallocation=metadata +256G", img["empty"],
             ["resize", "--preallocation=metadata", "{w}", "+256G"], (0,)),
            ("check -r leaks (1 TiB, one leak)", img["1t"], ["check", "-r", "leaks", "{w}"],
             (0,)),
            (f"compare ({ns.data} of random data)", None,
             ["compare", img["data"], f"{d}/data2.qcow2"], (0,)),
            ("compare (1 GiB preallocated, unwritten)", None,
             ["compare", img["prealloc"], f"{d}/prealloc2.qcow2"], (0,)),
        ]
        print(f"{'operation':42} {'ours s':>8} {'qemu s':>8} {'ratio':>6} "
              f"{'ours MiB':>9} {'qemu MiB':>9}")
        for name, src, args, ok in tasks:
            ours, theirs, ratios, mem = [], [], [], [0, 0]
            for _ in range(ns.rounds):
                walls = []
                for side, prog in ((0, OURS), (1, [QEMU_IMG])):
                    work = copy(src, f"{d}/work.qcow2") if src else None
                    wall, peak = run(prog + [a.format(w=work) for a in args], ok)
                    walls.append(wall)
                    mem[side] = max(mem[side], peak)
                ours.append(walls[0])
                theirs.append(walls[1])
                ratios.append(walls[0] / walls[1])
            print(f"{name:42} {statistics.median(ours):8.2f} {statistics.median(theirs):8.2f} "
                  f"{statistics.median(ratios):6.2f} {mem[0] / 1024:9.0f} {mem[1] / 1024:9.0f}")
    finally:
        if ns.keep:
            print("kept", d)
        else:
            shutil.rmtree(d)


if __name__ == "__main__":
    main()
