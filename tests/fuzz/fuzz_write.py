"""Differential fuzz of guest writes (not a test: run by hand, prints what differs).

    python tests/fuzz/fuzz_write.py CASES SEED [--keep] [--only=K,K...] [--offsets]

A random image made by qemu-img / qemu-io (cluster sizes 512 B..2 MiB, extended L2,
refcount_bits 1..64, compat 0.10 / 1.1, lazy refcounts, zlib / zstd clusters from
``qemu-img convert -c``, backing chains of 2-3 raw / qcow2 files of other sizes and
cluster sizes, an external data file with or without data_file_raw, internal
snapshots), then a random sequence of guest writes: unaligned pattern writes across
clusters and sub-clusters, zero writes and compressed cluster writes.  qemu-io applies
the sequence to copy A (one process, as one guest session); our engine applies it to
copy B through ``open_image(..., writable=True)`` / ``Image.write`` /
``Image.write_zeroes`` / ``write_compressed``, closing and reopening now and then.

Judged: ``qemu-img check`` clean on both; ``qemu-img compare A B``; our ``convert -O
raw`` of B equal to qemu-img's; our reads of B (after every reopen and at the end)
equal to the expected disk; each snapshot's view unchanged; and ``qemu-img map``
(data / zero / depth per range, host offsets ignored) the same for A and B.  A
difference keeps the folder as /tmp/fw-fail-SEED-CASE.

Known and kept: qemu refuses a compressed write into a cluster that has a host
cluster (EIO); we allow it, so the fuzzer only asks where qemu agreed.  qemu 7.2
corrupts its own image when a compressed write follows, in one session, a write
that freed the host cluster of the previous compressed stream (the next stream
goes into that cluster, reused meanwhile: ``write -c 0 64k; write -z 0 64k;
write 64k 64k; write -c 128k 64k``): such a case is counted as a qemu bug when our
image is right by the model and the check, and kept as /tmp/fw-qemubug-SEED-CASE.
qemu zero-fills a new cluster's copy-on-write areas with fallocate (host holes,
which ``qemu-img map`` shows as zero data); we write zeros, so map's zero flag is
compared only where there is no data.  With --offsets (host offsets compared too,
our side then one session without reopens or flushes, as qemu-io's) 33 of 100 cases
(seed 500419600) still differ; replayed op by op, one process each, the ones looked
at agree.  Not explained yet: flushing after every write (we lower refcounts only at
a flush, qemu at once) and next-fit allocation (qemu's free_cluster_index) each make
only a few more agree.
"""
import json, os, random, re, shutil, subprocess, sys, tempfile
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from qcow2view.engine import open_image, Qcow2Error
from qcow2view.engine.compressed_write import write_compressed

PY = sys.executable
OFFSETS = '--offsets' in sys.argv      # also compare qemu-img map's host offsets
KiB, MiB = 1 << 10, 1 << 20
CLUSTER_SIZES = [512, 1024, 4096, 16384, 32768, 65536, 65536, 262144, 2 * MiB]


class QemuBug(Exception):
    """qemu-io's own image fails its check or reads other than written."""


class Skip(Exception):
    """qemu could not build this case (not a disagreement)."""


def run(*a, cwd=None, check=True, timeout=180):
    p = subprocess.run([str(x) for x in a], capture_output=True, cwd=cwd, timeout=timeout)
    if check and p.returncode:
        raise RuntimeError(f'{a}: {p.stderr.decode()[:400]}')
    return p


def qio(path, cmds, cwd):
    """Run qemu-io commands in one process; the list of failed command indexes."""
    if not cmds:
        return []
    args = ['qemu-io', '-f', 'qcow2']
    for c in cmds:
        args += ['-c', c]
    out = run(*args, os.path.basename(path), cwd=cwd, check=False).stdout.decode()
    results = [ln for ln in out.splitlines()
               if re.match(r'(wrote|discard) \d+/\d+ bytes', ln) or 'failed' in ln]
    if len(results) != len(cmds):
        raise RuntimeError(f'qemu-io gave {len(results)} results for {len(cmds)}: {out[-400:]}')
    return [i for i, ln in enumerate(results) if 'failed' in ln]


