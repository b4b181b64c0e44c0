"""Image.check() and Image.repair() against ``qemu-img check`` on the same files."""

from __future__ import annotations

import json
import struct
import subprocess

import numpy as np
import pytest

import qemu
from qcow2view.engine import CorruptImageError, Qcow2Error, ReadOnlyError, open_image
from qcow2view.engine import clusters as C
from qcow2view.engine.fileio import HostFile
from check_images import (BUILDERS, DAMAGE, _bitmaps, _img, _l2_entry_offsets,
                          _poke, _set_refcount, dmg_compressed_copied,
                          dmg_compressed_past_eof, dmg_copied_l1, dmg_copied_l2,
                          dmg_double_reference, dmg_leak, dmg_refblock_missing,
                          dmg_refblock_on_l2, dmg_refcount_high, dmg_refcount_zero)


def assert_same_as_qemu(path):
    code, want = qemu.check(path)
    with open_image(path, ignore_backing_errors=True) as im:
        got = im.check()
    mine = got.to_json()
    mine["filename"] = want.get("filename")
    assert mine == want, (got.findings[:10], want)
    assert got.exit_code == code
    # every corruption and leak qemu counts is listed as a finding
    if not got.findings_dropped:
        assert sum(f.severity == "corruption" for f in got.findings) == got.corruptions
        assert sum(f.severity == "leak" for f in got.findings) == got.leaks
    return got


@pytest.mark.parametrize("build", BUILDERS, ids=lambda f: f.__name__.strip("_"))
def test_clean_images_count_like_qemu(tmp_path, build):
    r = assert_same_as_qemu(build(tmp_path))
    assert r.clean and r.exit_code == 0


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32, 64])
def test_refcount_widths(tmp_path, bits):
    p = qemu.create(tmp_path / "r.qcow2", "4M", f"refcount_bits={bits}", "cluster_size=4k")
    qemu.qemu_io(p, "write -P 1 0 300k", "write -c -P 2 1M 8k")
    assert_same_as_qemu(p)


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__[4:])
def test_damage_counts_like_qemu(tmp_path, damage):
    p = _img(tmp_path)
    damage(p)
    r = assert_same_as_qemu(p)
    assert not r.clean


@pytest.mark.parametrize("damage", [dmg_compressed_past_eof, dmg_compressed_copied],
                         ids=lambda f: f.__name__[4:])
def test_compressed_damage(tmp_path, damage):
    p = _img(tmp_path, "write -P 1 0 64k", "write -c -P 2 128k 4k", "write -c -P 3 256k 4k")
    damage(p)
    assert not assert_same_as_qemu(p).clean


def test_damage_in_snapshot_tables(tmp_path):
    p = _img(tmp_path)
    qemu.qemu_img("snapshot", "-c", "s1", p)
    qemu.qemu_io(p, "write -P 9 0 8k")
    with open_image(p) as im:
        s = im.snapshots[0]
        sl1 = im.snapshot_l1_table(s)
        l2 = int(sl1.entries[0]) & C.L1E_OFFSET_MASK
    _poke(p, l2 + 8 * 10, 0)                 # the snapshot stops referencing a cluster
    assert_same_as_qemu(p)


def test_findings_name_the_problem(tmp_path):
    p = _img(tmp_path)
    dmg_leak(p)
    dmg_double_reference(p)
    with open_image(p) as im:
        r = im.check()
    kinds = {f.kind for f in r.findings}
    assert "leak" in kinds and "double_reference" in kinds
    leak = next(f for f in r.findings if f.kind == "leak")
    assert leak.refcount == 1 and leak.references == 0 and leak.severity == "leak"
    assert hex(leak.cluster * 4096) in leak.message


def test_metadata_overlap_is_named(tmp_path):
    p = _img(tmp_path)
    dmg_refblock_on_l2(p)
    with open_image(p) as im:
        r = im.check()
    assert any(f.kind == "metadata_overlap" for f in r.findings)


# -- repair -----------------------------------------------------------------------------
def _guest(p, d, name):
    return qemu.to_raw(p, d / name)


def test_repair_needs_writable(tmp_path):
    p = _img(tmp_path)
    with open_image(p) as im, pytest.raises(ReadOnlyError):
        im.repair()


