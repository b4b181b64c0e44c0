"""Differential fuzz of check and repair (not a test: run by hand).

    python tests/fuzz/fuzz_repair.py CASES SEED [--ahead]

Random damage (1 to 3 entries of the L1, L2, refcount table and refcount blocks) in 23
kinds of image (preallocated ones among them, for the walk's span path); then
``check --json`` and ``check --repair leaks|all`` against qemu-img check [-r]: exit
code, stdout, and the repaired image's check.  ``--ahead``: a few tables per batch and
read-ahead at every cluster size (the small images never fill a second batch
otherwise).  A difference keeps the image as /tmp/fz-fail-SEED-CASE[-MODE].qcow2.
Known and kept: 1-bit refcount images with a refcount table or block shared with
other metadata or data (we rebuild, -r leaks refuses);
an L2 entry past the end of the file plus a refcount block outside the image: the
repair grows the file over the data cluster, qemu-img's rebuild (from its first walk,
which skipped it) leaves it at refcount 0 ("rebuilt refcount structure is still
broken", exit 2) where ours counts it (clean)."""
import json, os, random, shutil, struct, subprocess, sys, tempfile, io, contextlib
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from qcow2view.engine import open_image
from qcow2view import cli

QI = 'qemu-img'
VARIANTS = [
    ('cluster_size=512', []), ('cluster_size=4096', []), ('cluster_size=65536', []),
    ('cluster_size=4096,refcount_bits=1', []), ('cluster_size=4096,refcount_bits=64', []),
    ('cluster_size=4096,refcount_bits=4', []),
    ('cluster_size=16384,extended_l2=on', []), ('cluster_size=65536,extended_l2=on', ['snap']), ('cluster_size=4096,compat=0.10', []),
    ('cluster_size=4096,lazy_refcounts=on', []),
    ('cluster_size=4096', ['snap']), ('cluster_size=4096', ['comp']),
    ('cluster_size=4096,compression_type=zstd', ['comp']),
    ('cluster_size=65536', ['snap', 'comp']),
    ('cluster_size=65536', ['datafile']), ('cluster_size=4096,compat=0.10', ['snap']),
    ('cluster_size=2097152', []), ('cluster_size=4096,refcount_bits=8', ['snap']),
    # whole L2 tables of contiguous clusters: the walk's fast path (a span per batch)
    ('cluster_size=4096,preallocation=metadata', []),
    ('cluster_size=4096,preallocation=metadata', ['snap']),
    ('cluster_size=512,preallocation=falloc', []),
    ('cluster_size=512,preallocation=full,refcount_bits=64', ['snap']),
    ('cluster_size=4096,preallocation=metadata,refcount_bits=4', []),
]


def sh(*a, check=True):
    p = subprocess.run([str(x) for x in a], capture_output=True)
    if check and p.returncode:
        raise RuntimeError(f'{a[:2]} rc {p.returncode}: '
                           f'{(p.stderr or p.stdout).decode()[-300:]}')
    return p


def make(d, opts, extra, rnd):
    p = os.path.join(d, 'img.qcow2')
    if 'datafile' in extra:
        opts += f',data_file={p}.data'
    sh(QI, 'create', '-q', '-f', 'qcow2', '-o', opts, p, '8M')
    cmds = []
    for _ in range(rnd.randint(2, 8)):
        off = rnd.randrange(0, 8 << 20, 512)
        ln = rnd.choice([512, 4096, 65536])
        ln = min(ln, (8 << 20) - off)
        cmds.append(f'write -P {rnd.randint(1,255)} {off} {ln}')
    if 'comp' in extra:      # first: qemu-io refuses (EIO) to compress over allocated clusters
        cmds.insert(0, f'write -c -P 7 {2 << 20} 64k')
    sh('qemu-io', '-f', 'qcow2', *sum((['-c', c] for c in cmds), []), p)
    if 'snap' in extra:
        sh(QI, 'snapshot', '-c', 's1', p)
        sh('qemu-io', '-f', 'qcow2', '-c', f'write -P 9 {rnd.randrange(0, 8<<20, 65536)} 64k', p)
    return p