def rand_opts(rnd):
    """qemu-img create -o options of a random qcow2 image (a dict)."""
    o = {'cluster_size': rnd.choice(CLUSTER_SIZES)}
    if rnd.random() < 0.2:
        o['compat'] = '0.10'
        return o
    o['refcount_bits'] = rnd.choice([1, 2, 4, 8, 16, 16, 16, 32, 64])
    if o['cluster_size'] >= 16384 and rnd.random() < 0.35:
        o['extended_l2'] = 'on'
    if rnd.random() < 0.25:
        o['lazy_refcounts'] = 'on'
    if rnd.random() < 0.3:
        o['compression_type'] = 'zstd'
    return o


def optstr(o):
    return ','.join(f'{k}={v}' for k, v in o.items())


def rand_writes(rnd, size, cs, n, pat0=1):
    """qemu-io write commands filling parts of a disk (for building layers)."""
    cmds = []
    for _ in range(n):
        off = rnd.randrange(0, size)
        ln = min(rnd.choice([rnd.randint(1, 4096), rnd.randint(1, 3 * cs), 64 * KiB]), size - off)
        kind = rnd.random()
        if kind < 0.15:
            cmds.append(f'write -z {off} {ln}')
        else:
            cmds.append(f'write -P {rnd.randint(pat0, 250)} {off} {ln}')
    return cmds


def raw_source(path, rnd, size):
    """A raw disk with compressible runs, incompressible noise and holes."""
    with open(path, 'wb') as f:
        f.truncate(size)
        for _ in range(rnd.randint(2, 10)):
            off = rnd.randrange(0, size)
            ln = min(rnd.randint(1, 256 * KiB), size - off)
            f.seek(off)
            f.write(rnd.randbytes(ln) if rnd.random() < 0.2 else bytes([rnd.randint(1, 255)]) * ln)


