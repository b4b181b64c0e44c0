"""Differential fuzz of resize --preallocation (not a test: run by hand, prints what differs).

    python tests/fuzz/fuzz_resize.py CASES SEED

Each case: an image of a random cluster size (512 B to 2 MiB; v2 or extended L2 at
times), size (unaligned at times), a few qemu-io writes (data, zero, compressed), at
times a snapshot and a longer backing file; then ``resize --preallocation=MODE +GROW``
by qemu-img on copy A and by qcow2view on copy B.  Compared: the exit codes, ``qemu-img
check`` of B, ``qemu-img compare`` A B, and ``qemu-img map`` with adjacent runs of the
same kind merged and host offsets left out.  Known and kept (printed as such, not as
failures): host offsets and file sizes differ where the engine's allocator places a
cluster differently (it reuses a hole QEMU's free_cluster_index has passed; a new
refcount block goes before the new run, QEMU's after it; falloc|full: QEMU first places
a new refcount structure at the end of the file); with 512-byte clusters the map's
data/zero split follows the host filesystem's 4 KiB blocks, so it differs with the
offsets; metadata preallocation zeroes the clusters it reuses inside the file, where
QEMU's new area can show their old bytes ("compare differs" then, qemu-img's side
reading non-zero bytes in its new area); falloc|full with extended L2: QEMU links the
new clusters with their sub-clusters unallocated (reading zeros), ours writes zeros
through them (data).  A failing case keeps its folder."""
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from qemu import map_shape  # noqa: E402  (the tests' qemu-img helpers)


def q(*a, check=True):
    return subprocess.run(["qemu-img", *map(str, a)], capture_output=True, check=check)


def io(p, *cmds):
    args = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    return subprocess.run(args + [str(p)], capture_output=True).returncode == 0


def build(d, rng):
    cs = rng.choice([512, 4096, 65536, 2 << 20])
    opts = [f"cluster_size={cs}"]
    if rng.random() < 0.3:
        opts.append("compat=0.10")
    elif rng.random() < 0.3 and cs >= 16384:
        opts.append("extended_l2=on")
    size = rng.choice([1, 3, 7, 20]) * (1 << 20) + rng.choice([0, 512, 4096 * 3])
    back = []
    if rng.random() < 0.3:
        q("create", "-q", "-f", "qcow2", d / "b.qcow2", size + rng.choice([0, 3 << 20]))
        io(d / "b.qcow2", f"write -P 6 0 {size}")
        back = ["-b", str(d / "b.qcow2"), "-F", "qcow2"]
    src = d / "src.qcow2"
    q("create", "-q", "-f", "qcow2", "-o", ",".join(opts), *back, src, size)
    for _ in range(rng.randint(0, 4)):
        off = rng.randrange(0, size - 4096) // 512 * 512
        n = min(rng.choice([512, 4096, 65536, 300000]) // 512 * 512, size - off)
        kind = rng.choice(["-P 3", "-z", "-c -P 4"])
        if kind.startswith("-c"):
            off, n = off // cs * cs, cs
        if kind == "-z" and "compat=0.10" in opts:
            kind = "-P 5"
        if off + n <= size:
            io(src, f"write {kind} {off} {n}")
    if rng.random() < 0.3 and "compat=0.10" not in opts:
        q("snapshot", "-c", "s", src)
        io(src, "write -P 9 0 4096")
    return src, cs, opts


def case(d, rng):
    src, cs, opts = build(d, rng)
    grow = rng.choice([512, 4096, 1 << 20, 5 << 20 | 512, 64 << 20, 1 << 30])
    mode = rng.choice(["metadata", "metadata", "falloc", "full"])
    a, b = d / "a.qcow2", d / "b-ours.qcow2"
    shutil.copy(src, a)
    shutil.copy(src, b)
    pa = q("resize", f"--preallocation={mode}", a, f"+{grow}", check=False)
    pb = subprocess.run([sys.executable, "-m", "qcow2view", "resize",
                         f"--preallocation={mode}", str(b), f"+{grow}"],
                        capture_output=True, cwd=ROOT)
    what = f"{opts} {mode} +{grow}"
    if pa.returncode != pb.returncode:
        return what, [f"exit {pa.returncode} vs {pb.returncode}: {pb.stderr.decode()}"], []
    if pa.returncode:
        return what, [], []
    bad, known = [], []
    if q("check", b, check=False).returncode:
        bad.append("qemu-img check: " + q("check", b, check=False).stdout.decode()[:200])
    if q("compare", a, b, check=False).returncode:
        theirs = q("compare", src, a, check=False)          # qemu-img's new area not zero?
        (known if mode == "metadata" and "mismatch" in theirs.stdout.decode() else bad
         ).append("compare differs")
    ma = json.loads(q("map", "--output=json", a).stdout)
    mb = json.loads(q("map", "--output=json", b).stdout)
    if map_shape(ma) != map_shape(mb):
        ext_written = mode != "metadata" and "extended_l2=on" in opts
        (known if cs == 512 or ext_written or known else bad).append("map differs")
    elif ma != mb or a.stat().st_size != b.stat().st_size:
        known.append("host offsets / file size")
    return what, bad, known


def main():
    cases, seed = int(sys.argv[1]), int(sys.argv[2])
    failed = 0
    for n in range(cases):
        rng = random.Random(seed * 100_003 + n)
        d = Path(tempfile.mkdtemp(prefix=f"fr-{seed}-{n}-"))
        what, bad, known = case(d, rng)
        print(n, what, "BAD " + "; ".join(bad) if bad else "ok",
              f"(known: {', '.join(known)})" if known else "")
        if bad:
            failed += 1
            print("   kept", d)
        else:
            shutil.rmtree(d)
    print("done", cases, "bad", failed)


if __name__ == "__main__":
    main()
