"""The reference walk's work on L2 tables (``check_refcounts_l2`` and the L2 part
of ``check_oflag_copied`` in QEMU's block/qcow2-refcount.c), a batch of tables
at a time with numpy: tables that map one contiguous run of plain data clusters
are counted with slices (a batch's runs as one span: one increment, taken back in
the gaps between them), the others entry by entry on their entries that are not
zero.  A mixin of :class:`~.refscan.Scanner`, which owns the counts."""

from __future__ import annotations

import numpy as np

from . import clusters as C
from .kinds import HostKind
from .refkinds import MAX_FINDINGS

U64 = np.uint64


class _EntryOffsets:
    """File offsets of L2 entries, computed only where asked (eoff[mask], eoff[i, j])."""

    def __init__(self, l2_offsets: np.ndarray, esize: int) -> None:
        self.base = l2_offsets.astype(np.int64)
        self.esize = esize

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, j = key
            return int(self.base[i]) + int(j) * self.esize
        rows, cols = np.nonzero(key)
        return self.base[rows] + cols.astype(np.int64) * self.esize

    def flat(self, pos, L: int):
        """Offsets of the entries at flat positions ``pos`` (an int or an array) of
        a batch of tables of ``L`` entries."""
        if isinstance(pos, (int, np.integer)):
            return int(self.base[pos // L]) + int(pos % L) * self.esize
        pos = np.asarray(pos, dtype=np.int64)
        return self.base[pos // L] + (pos % L) * self.esize


class L2TableWalk:
    """The L2 part of :class:`~.refscan.Scanner` (see the module doc)."""

    def _walk_l2_batch(self, raw: np.ndarray, bm: np.ndarray | None, l2_offsets: np.ndarray,
                       active: bool, sname: str | None, copied: bool,
                       contig: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray] | None:
        """check_refcounts_l2 over a batch of tables (their entries ``raw`` and
        sub-cluster bitmaps ``bm``), vectorised (and check_oflag_copied's L2 part if
        ``copied``); with want_ranges, returns the lowest and highest host cluster
        each table references."""
        n = len(l2_offsets)
        lo = hi = None
        if self.want_ranges:
            lo = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
            hi = np.full(n, -1, dtype=np.int64)
        if bm is None:
            done = self._fast_rows(raw, active, copied, contig)
            if lo is not None and done.any():
                lo[done] = self._fast_boff[done].astype(np.int64) >> self.cb
                hi[done] = lo[done] + raw.shape[1] - 1
            if done.all():
                return None if lo is None else (lo, hi)
            if done.any():
                raw, l2_offsets = raw[~done], l2_offsets[~done]
                if lo is not None:
                    rest = np.nonzero(~done)[0]
                    sub_lo, sub_hi = lo[rest], hi[rest]
                    self._generic_rows(raw, bm, l2_offsets, active, sname, copied, sub_lo,
                                       sub_hi)
                    lo[rest], hi[rest] = sub_lo, sub_hi
                    return lo, hi
        self._generic_rows(raw, bm, l2_offsets, active, sname, copied, lo, hi)
        return None if lo is None else (lo, hi)

    def _fast_rows(self, raw: np.ndarray, active: bool, copied_check: bool,
                   contig: np.ndarray) -> np.ndarray:
        """Tables whose entries are one run of contiguous, aligned, plain data
        clusters (what preallocation and sequential writes make; ``contig``: those
        rows, :func:`~.clusters.contiguous_rows` as the read-ahead thread tested them):
        counted with slices instead of per-entry work.  Returns the rows it handled;
        the others are left to the generic path."""
        L = raw.shape[1]
        base = raw[:, 0]
        flags = base & ~U64(C.L2E_OFFSET_MASK)
        boff = base & U64(C.L2E_OFFSET_MASK)
        self._fast_boff = boff
        cand = contig.copy()
        if not self.data_file:
            cand &= boff + U64((L - 1) * self.cs) < U64(self.file_size)
        if not cand.any():
            return cand
        if self.data_file:
            # no host clusters of ours to count; COPIED must be set (refcount 1)
            if copied_check:
                cand &= flags != 0
        elif copied_check and self.disk.bad_blocks:
            cand[:] = False                     # unreadable refcounts: per entry
            return cand
        else:
            rows = np.flatnonzero(cand)
            c0 = (boff[rows] >> U64(self.cb)).astype(np.int64)
            order = np.argsort(c0, kind="stable")
            rows, c0 = rows[order], c0[order]
            # the batch as one span of clusters: its rows must not overlap (then the
            # order they are counted in cannot matter) and must fill most of it
            if ((c0[1:] - c0[:-1] < L).any()
                    or c0[-1] + L - c0[0] > 2 * L * len(rows)):
                return self._fast_rows_each(cand, boff, flags, L, active, copied_check)
            keep = self._span_rows(c0, flags[rows] != 0, L, copied_check)
            cand[rows[~keep]] = False
        if active:
            self.r.allocated_clusters += L * int(np.count_nonzero(cand))
        return cand

    def _span_rows(self, c0: np.ndarray, copied: np.ndarray, L: int, copied_check: bool
                   ) -> np.ndarray:
        """The fast path over one span of clusters: rows (sorted starts ``c0``, not
        overlapping) whose refcounts on disk agree with their COPIED flags get one
        reference more for each of their clusters.  Returns the rows kept; those
        left go the generic path, which reports their COPIED flags entry by entry."""
        r, disk = self.r, self.disk
        a, b = int(c0[0]), int(c0[-1]) + L
        drop = np.zeros(len(c0), dtype=bool)

        def rows_holding(pos: np.ndarray) -> np.ndarray:
            """Rows whose clusters include some of ``pos`` (span-relative)."""
            k = np.searchsorted(c0 - a, pos, side="right") - 1
            k = k[(k >= 0) & (pos < c0[np.maximum(k, 0)] - a + L)]
            hit = np.zeros(len(c0), dtype=bool)
            hit[k] = True
            return hit

        if copied_check:
            drop |= c0 + L > disk.n
            one = disk.ones(a, b)
            if one.all():
                r.ones.append((a, b))
            if copied.any():
                drop |= rows_holding(np.flatnonzero(~one)) & copied
            if not copied.all():
                drop |= rows_holding(np.flatnonzero(one)) & ~copied
        s = c0[~drop]
        if not len(s):
            return ~drop
        # clusters already referenced (a table an internal snapshot shares) count one
        # more like the others: widened first if that overflows the counts
        self._grow(b - 1)
        self._fit(int(r.refs[a:b].max()) + 1)
        # one increment over the kept rows' span, taken back in the gaps between
        # them (L2 tables, mostly; counts wrap and unwrap exactly)
        r.refs[s[0]:s[-1] + L] += 1
        gs, ge = s[:-1] + L, s[1:]
        gap = ge > gs
        gs, ge = gs[gap], ge[gap]
        if len(gs) and (ge - gs == 1).all():
            r.refs[gs] -= 1
        else:
            for g0, g1 in zip(gs.tolist(), ge.tolist()):
                r.refs[g0:g1] -= 1
        if not self.compact:
            for c in s.tolist():
                r.kinds[c:c + L] = HostKind.DATA
        r.nb_clusters = max(r.nb_clusters, int(s[-1]) + L)
        return ~drop

    def _fast_rows_each(self, cand: np.ndarray, boff: np.ndarray, flags: np.ndarray, L: int,
                        active: bool, copied_check: bool) -> np.ndarray:
        """The fast path row by row, in order (rows that overlap, or lie far apart):
        each a span of its own."""
        for i in np.flatnonzero(cand).tolist():
            c0 = np.array([int(boff[i]) >> self.cb], dtype=np.int64)
            cand[i] = self._span_rows(c0, np.array([flags[i] != 0]), L, copied_check)[0]
        if active:
            self.r.allocated_clusters += L * int(np.count_nonzero(cand))
        return cand

    def _generic_rows(self, raw: np.ndarray, bm: np.ndarray | None, l2_offsets: np.ndarray,
                      active: bool, sname: str | None, copied: bool,
                      lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> None:
        """Every entry's own work, on the entries that are not zero only (a zero
        entry, with a zero sub-cluster bitmap, references nothing): the arrays
        below are over those, ``pos`` their flat positions in the batch."""
        cb = self.cb
        n, L = raw.shape
        esize = 16 if self.extended else 8
        eoff = _EntryOffsets(l2_offsets, esize)
        if bm is None:
            pos = np.flatnonzero(raw != 0)   # (on a bool mask: several times faster)
            vals = raw.reshape(-1)[pos]
            bmv = None
        else:
            pos = np.flatnonzero((raw != 0) | (bm != 0))
            vals = raw.reshape(-1)[pos]
            bmv = bm.reshape(-1)[pos]
        off = vals & U64(C.L2E_OFFSET_MASK)
        has_off = off != 0
        if self.data_file:
            has_off |= (vals & U64(C.QCOW_OFLAG_COPIED)) != 0
        # compressed, zero-flag and reserved bits are rare: one pass tells
        special = U64(C.QCOW_OFLAG_COMPRESSED | C.L2E_STD_RESERVED_MASK
                      | (0 if self.extended else C.QCOW_OFLAG_ZERO))
        if np.bitwise_and(vals, special).any():
            comp = (vals & U64(C.QCOW_OFLAG_COMPRESSED)) != 0
            zero = (np.zeros_like(comp) if self.extended
                    else ((vals & U64(C.QCOW_OFLAG_ZERO)) != 0) & ~comp)
            alloc = ~comp & has_off            # NORMAL or ZERO_ALLOC
            resv = ~comp & ((vals & U64(C.L2E_STD_RESERVED_MASK)) != 0)
        else:
            comp = zero = resv = None
            alloc = has_off
        where = "snapshot " + repr(sname) + " " if sname else ""

        def report(mask, kind, text):
            sel = np.flatnonzero(mask)
            room = max(0, MAX_FINDINGS - len(self.r.findings))
            for k in sel[:room].tolist():
                e = eoff.flat(int(pos[k]), L)
                self._corrupt(kind, int(off[k]) >> cb, f"{where}L2 entry at {e:#x} "
                              f"({int(vals[k]):#018x}): {text}", e,
                              facts={"l2_entry": int(vals[k])})
            extra = len(sel) - min(len(sel), room)   # counted, not listed
            self.r.corruptions += extra
            self.r.findings_dropped += extra

        if resv is not None and resv.any():
            report(resv, "reserved_bits", "reserved bits set")
        if comp is not None and comp.any():
            self._compressed(vals, bmv, comp, pos, L, eoff, active, where, report, lo, hi)
        ai = np.flatnonzero(alloc)
        if len(ai):
            self._allocated(pos[ai], vals[ai], off[ai], None if bmv is None else bmv[ai], L,
                            eoff, where, active, copied, lo, hi)
        if bmv is not None:
            unalloc = ~has_off if comp is None else ~comp & ~has_off & ~zero
            bad = unalloc & ((bmv & U64(C.L2_BITMAP_ALL_ALLOC)) != 0)
            if bad.any():
                report(bad, "invalid_subcluster_bitmap", "unallocated cluster has a "
                       "non-zero sub-cluster bitmap")

    def _allocated(self, flat, a_raw, a_off, a_bm, L, eoff, where, active, copied, lo, hi
                   ) -> None:
        """The entries of a batch that map a cluster (plain or zero-allocated):
        ``flat`` their positions, ``a_raw``/``a_off``/``a_bm`` their entries,
        offsets and sub-cluster bitmaps."""
        cs, cb = self.cs, self.cb
        rows = flat // L
        a_cl = a_off >> U64(cb)
        if a_bm is not None:
            badbm = ((a_bm >> U64(32)) & a_bm) != 0
            if badbm.any():
                self._report_flat(flat[badbm], L, eoff, a_raw[badbm], a_off[badbm],
                                  "invalid_subcluster_bitmap", where, "allocated cluster "
                                  "has a corrupted sub-cluster allocation bitmap")
        mis = (a_off & U64(cs - 1)) != 0
        any_mis = bool(mis.any())
        if any_mis:
            self._report_flat(flat[mis], L, eoff, a_raw[mis], a_off[mis],
                              "misaligned_offset", where,
                              "data cluster offset is not cluster aligned")
        if active:
            r = self.r
            r.allocated_clusters += len(flat)
            if len(flat) > 1:
                same_row = rows[1:] == rows[:-1]
                jump = a_off[1:] != a_off[:-1] + U64(cs)
                r.fragmented_clusters += int(np.count_nonzero(same_row & jump))
        if lo is not None:
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
            urows = rows[starts]
            last_cl = (a_off + U64(cs - 1)) >> U64(cb)
            lo[urows] = np.minimum(lo[urows], np.minimum.reduceat(a_cl, starts)
                                   .astype(np.int64))
            hi[urows] = np.maximum(hi[urows], np.maximum.reduceat(last_cl, starts)
                                   .astype(np.int64))
        if not self.data_file:
            self._inc_data(a_off, a_cl, mis if any_mis else None, flat, L, eoff, where)
        if copied:
            self._copied_l2_flat(a_raw, a_off, a_cl, flat, L, eoff)

    def _report_flat(self, flat, L, eoff, raws, offs, kind, where, text) -> None:
        for f, w, o in zip(flat[:MAX_FINDINGS].tolist(), raws[:MAX_FINDINGS].tolist(),
                           offs[:MAX_FINDINGS].tolist()):
            e = eoff[f // L, f % L]
            self._corrupt(kind, o >> self.cb, f"{where}L2 entry at {e:#x} ({w:#018x}): "
                          f"{text}", e, facts={"l2_entry": w})
        extra = len(flat) - min(len(flat), MAX_FINDINGS)
        self.r.corruptions += extra
        self.r.findings_dropped += extra

    def _inc_data(self, a_off, a_cl, mis, flat, L, eoff, where) -> None:
        """qcow2_inc_refcounts_imrt(offset, cluster_size) for every data cluster."""
        past = a_off >= U64(self.file_size)
        if past.any():
            pf = flat[past]
            rows, cols = pf // L, pf % L
            e = eoff.base[rows] + cols.astype(np.int64) * eoff.esize
            self.inc_regions(a_off[past].astype(np.int64), np.full(len(pf), self.cs),
                             HostKind.DATA, f"{where}data cluster", e)
            keep = ~past
            a_cl = a_cl[keep]
            mis = None if mis is None else mis[keep]
        cl = a_cl.astype(np.intp)
        if mis is not None:
            cl = np.concatenate([cl, cl[mis] + 1])   # a misaligned cluster spans two
        self._mark(cl, HostKind.DATA)

    def _compressed(self, vals, bmv, comp, pos, L, eoff, active, where, report, lo, hi
                    ) -> None:
        """The compressed entries among ``vals`` (flat positions ``pos``)."""
        cb = self.cb
        cp = comp & ((vals & U64(C.QCOW_OFLAG_COPIED)) != 0)
        if cp.any():
            report(cp, "invalid_compressed", "COPIED flag set on a compressed cluster")
        ok = comp.copy()
        if self.data_file:
            report(comp, "invalid_compressed", "compressed cluster in an image with a "
                   "data file")
            return
        if bmv is not None:
            badbm = comp & (bmv != 0)
            if badbm.any():
                report(badbm, "invalid_compressed", "compressed cluster with a "
                       "non-zero sub-cluster bitmap")
                ok &= ~badbm
        if not ok.any():
            return
        e = vals[ok]
        p = pos[ok]
        coff, csize = self.layout.decode_array(e)
        coff, csize = coff.astype(np.int64), csize.astype(np.int64)
        if lo is not None:
            rows = p // L
            np.minimum.at(lo, rows, coff >> cb)
            np.maximum.at(hi, rows, (coff + csize - 1) >> cb)
        self.inc_regions(coff, csize, HostKind.COMPRESSED, f"{where}compressed cluster",
                         eoff.flat(p, L))
        if active:
            k = int(ok.sum())
            self.r.allocated_clusters += k
            self.r.compressed_clusters += k
            self.r.fragmented_clusters += k

    def _copied_l2_flat(self, a_raw, a_off, a_cl, flat, L, eoff) -> None:
        copied = (a_raw & U64(C.QCOW_OFLAG_COPIED)) != 0
        if self.data_file:
            wrong = ~copied
            rc = np.ones(len(copied), dtype=np.uint64)
        else:
            rc, ok = self.disk.lookup(a_cl)
            wrong = ((rc == 1) != copied) & ok
        if not wrong.any():
            return
        for f, w, o, c, k in zip(flat[wrong].tolist(), a_raw[wrong].tolist(),
                                 a_off[wrong].tolist(), copied[wrong].tolist(),
                                 rc[wrong].tolist()):
            e = eoff[f // L, f % L]
            self.r.copied_corruptions += 1
            self.r.copied_entries.append((e, w, False, int(eoff.base[f // L])))
            self._corrupt("copied_flag_wrong_l2", o >> self.cb,
                          f"L2 entry at {e:#x}: COPIED flag {'set' if c else 'clear'} but "
                          f"the data cluster at {o:#x} has refcount {k}", e,
                          facts={"l2_entry": w, "refcount": k})
