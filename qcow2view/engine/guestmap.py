"""The guest map: how each guest cluster reads (data, compressed, zero,
unallocated, from a backing file at depth N) and where its data lies on the host.

Built from the L1/L2 tables with numpy a batch of tables at a time, or fed the
batches of the host map's walk (:class:`GuestMapBuilder`), so the window reads
each L2 table once for both maps.  A disk with more clusters than
:data:`MAX_GUEST_ENTRIES` is summarised (see :class:`GuestMap`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import clusters as C
from .kinds import GUEST_KIND_RANK, GuestKind
from .refscan import BATCH_ENTRIES, Cancel, Progress, check_cancel
from .tableread import contiguous_rows, read_tables

U64 = np.uint64


# Entries a guest map holds at most (10 bytes each, and the pictures built from it
# add one more): 40 MiB, and still ten times the cells a picture has.  A bigger
# disk is summarised: each entry then stands for a power-of-two run of clusters
# (a 1 TiB disk of 64 KiB clusters 4, a 4 PiB disk of 2 MiB clusters 512).
MAX_GUEST_ENTRIES = 1 << 22


@dataclass
class GuestMap:
    """One entry per guest cluster, or per ``clusters_per_entry`` clusters on a disk
    with more than :data:`MAX_GUEST_ENTRIES` clusters: then ``cluster_size`` is the
    bytes an entry covers, and each entry holds the state, depth and host offset of
    its most significant member (data > compressed > mixed > backing > zero >
    unallocated; the first such member)."""

    cluster_size: int            # bytes per entry
    virtual_size: int
    states: np.ndarray           # uint8 GuestKind per entry
    depth: np.ndarray            # uint8: 0 = this image, N = Nth backing file
    host_offsets: np.ndarray     # uint64 host offset of data/compressed (byte offset), else 0
    snapshot: str | None
    clusters_per_entry: int = 1

    @property
    def image_cluster_size(self) -> int:
        return self.cluster_size // self.clusters_per_entry

    def __len__(self) -> int:
        return len(self.states)


class GuestMapBuilder:
    """A guest map built a batch of L2 tables at a time (:meth:`add`), completed by
    :meth:`finish`; the tables come from :func:`guest_map`'s own reads or from
    the host map's walk of the active L1 table."""

    def __init__(self, image, l1: np.ndarray, vsize: int, snap_name: str | None,
                 max_entries: int = MAX_GUEST_ENTRIES) -> None:
        self.image = image
        self.cs = cs = image.cluster_size
        self.vsize = vsize
        self.snap_name = snap_name
        self.n = n = -(-vsize // cs)
        k = 1                               # clusters per entry
        while -(-n // k) > max_entries:
            k *= 2
        self.k = k
        m = -(-n // k)
        self.states = np.zeros(m, dtype=np.uint8)
        self.depth = np.zeros(m, dtype=np.uint8)
        self.hosts = np.zeros(m, dtype=U64)
        self.L = L = image.l2_size
        self.l1 = l1[:-(-n // L)]
        self.ramp = np.arange(L, dtype=U64) * U64(cs)

    def tables(self) -> np.ndarray:
        """L1 indices of the L2 tables the map needs."""
        return np.nonzero(self.l1 & U64(C.L1E_OFFSET_MASK))[0]

    def add(self, bi: np.ndarray, raw: np.ndarray, bm: np.ndarray | None,
            contig: np.ndarray | None = None) -> None:
        """The L2 tables of L1 entries ``bi`` (their entries and sub-cluster bitmaps;
        left as they were, so a walk can go on with them; ``contig``: their
        :func:`~.tableread.contiguous_rows`, if known)."""
        cs, L, k, n = self.cs, self.L, self.k, self.n
        if contig is None:
            contig = (contiguous_rows(raw, cs, self.ramp) if bm is None
                      else np.zeros(len(bi), dtype=bool))
        keep = bi < len(self.l1)
        if not keep.all():
            bi, raw, contig = bi[keep], raw[keep], contig[keep]
            bm = None if bm is None else bm[keep]
        if not len(bi):
            return
        states, hosts, ramp = self.states, self.hosts, self.ramp
        fast = contig
        if k > 1:
            if k <= L and fast.any():
                # a contiguous table: each of its entries is DATA at its first member
                _summarise_contiguous(states, hosts, raw[fast, 0], bi[fast], L, k, cs)
                rest = np.flatnonzero(~fast)
                raw, bi = raw[rest], bi[rest]
                bm = None if bm is None else bm[rest]
                fast = fast[rest]
            if len(bi):
                self._summarise_sparse(bi, raw, bm, fast)
            return
        for r in np.nonzero(fast)[0].tolist():
            lo = int(bi[r]) * L
            hi = min(n, lo + L)
            states[lo:hi] = GuestKind.DATA
            np.add(ramp[:hi - lo], raw[r, 0] & U64(C.L2E_OFFSET_MASK), out=hosts[lo:hi])
        rest = np.nonzero(~fast)[0]
        if len(rest) == 0:
            return
        if len(rest) < len(bi):
            raw = raw[rest]
            bm = None if bm is None else bm[rest]
        st, ho = _decode_states(raw, bm, self.image.has_data_file, self.image.layout)
        for r, i in enumerate(bi[rest].tolist()):
            lo = i * L
            hi = min(n, lo + L)
            states[lo:hi] = st[r, :hi - lo]
            hosts[lo:hi] = ho[r, :hi - lo]

    def _summarise_sparse(self, bi: np.ndarray, raw: np.ndarray, bm: np.ndarray | None,
                          fast: np.ndarray) -> None:
        """Fold tables into summarised entries (``k`` > 1 clusters each) looking only
        at the entries that are not zero (an unallocated member never shows): each
        entry keeps its most significant member, the first one on ties (an earlier
        batch's too).  A contiguous table counts by its first cluster."""
        L, k = self.L, self.k
        nz = raw != 0 if bm is None else (raw != 0) | (bm != 0)
        if fast.any():
            nz[fast] = False
            nz[fast, 0] = True
        pos = np.flatnonzero(nz)
        if not len(pos):
            return
        vals = raw.reshape(-1)[pos][None, :]
        bmv = None if bm is None else bm.reshape(-1)[pos][None, :]
        st, ho = _decode_states(vals, bmv, self.image.has_data_file, self.image.layout)
        st, ho = st.ravel(), ho.ravel()
        g = bi.astype(np.int64)[pos // L] * L + pos % L          # guest cluster
        rank = GUEST_KIND_RANK[st]
        keep = (g < self.n) & (rank > 0)
        g, rank, st, ho = g[keep], rank[keep], st[keep], ho[keep]
        if not len(g):
            return
        e = g // k
        order = np.lexsort((g, -rank.astype(np.int16), e))
        e, rank, st, ho = e[order], rank[order], st[order], ho[order]
        first = np.r_[True, e[1:] != e[:-1]]
        e, rank, st, ho = e[first], rank[first], st[first], ho[first]
        better = rank > GUEST_KIND_RANK[self.states[e]]
        self.states[e[better]] = st[better]
        self.hosts[e[better]] = ho[better]

    def finish(self, follow_backing: bool = True, cancel: Cancel = None) -> GuestMap:
        if follow_backing and self.image.backing is not None:
            _merge_backing(self.image, self.states, self.depth, self.hosts, self.cs * self.k,
                           self.vsize, cancel)
        return GuestMap(self.cs * self.k, self.vsize, self.states, self.depth, self.hosts,
                        self.snap_name, self.k)


def active_builder(image) -> GuestMapBuilder | None:
    """A builder of :func:`guest_map`'s map of the image as opened (no snapshot view:
    then the active L1 table is not the one the image shows)."""
    if image.snapshot is not None:
        return None
    return GuestMapBuilder(image, image.l1_table.entries, image.virtual_size, None)


def guest_map(image, snapshot=None, progress: Progress = None, cancel: Cancel = None,
              follow_backing: bool = True, max_entries: int = MAX_GUEST_ENTRIES) -> GuestMap:
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
    g = GuestMapBuilder(image, l1, vsize, snap_name, max_entries)
    idx = g.tables()
    per_batch = max(1, BATCH_ENTRIES // g.L)
    total = len(idx) + 1
    for b in range(0, len(idx), per_batch):
        check_cancel(cancel)
        bi = idx[b:b + per_batch]
        raw, bm = read_tables(image.file, (g.l1[bi] & U64(C.L1E_OFFSET_MASK)).astype(np.int64),
                              g.cs, image.extended_l2)
        g.add(bi, raw, bm)
        if progress is not None:
            progress(b + len(bi), total)
    gm = g.finish(follow_backing, cancel)
    if progress is not None:
        progress(total, total)
    return gm


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
    states[e[keep]] = GuestKind.DATA
    hosts[e[keep]] = h[keep]


def _decode_states(raw: np.ndarray, bm: np.ndarray | None, has_data_file: bool,
                   layout) -> tuple[np.ndarray, np.ndarray]:
    """Kinds (the classifier's :func:`~.clusters.guest_kinds`) and host offsets."""
    st = C.guest_kinds(raw, bm, has_data_file)
    ho = np.where((st == GuestKind.DATA) | (st == GuestKind.MIXED),
                  raw & U64(C.L2E_OFFSET_MASK), U64(0))
    comp = st == GuestKind.COMPRESSED
    ho[comp] = raw[comp] & U64(layout.offset_mask)
    return st, ho


def _merge_backing(image, states, depth, hosts, cs, vsize, cancel) -> None:
    need = states == GuestKind.UNALLOCATED
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
            adj = np.where((bst == GuestKind.DATA) | (bst == GuestKind.BACKING),
                           pos[inside] % U64(bcs), U64(0))
            bho = np.where(bho != 0, bho + adj, bho)
        else:
            r = cs // bcs
            m = int(inside.sum())
            pad = m * r - len(sub.states)
            grid = np.concatenate([sub.states, np.zeros(max(pad, 0), np.uint8)])[:m * r]
            grid = grid.reshape(m, r)
            bst = grid[:, 0].copy()
            bst[np.any(grid != grid[:, :1], axis=1)] = GuestKind.MIXED
            dgrid = np.concatenate([sub.depth, np.zeros(max(pad, 0), np.uint8)])[:m * r]
            bdp = dgrid.reshape(m, r)[:, 0].copy()
            hgrid = np.concatenate([sub.host_offsets, np.zeros(max(pad, 0), U64)])[:m * r]
            bho = hgrid.reshape(m, r)[:, 0].copy()
        found = bst != GuestKind.UNALLOCATED
        tgt = np.nonzero(inside)[0]
        hit = tgt[found & need[tgt]]
        k = found & need[tgt]
        states[hit] = GuestKind.BACKING
        depth[hit] = np.minimum(bdp[k].astype(np.int64) + 1, 255).astype(np.uint8)
        hosts[hit] = bho[k]
    else:   # raw backing file: guest offset == file offset
        pos = np.arange(n, dtype=U64) * U64(cs)
        hit = need & (pos < U64(b.virtual_size))
        states[hit] = GuestKind.BACKING
        depth[hit] = 1
        hosts[hit] = pos[hit]

