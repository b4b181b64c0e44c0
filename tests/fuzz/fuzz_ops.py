"""Differential fuzz of the image operations (not a test: run by hand, prints what differs).

    python tests/fuzz/fuzz_ops.py CASES SEED

Random sequences of 3 to 7 steps (qemu-io writes, zero and compressed writes, snapshot
-c/-d/-a, resize grow and shrink, amend compat / refcount_bits / lazy_refcounts) on one
of ten kinds of image: qemu-img runs each operation on copy A, qcow2view on copy B, and
after each step the exit codes, ``qemu-img check``, ``qemu-img compare`` and the info
fields must agree.  A difference keeps the folder under /tmp/fo-fail-SEED-CASE.
Known and kept: with 1-bit refcounts qemu-img fails a snapshot and leaks a cluster where
we refuse cleanly; qemu-img's amend -o refcount_bits sometimes hangs (a timeout)."""
import json, os, random, shutil, subprocess, sys, tempfile
PY = sys.executable
VARIANTS = ['cluster_size=65536', 'cluster_size=4096', 'cluster_size=512', 'compat=0.10',
            'cluster_size=65536,extended_l2=on', 'refcount_bits=1', 'refcount_bits=64',
            'lazy_refcounts=on', 'compression_type=zstd', 'cluster_size=2097152']


def run(*a):
    try:
        return subprocess.run([str(x) for x in a], capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f'timeout: {a}')


def info(p):
    r = run('qemu-img', 'info', '--output=json', '-U', p)
    if r.returncode:
        return None
    j = json.loads(r.stdout)
    spec = (j.get('format-specific') or {}).get('data', {})
    return (j.get('virtual-size'), j.get('cluster-size'), spec.get('compat'),
            spec.get('refcount-bits'), spec.get('lazy-refcounts'), spec.get('extended-l2'),
            spec.get('compression-type'), [s['name'] for s in j.get('snapshots', [])])


def state(p):
    c = run('qemu-img', 'check', '--output=json', p)
    j = json.loads(c.stdout) if c.stdout.strip() else {}
    j.pop('filename', None)
    for k in ('image-end-offset', 'fragmented-clusters', 'allocated-clusters'):
        j.pop(k, None)
    return c.returncode, j, info(p)


def main(n, seed):
    bad = 0
    for k in range(n):
        rnd = random.Random(seed * 100003 + k)
        d = tempfile.mkdtemp(prefix='fo-')
        try:
            opts = rnd.choice(VARIANTS)
            a, b = os.path.join(d, 'a.qcow2'), os.path.join(d, 'b.qcow2')
            run('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', opts, a, '16M')
            log = [opts]
            snaps = []
            for step in range(rnd.randint(3, 7)):
                kind = rnd.choice(['write', 'write', 'zero', 'comp', 'snapc', 'snapd', 'snapa',
                                   'grow', 'shrink', 'compat', 'rbits', 'lazy'])
                if step == 0:
                    kind = 'write'
                if kind in ('write', 'zero', 'comp'):
                    size = info(a)[0]
                    off = rnd.randrange(0, max(1, size - 65536), 512)
                    ln = rnd.choice([512, 4096, 65536])
                    cmd = {'write': f'write -P {rnd.randint(1, 250)} {off} {ln}',
                           'zero': f'write -z {off} {ln}',
                           'comp': f'write -c -P 9 {off - off % 65536 if off >= 65536 else 0} 64k'}[kind]
                    ra = run('qemu-io', '-f', 'qcow2', '-c', cmd, a)
                    log.append(cmd)
                    if not os.path.exists(b):
                        shutil.copy(a, b)
                    else:
                        run('qemu-io', '-f', 'qcow2', '-c', cmd, b)
                    continue
                if not os.path.exists(b):
                    shutil.copy(a, b)
                if kind == 'snapc':
                    name = f's{step}'
                    args = ['snapshot', '-c', name]
                    snaps.append(name)
                elif kind in ('snapd', 'snapa'):
                    name = rnd.choice(snaps) if snaps else 'nosuch'
                    args = ['snapshot', '-d' if kind == 'snapd' else '-a', name]
                    if kind == 'snapd' and name in snaps:
                        snaps.remove(name)
                elif kind == 'grow':
                    args = ['resize', None, f'+{rnd.choice(["1M", "64K", "7M", "512"])}']
                elif kind == 'shrink':
                    args = ['resize', '--shrink', None, f'-{rnd.choice(["1M", "64K", "4M"])}']
                elif kind == 'compat':
                    args = ['amend', '-o', f'compat={rnd.choice(["0.10", "1.1"])}']
                elif kind == 'rbits':
                    args = ['amend', '-o', f'refcount_bits={rnd.choice([1, 2, 8, 16, 32, 64])}']
                else:
                    args = ['amend', '-o', f'lazy_refcounts={rnd.choice(["on", "off"])}']

                def fill(p):
                    out = [x if x is not None else p for x in args]
                    return out if None in args else out + [p]
                ra = run('qemu-img', *fill(a))
                rb = run(PY, '-m', 'qcow2view', *fill(b))
                log.append(' '.join(x for x in args if x))
                sa, sb = state(a), state(b)
                same_data = run('qemu-img', 'compare', '-U', a, b).returncode == 0
                tb = b'Traceback' in rb.stderr
                if (ra.returncode == 0) != (rb.returncode == 0) or sa != sb or not same_data or tb:
                    bad += 1
                    print(f'[{k}] DIFF after {" | ".join(log)}\n  rc {rb.returncode}/{ra.returncode} data same {same_data}\n'
                          f'  q: {ra.stderr.decode().strip()[:200]!r} {sa}\n  o: {rb.stderr.decode().strip()[-300:]!r} {sb}', flush=True)
                    shutil.copytree(d, f'/tmp/fo-fail-{seed}-{k}', dirs_exist_ok=True)
                    break
        except Exception as e:
            print(f'[{k}] HARNESS {type(e).__name__}: {e}', flush=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    print('done', n, 'bad', bad, flush=True)


if __name__ == '__main__':
    import resource     # a damaged image must not take the shared machine down (OOM killer)
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    main(int(sys.argv[1]), int(sys.argv[2]))