def build(d, rnd, log):
    """Make the image (and its chain / data file) in d, saying how in log; returns
    (name, opts, size, snapshots)."""
    snaps = []
    opts = rand_opts(rnd)
    cs = opts['cluster_size']
    size = rnd.choice([rnd.randint(1, 12) * MiB, rnd.randrange(512, 12 * MiB, 512)])
    size = max(size, 4096)
    v3 = opts.get('compat') != '0.10'
    layout = rnd.choices(['plain', 'comp', 'chain', 'datafile', 'snap'], [2, 2, 3, 2, 2])[0]
    if layout == 'datafile' and not v3:
        layout = 'plain'
    name = 'img.qcow2'
    backing = None
    if layout == 'datafile' and rnd.random() < 0.3:
        layout = 'chain+datafile'
    if layout.startswith('chain'):
        depth = rnd.choice([1, 1, 2])
        below = None
        for level in range(depth):
            bsize = rnd.choice([size, size // 2 // 512 * 512 or 512, size + rnd.randrange(0, 4 * MiB, 512)])
            if below is None and rnd.random() < 0.4:
                bname = f'base{level}.raw'
                raw_source(os.path.join(d, bname), rnd, bsize)
                below = (bname, 'raw')
                log.append(f'raw backing {bname} size {bsize}')
                continue
            bname = f'base{level}.qcow2'
            bo = rand_opts(rnd)
            bo.pop('lazy_refcounts', None)
            args = ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', optstr(bo)]
            if below:
                args += ['-b', below[0], '-F', below[1]]
            run(*args, bname, bsize, cwd=d)
            qio(os.path.join(d, bname), rand_writes(rnd, bsize, bo['cluster_size'],
                                                    rnd.randint(2, 8)), d)
            log.append(f'qcow2 backing {bname} -o {optstr(bo)} size {bsize} over {below}')
            below = (bname, 'qcow2')
        backing = below
    if layout == 'comp':
        raw_source(os.path.join(d, 'src.raw'), rnd, size)
        run('qemu-img', 'convert', '-c', '-O', 'qcow2', '-o', optstr(opts), 'src.raw', name, cwd=d)
        os.unlink(os.path.join(d, 'src.raw'))
    else:
        o = dict(opts)
        if layout.endswith('datafile'):
            o['data_file'] = 'img.data'
            if rnd.random() < 0.5 and not backing:    # qemu-img refuses both
                o['data_file_raw'] = 'on'
        if rnd.random() < 0.15 and not layout.endswith('datafile') and (
                not backing or o.get('extended_l2') == 'on'):
            o['preallocation'] = 'metadata'
        args = ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', optstr(o)]
        if backing:
            args += ['-b', backing[0], '-F', backing[1]]
        run(*args, name, size, cwd=d)
        opts = o
    cmds = rand_writes(rnd, size, cs, rnd.randint(0, 10))
    if not layout.endswith('datafile') and rnd.random() < 0.5:
        for _ in range(rnd.randint(1, 4)):
            c = rnd.randrange(0, size // cs) if size >= cs else 0
            if (c + 1) * cs <= size:
                cmds.append(f'write -c -P {rnd.randint(1, 250)} {c * cs} {cs}')
    failed = qio(os.path.join(d, name), cmds, d)
    log[:0] = [f'create -o {optstr(opts)} size {size} layout {layout} backing {backing}']
    log += [f'  qemu-io {c}' + (' (failed)' if i in failed else '') for i, c in enumerate(cmds)]
    if layout in ('snap', 'comp', 'chain') and rnd.random() < (1 if layout == 'snap' else 0.3):
        for s in range(rnd.randint(1, 3)):
            r = run('qemu-img', 'snapshot', '-c', f's{s}', name, cwd=d, check=False)
            if r.returncode:     # e.g. a refcount would overflow refcount_bits
                raise Skip(f'qemu-img snapshot -c failed: {r.stderr.decode().strip()}')
            snaps.append(f's{s}')
            more = rand_writes(rnd, size, cs, rnd.randint(1, 5))
            qio(os.path.join(d, name), more, d)
            log += [f'snapshot -c s{s}'] + [f'  qemu-io {c}' for c in more]
    return name, opts, size, snaps


def rand_ops(rnd, size, cs, extl2, n):
    ops = []
    for _ in range(n):
        r = rnd.random()
        off = rnd.randrange(0, size)
        if rnd.random() < 0.1:       # the disk's end (a short last cluster)
            off = max(0, size - rnd.randint(1, 2 * cs))
        unit = cs // 32 if extl2 else cs
        choice = rnd.random()
        if choice < 0.35:
            ln = rnd.randint(1, 2048)
        elif choice < 0.6:
            ln = rnd.randint(1, 3 * cs)
        elif choice < 0.8:           # aligned to sub-clusters / clusters
            off = off // unit * unit
            ln = unit * rnd.randint(1, 8)
        else:
            ln = rnd.randint(1, 1 * MiB)
        ln = max(1, min(ln, size - off))
        if r < 0.6:
            ops.append(('write', off, ln, rnd.randint(1, 255)))
        elif r < 0.9:
            ops.append(('zero', off, ln, 0))
        else:
            c = off // cs
            if (c + 1) * cs <= size:
                ops.append(('comp', c * cs, cs, rnd.randint(1, 255)))
    return ops


def qcmd(op):
    kind, off, ln, pat = op
    return {'write': f'write -P {pat} {off} {ln}', 'zero': f'write -z {off} {ln}',
            'comp': f'write -c -P {pat} {off} {ln}'}[kind]


def apply_ours(path, ops, rnd, expect):
    """Our engine's side; reopens now and then and reads back.  Returns problems."""
    problems = []
    im = open_image(path, writable=True)
    try:
        for i, (kind, off, ln, pat) in enumerate(ops):
            try:
                if kind == 'write':
                    im.write(off, bytes([pat]) * ln)
                elif kind == 'zero':
                    im.write_zeroes(off, ln)
                else:
                    write_compressed(im, off, bytes([pat]) * ln)
            except Qcow2Error as e:
                problems.append(f'op {i} {qcmd(ops[i])}: ours raised {type(e).__name__}: {e}')
                return problems
            if OFFSETS:     # one session, as qemu-io's (a reopen forgets where the
                continue    # last compressed stream ended; a flush frees clusters)
            if rnd.random() < 0.15:
                im.close()
                im = open_image(path, writable=True)
                got = im.read(0, len(expect[i]))
                if got != expect[i]:
                    problems.append(f'after op {i} + reopen: read back differs at '
                                    f'{first_diff(got, expect[i]):#x}')
                    return problems
            elif rnd.random() < 0.1:
                im.flush()
    finally:
        im.close()
    return problems


def first_diff(a, b):
    for i in range(0, min(len(a), len(b)), 4096):
        if a[i:i + 4096] != b[i:i + 4096]:
            return i + next(j for j in range(4096) if a[i + j:i + j + 1] != b[i + j:i + j + 1])
    return min(len(a), len(b))


def qmap(path, cwd):
    r = run('qemu-img', 'map', '--output=json', '-U', path, cwd=cwd, check=False)
    if r.returncode:
        return r.stderr.decode()
    out = []
    if OFFSETS:       # host offsets too: allocation order exactly as qemu's
        return [(e['start'], e['length'], e['depth'], e['data'], e['zero'] and not e['data'],
                 e.get('offset')) for e in json.loads(r.stdout)]
    for e in json.loads(r.stdout):
        # zero+data is a hole in the host file (qemu zero-fills a new cluster's COW
        # areas with fallocate); only the metadata's zero / data counts
        key = (e['depth'], e['present'], e['zero'] and not e['data'], e['data'])
        if out and out[-1][2] == key and out[-1][0] + out[-1][1] == e['start']:
            out[-1] = (out[-1][0], out[-1][1] + e['length'], key)
        else:
            out.append((e['start'], e['length'], key))
    return out


def check(path, cwd):
    r = run('qemu-img', 'check', '--output=json', path, cwd=cwd, check=False)
    j = json.loads(r.stdout) if r.stdout.strip() else {}
    bad = {k: j[k] for k in ('corruptions', 'leaks', 'check-errors') if j.get(k)}
    return r.returncode, bad


def one(rnd, d, log):
    """One case; returns a list of problems (empty: agreed)."""
    src = os.path.join(d, 'src')
    os.mkdir(src)
    name, opts, size, snaps = build(src, rnd, log)
    cs = opts['cluster_size']
    raw0 = os.path.join(d, 'start.raw')
    run('qemu-img', 'convert', '-O', 'raw', name, raw0, cwd=src)
    a, b = os.path.join(d, 'A'), os.path.join(d, 'B')
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    ops = rand_ops(rnd, size, cs, opts.get('extended_l2') == 'on', rnd.randint(3, 60))
    failed = set(qio(os.path.join(a, name), [qcmd(op) for op in ops], a))
    problems = []
    # a failed plain or zero write: qemu gave up (its own EIO; after it every request
    # fails); ours is then judged alone, without the compressed writes qemu never tried
    qfail = min((i for i in failed if ops[i][0] != 'comp'), default=None)
    if qfail is not None:
        log.append(f'qemu-io failed op {qfail} {qcmd(ops[qfail])} (and after it '
                   f'{len([i for i in failed if i > qfail])} more)')
        failed |= {i for i, op in enumerate(ops) if i > qfail and op[0] == 'comp'}
        failed -= {i for i, op in enumerate(ops) if i >= qfail and op[0] != 'comp'}
    ops = [op for i, op in enumerate(ops) if i not in failed]
    log += [f'op {qcmd(op)}' for op in ops]
    # the expected disk after each op
    disk = bytearray(open(raw0, 'rb').read())
    expect = []
    for kind, off, ln, pat in ops:
        disk[off:off + ln] = bytes([pat]) * ln
        expect.append(bytes(disk))
    problems += apply_ours(os.path.join(b, name), ops, rnd, expect)
    pa, pb = os.path.join(a, name), os.path.join(b, name)
    if not problems:
        rc, bad = check(pa, a)
        qa = os.path.join(d, 'q.raw')
        r = run('qemu-img', 'convert', '-O', 'raw', pa, qa, cwd=a, check=False)
        if qfail is not None or rc or bad or r.returncode or (
                ops and open(qa, 'rb').read() != expect[-1]):
            # qemu broke its own image: judge ours by the model alone
            rc2, bad2 = check(pb, b)
            with open_image(pb) as im:
                got = im.read(0, im.virtual_size)
            if rc2 or bad2 or (ops and got != expect[-1]):
                problems.append(f'ours is wrong too: check rc {rc2} {bad2}')
            raise QemuBug(f'qemu-io failed op {qfail}, qemu-img check rc {rc} {bad}, '
                          f'convert rc {r.returncode} '
                          f'{r.stderr.decode().strip()[:120]}; ours right' if not problems
                          else '; '.join(problems))
        rc, bad = check(pb, b)
        if rc or bad:
            problems.append(f'ours fails qemu-img check rc {rc}: {bad}')
        r = run('qemu-img', 'compare', '-U', pa, pb, cwd=b, check=False)
        if r.returncode:
            problems.append(f'qemu-img compare A B: rc {r.returncode} {r.stdout.decode().strip()[:200]}')
        ob = os.path.join(d, 'o.raw')
        r = run(PY, '-m', 'qcow2view', 'convert', '-O', 'raw', pb, ob, cwd=b, check=False)
        qbytes = open(qa, 'rb').read()
        if r.returncode or open(ob, 'rb').read() != qbytes:
            problems.append(f'our convert differs (rc {r.returncode}) {r.stderr.decode()[-300:]!r}')
        with open_image(pb) as im:
            got = im.read(0, im.virtual_size)
        if got != qbytes:
            problems.append(f'our read of B differs from qemu at {first_diff(got, qbytes):#x}')
        for s in snaps:
            sa, sb = os.path.join(d, 'sa.raw'), os.path.join(d, 'sb.raw')
            run('qemu-img', 'convert', '-l', f'snapshot.name={s}', '-O', 'raw', pa, sa, cwd=a)
            run('qemu-img', 'convert', '-l', f'snapshot.name={s}', '-O', 'raw', pb, sb, cwd=b)
            if open(sa, 'rb').read() != open(sb, 'rb').read():
                problems.append(f'snapshot {s} view differs')
        ma, mb = qmap(pa, a), qmap(pb, b)
        if ma != mb:
            diff = next((x, y) for x, y in zip(ma + [None], mb + [None]) if x != y)
            problems.append(f'MAP differs: first q={diff[0]} o={diff[1]}')
    return problems


def main(n, seed, keep=False, only=None):
    bad = skipped = qbugs = 0
    for k in only or range(n):
        rnd = random.Random(seed * 1000003 + k)
        d = tempfile.mkdtemp(prefix='fw-')
        log = []
        try:
            problems = one(rnd, d, log)
        except QemuBug as e:
            qbugs += 1
            problems = [] if 'ours right' in str(e) else [str(e)]
            if not problems:
                print(f'[{k}] QEMU-BUG (ours right): {e}', flush=True)
                shutil.copytree(d, f'/tmp/fw-qemubug-{seed}-{k}', dirs_exist_ok=True)
        except Skip as e:
            skipped += 1
            problems = []
            if keep:
                print(f'[{k}] skipped: {e}', flush=True)
        except Exception as e:
            import traceback
            problems = [f'HARNESS {type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}']
        if problems:
            bad += 1
            print(f'[{k}] DIFF\n    ' + '\n    '.join(log) + '\n  ' + '\n  '.join(problems), flush=True)
            shutil.copytree(d, f'/tmp/fw-fail-{seed}-{k}', dirs_exist_ok=True)
        elif keep:
            print(f'[{k}] ok: {log[0] if log else ""}', flush=True)
        shutil.rmtree(d, ignore_errors=True)
    print('done', n, 'bad', bad, 'skipped', skipped, 'qemu bugs', qbugs, flush=True)


if __name__ == '__main__':
    import resource     # a damaged image must not take the shared machine down (OOM killer)
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    only = next((a.split('=', 1)[1] for a in sys.argv if a.startswith('--only=')), None)
    main(int(sys.argv[1]), int(sys.argv[2]), '--keep' in sys.argv,
         [int(x) for x in only.split(',')] if only else None)