def test_repair_leaks(tmp_path):
    p = _img(tmp_path, "write -P 1 0 64k", "write -P 2 1M 16k", "write -c -P 3 2M 4k")
    dmg_leak(p)
    qemu.qemu_img("snapshot", "-c", "s1", p)       # leaks survive snapshots too
    before = _guest(p, tmp_path, "a.raw")
    assert qemu.check(p)[0] == 3
    with open_image(p, writable=True) as im:
        r = im.repair(leaks=True)
    assert r.leaks_fixed == 1 and r.clean
    code, out = qemu.check(p)
    assert code == 0, out
    assert _guest(p, tmp_path, "b.raw") == before


def test_repair_leaks_does_not_fix_corruptions(tmp_path):
    p = _img(tmp_path)
    dmg_refcount_high(p)
    dmg_double_reference(p)
    q = tmp_path / "q.qcow2"
    q.write_bytes(p.read_bytes())
    _, want = qemu.check(q, "-r", "leaks")
    with open_image(p, writable=True) as im:
        r = im.repair(leaks=True)
    assert r.leaks_fixed == want["leaks-fixed"] and r.corruptions == want["corruptions"]
    assert qemu.check(p)[0] == 2


def test_repair_leaks_refuses_when_qemu_would_rebuild(tmp_path):
    """qemu-img check -r leaks fails (exit 1) and writes nothing when a referenced
    cluster has refcount 0; so do we."""
    p = _img(tmp_path)
    dmg_refcount_zero(p)
    dmg_leak(p)
    q = tmp_path / "q.qcow2"
    q.write_bytes(p.read_bytes())
    assert qemu.qemu_img("check", "-r", "leaks", q, check=False).returncode == 1
    assert q.read_bytes() == p.read_bytes()
    with open_image(p, writable=True) as im, pytest.raises(CorruptImageError):
        im.repair(leaks=True)
    assert q.read_bytes() == p.read_bytes()


@pytest.mark.parametrize("damage", [dmg_refcount_zero, dmg_refcount_high, dmg_copied_l2,
                                    dmg_copied_l1, dmg_double_reference],
                         ids=lambda f: f.__name__[4:])
def test_repair_all(tmp_path, damage):
    p = _img(tmp_path)
    damage(p)
    before = _guest(p, tmp_path, "a.raw")
    with open_image(p, writable=True) as im:
        r = im.repair(fix_all=True)
    assert r.clean, r.findings
    code, out = qemu.check(p)
    assert code == 0, out
    assert _guest(p, tmp_path, "b.raw") == before


def test_repair_all_rebuilds_when_a_refcount_block_is_missing(tmp_path):
    p = _img(tmp_path)
    dmg_refblock_missing(p)
    q = tmp_path / "q.qcow2"
    q.write_bytes(p.read_bytes())
    _, want = qemu.check(q, "-r", "all")
    with open_image(p, writable=True) as im:
        r = im.repair(fix_all=True)
    assert r.clean, r.findings
    assert r.corruptions_fixed == want["corruptions-fixed"]
    assert qemu.check(p)[0] == 0
    assert qemu.compare(p, q).returncode == 0


# -- refcount structure rebuild (QEMU's rebuild_refcount_structure) ----------------------
def _rebuild_case(tmp_path, bits, target):
    """A refcount table entry pointing at guest data or at an L2 table."""
    p = _img(tmp_path, "write -P 1 0 12k", "write -c -P 2 16k 4k", "write -P 3 32k 8k",
             "write -P 4 1M 4k", opts=("cluster_size=4k", f"refcount_bits={bits}"))
    l2, raw, es, im = _l2_entry_offsets(p)
    rt = im.header.refcount_table_offset
    _poke(p, rt, l2 if target == "l2" else int(raw[0]) & C.L2E_OFFSET_MASK)
    theirs = tmp_path / "theirs.qcow2"
    theirs.write_bytes(p.read_bytes())
    return p, theirs