def targets(p):
    """File offsets of metadata entries worth damaging."""
    out = []
    with open_image(p) as im:
        h = im.header
        cs = im.cluster_size
        l1 = im.l1_table.entries
        for i, e in enumerate(l1.tolist()):
            out.append(('l1', h.l1_table_offset + 8 * i))
            l2 = int(e) & 0x00fffffffffffe00
            if l2:
                for j in range(0, cs // 8):
                    out.append(('l2', l2 + 8 * j))
        rt = im.refcount_table
        for i in range(min(len(rt), cs // 8)):
            out.append(('rt', h.refcount_table_offset + 8 * i))
            rb = int(rt[i]) & ~0x1ff
            if rb:
                for j in range(0, cs, 8):
                    out.append(('rb', rb + j))
        for s in im.snapshots:
            out.append(('snl1', s.l1_table_offset))
        fsize = im.file.size
    return out, cs, fsize


def damage(p, rnd):
    tg, cs, fsize = targets(p)
    # an earlier damage may point a table past the end of the file: not a target
    tg = [(kind, off) for kind, off in tg if off + 8 <= fsize]
    kind, off = rnd.choice(tg)
    with open(p, 'r+b') as f:
        f.seek(off)
        old = struct.unpack('>Q', f.read(8))[0]
        choice = rnd.randrange(7)
        if choice == 0:
            new = old ^ (1 << rnd.randrange(64))
        elif choice == 1:
            new = rnd.randrange(0, fsize + 4 * cs) & ~(cs - 1) | (old & (1 << 63))
        elif choice == 2:
            new = 0
        elif choice == 3:
            new = old + cs
        elif choice == 4:
            new = old | 1
        elif choice == 5:
            new = rnd.getrandbits(64)
        else:
            new = (old & ~(0xffff)) | rnd.getrandbits(16)
        f.seek(off)
        f.write(struct.pack('>Q', new))
    return f'{kind}@{off:#x}: {old:#x} -> {new:#x}'


def ours_check(p, *extra):
    buf = io.StringIO()
    err = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(['check', *extra, p])
        except SystemExit as e:
            rc = e.code
    return rc, buf.getvalue(), err.getvalue()


def main(n, seed):
    rnd = random.Random(seed)
    bad = harness = 0
    for k in range(n):
        d = tempfile.mkdtemp(prefix='fz-')
        try:
            opts, extra = rnd.choice(VARIANTS)
            p = make(d, opts, extra, rnd)
            what = '; '.join(damage(p, rnd) for _ in range(rnd.choice([1, 1, 2, 3])))
            q = sh(QI, 'check', '--output=json', p, check=False)
            rc, out, err = ours_check(p, '--json')
            try:
                qj = json.loads(q.stdout) if q.stdout.strip() else None
            except ValueError:
                qj = None
            try:
                oj = json.loads(out) if out.strip() else None
            except ValueError:
                oj = None
            if qj and oj:
                qj.pop('filename', None); oj.pop('filename', None)
            if rc != q.returncode or qj != oj:
                bad += 1
                print(f'[{k}] CHECK DIFF {opts} {extra} {what}: rc {rc}/{q.returncode}\n  q={qj} {q.stderr.decode()[:300]!r}\n  o={oj} {err[:300]!r}', flush=True)
                shutil.copy(p, f'/tmp/fz-fail-{seed}-{k}.qcow2')
                continue
            for mode in ('leaks', 'all'):
                a, b = os.path.join(d, 'a.qcow2'), os.path.join(d, 'b.qcow2')
                shutil.copy(p, a); shutil.copy(p, b)
                q = sh(QI, 'check', '-r', mode, a, check=False)
                rc, out, err = ours_check(b, '--repair', mode)
                qa = sh(QI, 'check', '--output=json', a, check=False)
                qb = sh(QI, 'check', '--output=json', b, check=False)
                ja = json.loads(qa.stdout) if qa.stdout.strip() else {}
                jb = json.loads(qb.stdout) if qb.stdout.strip() else {}
                ja.pop('filename', None); jb.pop('filename', None)
                same_out = q.stdout.decode().replace(a, '') == out.replace(b, '')
                if q.returncode == 1 and rc == 0 and qb.returncode == 0:
                    continue    # qemu gave up, we repaired
                if b'rebuilt refcount structure is still broken' in q.stderr \
                        and rc == 0 and qb.returncode == 0:
                    continue    # qemu's rebuild missed a cluster its first walk skipped
                if rc != q.returncode or not same_out or (qa.returncode, ja) != (qb.returncode, jb):
                    bad += 1
                    print(f'[{k}] REPAIR {mode} DIFF {opts} {extra} {what}: rc {rc}/{q.returncode} out same {same_out}\n  after q={qa.returncode} {ja}\n  after o={qb.returncode} {jb}\n  qerr={q.stderr.decode()[:300]!r}\n  oerr={err[:300]!r}', flush=True)
                    shutil.copy(p, f'/tmp/fz-fail-{seed}-{k}-{mode}.qcow2')
        except Exception as e:
            import traceback
            print(f'[{k}] HARNESS {type(e).__name__}: {e}', flush=True)
            traceback.print_exc()
            harness += 1
            if os.path.exists(os.path.join(d, 'img.qcow2')):
                shutil.copy(os.path.join(d, 'img.qcow2'), f'/tmp/fz-harness-{seed}-{k}.qcow2')
        finally:
            shutil.rmtree(d, ignore_errors=True)
    print('done', n, 'bad', bad, 'harness errors (a traceback of ours among them)', harness)


if __name__ == '__main__':
    import resource     # a damaged image must not take the shared machine down (OOM killer)
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    if '--ahead' in sys.argv:
        # the small images never fill a second batch of tables: a few tables per batch
        # and read-ahead at every cluster size, so the reader thread is fuzzed too
        from qcow2view.engine import refscan, tableread
        refscan.BATCH_ENTRIES = 1024
        tableread.AHEAD_MIN_CLUSTER = 0
    main(int(sys.argv[1]), int(sys.argv[2]))
