"""Host and guest cluster maps: the data behind the heatmap and the refcount view.

Both are built with numpy over whole tables (a few bytes per cluster), report
progress and can be cancelled.  The host map comes from the same reference
walk as the check (:mod:`refscan`); :meth:`HostMap.owners` answers "who points
at this cluster" lazily, for one cluster at a time.

Thread safety: building a map reads the file only with positional reads
(``os.pread``) and never touches the image's read caches, so a worker thread
can build a map while the GUI thread reads guest data from the same Image.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import clusters as C
from .bitmaps import BME_TABLE_ENTRY_OFFSET_MASK
from .extensions import EXT_BITMAPS
from .refscan import (BATCH_ENTRIES, Cancel, DiskRefcounts, Progress, Scanner,
                      check_cancel, read_table_in_file, read_tables)

U64 = np.uint64


class HostKind(enum.IntEnum):
    """What a host cluster holds (one uint8 per host cluster)."""

    FREE = 0
    HEADER = 1
    L1_TABLE = 2
    L2_TABLE = 3
    REFCOUNT_TABLE = 4
    REFCOUNT_BLOCK = 5
    SNAPSHOT_TABLE = 6
    SNAPSHOT_L1_TABLE = 7
    BITMAP_DIRECTORY = 8
    BITMAP_TABLE = 9
    BITMAP_DATA = 10
    DATA = 11
    COMPRESSED = 12
    LEAKED = 13
    CORRUPT = 14
    ENCRYPTION_HEADER = 15
    SNAPSHOT_L2_TABLE = 16   # L2 tables only a snapshot references


# severity for binning when zoomed out: CORRUPT > LEAKED > everything else > FREE
HOST_KIND_SEVERITY = np.ones(len(HostKind), dtype=np.uint8)
HOST_KIND_SEVERITY[HostKind.FREE] = 0
HOST_KIND_SEVERITY[HostKind.LEAKED] = 2
HOST_KIND_SEVERITY[HostKind.CORRUPT] = 3


@dataclass(frozen=True)
class Owner:
    """Who references a host cluster."""

    kind: HostKind               # what the referencing entry makes of it
    table: str                   # "L1", "L2", "refcount table", "snapshot 'snap1' L1", ...
    entry_offset: int | None     # file offset of the referencing entry (None: header-anchored)
    guest_offset: int | None     # guest byte offset mapped (L2 tables: first one they cover)
    snapshot: str | None         # snapshot name when referenced from a snapshot's tables


class ClusterRefcounts:
    """The on-disk refcount of every host cluster of a map, read from the refcount
    blocks when asked (a few blocks cached) instead of held as one array: indexing
    with an int, a slice or an array of cluster numbers reads only those."""

    def __init__(self, disk: DiskRefcounts, n: int) -> None:
        self.disk = disk
        self.n = n
        self.dtype = disk.dtype

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.n)
            hi = max(lo, hi)
            if hi - lo > self.disk.per_block:     # a long run: stream past the cache
                return self.disk.range(lo, hi, keep=False)[::step]
            return self.disk.range(lo, hi).copy()[::step]
        if isinstance(key, (int, np.integer)):
            if not -self.n <= key < self.n:
                raise IndexError(f"cluster {key} outside the map")
            return self.dtype.type(self.disk.get(int(key) % self.n))
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self.disk.lookup(idx.astype(np.int64))[0].astype(self.dtype)

    # whole-array use (tests, small images): materialises every refcount
    def __array__(self, dtype=None, copy=None):
        a = self[0:self.n]
        return a if dtype is None else a.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    def __eq__(self, other):
        return np.asarray(self) == other


@dataclass
class HostMap:
    """Kind, on-disk refcount and references found of each host cluster, up to the
    last cluster that is referenced or has a refcount (a longer file's tail of
    unused clusters is summarised as ``free_tail`` clusters, not mapped)."""

    cluster_size: int
    file_size: int
    kinds: np.ndarray            # uint8 HostKind per host cluster
    refcounts: ClusterRefcounts  # on-disk refcount per host cluster (read on demand)
    references: np.ndarray       # references found per host cluster (uint8, or wider
                                 # where some cluster has more than 255)
    free_tail: int = 0           # unused clusters after the map up to the end of the file
    _owners: Callable[[int], list[Owner]] | None = field(default=None, repr=False)
    _scan: tuple | None = field(default=None, repr=False)   # (RefScan, DiskRefcounts,
                                                            # check.compare's result)

    def owners(self, cluster: int) -> list[Owner]:
        """Reverse lookup for one cluster (reads the tables again, on demand)."""
        if self._owners is None or not 0 <= cluster < len(self.kinds):
            return []
        return self._owners(cluster)

    def __len__(self) -> int:
        return len(self.kinds)


class GuestState(enum.IntEnum):
    """How a guest cluster reads (one uint8 per guest cluster)."""

    UNALLOCATED = 0
    ZERO = 1
    DATA = 2
    COMPRESSED = 3
    BACKING = 4
    MIXED = 5


# Entries a guest map holds at most (10 bytes each, and the pictures built from it
# add one more): 40 MiB, and still ten times the cells a picture has.  A bigger
# disk is summarised: each entry then stands for a power-of-two run of clusters
# (a 1 TiB disk of 64 KiB clusters 4, a 4 PiB disk of 2 MiB clusters 512).
MAX_GUEST_ENTRIES = 1 << 22

# Which member a summarised entry shows: the most significant, in the heatmap's order
GUEST_STATE_RANK = np.zeros(8, dtype=np.uint8)
for _s, _r in ((GuestState.UNALLOCATED, 0), (GuestState.ZERO, 1), (GuestState.BACKING, 2),
               (GuestState.MIXED, 3), (GuestState.COMPRESSED, 4), (GuestState.DATA, 5)):
    GUEST_STATE_RANK[_s] = _r


@dataclass
class GuestMap:
    """One entry per guest cluster, or per ``clusters_per_entry`` clusters on a disk
    with more than :data:`MAX_GUEST_ENTRIES` clusters: then ``cluster_size`` is the
    bytes an entry covers, and each entry holds the state, depth and host offset of
    its most significant member (data > compressed > mixed > backing > zero >
    unallocated; the first such member)."""

    cluster_size: int            # bytes per entry
    virtual_size: int
    states: np.ndarray           # uint8 GuestState per entry
    depth: np.ndarray            # uint8: 0 = this image, N = Nth backing file
    host_offsets: np.ndarray     # uint64 host offset of data/compressed (byte offset), else 0
    snapshot: str | None
    clusters_per_entry: int = 1

    @property
    def image_cluster_size(self) -> int:
        return self.cluster_size // self.clusters_per_entry

    def __len__(self) -> int:
        return len(self.states)


# -- host map -------------------------------------------------------------------------
TAIL_SHOWN = 1 << 16     # free clusters at the end of the file mapped before summarising


def host_map(image, progress: Progress = None, cancel: Cancel = None) -> HostMap:
    """The host map; its cost follows the clusters referenced or refcounted (one
    byte of kind and one of references each), not the file's length."""
    nb = -(-image.file.size // image.cluster_size)
    disk = DiskRefcounts(image, nb + 1, cancel)
    # the walk also checks COPIED flags, so that a check right after (the GUI
    # does both) can reuse it instead of walking the image again
    scan = Scanner(image, disk=disk, want_ranges=True, check_copied=True,
                   progress=progress, cancel=cancel).run()
    n = scan.nb_clusters
    used = max(len(scan.refs), min(n, disk.covered_end))
    last = _last_used(scan, disk, min(n, used))
    free_tail = 0
    if n - last - 1 > TAIL_SHOWN:           # a sparse tail: map what is used only
        free_tail, n = n - last - 1, last + 1
    past = _counted_past_end(disk, n) if not free_tail else None
    total = n + (0 if past is None else len(past))
    kinds = _fit_kinds(scan, total)
    from .check import compare      # the check's comparison, kept for a check after
    compared = compare(scan, disk, image,
                       on_chunk=lambda lo, d, r: _mark_mismatches(kinds, lo, d, r, n))
    for c in scan.overlap_clusters:
        if c < n:
            kinds[c] = HostKind.CORRUPT
    if past is not None:
        # refcounts for clusters past the end of the file (a truncated image):
        # show them, as leaks, after the clusters the file has
        kinds[n:] = np.where(past > 0, np.uint8(HostKind.LEAKED), np.uint8(HostKind.FREE))
    refs = scan.refs[:total] if len(scan.refs) >= total else scan.refs_range(0, total)
    hm = HostMap(image.cluster_size, image.file.size, kinds, ClusterRefcounts(disk, total),
                 refs, free_tail)
    hm._scan = (scan, disk, compared)
    tables = scan.l2_table_arrays()
    lo = np.concatenate(scan.l2_lo) if scan.l2_lo else np.zeros(0, np.int64)
    hi = np.concatenate(scan.l2_hi) if scan.l2_hi else np.zeros(0, np.int64)
    hm._owners = lambda c: _owners(image, hm, tables, c, lo, hi)
    return hm


def _last_used(scan, disk: DiskRefcounts, end: int) -> int:
    """The last cluster below ``end`` with a reference or an on-disk refcount (-1: none)."""
    step = 1 << 22
    for hi in range(end, 0, -step):
        lo = max(0, hi - step)
        used = (scan.refs_range(lo, hi) != 0) | (disk.range(lo, hi, keep=False) != 0)
        if used.any():
            return lo + int(np.flatnonzero(used)[-1])
    return -1


def _fit_kinds(scan, total: int) -> np.ndarray:
    """The scan's kinds array as ``total`` long (the scan's own array when it can)."""
    kinds = scan.kinds
    if len(kinds) >= total:
        return kinds[:total]
    kinds.resize(total, refcheck=False)   # the scan is done with it: grow in place
    scan.kinds = kinds
    return kinds


def _mark_mismatches(kinds: np.ndarray, lo: int, ondisk: np.ndarray, counted: np.ndarray,
                     n: int) -> None:
    """LEAKED where the refcount is above the references, CORRUPT where below, for
    the chunk of clusters from ``lo`` (those below ``n``)."""
    ne = np.not_equal(ondisk, counted)
    if ne.any():
        idx = np.flatnonzero(ne)
        idx = idx[idx < n - lo]
        leaked = ondisk[idx].astype(np.uint64) > counted[idx].astype(np.uint64)
        kinds[lo + idx[leaked]] = HostKind.LEAKED
        kinds[lo + idx[~leaked]] = HostKind.CORRUPT


MAX_PAST_END = 1 << 20    # clusters shown past the end of the file, at most


def _counted_past_end(disk: DiskRefcounts, n: int) -> np.ndarray | None:
    """On-disk refcounts of clusters n.. up to the last nonzero one (bounded),
    or None when every cluster past the file's end has refcount 0."""
    per = disk.per_block
    last = -1
    blocks: dict[int, np.ndarray] = {}
    for rti in np.nonzero(disk.table)[0].tolist():
        if (rti + 1) * per <= n or rti * per >= n + MAX_PAST_END:
            continue
        blk = disk.block(rti)
        if blk is None:
            continue
        lo = max(n, rti * per)
        nz = np.flatnonzero(blk[lo - rti * per:])
        if len(nz):
            blocks[rti] = blk
            last = max(last, lo + int(nz[-1]))
    if last < 0:
        return None
    last = min(last, n + MAX_PAST_END - 1)
    out = np.zeros(last + 1 - n, dtype=disk.dtype)
    for rti, blk in blocks.items():
        lo, hi = max(n, rti * per), min(last + 1, (rti + 1) * per)
        if lo < hi:
            out[lo - n:hi - n] = blk[lo - rti * per:hi - rti * per]
    return out


def _in(off: int, size: int, cs: int, c: int) -> bool:
    return size > 0 and off // cs <= c <= (off + size - 1) // cs


def _owners(image, hm: HostMap, tables: tuple, c: int, lo: np.ndarray,
            hi: np.ndarray) -> list[Owner]:
    cs = image.cluster_size
    h = image.header
    out: list[Owner] = []
    want = int(hm.references[c]) if c < len(hm.references) else 0
    if c == 0:
        out.append(Owner(HostKind.HEADER, "header", None, None, None))
    if _in(h.l1_table_offset, h.l1_size * 8, cs, c):
        out.append(Owner(HostKind.L1_TABLE, "L1", 40, None, None))
    if _in(h.refcount_table_offset, h.refcount_table_clusters * cs, cs, c):
        out.append(Owner(HostKind.REFCOUNT_TABLE, "refcount table", 48, None, None))
    if image.snapshots and c >= h.snapshots_offset // cs:
        last = image.snapshots[-1]
        if _in(h.snapshots_offset, last.offset + last.entry_size - h.snapshots_offset, cs, c):
            out.append(Owner(HostKind.SNAPSHOT_TABLE, "snapshot table", 64, None, None))
    for s in image.snapshots:
        if _in(s.l1_table_offset, s.l1_size * 8, cs, c):
            out.append(Owner(HostKind.SNAPSHOT_L1_TABLE, f"snapshot {s.name!r} L1",
                             s.offset, None, s.name))
    crypt = image.encryption_extension
    if crypt is not None and len(crypt.data) >= 16:
        coff, clen = struct.unpack_from(">QQ", crypt.data)
        if _in(coff, clen, cs, c):
            out.append(Owner(HostKind.ENCRYPTION_HEADER, "encryption header",
                             crypt.data_offset, None, None))
    rt = image.refcount_table
    for i in np.nonzero((rt & U64(C.REFT_OFFSET_MASK)) >> U64(image.cluster_bits)
                        == U64(c))[0].tolist():
        if rt[i]:
            out.append(Owner(HostKind.REFCOUNT_BLOCK, "refcount table",
                             h.refcount_table_offset + 8 * i, None, None))
    if image.bitmaps and image.bitmaps_consistent:
        ext = next(e for e in image.extensions if e.type == EXT_BITMAPS)
        _, _, dsize, doff = struct.unpack_from(">IIQQ", ext.data)
        if _in(doff, dsize, cs, c):
            out.append(Owner(HostKind.BITMAP_DIRECTORY, "bitmaps extension",
                             ext.data_offset + 16, None, None))
        for b in image.bitmaps:
            name = f"bitmap {b.name!r} table"
            if _in(b.bitmap_table_offset, b.bitmap_table_size * 8, cs, c):
                out.append(Owner(HostKind.BITMAP_TABLE, "bitmap directory", b.offset,
                                 None, None))
            t = read_table_in_file(image.file, b.bitmap_table_offset, b.bitmap_table_size)
            offs = t & U64(BME_TABLE_ENTRY_OFFSET_MASK)
            for i in np.nonzero((offs != 0) & (offs // U64(cs) == U64(c)))[0].tolist():
                out.append(Owner(HostKind.BITMAP_DATA, name, b.bitmap_table_offset + 8 * i,
                                 None, None))
    span = image.l2_size * cs
    offs, l1i, l1eo, names = tables
    for i in np.nonzero(offs // cs == c)[0].tolist():
        snap = names[i]
        table = "L1" if snap is None else f"snapshot {snap!r} L1"
        out.append(Owner(HostKind.L2_TABLE if snap is None else HostKind.SNAPSHOT_L2_TABLE,
                         table, int(l1eo[i]), int(l1i[i]) * span, snap))
    if len(out) >= want:
        return out
    # data and compressed clusters: scan the L2 tables with numpy, stop once
    # every counted reference has been found
    layout = image.layout
    esize = 16 if image.extended_l2 else 8
    per_batch = max(1, BATCH_ENTRIES // image.l2_size)
    cand = np.nonzero((lo <= c) & (hi >= c))[0] if len(lo) == len(offs) \
        else np.arange(len(offs))
    for b in range(0, len(cand), per_batch):
        rows = cand[b:b + per_batch]
        raw, _ = read_tables(image.file, offs[rows], cs, image.extended_l2)
        comp = (raw & U64(C.QCOW_OFLAG_COMPRESSED)) != 0
        off = raw & U64(C.L2E_OFFSET_MASK)
        data = ~comp & (off != 0)
        first = np.where(data, off // U64(cs), U64(0))
        hit_d = data & ((first == U64(c)) | (((off + U64(cs - 1)) // U64(cs) == U64(c))
                                             & ((off & U64(cs - 1)) != 0)))
        coff = raw & U64(layout.offset_mask)
        nsec = ((raw >> U64(layout.csize_shift)) & U64(layout.csize_mask)) + U64(1)
        cend = coff + nsec * U64(512) - (coff & U64(511)) - U64(1)
        hit_c = comp & (coff // U64(cs) <= U64(c)) & (cend // U64(cs) >= U64(c))
        for kind, hit in ((HostKind.DATA, hit_d), (HostKind.COMPRESSED, hit_c)):
            for i, j in zip(*np.nonzero(hit)):
                t = int(rows[int(i)])
                snap = names[t]
                table = "L2" if snap is None else f"snapshot {snap!r} L2"
                out.append(Owner(kind, table, int(offs[t]) + esize * int(j),
                                 (int(l1i[t]) * image.l2_size + int(j)) * cs, snap))
        if len(out) >= want:
            break
    return out


# -- guest map ------------------------------------------------------------------------
def guest_map(image, snapshot=None, progress: Progress = None, cancel: Cancel = None,
              follow_backing: bool = True, max_entries: int = MAX_GUEST_ENTRIES) -> GuestMap:
    cs = image.cluster_size
    snap_name = None
    if snapshot is not None:
        s = image.find_snapshot(snapshot) if not hasattr(snapshot, "l1_table_offset") \
            else snapshot
        l1 = image.snapshot_l1_table(s).entries
        vsize = s.disk_size if s.disk_size is not None else image.virtual_size
        snap_name = s.name
    else:
        l1 = image.l1_table.entries
        vsize = image.virtual_size
        if image.snapshot is not None:
            snap_name = image.snapshot.name
    n = -(-vsize // cs)
    k = 1                               # clusters per entry
    while -(-n // k) > max_entries:
        k *= 2
    m = -(-n // k)
    states = np.zeros(m, dtype=np.uint8)
    depth = np.zeros(m, dtype=np.uint8)
    hosts = np.zeros(m, dtype=U64)
    L = image.l2_size
    l1 = l1[:-(-n // L)]
    idx = np.nonzero(l1 & U64(C.L1E_OFFSET_MASK))[0]
    layout = image.layout
    per_batch = max(1, BATCH_ENTRIES // L)
    total = len(idx) + 1
    ramp = np.arange(L, dtype=U64) * U64(cs)
    for b in range(0, len(idx), per_batch):
        check_cancel(cancel)
        bi = idx[b:b + per_batch]
        raw, bm = read_tables(image.file, (l1[bi] & U64(C.L1E_OFFSET_MASK)).astype(np.int64),
                              cs, image.extended_l2)
        fast = _contiguous_rows(raw, cs) if bm is None else np.zeros(len(bi), dtype=bool)
        done = b + len(bi)
        if k > 1:
            if k <= L and fast.any():
                # a contiguous table: each of its entries is DATA at its first member
                _summarise_contiguous(states, hosts, raw[fast, 0], bi[fast], L, k, cs)
                rest = np.flatnonzero(~fast)
                raw, bi = raw[rest], bi[rest]
                bm = None if bm is None else bm[rest]
                fast = fast[rest]
            if len(bi):
                st, ho = _decode_states(raw, bm, image.has_data_file, layout)
                for r in np.nonzero(fast)[0].tolist():
                    st[r] = GuestState.DATA
                    np.add(ramp, raw[r, 0] & U64(C.L2E_OFFSET_MASK), out=ho[r])
                _summarise(states, hosts, st, ho, bi, L, k, n)
            if progress is not None:
                progress(done, total)
            continue
        for r in np.nonzero(fast)[0].tolist():
            lo = int(bi[r]) * L
            hi = min(n, lo + L)
            states[lo:hi] = GuestState.DATA
            np.add(ramp[:hi - lo], raw[r, 0] & U64(C.L2E_OFFSET_MASK), out=hosts[lo:hi])
        rest = np.nonzero(~fast)[0]
        if len(rest) == 0:
            if progress is not None:
                progress(b + len(bi), total)
            continue
        if len(rest) < len(bi):
            raw = raw[rest]
            bm = None if bm is None else bm[rest]
        st, ho = _decode_states(raw, bm, image.has_data_file, layout)
        for r, i in enumerate(bi[rest].tolist()):
            lo = i * L
            hi = min(n, lo + L)
            states[lo:hi] = st[r, :hi - lo]
            hosts[lo:hi] = ho[r, :hi - lo]
        if progress is not None:
            progress(b + len(bi), total)
    if follow_backing and image.backing is not None:
        _merge_backing(image, states, depth, hosts, cs * k, vsize, cancel)
    if progress is not None:
        progress(total, total)
    return GuestMap(cs * k, vsize, states, depth, hosts, snap_name, k)


def _summarise_contiguous(states: np.ndarray, hosts: np.ndarray, first: np.ndarray,
                          l1_idx: np.ndarray, L: int, k: int, cs: int) -> None:
    """:func:`_summarise` for whole tables of contiguous data clusters (``first``:
    each table's first L2 entry), ``k`` dividing ``L``: every entry they cover is
    DATA at the host offset of its first cluster."""
    per = L // k
    e = l1_idx.astype(np.int64)[:, None] * per + np.arange(per, dtype=np.int64)
    h = ((first & U64(C.L2E_OFFSET_MASK))[:, None]
         + np.arange(per, dtype=U64) * U64(k * cs))
    keep = e < len(states)
    states[e[keep]] = GuestState.DATA
    hosts[e[keep]] = h[keep]


def _summarise(states: np.ndarray, hosts: np.ndarray, st: np.ndarray, ho: np.ndarray,
               l1_idx: np.ndarray, L: int, k: int, n: int) -> None:
    """Fold the clusters of whole L2 tables (rows of ``st``/``ho``) into entries of
    ``k`` clusters: the most significant member wins, the first one on ties."""
    rows = len(l1_idx)
    g = min(k, L)                       # members of one entry inside one table
    first = l1_idx.astype(np.int64)[:, None] * L + np.arange(0, L, g, dtype=np.int64)
    rank = GUEST_STATE_RANK[st]
    rank[(first[:, :1] + np.arange(L)) >= n] = 0     # past the end of the disk
    rank = rank.reshape(rows, L // g, g)
    pick = rank.argmax(axis=2)[..., None]
    r = np.take_along_axis(rank, pick, 2).ravel()
    s = np.take_along_axis(st.reshape(rows, L // g, g), pick, 2).ravel()
    h = np.take_along_axis(ho.reshape(rows, L // g, g), pick, 2).ravel()
    e = (first // k).ravel()
    keep = (e < len(states)) & (r > 0)
    e, r, s, h = e[keep], r[keep], s[keep], h[keep]
    if g < k and len(e):
        # several tables per entry: the best of this batch per entry, then the map's
        order = np.lexsort((-r.astype(np.int16), e))
        e, r, s, h = e[order], r[order], s[order], h[order]
        u = np.r_[True, e[1:] != e[:-1]]
        e, r, s, h = e[u], r[u], s[u], h[u]
        better = r > GUEST_STATE_RANK[states[e]]
        e, s, h = e[better], s[better], h[better]
    states[e] = s
    hosts[e] = h


def _contiguous_rows(raw: np.ndarray, cs: int) -> np.ndarray:
    """Rows that map one run of contiguous, aligned, plain data clusters."""
    n, L = raw.shape
    base = raw[:, 0].copy()
    flags = base & ~U64(C.L2E_OFFSET_MASK)
    boff = base & U64(C.L2E_OFFSET_MASK)
    cand = (((flags == 0) | (flags == U64(C.QCOW_OFLAG_COPIED))) & (boff != 0)
            & ((boff & U64(cs - 1)) == 0)
            & (boff + U64((L - 1) * cs) <= U64(C.L2E_OFFSET_MASK)))
    if not cand.any():
        return cand
    ramp = np.arange(L, dtype=U64) * U64(cs)
    np.subtract(raw, base[:, None], out=raw)
    cand &= ~np.not_equal(raw, ramp).any(axis=1)
    raw += base[:, None]
    return cand


def _decode_states(raw: np.ndarray, bm: np.ndarray | None, has_data_file: bool,
                   layout) -> tuple[np.ndarray, np.ndarray]:
    comp = (raw & U64(C.QCOW_OFLAG_COMPRESSED)) != 0
    off = raw & U64(C.L2E_OFFSET_MASK)
    has_off = off != 0
    if has_data_file:
        has_off |= (raw & U64(C.QCOW_OFLAG_COPIED)) != 0
    st = np.full(raw.shape, GuestState.UNALLOCATED, dtype=np.uint8)
    ho = np.zeros(raw.shape, dtype=U64)
    if bm is None:
        zero = ((raw & U64(C.QCOW_OFLAG_ZERO)) != 0) & ~comp
        data = has_off & ~zero & ~comp
        st[zero] = GuestState.ZERO
        st[data] = GuestState.DATA
        ho[data] = off[data]
    else:
        full = U64(C.L2_BITMAP_ALL_ALLOC)
        alloc = bm & full
        zero = bm >> U64(32)
        a = has_off & ~comp
        u = ~has_off & ~comp
        st[a | u] = GuestState.MIXED
        st[(a & (alloc == 0) & (zero == 0)) | (u & (alloc == 0) & (zero == 0))] = \
            GuestState.UNALLOCATED
        st[(a | (u & (alloc == 0))) & (zero == full) & ((alloc & zero) == 0)] = \
            GuestState.ZERO
        d = a & (alloc == full) & (zero == 0)
        st[d] = GuestState.DATA
        keep = a & ((st == GuestState.DATA) | (st == GuestState.MIXED))
        ho[keep] = off[keep]
    st[comp] = GuestState.COMPRESSED
    ho[comp] = raw[comp] & U64(layout.offset_mask)
    return st, ho


def _merge_backing(image, states, depth, hosts, cs, vsize, cancel) -> None:
    need = states == GuestState.UNALLOCATED
    if not need.any():
        return
    b = image.backing
    n = len(states)
    if hasattr(b, "l1_table"):
        sub = guest_map(b, cancel=cancel)
        bcs = sub.cluster_size
        # the backing file's view at this image's cluster granularity
        pos = np.arange(n, dtype=U64) * U64(cs)
        inside = pos < U64(sub.virtual_size)
        if bcs >= cs:
            j = (pos[inside] // U64(bcs)).astype(np.intp)
            bst = sub.states[j]
            bdp = sub.depth[j]
            bho = sub.host_offsets[j]
            adj = np.where((bst == GuestState.DATA) | (bst == GuestState.BACKING),
                           pos[inside] % U64(bcs), U64(0))
            bho = np.where(bho != 0, bho + adj, bho)
        else:
            r = cs // bcs
            m = int(inside.sum())
            pad = m * r - len(sub.states)
            grid = np.concatenate([sub.states, np.zeros(max(pad, 0), np.uint8)])[:m * r]
            grid = grid.reshape(m, r)
            bst = grid[:, 0].copy()
            bst[np.any(grid != grid[:, :1], axis=1)] = GuestState.MIXED
            dgrid = np.concatenate([sub.depth, np.zeros(max(pad, 0), np.uint8)])[:m * r]
            bdp = dgrid.reshape(m, r)[:, 0].copy()
            hgrid = np.concatenate([sub.host_offsets, np.zeros(max(pad, 0), U64)])[:m * r]
            bho = hgrid.reshape(m, r)[:, 0].copy()
        found = bst != GuestState.UNALLOCATED
        tgt = np.nonzero(inside)[0]
        hit = tgt[found & need[tgt]]
        k = found & need[tgt]
        states[hit] = GuestState.BACKING
        depth[hit] = np.minimum(bdp[k].astype(np.int64) + 1, 255).astype(np.uint8)
        hosts[hit] = bho[k]
    else:   # raw backing file: guest offset == file offset
        pos = np.arange(n, dtype=U64) * U64(cs)
        hit = need & (pos < U64(b.virtual_size))
        states[hit] = GuestState.BACKING
        depth[hit] = 1
        hosts[hit] = pos[hit]