@pytest.mark.parametrize("target", ["data", "l2"])
@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32, 64])
def test_repair_all_rebuilds_like_qemu(tmp_path, bits, target):
    """QEMU rebuilds the refcount structure from the references it counted; the
    result is clean, the guest data, the counts and the layout are QEMU's."""
    p, theirs = _rebuild_case(tmp_path, bits, target)
    guest = _guest(p, tmp_path, "a.raw") if target == "data" else None
    code, want = qemu.check(theirs, "-r", "all")
    assert code == 0 and qemu.check(theirs)[0] == 0, want
    with open_image(p, writable=True) as im:
        r = im.repair(fix_all=True)
    code, out = qemu.check(p)
    assert code == 0, out
    mine = r.to_json()
    for d in (mine, want):
        d.pop("filename")
    assert mine == want
    assert qemu.compare(p, theirs).returncode == 0
    if guest is not None:
        assert _guest(p, tmp_path, "b.raw") == guest
    # laid out as QEMU lays it out: byte for byte the same in every cluster in use
    # (QEMU discards the clusters it frees; we leave their old bytes)
    a, b = p.read_bytes(), theirs.read_bytes()
    assert len(a) == len(b)
    with open_image(p) as im:
        used = np.flatnonzero(im.refcounts())
    for c in used.tolist():
        assert a[c * 4096:(c + 1) * 4096] == b[c * 4096:(c + 1) * 4096], c


def test_repair_leaks_refuses_a_refcount_block_on_guest_data(tmp_path):
    """With 1-bit refcounts QEMU's saturating count hides that a refcount block is
    guest data; lowering leaked refcounts would write into it.  We refuse and
    write nothing."""
    p, before = _rebuild_case(tmp_path, 1, "data")
    with open_image(p, writable=True) as im, pytest.raises(CorruptImageError):
        im.repair(leaks=True)
    assert p.read_bytes() == before.read_bytes()


def test_repair_on_a_full_disk_is_a_typed_error_naming_the_file(tmp_path):
    """Issue 16: a rebuild that hits a full disk (EFBIG under RLIMIT_FSIZE) raised a
    bare OSError ('qcow2view: : File too large').  It says which file, and the
    image stays as damaged as before or better, never worse."""
    p, _ = _rebuild_case(tmp_path, 16, "data")
    guest = _guest(p, tmp_path, "a.raw")
    _, before = qemu.check(p)
    child = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))\n"
        "from qcow2view.cli import main\n"
        "sys.exit(main(['check', '--repair', 'all', sys.argv[1]]))\n")
    import os
    import subprocess
    import sys
    p_run = subprocess.run([sys.executable, "-c", child, str(p), str(os.path.getsize(p))],
                           capture_output=True, text=True)
    assert p_run.returncode not in (0, 3), p_run.stdout
    err = p_run.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in p_run.stderr, p_run.stderr
    assert err[0].startswith(f"qcow2view: {p}: ") and "File too large" in err[0], err
    code, out = qemu.check(p)
    assert out.get("corruptions", 0) in (0, before["corruptions"]), out
    assert _guest(p, tmp_path, "b.raw") == guest


def test_crash_during_rebuild_keeps_the_guest_data(tmp_path):
    """An I/O error at any write of a rebuild: the guest data stays, and the image
    is either as damaged as before (the header still names the old structure) or
    has leaks at most."""
    base, _ = _rebuild_case(tmp_path, 1, "data")
    guest = _guest(base, tmp_path, "a.raw")
    _, before = qemu.check(base)
    q = tmp_path / "q.qcow2"
    for n in range(0, 40):
        q.write_bytes(base.read_bytes())
        HostFile.fault_after = n
        try:
            with open_image(q, writable=True) as im:
                im.repair(fix_all=True)
            finished = True
        except Qcow2Error as e:
            assert str(q) in str(e)        # a typed error naming the file
            finished = False
        finally:
            HostFile.fault_after = None
        code, out = qemu.check(q)
        assert code in (0, 2, 3), out
        assert out.get("corruptions", 0) in (0, before["corruptions"]), (n, out)
        assert _guest(q, tmp_path, "b.raw") == guest, n
        if finished:
            assert code == 0
            break
    assert finished


