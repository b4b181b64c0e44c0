"""Differential fuzz of reading damaged images (not a test: run by hand).

    python tests/fuzz/fuzz_read.py CASES SEED

The damage of fuzz_repair.py; then ``qemu-img convert -O raw`` against ours, and
info / info --json / map must never print a traceback.  Known and kept: an L2 table
past the end of the file is an error for us (QEMU reads zeros)."""
import os, random, shutil, subprocess, sys, tempfile, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fuzz_repair import VARIANTS, make, damage, sh
PY = sys.executable

def main(n, seed):
    rnd = random.Random(seed); bad = 0
    for k in range(n):
        d = tempfile.mkdtemp(prefix='fr-')
        try:
            opts, extra = rnd.choice(VARIANTS)
            p = make(d, opts, extra, rnd)
            what = '; '.join(damage(p, rnd) for _ in range(rnd.choice([1, 1, 2])))
            qa, oa = os.path.join(d, 'q.raw'), os.path.join(d, 'o.raw')
            q = sh('qemu-img', 'convert', '-O', 'raw', p, qa, check=False)
            o = sh(PY, '-m', 'qcow2view', 'convert', '-O', 'raw', p, oa, check=False)
            oerr = o.stderr.decode()
            tb = 'Traceback' in oerr
            if tb or (q.returncode == 0 and (o.returncode != 0 or open(qa,'rb').read() != open(oa,'rb').read())):
                bad += 1
                print(f'[{k}] READ DIFF {opts} {extra} {what}: rc {o.returncode}/{q.returncode}\n  q={q.stderr.decode()[:200]!r}\n  o={oerr[-400:]!r}', flush=True)
                shutil.copy(p, f'/tmp/fr-fail-{seed}-{k}.qcow2')
            elif q.returncode != 0 and o.returncode == 0:
                print(f'[{k}] note: qemu refused, we read {opts} {extra} {what}: q={q.stderr.decode()[:160]!r}', flush=True)
            for args in (['info', p], ['info', '--json', p], ['map', p, '--png', os.path.join(d, 'm.png')]):
                r = sh(PY, '-m', 'qcow2view', *args, check=False)
                if 'Traceback' in r.stderr.decode() or r.returncode not in (0, 1, 2):
                    bad += 1
                    print(f'[{k}] {args[0]} rc {r.returncode} {what}: {r.stderr.decode()[-300:]!r}', flush=True)
        except Exception as e:
            print(f'[{k}] HARNESS {type(e).__name__}: {e}', flush=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    print('done', n, 'bad', bad)

if __name__ == '__main__':
    import resource     # a damaged image must not take the shared machine down (OOM killer)
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    main(int(sys.argv[1]), int(sys.argv[2]))
