"""What ``qcow2view check -r leaks|all`` prints on stderr while it repairs, against
``qemu-img check -r`` 7.2 on copies of every damaged image: the same lines in the
same order ("Leaked cluster N refcount=A reference=B", "Repairing cluster ...",
"ERROR cluster ...", the walk's errors, "Rebuilding refcount structure", the COPIED
flags, and qemu-img's double check after).  Not compared: the last line of a check
that fails (each tool names the failure in its own words), and what follows
"Rebuilding refcount structure" on the images where qemu-img 7.2 gives up the
rebuild (it marks the image corrupt; we rebuild)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import shutil

import pytest

import qemu
from check_images import DAMAGE
from qcow2view import check_log, cli
from qcow2view.check_log import REBUILDING, RepairLog, check_lines
from qcow2view.engine import open_image
from qcow2view.engine.errors import Qcow2Error
from test_repair_oracle import FUZZED, QEMU_GIVES_UP, damaged, damaged_twins


def _lines(text: str, path) -> list[str]:
    """stderr as lines, without the failure line each tool words its own way."""
    return [line.replace(str(path), "IMG") for line in text.splitlines()
            if not line.startswith(("qemu-img:", "qcow2view:", "qcow2view check:"))]


@pytest.mark.parametrize("mode", ["leaks", "all"])
@pytest.mark.parametrize("damage", DAMAGE + FUZZED, ids=lambda f: f.__name__.removeprefix("dmg_"))
def test_repair_lines_as_qemu_img(tmp_path, capsys, damage, mode):
    _, ours, theirs = damaged_twins(tmp_path, damage)
    q = qemu.qemu_img("check", "-r", mode, theirs, check=False)
    capsys.readouterr()
    rc = cli.main(["check", "-r", mode, str(ours)])
    err = capsys.readouterr().err
    want, got = _lines(q.stderr.decode(), theirs), _lines(err, ours)
    if mode == "all" and damage in QEMU_GIVES_UP:
        cut = want.index(REBUILDING) + 1
        assert got[:cut] == want[:cut]
        return
    assert rc == q.returncode
    assert got == want


@pytest.mark.parametrize("damage", DAMAGE + FUZZED, ids=lambda f: f.__name__.removeprefix("dmg_"))
def test_check_lines_as_qemu_img(tmp_path, capsys, damage):
    """Without -r: what the check finds, line for line as qemu-img check prints it."""
    src = damaged(tmp_path, damage)
    q = qemu.qemu_img("check", src, check=False)
    capsys.readouterr()
    rc = cli.main(["check", str(src)])
    err = capsys.readouterr().err
    assert rc == q.returncode
    assert _lines(err, src) == _lines(q.stderr.decode(), src)


KINDS = ["_snapshots", "_compressed", "_extended", "_bitmaps", "_backing", "_data_file", "_v2",
         "_small", "_prealloc"]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """Every kind of clean image check_images makes, once, with its used clusters."""
    import check_images as K
    from qcow2view.engine import open_image
    out = {}
    for name in KINDS:
        d = tmp_path_factory.mktemp(name.strip("_"))
        path = getattr(K, name)(d)
        with open_image(path) as im:
            used = [c for c in range(1, im.file.size // im.cluster_size)
                    if im.meta.refcounts.refcount(c)]
        out[name] = (path, used)
    return out


@pytest.mark.parametrize("mode", ["leaks", "all"])
@pytest.mark.parametrize("refcount", [0, 3], ids=["refcount-0", "refcount-3"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.strip("_"))
def test_repair_lines_on_every_kind_as_qemu_img(kinds, tmp_path, capsys, kind, refcount, mode):
    """A refcount set wrong on a used cluster of each kind of image (snapshots,
    compressed, extended L2, bitmaps, backing file, data file, v2, 512-byte clusters,
    preallocated): the same lines as qemu-img, the same report."""
    from check_images import _set_refcount
    src, used = kinds[kind]
    cluster = used[len(used) // 2]
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    shutil.copy(src, ours)
    _set_refcount(ours, cluster, refcount)
    shutil.copy(ours, theirs)
    q = qemu.qemu_img("check", "-r", mode, theirs, check=False)
    capsys.readouterr()
    rc = cli.main(["check", "-r", mode, str(ours)])
    out, err = capsys.readouterr()
    assert rc == q.returncode
    assert _lines(err, ours) == _lines(q.stderr.decode(), theirs)
    assert out.replace(str(ours), "") == q.stdout.decode().replace(str(theirs), "")


# -- the lines come from the findings' facts, not from their (English) messages ---------
def _wordless(result):
    """``result`` with every finding's message replaced: what check_log prints must
    not depend on how the engine words a finding."""
    return dataclasses.replace(result, findings=[dataclasses.replace(f, message="x")
                                                 for f in result.findings])


def _repair_lines_wordless(path, fix_all: bool) -> list[str]:
    """cmd_info's ``check -r``, its findings' messages replaced before the log sees them."""
    log = RepairLog(fix_all)
    with open_image(path, ignore_backing_errors=True, repair=True) as ro:
        log.before(ro, _wordless(ro.check()))
    try:
        with open_image(path, ignore_backing_errors=True, writable=True, repair=True) as im:
            r = im.repair(leaks=True, fix_all=fix_all)
            return log.after(im, _wordless(r))
    except Qcow2Error:
        if log.rebuild and not fix_all:     # the refusal: what came before it
            return log.refused()
        raise


@pytest.mark.parametrize("damage", DAMAGE + FUZZED, ids=lambda f: f.__name__.removeprefix("dmg_"))
def test_check_lines_need_no_message_wording(tmp_path, damage):
    src = damaged(tmp_path, damage)
    q = qemu.qemu_img("check", src, check=False)
    with open_image(src, ignore_backing_errors=True) as im:
        got = check_lines(im, _wordless(im.check()))
    assert got == _lines(q.stderr.decode(), src)


@pytest.mark.parametrize("mode", ["leaks", "all"])
@pytest.mark.parametrize("damage", DAMAGE + FUZZED, ids=lambda f: f.__name__.removeprefix("dmg_"))
def test_repair_lines_need_no_message_wording(tmp_path, damage, mode):
    _, ours, theirs = damaged_twins(tmp_path, damage)
    q = qemu.qemu_img("check", "-r", mode, theirs, check=False)
    want = _lines(q.stderr.decode(), theirs)
    got = _repair_lines_wordless(ours, mode == "all")
    if mode == "all" and damage in QEMU_GIVES_UP:
        cut = want.index(REBUILDING) + 1
        assert got[:cut] == want[:cut]
    else:
        assert got == want


def test_check_log_reads_no_message():
    """Guard beside the two tests above: check_log imports no ``re`` and reads a
    finding's message only to print it whole (the walk errors qemu-img has no words for)."""
    tree = ast.parse(inspect.getsource(check_log))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module for n in ast.walk(tree)
                                     if isinstance(n, ast.ImportFrom)}
    assert "re" not in imported
    in_fstrings = {id(v.value) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)
                   for v in n.values if isinstance(v, ast.FormattedValue)}
    reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "message"]
    assert reads and all(id(n) in in_fstrings for n in reads)
