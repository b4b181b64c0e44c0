"""Walk every reference an image makes to its own host clusters.

One scanner serves both the consistency check (``check.py``) and the host map
(``maps.py``).  It follows QEMU 7.2's ``calculate_refcounts`` in
``block/qcow2-refcount.c`` step by step (header, active L1 and its L2 tables,
snapshot L1 tables, snapshot table, refcount table, encryption header,
bitmaps, refcount blocks) and counts exactly what ``qemu-img check`` counts,
but decodes whole tables with numpy instead of one entry at a time.

Counts are kept as "attempts" per cluster, one byte each, widened to uint16 or
uint32 only if some cluster gets more references than that holds; the array
reaches only as far as the last cluster referenced or covered by a refcount
block (it grows on demand), never to the end of a file with a sparse tail.
QEMU's in-memory refcounts saturate at the image's refcount maximum and report
every reference beyond it as a corruption, which is the same total whatever the
order, so the saturation is applied once at the end (:meth:`RefScan.counted`).
The check keeps no kinds array (the host map does: one byte per cluster); the
refcounts on disk are read a block at a time (:class:`~.refcounts.DiskRefcounts`).

Speed: L2 tables are read a batch at a time (about a million entries), the next
batch in a second thread (:mod:`tableread`); tables that map one contiguous run
of plain data clusters (preallocation, sequential writes) are counted with
slices, others on the entries that are not zero; where the COPIED test of those
runs saw refcounts of 1 (:attr:`RefScan.ones`), the comparison does not read them
again.  An 8 TiB preallocated image (134M clusters) is checked in about 1.0 s and
176 MiB (0.9 byte per cluster plus about 56 MiB); qemu-img takes 7-9 s and 264 MiB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import clusters as C
from .bitmaps import BME_TABLE_ENTRY_OFFSET_MASK
from .errors import CancelledError
from .extensions import EXT_BITMAPS
from .header import QCOW_MAX_L1_SIZE
from .refcounts import (REFT_RESERVED_MASK, DiskRefcounts, max_refcount,  # noqa: F401
                        read_zero_filled)
from .l2scan import L2TableWalk
from .kinds import HostKind
from .refkinds import MAX_FINDINGS, MAX_OVERLAPS, METADATA_KINDS, _META, Finding  # noqa: F401
from .tableread import TableReader, read_tables  # noqa: F401  (maps reads tables too)

Progress = Callable[[int, int], None] | None
Cancel = Callable[[], bool] | None

BATCH_ENTRIES = 1 << 19        # L2 entries per batch (4 MiB; the walk holds three)
BME_TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE
SNAPSHOT_FIXED_SIZE = 40

U64 = np.uint64


def read_table_in_file(file, offset: int, entries: int) -> np.ndarray:
    """A big-endian u64 table as far as it lies inside the file (entries past
    the end read as zero in QEMU and reference nothing, so they are left out:
    an untrusted size never sizes an allocation beyond the file)."""
    n = max(0, min(entries, (file.size - offset) // 8)) if offset < file.size else 0
    return C.be_u64(file.pread(offset, n * 8)) if n else np.zeros(0, dtype=U64)


def check_cancel(cancel: Cancel) -> None:
    if cancel is not None and cancel():
        raise CancelledError("cancelled")


@dataclass
class RefScan:
    """What the walk found."""

    cluster_size: int
    file_size: int
    nb_clusters: int                  # QEMU's in-memory refcount array size (may grow by one)
    refs: np.ndarray                  # attempts per host cluster (uint8, widened on demand;
                                      # may end before nb_clusters: the rest are 0)
    kinds: np.ndarray                 # uint8 kind per host cluster, as long as refs
                                      # (last reference wins)
    refcount_max: int
    corruptions: int = 0
    check_errors: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    findings: list[Finding] = field(default_factory=list)
    findings_dropped: int = 0
    # L2 tables met, one group per L1 table: (offsets, l1 indices, L1 entry offsets,
    # snapshot name or None); see l2_table_arrays()
    l2_groups: list[tuple] = field(default_factory=list)
    # per entry of l2_tables: lowest and highest host cluster its entries reference
    # (kept for the host map so owners() reads only the tables that can match)
    l2_lo: list[np.ndarray] = field(default_factory=list)
    l2_hi: list[np.ndarray] = field(default_factory=list)
    overlap_clusters: set[int] = field(default_factory=set)
    # of those, the ones two kinds of metadata share (what QEMU's overlap check sees)
    metadata_overlaps: set[int] = field(default_factory=set)
    rebuild: bool = False             # QEMU would want to rebuild the refcount structure
    copied_corruptions: int = 0       # of corruptions, those from check_oflag_copied
    copied_entries: list[tuple[int, int, bool, int]] = field(default_factory=list)
    # (entry file offset, raw entry, is L1, offset of its table) with a wrong
    # COPIED flag (for repair)
    # clusters [a, b) whose refcounts on disk the walk saw to be all 1 (the COPIED
    # test of contiguous tables): the comparison need not read them again
    ones: list[tuple[int, int]] = field(default_factory=list)

    def l2_table_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """(offsets, l1 indices, L1 entry offsets, snapshot name per table)."""
        if not self.l2_groups:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z, []
        offs = np.concatenate([g[0] for g in self.l2_groups])
        l1i = np.concatenate([g[1] for g in self.l2_groups]).astype(np.int64)
        eo = np.concatenate([g[2] for g in self.l2_groups])
        names = [g[3] for g in self.l2_groups for _ in range(len(g[0]))]
        return offs, l1i, eo, names

    def refs_range(self, lo: int, hi: int) -> np.ndarray:
        """References of clusters ``lo..hi-1`` (zeros past the end of :attr:`refs`)."""
        if hi <= len(self.refs):
            return self.refs[lo:hi]
        out = np.zeros(max(0, hi - lo), dtype=self.refs.dtype)
        if lo < len(self.refs):
            out[:len(self.refs) - lo] = self.refs[lo:]
        return out

    def refs_at(self, clusters: np.ndarray) -> np.ndarray:
        """References of each of ``clusters`` (0 past the end of :attr:`refs`)."""
        c = np.asarray(clusters, dtype=np.int64)
        inside = c < len(self.refs)
        out = np.zeros(len(c), dtype=self.refs.dtype)
        out[inside] = self.refs[c[inside]]
        return out

    def ref(self, cluster: int) -> int:
        return int(self.refs[cluster]) if cluster < len(self.refs) else 0

    def ones_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """:attr:`ones` as sorted starts and their ends (each end the furthest any
        span so far reaches, so a search finds their union)."""
        spans = sorted(self.ones)
        starts = np.array([a for a, _ in spans], dtype=np.int64)
        return starts, np.maximum.accumulate(np.array([b for _, b in spans], dtype=np.int64))

    def seen_ones(self, clusters: np.ndarray) -> np.ndarray:
        """Whether each of ``clusters`` lies where the walk saw refcounts of 1 (:attr:`ones`)."""
        if not self.ones:
            return np.zeros(len(clusters), dtype=bool)
        starts, ends = self.ones_spans()
        c = np.asarray(clusters).astype(np.int64)
        k = np.searchsorted(starts, c, side="right") - 1
        return (k >= 0) & (c < ends[np.maximum(k, 0)])

    def counted(self) -> np.ndarray:
        """Per-cluster references as QEMU's saturating in-memory array holds them
        (all ``nb_clusters`` of them)."""
        r = self.refs_range(0, self.nb_clusters)
        # a new array at the width the walk needed (one byte per cluster, mostly):
        # a uint32 scalar here made it four (1 GiB for a file grown to 1 TiB)
        if self.refcount_max < np.iinfo(r.dtype).max:
            return np.minimum(r, r.dtype.type(self.refcount_max))
        return r.copy()

    def add(self, f: Finding) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(f)
        else:
            self.findings_dropped += 1


class Scanner(L2TableWalk):
    """Walks the image's references; see the module docstring."""

    def __init__(self, image, *, disk: DiskRefcounts | None = None,
                 check_copied: bool = False, want_ranges: bool = False,
                 compact: bool = False, progress: Progress = None,
                 cancel: Cancel = None, guest=None) -> None:
        self.im = image
        self.cs = image.cluster_size
        self.cb = image.cluster_bits
        self.file_size = image.file.size
        nb = -(-self.file_size // self.cs)
        self.disk = disk
        self.check_copied = check_copied and disk is not None
        self.want_ranges = want_ranges
        # fed the active L1's L2 tables as they are read (guestmap.GuestMapBuilder)
        self.guest = guest
        self.reader = TableReader(image.file, self.cs, image.extended_l2,
                                  max(1, BATCH_ENTRIES // image.l2_size))
        self.progress = progress
        self.cancel = cancel
        self.extended = image.extended_l2
        self.data_file = image.has_data_file
        self.layout = image.layout
        # compact (the check): no kinds array at all (the overlap test needs only
        # the metadata references, kept aside)
        self.compact = compact
        # one spare slot: a reference may reach at most one cluster past EOF; the
        # arrays start as far as the refcount blocks reach and grow when needed
        self.cap = nb + 1
        start = self.cap if disk is None else min(self.cap, max(disk.covered_end, 1 << 16))
        refs = np.zeros(start, dtype=np.uint8)
        kinds = np.zeros(0 if compact else start, dtype=np.uint8)
        # (clusters, kind) of every metadata reference, for the overlap test
        self._meta_marks: list[tuple[np.ndarray, int]] = []
        self.r = RefScan(self.cs, self.file_size, nb, refs, kinds,
                         max_refcount(image.header.refcount_order))
        self._done = 0
        self._total = 1

    # -- helpers -------------------------------------------------------------------
    def _refcount(self, cluster: int) -> int:
        return self.disk.get(cluster) if self.disk is not None else 0

    def _corrupt(self, kind: str, cluster: int, message: str,
                 entry_offset: int | None = None, references: int = 0,
                 facts: dict[str, int] | None = None) -> None:
        self.r.corruptions += 1
        self.r.add(Finding(kind, cluster, self._refcount(cluster), references, message,
                           entry_offset, "corruption", facts or {}))

    def _listed(self, where: np.ndarray) -> list[int]:
        """The first of ``where`` that still fit in the findings; the others are
        counted as corruptions here, without a finding each."""
        room = max(0, MAX_FINDINGS - len(self.r.findings))
        extra = max(0, len(where) - room)
        self.r.corruptions += extra
        self.r.findings_dropped += extra
        return where[:room].tolist()

    def _tick(self, n: int = 1) -> None:
        self._done += n
        check_cancel(self.cancel)
        if self.progress is not None:
            self.progress(min(self._done, self._total), self._total)

    def _grow(self, top: int) -> None:
        """Room in refs and kinds for cluster ``top``: resized in place (a realloc,
        which moves big arrays by remapping pages rather than copying them)."""
        r = self.r
        if top < len(r.refs):
            return
        new = min(self.cap, max(top + 1, 2 * len(r.refs)))
        if top >= new:
            raise IndexError(f"cluster {top} past the end of the file")
        r.refs.resize(new, refcheck=False)
        if not self.compact:
            r.kinds.resize(new, refcheck=False)

    def _fit(self, need: int) -> None:
        """Widen the reference counts so that ``need`` fits."""
        r = self.r
        if need > np.iinfo(r.refs.dtype).max:
            r.refs = r.refs.astype(np.uint16 if need <= 0xFFFF else np.uint32)

    def _mark(self, clusters: np.ndarray, kind: int) -> None:
        """Count one reference per element of ``clusters`` (duplicates allowed)."""
        if len(clusters) == 0:
            return
        r = self.r
        if len(clusters) == 1:
            self._mark_one(int(clusters[0]), kind)
            return
        clusters = clusters.astype(np.intp, copy=False)
        top = int(clusters.max())
        if top >= r.nb_clusters:
            r.nb_clusters = top + 1
        self._grow(top)
        lo = int(clusters.min())
        d = np.diff(clusters)
        if (d > 0).all() or (d < 0).all():
            # strictly monotonic (sequential or reverse writes): no duplicates
            u = clusters.astype(np.intp, copy=False)
            counts = None
        elif top - lo < 4 * len(clusters):
            c = np.bincount((clusters - lo).astype(np.intp), minlength=top - lo + 1)
            nz = np.flatnonzero(c != 0)
            u, counts = lo + nz, c[nz]
        else:
            u, counts = np.unique(clusters, return_counts=True)
            u = u.astype(np.intp)
        cur = r.refs[u]
        self._fit(int(cur.max()) + (1 if counts is None else int(counts.max())))
        if _META[kind]:
            self._meta_marks.append((clusters.astype(np.int64), kind))
        if counts is None:
            r.refs[u] += r.refs.dtype.type(1)
        else:
            r.refs[u] += counts.astype(r.refs.dtype)
        if self.compact:
            return
        if kind == HostKind.SNAPSHOT_L2_TABLE:
            # L2 tables the active L1 shares stay L2
            r.kinds[u[r.kinds[u] != HostKind.L2_TABLE]] = kind
        else:
            r.kinds[u] = kind

    def _mark_one(self, c: int, kind: int) -> None:
        r = self.r
        if c >= r.nb_clusters:
            r.nb_clusters = c + 1
        self._grow(c)
        if _META[kind]:
            self._meta_marks.append((np.array([c], dtype=np.int64), kind))
        self._fit(int(r.refs[c]) + 1)
        r.refs[c] += 1
        if self.compact:
            return
        prior = int(r.kinds[c])
        if not (kind == HostKind.SNAPSHOT_L2_TABLE and prior == HostKind.L2_TABLE):
            r.kinds[c] = kind

    def inc_region(self, offset: int, size: int, kind: int, what: str,
                   entry_offset: int | None = None) -> None:
        """qcow2_inc_refcounts_imrt for one region."""
        if size <= 0:
            return
        cs = self.cs
        if offset + size - self.file_size >= cs:
            self._corrupt("past_end_of_file", offset >> self.cb,
                          f"{what} at {offset:#x} (+{size:#x}) lies past the end of the "
                          f"file ({self.file_size:#x})", entry_offset,
                          facts={"offset": offset, "size": size, "host_kind": int(kind)})
            return
        first, last = offset >> self.cb, (offset + size - 1) >> self.cb
        if first == last:
            self._mark_one(first, kind)
        else:
            self._mark(np.arange(first, last + 1, dtype=np.int64), kind)

    def inc_regions(self, offsets: np.ndarray, sizes: np.ndarray, kind: int, what: str,
                    entry_offsets: np.ndarray) -> None:
        """Vectorised qcow2_inc_refcounts_imrt for many regions of at most 3 clusters."""
        if len(offsets) == 0:
            return
        offsets = offsets.astype(np.int64)
        sizes = sizes.astype(np.int64)
        past = offsets + sizes - self.file_size >= self.cs
        if past.any():
            for o, s, e in zip(offsets[past][:MAX_FINDINGS].tolist(),
                               sizes[past][:MAX_FINDINGS].tolist(),
                               entry_offsets[past][:MAX_FINDINGS].tolist()):
                self._corrupt("past_end_of_file", o >> self.cb,
                              f"{what} at {o:#x} (+{s:#x}) lies past the end of the "
                              f"file ({self.file_size:#x}); entry at {e:#x}", e,
                              facts={"offset": o, "size": s, "host_kind": int(kind)})
            extra = int(past.sum()) - min(int(past.sum()), MAX_FINDINGS)
            self.r.corruptions += extra
            self.r.findings_dropped += extra
            keep = ~past
            offsets, sizes = offsets[keep], sizes[keep]
        first = offsets >> self.cb
        last = (offsets + sizes - 1) >> self.cb
        parts = [first]
        span = last - first
        if span.any():
            parts.append(first[span >= 1] + 1)
            parts.append(first[span >= 2] + 2)
        self._mark(np.concatenate(parts) if len(parts) > 1 else first, kind)

    # -- the walk ------------------------------------------------------------------
    def run(self) -> RefScan:
        im, cs = self.im, self.cs
        h = im.header
        l1s = [(h.l1_table_offset, h.l1_size, None)]
        for s in im.snapshots:
            l1s.append((s.l1_table_offset, s.l1_size, s))
        # progress: one unit per L2 table and per refcount block
        self._l1_cache: dict[tuple[int, int], np.ndarray] = {}
        total = 1
        for off, size, s in l1s:
            if s is not None and (off & (cs - 1) or size > QCOW_MAX_L1_SIZE // 8):
                continue
            total += int(np.count_nonzero(self._read_l1(off, size)))
        self._total = total + int(np.count_nonzero(im.refcount_table))
        check_cancel(self.cancel)

        self.inc_region(0, cs, HostKind.HEADER, "header")
        self._walk_l1(h.l1_table_offset, h.l1_size, None)
        if self.data_file and im.snapshots:
            self._corrupt("snapshots_with_data_file", 0,
                          f"{len(im.snapshots)} snapshots in an image with a data file")
        for s in im.snapshots:
            if s.l1_table_offset & (cs - 1):
                self._corrupt("misaligned_offset", s.l1_table_offset >> self.cb,
                              f"snapshot {s.name!r} L1 table offset {s.l1_table_offset:#x} "
                              "is not cluster aligned", s.offset)
                continue
            if s.l1_size > QCOW_MAX_L1_SIZE // 8:
                self._corrupt("snapshot_l1_too_large", s.l1_table_offset >> self.cb,
                              f"snapshot {s.name!r} L1 table of {s.l1_size} entries is "
                              "too large", s.offset + 8)
                continue
            self._walk_l1(s.l1_table_offset, s.l1_size, s)
        if im.snapshots:
            last = im.snapshots[-1]
            id_len, name_len = struct.unpack_from(
                ">HH", read_zero_filled(im.file, last.offset + 12, 4))
            end = last.offset + SNAPSHOT_FIXED_SIZE + last.extra_data_size + id_len + name_len
            self.inc_region(h.snapshots_offset, end - h.snapshots_offset, HostKind.SNAPSHOT_TABLE,
                            "snapshot table")
        self.inc_region(h.refcount_table_offset, h.refcount_table_clusters * cs,
                        HostKind.REFCOUNT_TABLE, "refcount table")
        crypt = im.encryption_extension
        if crypt is not None and len(crypt.data) >= 16:
            coff, clen = struct.unpack_from(">QQ", crypt.data)
            self.inc_region(coff, clen, HostKind.ENCRYPTION_HEADER, "encryption header")
        self._walk_bitmaps()
        self._walk_refblocks()
        if self.progress is not None:
            self.progress(self._total, self._total)
        return self.r

    def _read_l1(self, offset: int, size: int) -> np.ndarray:
        t = self._l1_cache.get((offset, size))
        if t is None:
            t = read_table_in_file(self.im.file, offset, size)
            self._l1_cache[(offset, size)] = t
        return t

    def _walk_l1(self, l1_offset: int, l1_size: int, snap) -> None:
        """check_refcounts_l1 (and check_oflag_copied for the active table)."""
        if not l1_size:
            return
        active = snap is None
        name = "L1 table" if active else f"snapshot {snap.name!r} L1 table"
        self.inc_region(l1_offset, l1_size * 8,
                        HostKind.L1_TABLE if active else HostKind.SNAPSHOT_L1_TABLE, name)
        l1 = self._read_l1(l1_offset, l1_size)
        idx = np.flatnonzero(l1 != 0)
        if len(idx) == 0:
            return
        ent = l1[idx]
        entry_offs = l1_offset + 8 * idx.astype(np.int64)
        bad = (ent & U64(C.L1E_RESERVED_MASK)) != 0
        for i in self._listed(np.nonzero(bad)[0]):
            l2o = int(ent[i]) & C.L1E_OFFSET_MASK
            self._corrupt("reserved_bits", l2o >> self.cb,
                          f"{name} entry {int(idx[i])} has reserved bits set "
                          f"({int(ent[i]):#018x})", int(entry_offs[i]),
                          facts={"l1_index": int(idx[i]), "l1_entry": int(ent[i])})
        l2_offsets = (ent & U64(C.L1E_OFFSET_MASK)).astype(np.int64)
        sname = None if active else snap.name
        self.r.l2_groups.append((l2_offsets, idx, entry_offs, sname))
        # L2 table clusters first, in L1 order, exactly as QEMU marks them
        # (it interleaves them with the L2 contents, which does not change counts)
        self.inc_regions(l2_offsets, np.full(len(idx), self.cs),
                         HostKind.L2_TABLE if active else HostKind.SNAPSHOT_L2_TABLE,
                         "L2 table", entry_offs)
        mis = (l2_offsets & (self.cs - 1)) != 0
        for i in self._listed(np.nonzero(mis)[0]):
            self._corrupt("misaligned_offset", int(l2_offsets[i]) >> self.cb,
                          f"{name} entry {int(idx[i])}: L2 table offset "
                          f"{int(l2_offsets[i]):#x} is not cluster aligned",
                          int(entry_offs[i]),
                          facts={"l1_index": int(idx[i]), "l1_entry": int(ent[i])})
        if self.want_ranges:
            lo_all = np.full(len(idx), np.iinfo(np.int64).max, dtype=np.int64)
            hi_all = np.full(len(idx), -1, dtype=np.int64)
            self.r.l2_lo.append(lo_all)
            self.r.l2_hi.append(hi_all)
        # a table wholly past the end of the file reads as zeros and references
        # nothing: not read at all (garbage L1 entries can name a million of them)
        live = np.flatnonzero(l2_offsets < self.file_size)
        if len(live) < len(idx):
            self._tick(len(idx) - len(live))
        per_batch = max(1, BATCH_ENTRIES // self.im.l2_size)
        copied = active and self.check_copied
        jobs = []
        for b in range(0, len(live), per_batch):
            batch = live[b:b + per_batch]
            # an entry with flag bits only: its "table" is the header cluster, which
            # QEMU walks for references but not for COPIED flags (offset 0 skipped)
            hdr = l2_offsets[batch] == 0
            parts = [(rows, cp, h) for rows, cp, h in ((batch[~hdr], copied, False),
                                                       (batch[hdr], False, True)) if len(rows)]
            for k, (rows, cp, h) in enumerate(parts):
                tick = len(batch) if k == len(parts) - 1 else 0
                jobs.append((l2_offsets[rows], (rows, cp, tick, h)))
        guest = self.guest if active else None
        stream = self.reader.stream(jobs)
        try:
            for (rows, cp, tick, h), raw, bm, contig in stream:
                if guest is not None and not h:
                    guest.add(idx[rows], raw, bm, contig)
                got = self._walk_l2_batch(raw, bm, l2_offsets[rows], active, sname, cp,
                                          contig)
                if got is not None:
                    lo_all[rows], hi_all[rows] = got
                if tick:
                    self._tick(tick)
        finally:
            stream.close()      # its reader thread ends now, not when a traceback goes
        if active and self.check_copied:
            # after the tables: most of them lie where their COPIED test saw refcount 1
            self._copied_l1(ent, l2_offsets, entry_offs, idx)

    def _copied_l1(self, ent, l2_offsets, entry_offs, idx) -> None:
        have = l2_offsets != 0
        if not have.any():
            return
        clusters = (l2_offsets[have] >> self.cb).astype(U64)
        seen = self.r.seen_ones(clusters)
        rc = np.ones(len(clusters), dtype=np.uint64)
        ok = np.ones(len(clusters), dtype=bool)
        if not seen.all():
            rc[~seen], ok[~seen] = self.disk.lookup(clusters[~seen])
        copied = (ent[have] & U64(C.QCOW_OFLAG_COPIED)) != 0
        wrong = ok & ((rc == 1) != copied)
        for j in np.nonzero(wrong)[0].tolist():
            o = int(l2_offsets[have][j])
            e = int(entry_offs[have][j])
            self.r.copied_corruptions += 1
            self.r.copied_entries.append((e, int(ent[have][j]), True,
                                          self.im.header.l1_table_offset))
            self._corrupt("copied_flag_wrong_l1", o >> self.cb,
                          f"L1 entry {int(idx[have][j])} at {e:#x}: COPIED flag "
                          f"{'set' if copied[j] else 'clear'} but the L2 table at {o:#x} "
                          f"has refcount {int(rc[j])}", e,
                          facts={"l1_index": int(idx[have][j]), "l1_entry": int(ent[have][j]),
                                 "refcount": int(rc[j])})

    def _walk_bitmaps(self) -> None:
        """qcow2_check_bitmaps_refcounts (bitmaps count only when the autoclear bit
        says they are consistent; otherwise QEMU ignores the extension)."""
        im = self.im
        if not im.bitmaps or not im.bitmaps_consistent:
            return
        ext = next(e for e in im.extensions if e.type == EXT_BITMAPS)
        _, _, dsize, doff = struct.unpack_from(">IIQQ", ext.data)
        self.inc_region(doff, dsize, HostKind.BITMAP_DIRECTORY, "bitmap directory")
        for b in im.bitmaps:
            name = f"bitmap {b.name!r} table"
            self.inc_region(b.bitmap_table_offset, b.bitmap_table_size * 8,
                            HostKind.BITMAP_TABLE, name, b.offset)
            t = read_table_in_file(im.file, b.bitmap_table_offset, b.bitmap_table_size)
            offs = t & U64(BME_TABLE_ENTRY_OFFSET_MASK)
            bad = ((t & U64(BME_TABLE_ENTRY_RESERVED_MASK)) != 0) | (
                (offs != 0) & (((t & U64(1)) != 0) | ((offs & U64(self.cs - 1)) != 0)))
            eo = b.bitmap_table_offset + 8 * np.arange(len(t), dtype=np.int64)
            for i in np.nonzero(bad)[0].tolist():
                self._corrupt("invalid_bitmap_entry", int(offs[i]) >> self.cb,
                              f"{name} entry {i} ({int(t[i]):#018x}) is invalid",
                              int(eo[i]))
            use = ~bad & (offs != 0)
            self.inc_regions(offs[use], np.full(int(use.sum()), self.cs), HostKind.BITMAP_DATA,
                             f"bitmap {b.name!r} data", eo[use])

    def _walk_refblocks(self) -> None:
        """check_refblocks: each refcount block must be referenced exactly once."""
        im, r, cs = self.im, self.r, self.cs
        rt = im.refcount_table
        if self._refblocks_at_once(rt):
            return
        rto = im.header.refcount_table_offset
        shared: list[tuple[int, int, int, int, int]] = []
        for i in np.nonzero(rt)[0].tolist():
            raw = int(rt[i])
            off = raw & C.REFT_OFFSET_MASK
            cluster = off >> self.cb
            eo = rto + 8 * i
            self._tick()
            if raw & REFT_RESERVED_MASK:
                self._corrupt("reserved_bits", cluster, f"refcount table entry {i} has "
                              f"reserved bits set ({raw:#018x})", eo,
                              facts={"reftable_index": i, "reftable_entry": raw})
                r.rebuild = True
                continue
            if off & (cs - 1):
                self._corrupt("misaligned_offset", cluster, f"refcount block {i} at "
                              f"{off:#x} is not cluster aligned", eo,
                              facts={"reftable_index": i, "reftable_entry": raw})
                r.rebuild = True
                continue
            if cluster >= r.nb_clusters:
                self._corrupt("past_end_of_file", cluster, f"refcount block {i} at "
                              f"{off:#x} lies outside the image", eo,
                              facts={"reftable_index": i, "reftable_entry": raw})
                continue
            if off:
                self.inc_region(off, cs, HostKind.REFCOUNT_BLOCK, f"refcount block {i}", eo)
                after = r.ref(cluster)          # as QEMU sees it right after this one
                if min(after, r.refcount_max) != 1:
                    shared.append((i, off, cluster, eo, after))
        self._find_overlaps()
        for i, off, cluster, eo, after in shared:
            kind = ("metadata_overlap" if cluster in r.overlap_clusters
                    else "refcount_block_shared")
            self._corrupt(kind, cluster, f"refcount block {i} at {off:#x} is referenced "
                          f"{after} times", eo, references=after,
                          facts={"reftable_index": i, "reftable_entry": int(rt[i])})
            r.rebuild = True

    def _refblocks_at_once(self, rt: np.ndarray) -> bool:
        """:meth:`_walk_refblocks` in one step for the usual image: every block named
        cleanly (no reserved bits, aligned, inside the file) in a cluster of its own
        that nothing referenced before, so each is referenced exactly once and there
        is nothing to report.  False (nothing done): the walk goes block by block."""
        used = np.flatnonzero(rt != 0)
        raw = rt[used]
        off = raw & U64(C.REFT_OFFSET_MASK)
        if (not len(used) or (raw & U64(REFT_RESERVED_MASK)).any() or (off == 0).any()
                or (off & U64(self.cs - 1)).any() or int(off.max()) >= self.file_size):
            return False
        cl = (off >> U64(self.cb)).astype(np.int64)
        srt = np.sort(cl)
        if int(srt[-1]) >= self.r.nb_clusters or (srt[1:] == srt[:-1]).any():
            return False
        self._grow(int(cl.max()))
        if self.r.refs[cl].any():
            return False
        self._mark(cl, HostKind.REFCOUNT_BLOCK)
        self._tick(len(used))
        self._find_overlaps()
        return True

    def _find_overlaps(self) -> None:
        """Clusters that metadata shares with something of another kind (other
        metadata, or guest data: more references than metadata ones).  L2 tables of
        the active L1 and of snapshots are one kind here."""
        if not self._meta_marks:
            return
        cl = np.concatenate([m[0] for m in self._meta_marks])
        kd = np.concatenate([np.full(len(m[0]), m[1], dtype=np.uint8)
                             for m in self._meta_marks])
        kd[kd == HostKind.SNAPSHOT_L2_TABLE] = HostKind.L2_TABLE
        order = np.argsort(cl, kind="stable")
        cl, kd = cl[order], kd[order]
        starts = np.flatnonzero(np.r_[True, cl[1:] != cl[:-1]])
        u = cl[starts]
        n_meta = np.diff(np.r_[starts, len(cl)])
        mixed = np.maximum.reduceat(kd, starts) != np.minimum.reduceat(kd, starts)
        other = self.r.refs_at(u).astype(np.int64) > n_meta
        hit = u[mixed | other]
        self.r.overlap_clusters.update(hit[:MAX_OVERLAPS].tolist())
        self.r.metadata_overlaps.update(u[mixed][:MAX_OVERLAPS].tolist())
