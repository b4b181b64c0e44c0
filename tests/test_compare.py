"""``qcow2view compare`` against ``qemu-img compare`` 7.2 on the same pairs of images:
the same stdout (identical, the first differing sector, the size warning), the same
exit code (0 identical, 1 different, 2 error), --image-opts included; -s (strict:
sizes, then block status chunk by chunk) on the same pairs as qemu-img."""

from __future__ import annotations

import pytest

import qemu
from qcow2view import cli


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    a = qemu.create(d / "a.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(a, "write -P 1 1M 64k", "write -c -P 7 2M 64k")
    qemu.qemu_img("convert", "-O", "raw", a, d / "a.raw")
    qemu.qemu_img("convert", "-O", "qcow2", "-c", a, d / "a-compressed.qcow2")
    b = qemu.create(d / "b.qcow2", "4M")                    # one byte differs
    qemu.qemu_io(b, "write -P 1 1M 64k", "write -c -P 7 2M 64k", "write -P 2 1089300 1")
    zeros = qemu.create(d / "zeros.qcow2", "4M")             # zero clusters, no data
    qemu.qemu_io(zeros, "write -z 0 4M")
    qemu.create(d / "empty.qcow2", "4M")
    longer = qemu.create(d / "longer.qcow2", "6M")           # a's data, then more
    qemu.qemu_io(longer, "write -P 1 1M 64k", "write -c -P 7 2M 64k", "write -P 3 5000100 1")
    tail = qemu.create(d / "tail-zero.qcow2", "6M")          # a's data, then zeros
    qemu.qemu_io(tail, "write -P 1 1M 64k", "write -c -P 7 2M 64k", "write -z 5M 64k")
    base = qemu.create(d / "base.qcow2", "4M")
    qemu.qemu_io(base, "write -P 1 1M 64k")
    top = qemu.create(d / "top.qcow2", "4M", backing=str(base), backing_fmt="qcow2")
    qemu.qemu_io(top, "write -c -P 7 2M 64k")
    qemu.create(d / "prealloc.qcow2", "4M", "preallocation=metadata")   # clusters over holes
    pb = qemu.create(d / "prealloc-b.qcow2", "4M", "preallocation=metadata")
    qemu.qemu_io(pb, "write -P 5 3000000 1")
    # -s (block status): the same data laid out the same way / differently
    a2 = qemu.create(d / "a2.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(a2, "write -P 1 1M 64k", "write -c -P 7 2M 64k")
    ab = qemu.create(d / "a-byte.qcow2", "4M", "cluster_size=4k")    # a, one byte differs
    qemu.qemu_io(ab, "write -P 1 1M 64k", "write -c -P 7 2M 64k", "write -P 2 1089300 1")
    zc = qemu.create(d / "zero-cluster.qcow2", "4M")                 # reads as zeros ...
    qemu.qemu_io(zc, "write -z 1M 64k")
    zw = qemu.create(d / "zero-written.qcow2", "4M")                 # ... as zeros written
    qemu.qemu_io(zw, "write -P 0 1M 64k")
    dc = qemu.create(d / "discarded.qcow2", "4M")
    qemu.qemu_io(dc, "write -P 9 1M 64k", "discard 1M 64k")
    one = qemu.create(d / "one-run.qcow2", "4M")                     # host-contiguous
    qemu.qemu_io(one, "write -P 4 0 4M")
    two = qemu.create(d / "two-runs.qcow2", "4M")                    # the same, two host runs
    qemu.qemu_io(two, "write -P 4 2M 2M", "write -P 4 0 2M")
    top2 = qemu.create(d / "top2.qcow2", "4M", backing=str(base), backing_fmt="qcow2")
    qemu.qemu_io(top2, "write -c -P 7 2M 64k")
    qemu.create(d / "top-none.qcow2", "4M", backing=str(base), backing_fmt="qcow2")
    topz = qemu.create(d / "top-zero.qcow2", "4M", backing=str(base), backing_fmt="qcow2")
    qemu.qemu_io(topz, "write -z 1M 64k")                            # hides the base's data
    qemu.qemu_img("convert", "-O", "qcow2", top, d / "top-flat.qcow2")
    for name, cmds in (("sub-4k", ["write -P 1 1M 4k"]), ("sub-4k-b", ["write -P 1 1M 4k"]),
                       ("sub-2k", ["write -P 1 1M 2k"]),
                       ("sub-zero", ["write -P 1 1M 4k", "write -z 1040k 8k"]),
                       ("sub-discard", ["write -P 1 1M 64k", "discard 1032k 8k"])):
        qemu.qemu_io(qemu.create(d / f"{name}.qcow2", "4M", "extended_l2=on"), *cmds)
    dfile = qemu.create(d / "dfile.qcow2", "4M", f"data_file={d / 'dfile.data'}")
    qemu.qemu_io(dfile, "write -P 1 1M 64k")
    draw = qemu.create(d / "dfile-raw.qcow2", "4M", f"data_file={d / 'dfile-raw.data'}",
                       "data_file_raw=on")
    qemu.qemu_io(draw, "write -P 1 1M 64k")
    data = qemu.create(d / "data.qcow2", "4M")
    qemu.qemu_io(data, "write -P 1 1M 64k")
    qemu.qemu_img("convert", "-O", "raw", a, d / "a2.raw")
    qemu.create(d / "empty.raw", "4M", fmt="raw")
    return d


PAIRS = [("a.qcow2", "a.qcow2"), ("a.qcow2", "a.raw"), ("a.raw", "a-compressed.qcow2"),
         ("a.qcow2", "b.qcow2"), ("b.qcow2", "a.qcow2"), ("zeros.qcow2", "empty.qcow2"),
         ("a.qcow2", "empty.qcow2"), ("a.qcow2", "longer.qcow2"), ("longer.qcow2", "a.raw"),
         ("a.qcow2", "tail-zero.qcow2"), ("top.qcow2", "a.qcow2"), ("b.qcow2", "longer.qcow2"),
         ("prealloc.qcow2", "empty.qcow2"), ("prealloc.qcow2", "prealloc-b.qcow2"),
         ("prealloc-b.qcow2", "a.raw")]


def _both(capsys, *args) -> tuple[tuple, tuple]:
    capsys.readouterr()
    rc = cli.main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    p = qemu.qemu_img("compare", *args, check=False)
    return (rc, out), (p.returncode, p.stdout.decode()), err


@pytest.mark.parametrize("pair", PAIRS, ids="-".join)
def test_compare_as_qemu_img(d, capsys, pair):
    mine, theirs, err = _both(capsys, *(d / p for p in pair))
    assert mine == theirs, err


@pytest.mark.parametrize("args", [
    ("-s", "a.qcow2", "longer.qcow2"),
    ("-q", "a.qcow2", "b.qcow2"),
    ("-f", "raw", "-F", "qcow2", "a.raw", "a.qcow2"),
    ("-U", "a.qcow2", "a.qcow2"),
])
def test_options_as_qemu_img(d, capsys, args):
    args = [str(d / a) if a.endswith((".qcow2", ".raw")) else a for a in args]
    mine, theirs, err = _both(capsys, *args)
    assert mine == theirs, err


STRICT = [("a.qcow2", "a2.qcow2"), ("a.raw", "a2.raw"), ("empty.raw", "empty.raw"),
          ("zero-cluster.qcow2", "discarded.qcow2"), ("prealloc.qcow2", "prealloc.qcow2"),
          ("empty.qcow2", "zero-cluster.qcow2"), ("zero-cluster.qcow2", "zero-written.qcow2"),
          ("zero-written.qcow2", "empty.qcow2"), ("discarded.qcow2", "empty.qcow2"),
          ("a.qcow2", "a.raw"), ("empty.qcow2", "empty.raw"), ("one-run.qcow2", "two-runs.qcow2"),
          ("prealloc.qcow2", "prealloc-b.qcow2"), ("prealloc.qcow2", "empty.qcow2"),
          ("a.qcow2", "a-byte.qcow2"), ("a-byte.qcow2", "a2.qcow2"),
          ("top.qcow2", "top2.qcow2"), ("top-none.qcow2", "base.qcow2"),
          ("top.qcow2", "top-flat.qcow2"), ("top-zero.qcow2", "top-none.qcow2"),
          ("sub-4k.qcow2", "sub-4k-b.qcow2"), ("sub-4k.qcow2", "sub-2k.qcow2"),
          ("sub-zero.qcow2", "sub-4k.qcow2"), ("sub-discard.qcow2", "sub-4k.qcow2"),
          ("sub-4k.qcow2", "data.qcow2"), ("dfile.qcow2", "data.qcow2"),
          ("dfile-raw.qcow2", "dfile.qcow2"),
          ("longer.qcow2", "a.qcow2"), ("a.raw", "longer.qcow2"), ("empty.qcow2", "tail-zero.qcow2")]


@pytest.mark.parametrize("pair", STRICT, ids="-".join)
def test_strict_as_qemu_img(d, capsys, pair):
    """-s: the first chunk whose block status differs (allocation, zero clusters,
    runs of host clusters, sub-clusters, a raw file's holes, backing chains,
    external data files), sizes that differ, or contents."""
    for opts in (["-s"], ["-s", "-q"]):
        mine, theirs, err = _both(capsys, *opts, *(d / p for p in pair))
        assert mine == theirs, err


def test_image_opts_and_errors_as_qemu_img(d, capsys):
    opts = f"driver=qcow2,file.filename={d / 'a.qcow2'}"
    mine, theirs, _ = _both(capsys, "--image-opts", opts, f"driver=raw,file.filename={d / 'a.raw'}")
    assert mine == theirs == (0, "Images are identical.\n")
    for args in (("--image-opts", opts + ",x=1", opts), ("-f", "qcow2", "--image-opts", opts, opts),
                 (d / "a.qcow2", d / "missing.qcow2")):
        (rc, out), (want_rc, want_out), err = _both(capsys, *args)
        assert rc == want_rc == 2 and out == want_out == "" and len(err.splitlines()) == 1
