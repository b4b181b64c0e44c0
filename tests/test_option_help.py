"""``-o help`` / ``-o ?`` of create, convert and amend against qemu-img 7.2's own
output: the same heading, the same option lines in the same order (names, types and
descriptions are qemu-img's; an option refused here ends in "(not supported here)",
which is the only text of ours), the same exit code, no file created.  measure, which
in qemu-img 7.2 has no option list, refuses help as qemu-img does."""

from __future__ import annotations

import pytest

import qemu
from qcow2view import cli
from qcow2view.option_help import NOT_HERE


def _ours(capsys, *args) -> tuple[int, list[str], str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def _theirs(*args) -> tuple[int, list[str], str]:
    p = qemu.qemu_img(*map(str, args), check=False)
    return p.returncode, p.stdout.decode().splitlines(), p.stderr.decode()


# (ours, qemu-img's): our create makes qcow2 only, so it needs no -f
CASES = [
    (("create", "-o", "help"), ("create", "-f", "qcow2", "-o", "help")),
    (("create", "-o", "?"), ("create", "-f", "qcow2", "-o", "?")),
    (("create", "-o", "cluster_size=4k,help", "{d}/new.qcow2", "1M"),
     ("create", "-f", "qcow2", "-o", "cluster_size=4k,help", "{d}/new.qcow2", "1M")),
    (("convert", "-O", "qcow2", "-o", "help"),) * 2,
    (("convert", "-o", "?"),) * 2,
    (("convert", "-O", "qcow2", "-o", "help", "{d}/src.qcow2", "{d}/new.qcow2"),) * 2,
    (("convert", "-o", "help", "{d}/src.qcow2", "{d}/new.raw"),) * 2,
    (("amend", "-f", "qcow2", "-o", "help"),) * 2,
    (("amend", "-o", "?", "{d}/src.qcow2"),) * 2,
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ohelp")
    qemu.create(d / "src.qcow2", "1M")
    qemu.create(d / "src.raw", "1M", fmt="raw")
    return d


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(c[0]))
def test_option_list_as_qemu_img(folder, capsys, case):
    mine_args, their_args = ([a.format(d=folder) for a in args] for args in case)
    rc, out, err = _ours(capsys, *mine_args)
    want_rc, want, _ = _theirs(*their_args)
    assert rc == want_rc == 0, err
    assert [line.removesuffix(NOT_HERE) for line in out] == want
    assert not (folder / "new.qcow2").exists() and not (folder / "new.raw").exists()
    refused = {line.split("=")[0].strip() for line in out if line.endswith(NOT_HERE)}
    assert all(n.startswith("encrypt") or n in ("nocow", "extent_size_hint")
                           for n in refused)


@pytest.mark.parametrize("args", [("amend", "-o", "help"),
                                  ("amend", "-o", "help", "{d}/missing.qcow2"),
                                  ("amend", "-o", "help", "{d}/src.raw")])
def test_amend_help_refusals_as_qemu_img(folder, capsys, args):
    args = [a.format(d=folder) for a in args]
    rc, out, err = _ours(capsys, *args)
    want_rc, _, want_err = _theirs(*args)
    assert rc == want_rc == 1 and out == []
    last = want_err.strip().splitlines()[-1].removeprefix("qemu-img: ")
    # qemu-img names the file twice ("Could not open 'X': Could not open 'X': ...")
    assert err.strip().removeprefix("qcow2view amend: ") in last, (err, last)


# qemu-img 7.2 measure prints no option list: its -o is parsed without help
# detection, so help / ? is refused as an unknown option (after the --size or
# file checks and the image open); the same lines, the same exit code
MEASURE_CASES = [
    ("measure", "-o", "help"),
    ("measure", "-o", "?"),
    ("measure", "-O", "qcow2", "-o", "help"),
    ("measure", "-O", "raw", "-o", "help"),
    ("measure", "-O", "qcow2", "-o", "help", "{d}/src.qcow2"),
    ("measure", "-o", "help", "{d}/src.qcow2"),
    ("measure", "-O", "raw", "-o", "?", "{d}/src.raw"),
    ("measure", "-O", "qcow2", "--size", "1M", "-o", "cluster_size=4k,help"),
    ("measure", "-O", "raw", "--size", "1M", "-o", "preallocation=full", "-o", "?"),
    ("measure", "--size", "1M", "-o", "help", "{d}/src.qcow2"),
    # the same parse refuses other names and values of the wrong type
    ("measure", "-O", "qcow2", "--size", "1M", "-o", "foo=1,help"),
    ("measure", "-O", "qcow2", "--size", "1M", "-o", "cluster_size=4k,,help"),
    ("measure", "-O", "qcow2", "--size", "1M", "-o", "lazy_refcounts=maybe"),
    ("measure", "-O", "qcow2", "--size", "1M", "-o", "refcount_bits=x"),
    ("measure", "-O", "raw", "--size", "1M", "-o", "cluster_size=4k"),
    ("measure", "-O", "qcow2", "--size", "1M", "-o", ",help"),
    ("measure", "-O", "qcow2", "-o", "help,"),
]


@pytest.mark.parametrize("args", MEASURE_CASES, ids=" ".join)
def test_measure_help_as_qemu_img(folder, capsys, args):
    args = [a.format(d=folder) for a in args]
    rc, out, err = _ours(capsys, *args)
    want_rc, want_out, want_err = _theirs(*args)
    assert (rc, out) == (want_rc, want_out) == (1, [])
    assert [line.removeprefix("qcow2view measure: ") for line in err.splitlines()] == \
        [line.removeprefix("qemu-img: ") for line in want_err.splitlines()]


@pytest.mark.parametrize("opts", ["lazy_refcounts,cluster_size=0x1000", "extended_l2=y",
                                  "nocow=on,refcount_bits=0x10", "preallocation=full"])
def test_measure_option_spellings_as_qemu_img(folder, capsys, opts):
    """What qemu's -o parse takes (bare names, 0x numbers, y/n, file options)."""
    args = ["measure", "-O", "qcow2", "-o", opts, str(folder / "src.qcow2")]
    rc, out, err = _ours(capsys, *args)
    assert (rc, out) == _theirs(*args)[:2], err
