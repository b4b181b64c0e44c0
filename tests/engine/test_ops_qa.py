"""QA pass over the image operations: each case is one a user hit, judged by qemu-img
on a copy (same result, or the same refusal: exit 1, one line on stderr)."""

from __future__ import annotations

import json
import sys

import pytest

import qemu
from ops_oracle import assert_same_as_qemu, info_fields, ours, twins


def _ended_as_qemu(rc, err, p, mine, theirs, before: bytes, fmt: str) -> None:
    """Our command ended as qemu-img's ``p`` did: both refused, ours in one line and
    leaving ``mine`` as it was (``before``); or both done, with the same result."""
    assert rc == p.returncode, err
    if rc:
        assert len(err.splitlines()) == 1 and mine.read_bytes() == before
    elif fmt == "raw":
        assert mine.read_bytes() == theirs.read_bytes()
    else:
        assert_same_as_qemu(theirs, mine)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    img = qemu.create(d / "a.qcow2", "10M")
    qemu.qemu_io(img, "write -P 7 0 3M")
    return img


@pytest.mark.parametrize("size", ["0", "-10M"])
def test_resize_to_zero_is_refused_as_qemu(small, tmp_path, capsys, size):
    theirs, mine = twins(small, tmp_path)
    p = qemu.qemu_img("resize", "--shrink", theirs, "--", size, check=False)
    rc, _, err = ours(capsys, "resize", "--shrink", mine, size)
    assert p.returncode == rc == 1
    assert "must be positive" in err and len(err.splitlines()) == 1
    assert qemu.compare(mine, small).returncode == 0
    assert qemu.info(mine)["virtual-size"] == 10 << 20


def test_snapshot_delete_looks_up_by_name_only_as_qemu(small, tmp_path, capsys):
    """qemu-img snapshot -d finds the snapshot by name (bdrv_snapshot_find): "-d 1" is
    refused while snapshot id 1 exists under another name; "-d ''" deletes the snapshot
    named '' (it was taken for "no -d at all" and listed instead)."""
    base = tmp_path / "named.qcow2"
    base.write_bytes(small.read_bytes())
    for name in ("with space", "", "x"):
        qemu.qemu_img("snapshot", "-c", name, base)
    theirs, mine = twins(base, tmp_path)
    p = qemu.qemu_img("snapshot", "-d", "1", theirs, check=False)
    rc, _, err = ours(capsys, "snapshot", "-d", "1", mine)
    assert p.returncode == rc == 1 and len(err.splitlines()) == 1
    qemu.qemu_img("snapshot", "-d", "", theirs)
    assert ours(capsys, "snapshot", "-d", "", mine)[0] == 0
    assert_same_as_qemu(theirs, mine)
    assert info_fields(mine)["snapshots"] == ["with space", "x"]