def test_repair_after_a_crash_with_lazy_refcounts(tmp_path):
    """What a VM crash with lazy_refcounts leaves: dirty bit, refcounts never
    written.  repair(fix_all=True) rebuilds the refcount structure as qemu-img check
    -r all does, counts the fixes as it counts them, clears the dirty bit and
    keeps the guest data."""
    p = qemu.create(tmp_path / "lazy.qcow2", "4M", "lazy_refcounts=on", "cluster_size=4k")
    subprocess.run([qemu.QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 64k", "-c", "abort",
                    str(p)], capture_output=True, cwd=tmp_path)   # a core file stays there
    assert qemu.info(p)["dirty-flag"] is True
    q = tmp_path / "q.qcow2"
    q.write_bytes(p.read_bytes())
    before = _guest(p, tmp_path, "a.raw")
    assert_same_as_qemu(p)
    _, want = qemu.check(q, "-r", "all")
    with open_image(p, writable=True, repair=True) as im:
        r = im.repair(fix_all=True)
    assert r.clean and r.corruptions_fixed == want["corruptions-fixed"]
    assert r.leaks_fixed == want.get("leaks-fixed", 0)
    assert qemu.check(p)[0] == 0
    assert qemu.info(p)["dirty-flag"] is False
    assert _guest(p, tmp_path, "b.raw") == before


def test_crash_during_repair_leaves_at_most_leaks(tmp_path):
    """An I/O error at any point of a repair never adds a corruption."""
    base = _img(tmp_path)
    dmg_refcount_high(base)                   # a leak (and a wrong COPIED flag)
    dmg_refcount_zero(base)                   # a too-low refcount: raised before leaks drop
    _, before = qemu.check(base)
    q = tmp_path / "q.qcow2"
    finished = False
    for n in range(0, 12):
        q.write_bytes(base.read_bytes())
        HostFile.fault_after = n
        try:
            with open_image(q, writable=True, repair=True) as im:
                im.repair(fix_all=True)
            finished = True
        except Qcow2Error:
            pass
        finally:
            HostFile.fault_after = None
        code, out = qemu.check(q)
        assert code in (0, 2, 3), out
        assert out.get("corruptions", 0) <= before["corruptions"], (n, out)
        if finished:
            assert code == 0
            break
    assert finished


@pytest.mark.slow
def test_luks_encrypted_image_counts_its_encryption_header(tmp_path):
    p = tmp_path / "enc.qcow2"
    sec = ("--object", "secret,id=sec0,data=abc")
    qemu.create_luks(p, "1M", "cluster_size=4096", secret="abc")
    opts = f"driver=qcow2,file.filename={p},encrypt.key-secret=sec0"
    qemu.run(qemu.QEMU_IO, *sec, "--image-opts", opts, "-c", "write -P 1 0 8k")
    out = qemu.qemu_img("check", *sec, "--image-opts", opts, "--output=json", check=False)
    want = json.loads(out.stdout)
    with open_image(p) as im:
        mine = im.check().to_json()
    mine["filename"] = want["filename"]
    assert mine == want
    l2, raw, es, _ = _l2_entry_offsets(p)
    _poke(p, l2, 0)                                   # leak the first data cluster
    want = json.loads(qemu.qemu_img("check", *sec, "--image-opts", opts, "--output=json",
                                    check=False).stdout)
    with open_image(p) as im:
        mine = im.check().to_json()
    mine["filename"] = want["filename"]
    assert mine == want and want.get("leaks") == 1


