"""``qcow2view check --repair leaks|all`` against ``qemu-img check -r leaks|all`` on copies
of every damaged image: the same exit code, the same report on stdout, and images that
qemu-img then checks the same, holding the same guest bytes."""

from __future__ import annotations

import shutil

import pytest

import qemu
from check_images import (DAMAGE, _img, _l2_entry_offsets, _poke, build_damaged,
                          dmg_refblock_misaligned, dmg_reftable_reserved)
from qcow2view import cli
from qcow2view.engine import open_image

# qemu-img 7.2 fails these with -r all (it marks the image corrupt and stops: "ERROR
# writing refblock", "Can't get refcount ... Input/output error"); we rebuild them
QEMU_GIVES_UP = {dmg_refblock_misaligned, dmg_reftable_reserved}


def _ours(path, mode: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(["check", "--repair", mode, str(path)])
    return rc, capsys.readouterr().out


# -- damage found by differential fuzzing (our check agreed; the repairs did not) -------
def prealloc_misaligned(d):
    """A preallocated zero cluster whose host offset is not cluster aligned (and has
    reserved bits set): -r all makes it a plain zero cluster."""
    p = _img(d)
    l2, raw, esize, _ = _l2_entry_offsets(p)
    _poke(p, l2 + 40 * esize, 0x43FB)
    return p


def prealloc_misaligned_extended(d):
    """The same with extended L2 entries: no subcluster allocated, two read as zero."""
    p = _img(d, opts=("cluster_size=16k", "extended_l2=on"))
    l2, raw, esize, _ = _l2_entry_offsets(p)
    _poke(p, l2 + 40 * esize, 0x6200)
    _poke(p, l2 + 40 * esize + 8, 0x3 << 32)
    return p


def refblock_unreachable(d):
    """A refcount block so far past the end that the file cannot grow to it: QEMU
    says it could not resize, and rebuilds the refcounts anyway."""
    p = _img(d)
    with open_image(p) as im:
        rt = im.header.refcount_table_offset
    _poke(p, rt + 8, 0xFFFFFFFFFFFFF000)
    return p


def l1_into_guest_data(d):
    """An L1 entry pointing at a data cluster (512-byte clusters: its guest bytes read
    as 64 L2 entries with COPIED set): QEMU fixes those flags in place."""
    p = _img(d, "write -P 0x9e 0 64k", opts=("cluster_size=512",))
    with open_image(p) as im:
        data = im.guest_mapping(0).host_offset
        l1 = im.header.l1_table_offset
    _poke(p, l1 + 8 * 100, data)
    return p


def prealloc_misaligned_then_rebuild(d):
    """Both: the entry's reserved bits count among the corruptions the rebuild fixes."""
    p = prealloc_misaligned(d)
    with open_image(p) as im:
        rt = im.header.refcount_table_offset
    _poke(p, rt + 8, 0xFFFFFFFFFFFFF000)
    return p


FUZZED = [prealloc_misaligned, prealloc_misaligned_extended, refblock_unreachable,
          l1_into_guest_data, prealloc_misaligned_then_rebuild]


def damaged(tmp_path, damage):
    """The image ``damage`` makes: one of check_images' DAMAGE, or of FUZZED."""
    return damage(tmp_path) if damage in FUZZED else build_damaged(tmp_path, damage)


def damaged_twins(tmp_path, damage):
    """That image and two copies of it: (source, ours, theirs)."""
    src = damaged(tmp_path, damage)
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    shutil.copy(src, ours)
    shutil.copy(src, theirs)
    return src, ours, theirs


@pytest.mark.parametrize("mode", ["leaks", "all"])
@pytest.mark.parametrize("damage", DAMAGE + FUZZED, ids=lambda f: f.__name__.removeprefix("dmg_"))
def test_repair_like_qemu_img(tmp_path, damage, mode, capsys):
    src, ours, theirs = damaged_twins(tmp_path, damage)
    q = qemu.qemu_img("check", "-r", mode, theirs, check=False)
    rc, out = _ours(ours, mode, capsys)
    if mode == "all" and damage in QEMU_GIVES_UP:
        assert q.returncode == 1
        assert rc == 0, out
        code, _ = qemu.check(ours)
        assert code == 0
        assert qemu.to_raw(ours, tmp_path / "o.raw") == qemu.to_raw(src, tmp_path / "s.raw")
        return
    assert rc == q.returncode, (out, q.stderr)
    assert out == q.stdout.decode().replace(str(theirs), "")
    (rc_o, o), (rc_t, t) = qemu.check(ours), qemu.check(theirs)
    o.pop("filename"), t.pop("filename")
    assert (rc_o, o) == (rc_t, t)
    if rc_t in (0, 3):      # readable afterwards: the guest is what it was
        assert qemu.to_raw(ours, tmp_path / "o.raw") == qemu.to_raw(theirs, tmp_path / "t.raw")
