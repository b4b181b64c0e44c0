"""Host and guest maps against qemu-img map / check on the same files."""

from __future__ import annotations

import os
import re
import shutil
import threading

import numpy as np
import pytest

import qemu
from qcow2view.engine import (CancelledError, GuestKind, HOST_KIND_SEVERITY, HostKind,
                              open_image)
from check_images import (_backing, _bitmaps, _compressed, _data_file, _extended, _img,
                        _prealloc, _small, _snapshots, dmg_leak, dmg_refcount_zero)


def assert_guest_like_qemu(path, gm, cs):
    """Every run qemu-img map reports reads as the guest map says, cluster by cluster."""
    for e in qemu.qemu_map(path):
        first, n = e["start"] // cs, -(-e["length"] // cs)
        st = gm.states[first:first + n]
        dp = gm.depth[first:first + n]
        ho = gm.host_offsets[first:first + n]
        where = f"{e}"
        if not e["present"]:
            assert (st == GuestKind.UNALLOCATED).all(), where
        elif e["depth"] == 0 and e["data"] and "offset" in e:
            assert (st == GuestKind.DATA).all(), where
            want = e["offset"] + np.arange(n, dtype=np.uint64) * cs
            assert (ho == want).all(), where
        elif e["depth"] == 0 and e["data"]:
            assert (st == GuestKind.COMPRESSED).all() and (ho != 0).all(), where
        elif e["depth"] == 0:
            assert (st == GuestKind.ZERO).all(), where
        else:
            assert (st == GuestKind.BACKING).all() and (dp == e["depth"]).all(), where
            if e["data"] and "offset" in e:
                want = e["offset"] + np.arange(n, dtype=np.uint64) * cs
                assert (ho == want).all(), where


@pytest.mark.parametrize("build", [_snapshots, _compressed, _backing, _data_file, _small,
                                   _bitmaps], ids=lambda f: f.__name__.strip("_"))