def test_unsafe_rebase_onto_a_file_not_there_yet(small, tmp_path, capsys):
    """rebase -u -F names a backing file that does not exist (yet), as qemu-img does --
    the way to fix an overlay before its base is moved; without -F it is refused."""
    top = qemu.create(tmp_path / "top.qcow2", "10M", backing=str(small), backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 6 1M 64k")
    theirs, mine = twins(top, tmp_path)
    qemu.qemu_img("rebase", "-u", "-b", "moved.qcow2", "-F", "qcow2", theirs)
    assert ours(capsys, "rebase", "-u", "-b", "moved.qcow2", "-F", "qcow2", mine)[0] == 0
    assert mine.read_bytes() == theirs.read_bytes()
    p = qemu.qemu_img("rebase", "-u", "-b", "other.qcow2", theirs, check=False)
    rc, _, err = ours(capsys, "rebase", "-u", "-b", "other.qcow2", mine)
    assert p.returncode == rc == 1 and "backing format must be specified" in err
    assert mine.read_bytes() == theirs.read_bytes()


def test_commit_base_is_found_relative_to_the_chain_as_qemu(small, tmp_path, capsys,
                                                            monkeypatch):
    """commit -b BASE: a relative BASE names a file beside the image that points to it
    (bdrv_find_backing_image), not one in the working directory."""
    chains = {}
    for side in ("q", "o"):
        d = tmp_path / side
        d.mkdir()
        b0 = d / "b0.qcow2"
        b0.write_bytes(small.read_bytes())
        qemu.create(d / "b1.qcow2", "10M", backing="b0.qcow2", backing_fmt="qcow2")
        qemu.qemu_io(d / "b1.qcow2", "write -P 2 1M 1M")
        qemu.create(d / "t.qcow2", "10M", backing="b1.qcow2", backing_fmt="qcow2")
        qemu.qemu_io(d / "t.qcow2", "write -P 3 2M 512")
        chains[side] = d
    monkeypatch.chdir(tmp_path)
    p = qemu.qemu_img("commit", "-b", "q/b0.qcow2", "q/t.qcow2", check=False)
    rc, _, err = ours(capsys, "commit", "-b", "o/b0.qcow2", "o/t.qcow2")
    assert p.returncode == rc == 1 and len(err.splitlines()) == 1
    qemu.qemu_img("commit", "-q", "-b", "b0.qcow2", "q/t.qcow2")
    assert ours(capsys, "commit", "-b", "b0.qcow2", "o/t.qcow2")[0] == 0
    for name in ("b0.qcow2", "b1.qcow2", "t.qcow2"):
        assert_same_as_qemu(chains["q"] / name, chains["o"] / name)


@pytest.mark.parametrize("args", [
    ("snapshot", "-U", "-l", "{img}"),
    ("measure", "--force-share", "-O", "qcow2", "{img}"),
    ("resize", "--preallocation=off", "{img}", "+1M"),
    ("commit", "-t", "none", "{img}"),
    ("rebase", "-t", "none", "-T", "none", "-u", "-b", "{base}", "-F", "qcow2", "{img}"),
    ("convert", "-t", "none", "-T", "none", "-S", "4k", "-O", "qcow2", "{img}", "{out}"),
    ("commit", "-r", "1M", "{img}"),
    ("convert", "-C", "-r", "100M", "-O", "qcow2", "{img}", "{out}"),
    ("convert", "--salvage", "-O", "qcow2", "{img}", "{out}"),
    ("amend", "-t", "none", "-o", "lazy_refcounts=on", "{img}"),
])
def test_qemu_img_options_that_change_nothing_are_accepted(small, tmp_path, capsys, args):
    """Scripts written for qemu-img pass cache modes (-t/-T), -U and -S: they were
    usage errors (exit 2) here."""
    done = {}
    for side in ("q", "o"):           # commit writes into the base: one base each
        d = tmp_path / side
        d.mkdir()
        (d / "base.qcow2").write_bytes(small.read_bytes())
        top = qemu.create(d / "top.qcow2", "10M", backing="base.qcow2", backing_fmt="qcow2")
        qemu.qemu_io(top, "write -P 6 1M 64k")
        argv = [a.format(img=top, base="base.qcow2", out=d / "out.qcow2") for a in args]
        if side == "q":
            qemu.qemu_img(*argv)
        else:
            rc, _, err = ours(capsys, *argv)
            assert rc == 0, err
        done[side] = d
    for name in ("base.qcow2", "top.qcow2") + (("out.qcow2",) if args[0] == "convert" else ()):
        assert_same_as_qemu(done["q"] / name, done["o"] / name)


MEASURES = [("--size", "513"), ("--size", "1"),
            ("-O", "qcow2", "--size", "7G", "-o", "preallocation=full"),
            ("-O", "qcow2", "--size", "7G", "-o", "preallocation=falloc"),
            ("-O", "qcow2", "-o", "preallocation=full,cluster_size=4k", "SRC")]


@pytest.mark.parametrize("args", MEASURES, ids=[" ".join(a) for a in MEASURES])
def test_measure_odd_sizes_and_full_preallocation_as_qemu(small, capsys, args):
    """raw counts whole sectors; preallocation=full/falloc needs every cluster (it was
    refused as for create)."""
    args = [str(small) if a == "SRC" else a for a in args]
    want = json.loads(qemu.qemu_img("measure", "--output=json", *args).stdout)
    rc, out, err = ours(capsys, "measure", "--output=json", *args)
    assert rc == 0, err
    assert json.loads(out) == want


def test_measure_raw_refuses_qcow2_options_as_qemu(capsys):
    p = qemu.qemu_img("measure", "--size", "1G", "-o", "cluster_size=512", check=False)
    rc, _, err = ours(capsys, "measure", "--size", "1G", "-o", "cluster_size=512")
    assert p.returncode == rc == 1
    assert err.replace("qcow2view measure:", "qemu-img:") == p.stderr.decode()


def test_convert_refuses_compression_with_preallocation_as_qemu(small, tmp_path, capsys):
    args = ("convert", "-c", "-O", "qcow2", "-o", "preallocation=metadata", str(small))
    p = qemu.qemu_img(*args, tmp_path / "q.qcow2", check=False)
    rc, _, err = ours(capsys, *args, str(tmp_path / "o.qcow2"))
    assert p.returncode == rc == 1 and "preallocation" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.qcow2").exists()


def test_snapshot_list_pads_names_as_qemu_img(small, tmp_path, capsys):
    """qemu-img's printf pads the TAG column to 16 bytes: a name with non-ASCII letters
    (several bytes each) lines up as in qemu-img's own listing."""
    img = tmp_path / "l.qcow2"
    img.write_bytes(small.read_bytes())
    for name in ("plain", "ünïcødé ñame", "with space ünï"):
        qemu.qemu_img("snapshot", "-c", name, img)
    want = qemu.qemu_img("snapshot", "-l", img).stdout.decode()
    rc, out, _ = ours(capsys, "snapshot", "-l", img)
    assert rc == 0 and out == want


@pytest.mark.parametrize("args, reason", [(("-c", "s"), "Operation not supported"),
                                          (("-a", "s"), "Operation not supported"),
                                          (("-d", "s"), "not found")])
def test_snapshots_of_a_data_file_image_refused_as_qemu(tmp_path, capsys, args, reason):
    """qemu-img takes no internal snapshot of an image with an external data file
    (-c and -a: -ENOTSUP); -d finds none to delete."""
    img = qemu.create(tmp_path / "d.qcow2", "4M", f"data_file={tmp_path / 'd.raw'}")
    qemu.qemu_io(img, "write -P 5 0 1M")
    theirs, mine = twins(img, tmp_path)
    p = qemu.qemu_img("snapshot", *args, theirs, check=False)
    rc, _, err = ours(capsys, "snapshot", *args, mine)
    assert p.returncode == rc == 1 and len(err.splitlines()) == 1
    assert reason in p.stderr.decode() and reason in err
    assert f"snapshot '{args[1]}'" in err
    assert mine.read_bytes() == theirs.read_bytes() == img.read_bytes()


def test_downgrade_keeps_compressed_clusters_beside_zero_clusters(tmp_path, capsys):
    """amend compat=0.10 cleared bit 0 of every entry of an L2 table holding a zero
    cluster -- in a compressed entry that bit is part of the host offset, so the
    cluster then read as an I/O error."""
    img = qemu.create(tmp_path / "c.qcow2", "4M")
    qemu.qemu_io(img, "write -c -P 6 0 64k", "write -c -P 7 64k 64k", "write -P 1 1M 64k",
                 "write -z 1M 64k")
    theirs, mine = twins(img, tmp_path)
    qemu.qemu_img("amend", "-o", "compat=0.10", theirs)
    assert ours(capsys, "amend", "-o", "compat=0.10", mine)[0] == 0
    assert_same_as_qemu(theirs, mine)
    assert qemu.compare(mine, img).returncode == 0


def test_operations_repair_a_dirty_image_first_as_qemu(tmp_path, capsys):
    """A writer with lazy refcounts died (dirty bit set): qemu-img repairs the
    refcounts when it opens the image for writing, then does the operation; it
    was refused here."""
    img = qemu.create(tmp_path / "d.qcow2", "4M", "lazy_refcounts=on")
    qemu.qemu_io(img, "write -P 1 0 1M")
    qemu.run(qemu.QEMU_IO, "-f", "qcow2", "-c", "write -P 2 2M 1M", "-c", "abort", img,
             check=False)
    assert qemu.info(img)["dirty-flag"]
    for args in (("snapshot", "-c", "s", "{img}"), ("resize", "{img}", "+1M")):
        theirs, mine = twins(img, tmp_path, args[0])
        qemu.qemu_img(*[a.format(img=theirs) for a in args])
        rc, _, err = ours(capsys, *[a.format(img=mine) for a in args])
        assert rc == 0, err
        assert not qemu.info(mine)["dirty-flag"]
        assert_same_as_qemu(theirs, mine)


def test_resize_of_a_v2_image_with_snapshots_refused_as_qemu(small, tmp_path, capsys):
    img = qemu.create(tmp_path / "v2.qcow2", "4M", "compat=0.10")
    qemu.qemu_io(img, "write -P 3 0 64k")
    qemu.qemu_img("snapshot", "-c", "s", img)
    for size in ("+1M", "4M"):
        theirs, mine = twins(img, tmp_path)
        p = qemu.qemu_img("resize", theirs, size, check=False)
        rc, _, err = ours(capsys, "resize", mine, size)
        assert p.returncode == rc == 1 and "v2 image which has snapshots" in err
        assert mine.read_bytes() == img.read_bytes()


@pytest.mark.parametrize("opts, setup", [
    ("compat=0.10", "lazy_refcounts=on"),              # lazy refcounts dropped
    ("compat=0.10,lazy_refcounts=on", "lazy_refcounts=on"),
    ("compat=0.10", "compression_type=zstd"),          # no compressed cluster: zlib
    ("size=8M", ""), ("size=1M", ""),                   # amend resizes (and shrinks)
    ("compat=0.10,size=6M", ""),
])
def test_amend_options_as_qemu(tmp_path, capsys, opts, setup):
    """Only the options given change (qcow2_amend_options): a downgrade of an image
    with lazy refcounts drops them; zstd without compressed clusters downgrades;
    size= resizes. Each was refused here."""
    img = qemu.create(tmp_path / "a.qcow2", "4M", *filter(None, [setup]))
    qemu.qemu_io(img, "write -P 1 0 1536k", "write -z 64k 64k")
    theirs, mine = twins(img, tmp_path)
    qemu.qemu_img("amend", "-o", opts, theirs)
    rc, _, err = ours(capsys, "amend", "-o", opts, mine)
    assert rc == 0, err
    assert_same_as_qemu(theirs, mine)


@pytest.mark.parametrize("opts, words", [
    ("", "Invalid option list"), ("extended_l2=on", "only supported for image creation"),
    ("data_file_raw=on", "data-file-raw cannot be set"), ("compat=0.9", "0.9"),
    ("backing_file=x.qcow2", "Cannot amend the backing file"),
])
def test_amend_refusals_as_qemu(small, tmp_path, capsys, opts, words):
    theirs, mine = twins(small, tmp_path)
    p = qemu.qemu_img("amend", "-o", opts, theirs, check=False)
    rc, _, err = ours(capsys, "amend", "-o", opts, mine)
    assert p.returncode == rc == 1 and words in err and len(err.splitlines()) == 1
    assert mine.read_bytes() == small.read_bytes()


@pytest.mark.parametrize("setup, opts", [("compat=0.10", ()), ("compat=1.1", ("-o", "compat=0.10")),
                                         ("compat=1.1", ())])
def test_measure_says_bitmaps_only_for_v3_into_v3_as_qemu(tmp_path, capsys, setup, opts):
    """qcow2_measure counts bitmaps only from a v3 source into a v3 output: the
    "bitmaps" line was printed for a v2 source or a compat=0.10 output too."""
    img = qemu.create(tmp_path / "m.qcow2", "4M", setup)
    qemu.qemu_io(img, "write -P 1 0 1M")
    args = ("measure", "--output=json", "-O", "qcow2", *opts, str(img))
    want = json.loads(qemu.qemu_img(*args).stdout)
    rc, out, err = ours(capsys, *args)
    assert rc == 0, err
    assert json.loads(out) == want


def test_rebase_without_format_refused_as_qemu(small, tmp_path, capsys):
    """qemu-img 7.2 rebase -b NEW without -F is refused in safe mode too (after it
    copied, here before): it rebased onto the probed format."""
    other = qemu.create(tmp_path / "other.qcow2", "10M")
    top = qemu.create(tmp_path / "top.qcow2", "10M", backing=str(small), backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 6 1M 64k")
    theirs, mine = twins(top, tmp_path)
    p = qemu.qemu_img("rebase", "-b", str(other), theirs, check=False)
    rc, _, err = ours(capsys, "rebase", "-b", str(other), mine)
    assert p.returncode == rc == 1 and "backing format must be specified" in err
    assert len(err.splitlines()) == 1 and mine.read_bytes() == top.read_bytes()


@pytest.fixture(scope="module")
def chain3(tmp_path_factory):
    """base <- mid <- top, the top with data, a zero cluster over base data and a
    compressed-cluster base."""
    d = tmp_path_factory.mktemp("chain3")
    base = qemu.create(d / "base.qcow2", "8M")
    qemu.qemu_io(base, "write -P 1 0 3M", "write -c -P 2 6M 64k")
    mid = qemu.create(d / "mid.qcow2", "8M", backing="base.qcow2", backing_fmt="qcow2")
    qemu.qemu_io(mid, "write -P 3 1M 1M")
    top = qemu.create(d / "top.qcow2", "8M", backing="mid.qcow2", backing_fmt="qcow2")
    qemu.qemu_io(top, "write -z 0 64k", "write -P 4 1536k 600k", "write -P 5 7M 4k")
    return top


@pytest.mark.parametrize("args", [
    ("-B", "mid.qcow2", "-F", "qcow2"), ("-B", "base.qcow2", "-F", "qcow2"),
    ("-c", "-B", "mid.qcow2", "-F", "qcow2", "-o", "cluster_size=2M"),
    ("-o", "backing_file=mid.qcow2,backing_fmt=qcow2"),
    ("-B", "mid.qcow2"), ("-O", "raw", "-B", "mid.qcow2", "-F", "qcow2")])
def test_convert_with_a_backing_file_for_the_output_as_qemu(chain3, tmp_path, capsys, args):
    """convert -B (it was a usage error) and -o backing_file: only what the top image
    decides is copied, its zero clusters as zeros (they were skipped, so the
    output's backing file showed through); without -F or into raw refused."""
    d = chain3.parent
    out_q, out_o = d / "q.out", d / "o.out"
    head = () if "-O" in args else ("-O", "qcow2")
    p = qemu.qemu_img("convert", *head, *args, chain3, out_q, check=False)
    rc, _, err = ours(capsys, "convert", *head, *args, chain3, out_o)
    assert rc == p.returncode, err
    if rc:
        assert len(err.splitlines()) == 1 and not out_o.exists()
        return
    assert_same_as_qemu(out_q, out_o)
    out_q.unlink()
    out_o.unlink()


@pytest.mark.parametrize("mode", ["full", "falloc"])
def test_convert_with_full_preallocation_as_qemu(small, tmp_path, capsys, mode):
    args = ("convert", "-O", "qcow2", "-o", f"preallocation={mode}", str(small))
    qemu.qemu_img(*args, tmp_path / "q.qcow2")
    rc, _, err = ours(capsys, *args, str(tmp_path / "o.qcow2"))
    assert rc == 0, err
    assert_same_as_qemu(tmp_path / "q.qcow2", tmp_path / "o.qcow2")
    blocks = (tmp_path / "o.qcow2").stat().st_blocks * 512
    assert blocks >= 10 << 20            # every cluster allocated on the host


@pytest.mark.parametrize("fmt, size, opts", [("qcow2", "16M", ()), ("raw", "16M", ()),
                                             ("qcow2", "4M", ()),
                                             ("qcow2", "16M", ("-o", "cluster_size=4k"))])
def test_convert_into_an_existing_image_as_qemu(small, tmp_path, capsys, fmt, size, opts):
    """convert -n (a usage error before): the target keeps its format and size, and
    every byte of the source disk, zeros included, lands on what it held; a target
    smaller than the source and -o are refused as qemu-img refuses them."""
    target = qemu.create(tmp_path / "t.img", size, fmt=fmt)
    qemu.qemu_io(target, f"write -P 9 0 {size}", fmt=fmt)
    theirs, mine = twins(target, tmp_path)
    args = ("convert", "-n", "-O", fmt, *opts, str(small))
    p = qemu.qemu_img(*args, theirs, check=False)
    rc, _, err = ours(capsys, *args, mine)
    _ended_as_qemu(rc, err, p, mine, theirs, target.read_bytes(), fmt)


@pytest.mark.parametrize("args", [("+1M",), ("1000",), ("--shrink", "1000"),
                                  ("-f", "raw", "--shrink", "1536"), ("-f", "qcow2", "+1M")])
def test_resize_of_a_raw_file_as_qemu(tmp_path, capsys, args):
    """qemu-img resizes raw files too (to any byte count; shrinking needs --shrink);
    it was refused as 'qcow2 only'."""
    raw = qemu.create(tmp_path / "r.raw", "1M", fmt="raw")
    qemu.qemu_io(raw, "write -P 5 0 1M", fmt="raw")
    theirs, mine = tmp_path / "q.raw", tmp_path / "o.raw"
    theirs.write_bytes(raw.read_bytes())
    mine.write_bytes(raw.read_bytes())
    *opts, size = args
    p = qemu.qemu_img("resize", *opts, theirs, size, check=False)
    rc, _, err = ours(capsys, "resize", *opts, mine, size)
    assert rc == p.returncode, err
    assert mine.read_bytes() == theirs.read_bytes()


def test_growing_a_v2_overlay_over_a_longer_backing_file_refused_as_qemu(small, tmp_path,
                                                                          capsys):
    """The new area must read zeros, not the backing file, and v2 has no zero
    clusters: qemu-img resize fails ('Failed to zero out new clusters'); it grew."""
    top = qemu.create(tmp_path / "top.qcow2", "4M", "compat=0.10", backing=str(small),
                      backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 4 0 64k")
    theirs, mine = twins(top, tmp_path)
    p = qemu.qemu_img("resize", theirs, "+2M", check=False)
    rc, _, err = ours(capsys, "resize", mine, "+2M")
    assert p.returncode == rc == 1 and "Failed to zero out new clusters" in err
    assert mine.read_bytes() == top.read_bytes()


@pytest.mark.parametrize("args, words", [
    (("--target-is-zero",), "requires use of -n"), (("-C", "-c"), "copy offloading"),
    (("-C", "-S", "0"), "copy offloading"), (("-C", "--salvage"), "copy offloading")])
def test_convert_option_refusals_as_qemu(small, tmp_path, capsys, args, words):
    argv = ("convert", *args, "-O", "qcow2", str(small))
    p = qemu.qemu_img(*argv, tmp_path / "q.qcow2", check=False)
    rc, _, err = ours(capsys, *argv, str(tmp_path / "o.qcow2"))
    assert p.returncode == rc == 1 and words in err and len(err.splitlines()) == 1


def test_convert_n_target_is_zero_as_qemu(small, tmp_path, capsys):
    theirs = qemu.create(tmp_path / "q.qcow2", "10M")
    mine = qemu.create(tmp_path / "o.qcow2", "10M")
    argv = ("convert", "-n", "--target-is-zero", "-O", "qcow2", str(small))
    qemu.qemu_img(*argv, theirs)
    assert ours(capsys, *argv, str(mine))[0] == 0
    assert_same_as_qemu(theirs, mine)


def test_snapshot_refused_for_refcount_overflow_leaves_the_image_unchanged(tmp_path, capsys):
    """refcount_bits=2 and two compressed clusters sharing a host cluster (refcount
    2): a snapshot would raise it to 4. qemu-img refuses (and leaks); the refusal
    here leaked the L1 copy's cluster."""
    img = qemu.create(tmp_path / "r.qcow2", "4M", "refcount_bits=2")
    qemu.qemu_io(img, "write -c -P 6 0 64k", "write -c -P 7 64k 64k")
    theirs, mine = twins(img, tmp_path)
    p = qemu.qemu_img("snapshot", "-c", "s", theirs, check=False)
    rc, _, err = ours(capsys, "snapshot", "-c", "s", mine)
    assert p.returncode == rc == 1 and "refcount" in err and len(err.splitlines()) == 1
    assert mine.read_bytes() == img.read_bytes()


@pytest.mark.parametrize("opts", ["compat=0.10,extended_l2=on", "compat=0.10,lazy_refcounts=on",
                                  "data_file_raw=on", "encryption=on", "size=2G",
                                  "compression_type=zstd,compat=0.10", "compat=v2", "foo=bar",
                                  "extended_l2=maybe", "preallocation=bogus", "",
                                  "cluster_size=512"])
def test_measure_checks_options_as_qemu(capsys, opts):
    """qcow2_measure checks only what it needs (cluster size, version, refcount width,
    preallocation, on/off values): combinations create refuses are measured (they were
    refused here), compat=v2 and unknown names are refused."""
    args = ("measure", "--output=json", "--size", "100T", "-O", "qcow2", "-o", opts)
    p = qemu.qemu_img(*args, check=False)
    rc, out, err = ours(capsys, *args)
    assert rc == p.returncode, err
    if rc:
        assert err.replace("qcow2view measure:", "qemu-img:") == p.stderr.decode()
    else:
        assert json.loads(out) == json.loads(p.stdout)


@pytest.mark.parametrize("args", [("-o", "size=2G"), ("-o", ""), ("-F", "qcow2"),
                                  ("-O", "raw", "-o", "preallocation=full"),
                                  ("-O", "raw", "-o", "preallocation=metadata"),
                                  ("-O", "raw", "-o", "size=1G")])
def test_convert_options_as_qemu(small, tmp_path, capsys, args):
    """-o size= is accepted and unused (the source's size), an empty -o and -F
    without a backing file are refused, raw output takes preallocation falloc|full."""
    argv = ("convert", *(() if "-O" in args else ("-O", "qcow2")), *args, str(small))
    p = qemu.qemu_img(*argv, tmp_path / "q.img", check=False)
    rc, _, err = ours(capsys, *argv, str(tmp_path / "o.img"))
    assert rc == p.returncode, err
    if rc:
        assert len(err.splitlines()) == 1
    elif "raw" in args:
        assert (tmp_path / "o.img").read_bytes() == (tmp_path / "q.img").read_bytes()
    else:
        assert_same_as_qemu(tmp_path / "q.img", tmp_path / "o.img")


def test_usage_errors_exit_1_as_qemu(small):
    """qemu-img exits 1 on a bad option or missing argument (argparse said 2)."""
    for args in (("convert", "-s", "x", str(small), "out"), ("resize",), ("commit",)):
        p = qemu.run(sys.executable, "-m", "qcow2view", *args, check=False)
        assert p.returncode == qemu.qemu_img(*args, check=False).returncode == 1
        assert len(p.stderr.decode().splitlines()) == 1


def test_rebase_onto_itself_refused_as_qemu(tmp_path, capsys):
    """rebase -b onto the image itself, or onto an image whose chain holds it: qemu-img
    cannot open the new backing file (the image's own write lock); it was done here,
    leaving a chain that loops."""
    base = qemu.create(tmp_path / "b.qcow2", "4M")
    mid = qemu.create(tmp_path / "m.qcow2", "4M", backing="b.qcow2", backing_fmt="qcow2")
    top = qemu.create(tmp_path / "t.qcow2", "4M", backing="m.qcow2", backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 3 0 64k")
    for img, new in ((top, "t.qcow2"), (mid, "t.qcow2")):
        before = img.read_bytes()
        p = qemu.qemu_img("rebase", "-b", new, "-F", "qcow2", img, check=False)
        rc, _, err = ours(capsys, "rebase", "-b", new, "-F", "qcow2", img)
        assert p.returncode == rc == 1 and len(err.splitlines()) == 1
        assert img.read_bytes() == before
    assert base.exists()


def test_snapshot_list_of_a_raw_file_as_qemu(tmp_path, capsys):
    raw = qemu.create(tmp_path / "r.raw", "1M", fmt="raw")
    p = qemu.qemu_img("snapshot", "-l", raw)
    assert ours(capsys, "snapshot", "-l", raw) == (0, p.stdout.decode(), "")


def test_convert_concatenates_several_sources_as_qemu(chain3, small, tmp_path, capsys):
    """convert SRC1 SRC2 DST writes the disks one after the other (a usage error
    before)."""
    for args in (("-O", "qcow2"), ("-c", "-O", "qcow2"), ("-O", "raw")):
        argv = ("convert", *args, str(chain3), str(small))
        qemu.qemu_img(*argv, tmp_path / "q.img")
        rc, _, err = ours(capsys, *argv, str(tmp_path / "o.img"))
        assert rc == 0, err
        if "raw" in args:
            assert (tmp_path / "o.img").read_bytes() == (tmp_path / "q.img").read_bytes()
        else:
            assert_same_as_qemu(tmp_path / "q.img", tmp_path / "o.img")


@pytest.mark.parametrize("fmt, mode, size", [("qcow2", "full", "+3M"), ("qcow2", "falloc", "+3M"),
                                             ("qcow2", "full", "--shrink 1M"),
                                             ("raw", "falloc", "+3M"), ("raw", "full", "+3M")])
def test_resize_with_preallocation_as_qemu(tmp_path, capsys, fmt, mode, size):
    """resize --preallocation=falloc|full (refused before): the new area allocated,
    reading zeros; with a shrink refused as qemu-img refuses it."""
    img = qemu.create(tmp_path / "p.img", "2M", fmt=fmt)
    qemu.qemu_io(img, "write -P 1 0 1000k", fmt=fmt)
    theirs, mine = tmp_path / "q.img", tmp_path / "o.img"
    theirs.write_bytes(img.read_bytes())
    mine.write_bytes(img.read_bytes())
    *opts, new = size.split()
    p = qemu.qemu_img("resize", "-f", fmt, f"--preallocation={mode}", *opts, theirs, new,
                      check=False)
    rc, _, err = ours(capsys, "resize", "-f", fmt, f"--preallocation={mode}", *opts, mine, new)
    _ended_as_qemu(rc, err, p, mine, theirs, img.read_bytes(), fmt)
    if not rc and fmt != "raw":
        assert qemu.info(mine)["actual-size"] >= 3 << 20