def test_whole_contiguous_tables_shared_with_snapshots(tmp_path):
    """Full L2 tables of contiguous clusters (the fast path), shared by snapshots."""
    p = qemu.create(tmp_path / "c.qcow2", "8M", "cluster_size=4k")
    qemu.qemu_io(p, "write -P 1 0 4M")
    assert_same_as_qemu(p)
    qemu.qemu_img("snapshot", "-c", "s1", p)
    assert_same_as_qemu(p)
    qemu.qemu_io(p, "write -P 2 2M 4k")              # copies one table on write
    assert_same_as_qemu(p)
    with open_image(p) as im:
        hm = im.host_map()
        assert (hm.refcounts.astype(np.uint64) == hm.references).all()
    _set_refcount(p, (int(_l2_entry_offsets(p)[1][7]) & C.L2E_OFFSET_MASK) // 4096, 1)
    assert_same_as_qemu(p)


def test_bitmaps_of_an_inconsistent_image_are_leaks(tmp_path):
    """Without the autoclear bit QEMU ignores the bitmaps: their clusters leak."""
    p = _bitmaps(tmp_path)
    with open_image(p) as im:
        from qcow2view.engine.maps import HostKind
        assert (im.host_map().kinds == HostKind.BITMAP_DATA).any()
    with open(p, "r+b") as f:
        f.seek(88)
        f.write(bytes(8))
    r = assert_same_as_qemu(p)
    assert r.leaks > 0


def test_refcount_overflow_with_one_bit_refcounts(tmp_path):
    p = _img(tmp_path, opts=("cluster_size=4k", "refcount_bits=1"))
    dmg_double_reference(p)
    r = assert_same_as_qemu(p)
    assert any(f.kind == "refcount_overflow" for f in r.findings)


@pytest.fixture(scope="module")
def rich_image(tmp_path_factory):
    d = tmp_path_factory.mktemp("rich")
    p = qemu.create(d / "rich.qcow2", "2M", "cluster_size=4k")
    qemu.qemu_img("bitmap", "--add", p, "b0")
    qemu.qemu_io(p, "write -P 1 0 256k", "write -c -P 2 512k 8k")
    qemu.qemu_img("snapshot", "-c", "s1", p)
    qemu.qemu_io(p, "write -P 3 64k 64k")
    return p.read_bytes()


@pytest.mark.parametrize("seed", range(40))
def test_random_metadata_damage_gives_typed_errors_only(tmp_path, rich_image, seed):
    """Garbage in the metadata: check and maps either work or raise a Qcow2Error,
    and when check works its counts are qemu-img's."""
    from qcow2view.engine import Qcow2Error
    rng = np.random.default_rng(seed)
    data = bytearray(rich_image)
    with open_image_bytes(tmp_path, rich_image) as im:
        meta = [im.header.l1_table_offset, im.header.refcount_table_offset,
                int(im.refcount_table[0]), int(im.l1_table.entries[0]) & C.L1E_OFFSET_MASK,
                im.snapshots[0].l1_table_offset]
    for _ in range(int(rng.integers(1, 6))):
        base = int(rng.choice(meta))
        pos = base + int(rng.integers(0, 4096 // 8)) * 8 + int(rng.integers(0, 8))
        data[pos] = int(rng.integers(0, 256))
    p = tmp_path / "x.qcow2"
    p.write_bytes(bytes(data))
    try:
        with open_image(p) as im:
            r = im.check()
            im.host_map()
            im.guest_map()
    except Qcow2Error:
        return
    code, want = qemu.check(p)
    if "check-errors" in want and code != 1:
        mine = r.to_json()
        mine["filename"] = want["filename"]
        assert mine == want


def open_image_bytes(d, data):
    p = d / "orig.qcow2"
    p.write_bytes(data)
    return open_image(p)


def test_contiguous_tables_shared_by_300_snapshots(tmp_path):
    """Whole contiguous L2 tables that 300 internal snapshots share: the fast path
    counts each of their clusters 301 times (past a byte: the counts widen), as
    qemu-img check does."""
    from qcow2view.engine.ops.snapshot import create_snapshot
    p = qemu.create(tmp_path / "s.qcow2", "4M", "cluster_size=4k,preallocation=metadata")
    with open_image(p, writable=True) as im:
        for k in range(300):
            create_snapshot(im, f"s{k}")
    assert_same_as_qemu(p)
    with open_image(p) as im:
        hm = im.host_map()
        assert int(hm.references.max()) == 301
        assert (hm.refcounts.astype(np.uint64) == hm.references).all()


def test_refcount_block_offset_past_any_file_is_a_finding(tmp_path):
    """A refcount table entry naming a block 2^64 - 2^52 bytes in (no file offset can
    hold it), on a preallocated image whose contiguous tables have their refcounts
    read straight into one array: the check names the block, with no traceback."""
    p = qemu.create(tmp_path / "far.qcow2", "8M", "cluster_size=4k,preallocation=metadata")
    with open_image(p) as im:
        rto = im.header.refcount_table_offset
    _poke(p, rto, 0xFFF0000000001000)
    with open_image(p) as im:
        r = im.check()
    assert not r.clean
    assert any(f.kind == "past_end_of_file" and "refcount block 0" in f.message
               for f in r.findings)


def test_reference_counts_widen_instead_of_wrapping(tmp_path):
    """One byte per cluster until some cluster has more than 255 references, then
    16 and 32 bits: a count never wraps."""
    from qcow2view.engine.kinds import HostKind
    from qcow2view.engine.refscan import Scanner
    p = _img(tmp_path)
    with open_image(p) as im:
        sc = Scanner(im, compact=True)
        assert sc.r.refs.dtype == np.uint8
        sc.r.refs[4] = 0xFF
        sc._mark_one(4, HostKind.DATA)
        assert sc.r.refs.dtype == np.uint16 and sc.r.refs[4] == 0x100
        sc.r.refs[5] = 0xFFFF
        sc._mark(np.array([5, 5, 6]), HostKind.DATA)
        assert sc.r.refs.dtype == np.uint32 and sc.r.refs[5] == 0x10001
        sc.r.refs = sc.r.refs.astype(np.uint16)
        sc.r.refs[7] = 0xFFFF
        sc._mark_one(7, HostKind.DATA)
        assert sc.r.refs[7] == 0x10000


def test_garbage_l1_entries_count_like_qemu(tmp_path):
    """l1_size raised so the L1 table runs into guest data: thousands of garbage
    entries, most naming L2 tables far past the end of the file (those read as
    zeros and are not read at all), some inside it.  Counted as qemu-img check."""
    p = qemu.create(tmp_path / "g.qcow2", "64M", "cluster_size=64k")
    words = np.arange(1 << 16, dtype=np.uint64)
    words = (words << np.uint64(32)) | (words * np.uint64(0x10000))   # past EOF ...
    words[::97] = 0x50000                                               # ... and inside
    src = tmp_path / "src"
    src.write_bytes(words.astype(">u8").tobytes())
    qemu.qemu_io(p, f"write -s {src} 0 {1 << 19}")
    with open_image(p) as im:
        l1 = im.header.l1_table_offset
    assert l1 < 0x50000                      # the data follows the L1 table
    with open(p, "r+b") as f:
        f.seek(36)
        f.write(struct.pack(">I", 1 << 15))   # 256 KiB of L1 table
    r = assert_same_as_qemu(p)
    assert r.corruptions > 10_000 and r.findings_dropped


@pytest.mark.parametrize("raw", [1, C.QCOW_OFLAG_COPIED, C.QCOW_OFLAG_COPIED | 1])
def test_l1_entry_with_flag_bits_only(tmp_path, raw):
    """An L1 entry with offset 0 but other bits set: QEMU walks the header cluster
    as its L2 table for references, but skips it when checking COPIED flags."""
    p = _img(tmp_path, "write -P 1 0 8k", "write -c -P 2 64k 4k")
    with open_image(p) as im:
        l1 = im.header.l1_table_offset
    _poke(p, l1 + 8, raw)
    assert not assert_same_as_qemu(p).clean


@pytest.mark.parametrize("damage", [None, dmg_double_reference, dmg_copied_l2, dmg_leak,
                                    dmg_refblock_on_l2], ids=lambda f: getattr(f, "__name__",
                                                                               "clean"))
def test_read_ahead_counts_like_qemu(tmp_path, monkeypatch, damage):
    """The walk with its L2 tables read ahead in a second thread, one table per
    batch (the real batches hold hundreds, so the small test images never need a
    second one), counts what qemu-img counts; so does the host map's walk."""
    from qcow2view.engine import refscan, tableread
    monkeypatch.setattr(refscan, "BATCH_ENTRIES", 512)          # one 4 KiB table
    monkeypatch.setattr(tableread, "AHEAD_MIN_CLUSTER", 0)
    p = _img(tmp_path, "write -P 1 0 1M", "write -P 2 3M 64k")
    if damage is not None:
        damage(p)
    with open_image(p) as im:
        assert len(im.l1_table.entries[im.l1_table.entries != 0]) >= 2
    assert_same_as_qemu(p)
    with open_image(p) as im:
        im.host_map()
        got = im.check().to_json()
    assert {**got, "filename": qemu.check(p)[1]["filename"]} == qemu.check(p)[1]