def test_guest_map_matches_qemu_img_map(tmp_path, build):
    p = build(tmp_path)
    with open_image(p) as im:
        gm = im.guest_map()
        assert len(gm) == -(-im.virtual_size // im.cluster_size)
        assert gm.states.dtype == np.uint8 and gm.host_offsets.dtype == np.uint64
        assert_guest_like_qemu(p, gm, im.cluster_size)


def test_backing_chain_depths(tmp_path):
    a = qemu.create(tmp_path / "a.qcow2", "4M")
    qemu.qemu_io(a, "write -P 1 0 256k")
    b = qemu.create(tmp_path / "b.qcow2", "4M", backing=str(a))
    qemu.qemu_io(b, "write -P 2 128k 64k", "write -z 192k 64k")
    c = qemu.create(tmp_path / "c.qcow2", "4M", backing=str(b))
    qemu.qemu_io(c, "write -P 3 0 64k")
    with open_image(c) as im:
        gm = im.guest_map()
        assert_guest_like_qemu(c, gm, im.cluster_size)
        assert set(gm.depth[:4].tolist()) == {0, 1, 2}
        alone = im.guest_map(follow_backing=False)
        assert (alone.states[1:] != GuestKind.BACKING).all()


def test_extended_l2_mixed_subclusters(tmp_path):
    p = _extended(tmp_path)
    with open_image(p) as im:
        gm = im.guest_map()
    # qemu-img map splits at sub-clusters; a cluster whose runs differ is MIXED
    runs = qemu.qemu_map(p)
    cs = 65536
    for c in range(4):
        kinds = {(e["data"], e["zero"], e["present"]) for e in runs
                 if e["start"] < (c + 1) * cs and e["start"] + e["length"] > c * cs}
        if len(kinds) > 1:
            assert gm.states[c] == GuestKind.MIXED
        elif kinds == {(True, False, True)}:
            assert gm.states[c] == GuestKind.DATA


def test_snapshot_view_matches_the_reverted_image(tmp_path):
    p = _snapshots(tmp_path)
    q = tmp_path / "reverted.qcow2"
    shutil.copy(p, q)
    qemu.qemu_img("snapshot", "-a", "s1", q)
    with open_image(p) as im:
        gm = im.guest_map(snapshot="s1")
        assert gm.snapshot == "s1"
        assert_guest_like_qemu(q, gm, im.cluster_size)


def test_host_map_kinds_and_refcounts(tmp_path):
    p = _snapshots(tmp_path)
    with open_image(p) as im:
        hm = im.host_map()
        h = im.header
        cs = im.cluster_size
        assert len(hm) == -(-im.file.size // cs)
        assert hm.kinds.dtype == np.uint8 and hm.references.dtype == np.uint8
        assert hm.kinds[0] == HostKind.HEADER
        assert hm.kinds[h.l1_table_offset // cs] == HostKind.L1_TABLE
        assert hm.kinds[h.refcount_table_offset // cs] == HostKind.REFCOUNT_TABLE
        assert hm.kinds[int(im.refcount_table[0]) // cs] == HostKind.REFCOUNT_BLOCK
        assert hm.kinds[h.snapshots_offset // cs] == HostKind.SNAPSHOT_TABLE
        for s in im.snapshots:
            assert hm.kinds[s.l1_table_offset // cs] == HostKind.SNAPSHOT_L1_TABLE
        # the data clusters are exactly where qemu-img map puts guest data
        data = set()
        for e in qemu.qemu_map(p):
            if e["depth"] == 0 and "offset" in e:
                data.update(range(e["offset"] // cs, (e["offset"] + e["length"]) // cs))
        assert data <= set(np.nonzero(hm.kinds == HostKind.DATA)[0].tolist())
        # a clean image (qemu says so) has refcount == references everywhere
        assert qemu.check(p)[0] == 0
        assert (hm.refcounts.astype(np.uint64) == hm.references).all()
        assert not np.isin(hm.kinds, [HostKind.LEAKED, HostKind.CORRUPT]).any()
        # snapshot-shared clusters have refcount 2
        assert (hm.refcounts == 2).any()


def _qemu_reported_clusters(path):
    err = qemu.qemu_img("check", path, check=False).stderr.decode()
    leaked = {int(m) for m in re.findall(r"Leaked cluster (\d+)", err)}
    bad = {int(m) for m in re.findall(r"ERROR cluster (\d+)", err)}
    return leaked, bad


def test_host_map_marks_what_qemu_reports(tmp_path):
    p = _img(tmp_path)
    dmg_leak(p)
    dmg_refcount_zero(p)
    leaked, bad = _qemu_reported_clusters(p)
    assert leaked and bad
    with open_image(p) as im:
        hm = im.host_map()
    assert set(np.nonzero(hm.kinds == HostKind.LEAKED)[0].tolist()) == leaked
    assert set(np.nonzero(hm.kinds == HostKind.CORRUPT)[0].tolist()) == bad
    assert HOST_KIND_SEVERITY[HostKind.CORRUPT] > HOST_KIND_SEVERITY[HostKind.LEAKED] \
        > HOST_KIND_SEVERITY[HostKind.DATA] > HOST_KIND_SEVERITY[HostKind.FREE]


def test_owners_reverse_lookup(tmp_path):
    p = _snapshots(tmp_path)
    with open_image(p) as im:
        hm = im.host_map()
        cs = im.cluster_size
        e = next(e for e in qemu.qemu_map(p) if e["depth"] == 0 and "offset" in e)
        owners = hm.owners(e["offset"] // cs)
        active = [o for o in owners if o.snapshot is None]
        assert active and active[0].kind == HostKind.DATA
        assert active[0].guest_offset == e["start"] and active[0].table == "L2"
        assert len(owners) == hm.references[e["offset"] // cs]
        l1 = hm.owners(im.header.l1_table_offset // cs)
        assert [o.kind for o in l1] == [HostKind.L1_TABLE]
        l2 = int(im.l1_table.entries[0]) & 0x00FFFFFFFFFFFE00
        o = hm.owners(l2 // cs)
        assert o[0].kind == HostKind.L2_TABLE and o[0].entry_offset == im.l1_table.offset
        assert hm.owners(0)[0].kind == HostKind.HEADER


def test_compressed_owner_covers_every_cluster_it_touches(tmp_path):
    p = _compressed(tmp_path)
    with open_image(p) as im:
        hm = im.host_map()
        comp = np.nonzero(hm.kinds == HostKind.COMPRESSED)[0]
        shared = comp[hm.references[comp] > 1][:3]
        assert len(shared)                       # descriptors spilling over boundaries
        for c in shared.tolist():
            owners = hm.owners(c)
            assert len(owners) == hm.references[c]
            assert all(o.kind == HostKind.COMPRESSED for o in owners)


def test_progress_and_cancel(tmp_path):
    p = _small(tmp_path)
    with open_image(p) as im:
        seen = []
        im.host_map(progress=lambda d, t: seen.append((d, t)))
        assert seen and seen[-1][0] == seen[-1][1]
        with pytest.raises(CancelledError):
            im.check(cancel=lambda: True)
    with open_image(p) as im:       # (the host map above built the guest map too)
        with pytest.raises(CancelledError):
            im.guest_map(cancel=lambda: True)


def test_the_host_map_walk_builds_the_guest_map_as_guest_map_does(tmp_path):
    """The window reads each L2 table once: the host map's walk feeds the guest
    map, which must be the one guest_map builds on its own (summarised too)."""
    for build in (_snapshots, _compressed, _extended, _backing, _data_file, _small, _prealloc):
        d = tmp_path / build.__name__
        d.mkdir()
        p = build(d)
        with open_image(p) as a, open_image(p) as b:
            a.host_map()
            shared, alone = a.guest_map(), b.guest_map()
        for f in ("states", "depth", "host_offsets"):
            assert (getattr(shared, f) == getattr(alone, f)).all(), (build.__name__, f)
        assert (shared.cluster_size, shared.clusters_per_entry) == (alone.cluster_size,
                                                                    alone.clusters_per_entry)


def test_map_in_worker_while_reading(tmp_path):
    p = _snapshots(tmp_path)
    with open_image(p) as im:
        want = im.read(0, 1 << 20)
        out = {}
        t = threading.Thread(target=lambda: out.update(h=im.host_map(), g=im.guest_map()))
        t.start()
        for _ in range(20):
            assert im.read(0, 1 << 20) == want
        t.join()
        assert len(out["h"]) and len(out["g"])


def test_maps_are_cached_until_invalidated(tmp_path):
    p = _small(tmp_path)
    with open_image(p) as im:
        assert im.host_map() is im.host_map()
        g = im.guest_map()
        im.invalidate_caches()
        assert im.guest_map() is not g


def test_check_after_host_map_reuses_the_walk_and_agrees(tmp_path):
    p = _img(tmp_path)
    dmg_leak(p)
    dmg_refcount_zero(p)
    with open_image(p) as im:
        fresh = im.check()
        im.host_map()
        reused = im.check()
    assert reused.to_json() == fresh.to_json()
    assert [(f.kind, f.cluster) for f in reused.findings] == \
        [(f.kind, f.cluster) for f in fresh.findings]


@pytest.mark.parametrize("base_cs,top_cs", [("64k", "4k"), ("4k", "64k")])
def test_backing_file_with_another_cluster_size(tmp_path, base_cs, top_cs):
    b = qemu.create(tmp_path / "b.qcow2", "2M", f"cluster_size={base_cs}")
    qemu.qemu_io(b, "write -P 1 0 128k", "write -z 256k 64k", "write -P 2 1M 64k")
    t = qemu.create(tmp_path / "t.qcow2", "2M", f"cluster_size={top_cs}", backing=str(b))
    qemu.qemu_io(t, "write -P 3 64k 64k")
    with open_image(t) as im:
        assert_guest_like_qemu(t, im.guest_map(), im.cluster_size)


def test_raw_backing_file_shorter_than_the_disk(tmp_path):
    raw = tmp_path / "b.raw"
    raw.write_bytes(b"\x01" * (1 << 20))
    t = qemu.create(tmp_path / "t.qcow2", "2M", backing=str(raw), backing_fmt="raw")
    qemu.qemu_io(t, "write -P 3 64k 64k")
    with open_image(t) as im:
        gm = im.guest_map()
        assert_guest_like_qemu(t, gm, im.cluster_size)
        assert (gm.states[16:] == GuestKind.UNALLOCATED).all()


def test_refcounts_past_the_end_of_a_truncated_file_show_as_leaks(tmp_path):
    p = _img(tmp_path)
    size = p.stat().st_size
    qemu.qemu_io(p, "write -P 7 2M 16k")        # four more clusters at the end
    os.truncate(p, size)                         # ... cut off again
    with open_image(p) as im:
        hm = im.host_map()
        assert im.check().exit_code == qemu.check(p)[0] == 2
    assert len(hm) > -(-size // 4096)
    past = np.nonzero(hm.kinds == HostKind.LEAKED)[0]
    assert len(past) >= 4 and (past >= size // 4096).all()
    assert (hm.refcounts[past] == 1).all()


# -- summarised guest maps (disks with more clusters than MAX_GUEST_ENTRIES) --------------
def _summary_of(fine, k):
    """What a summarised map must hold: per k clusters, the most significant member."""
    from qcow2view.engine.kinds import GUEST_KIND_RANK
    n = len(fine)
    m = -(-n // k)
    pad = m * k - n
    st = np.concatenate([fine.states, np.zeros(pad, np.uint8)]).reshape(m, k)
    ho = np.concatenate([fine.host_offsets, np.zeros(pad, np.uint64)]).reshape(m, k)
    j = GUEST_KIND_RANK[st].argmax(axis=1)
    return st[np.arange(m), j], ho[np.arange(m), j]


@pytest.mark.parametrize("cs,ks", [(512, [2, 64, 256, 4096]),      # 64 entries per L2 table
                                   (4096, [4, 512, 2048])])
def test_summarised_guest_map_keeps_the_most_significant_member(tmp_path, cs, ks):
    """Within and across L2 tables: data over compressed over zero over unallocated."""
    p = qemu.create(tmp_path / "s.qcow2", "16M", f"cluster_size={cs}")
    qemu.qemu_io(p, "write -P 1 0 3k", "write -c -P 2 64k 4k", "write -z 1M 64k",
                 "write -P 3 2M 8k", "write -z 3M 4k", f"write -c -P 4 {3 * 2**20 + 8192} 4k",
                 "write -P 5 15M 1M", f"discard {15 * 2**20 + 65536} 64k")
    from qcow2view.engine.maps import guest_map
    with open_image(p) as im:
        fine = im.guest_map()
        assert_guest_like_qemu(p, fine, cs)        # the fine map is qemu's
        for k in ks:
            gm = guest_map(im, max_entries=-(-len(fine) // k))
            assert gm.clusters_per_entry == k and gm.cluster_size == k * cs
            assert gm.image_cluster_size == cs and len(gm) == -(-len(fine) // k)
            st, ho = _summary_of(fine, k)
            assert (gm.states == st).all(), k
            assert (gm.host_offsets == ho).all(), k


def test_summarised_guest_map_of_an_image_with_a_backing_file(tmp_path):
    """Entries this image leaves wholly unallocated show the backing file."""
    b = qemu.create(tmp_path / "b.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(b, "write -P 1 0 4M")
    t = qemu.create(tmp_path / "t.qcow2", "4M", "cluster_size=4k", backing=str(b))
    qemu.qemu_io(t, "write -P 2 64k 4k")
    from qcow2view.engine.maps import guest_map
    with open_image(t) as im:
        gm = guest_map(im, max_entries=64)           # 1024 clusters, 16 per entry
        assert gm.clusters_per_entry == 16
        assert gm.states[1] == GuestKind.DATA
        others = np.delete(np.arange(len(gm)), 1)
        assert (gm.states[others] == GuestKind.BACKING).all()
        assert (gm.depth[others] == 1).all()


def test_guest_map_of_a_4_pib_disk_stays_small(tmp_path):
    """2^31 clusters of 2 MiB: summarised into at most MAX_GUEST_ENTRIES entries, built
    in a child limited to 1 GiB of address space (the per-cluster arrays need 20 GiB);
    every data run qemu-img map lists lies in a DATA entry naming its host cluster."""
    import json
    import subprocess
    import sys
    p = qemu.create(tmp_path / "h.qcow2", 4 << 50, "cluster_size=2M")
    offs = [0, 1 << 40, 3 << 49, (4 << 50) - 4096]
    qemu.qemu_io(p, *(f"write -P {i + 1} {o} 4k" for i, o in enumerate(offs)))
    code = ("import json, resource, sys; import numpy as np\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from qcow2view.engine import open_image\n"
            "from qcow2view.engine.maps import MAX_GUEST_ENTRIES\n"
            "with open_image(sys.argv[1]) as im:\n"
            "    gm = im.guest_map()\n"
            "    nz = np.flatnonzero(gm.states)\n"
            "    print(json.dumps([gm.cluster_size, gm.clusters_per_entry, len(gm),\n"
            "                      MAX_GUEST_ENTRIES, nz.tolist(), gm.states[nz].tolist(),\n"
            "                      gm.host_offsets[nz].tolist()]))\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": root})
    assert r.returncode == 0, r.stderr[-2000:]
    es, k, n, most, entries, states, hosts = json.loads(r.stdout)
    assert k > 1 and n <= most and es == k * (2 << 20) and n * es >= 4 << 50
    want = {}
    for e in qemu.qemu_map(p):
        if e["data"]:
            want.setdefault(e["start"] // es, e["offset"] - e["start"] % (2 << 20))
    assert entries == sorted(want)
    assert set(states) == {GuestKind.DATA}
    assert hosts == [want[i] for i in entries]


def test_a_sparse_tail_is_summarised_not_mapped(tmp_path):
    """A 1 MiB image in a file with a sparse 1 TiB tail (2^31 clusters of 512 bytes):
    the host map ends at the last cluster used and counts the rest as a free tail;
    the check reads as qemu-img's did before the tail was added (the tail is unused)."""
    p = qemu.create(tmp_path / "tail.qcow2", "1M", "cluster_size=512")
    qemu.qemu_io(p, "write -P 5 0 8k", "write -P 6 512k 4k")
    code, want = qemu.check(p)
    used = -(-p.stat().st_size // 512)
    os.truncate(p, 1 << 40)
    with open_image(p) as im:
        hm = im.host_map()
        got = im.check().to_json()
    assert len(hm) <= used and len(hm) + hm.free_tail == 1 << 31
    assert len(hm.references) == len(hm) and len(hm.refcounts) == len(hm)
    assert (hm.kinds == HostKind.DATA).sum() == 24            # 12 KiB of 512-byte clusters
    assert code == 0 and {**got, "filename": want["filename"]} == want


def test_host_map_refcounts_are_read_after_the_image_is_closed(tmp_path):
    """The window keeps the host map of a closed analysis image for a moment (a
    saved file being re-read): its refcounts, read on demand, still read."""
    p = _img(tmp_path, "write -P 1 0 64k")
    with open_image(p) as im:
        hm = im.host_map()
    data = np.nonzero(hm.kinds == HostKind.DATA)[0]
    assert len(data) == 16 and (hm.refcounts[data] == 1).all()
    assert (np.asarray(hm.refcounts).astype(np.uint64) == hm.references).all()
