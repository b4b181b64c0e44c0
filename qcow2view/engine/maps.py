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

import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import clusters as C
from .bitmaps import BME_TABLE_ENTRY_OFFSET_MASK
from .extensions import EXT_BITMAPS
from .guestmap import (MAX_GUEST_ENTRIES, GuestMap, active_builder,  # noqa: F401
                       guest_map)
from .kinds import GUEST_KIND_RANK, HOST_KIND_SEVERITY, GuestKind, HostKind  # noqa: F401
from .refscan import (BATCH_ENTRIES, Cancel, DiskRefcounts, Progress, Scanner,
                      read_table_in_file, read_tables)

U64 = np.uint64


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


# -- host map -------------------------------------------------------------------------
TAIL_SHOWN = 1 << 16     # free clusters at the end of the file mapped before summarising


def host_map(image, progress: Progress = None, cancel: Cancel = None) -> HostMap:
    """The host map; its cost follows the clusters referenced or refcounted (one
    byte of kind and one of references each), not the file's length."""
    nb = -(-image.file.size // image.cluster_size)
    disk = DiskRefcounts(image, nb + 1, cancel)
    # the walk also checks COPIED flags, so that a check right after (the GUI
    # does both) can reuse it instead of walking the image again, and builds the
    # guest map from the tables it reads (each L2 table is read once for all three)
    guest = None if image.writable else active_builder(image)   # cached read-only only
    scan = Scanner(image, disk=disk, want_ranges=True, check_copied=True,
                   progress=progress, cancel=cancel, guest=guest).run()
    if guest is not None:
        gm = guest.finish(cancel=cancel)
        image._cached_map(("guest", None, True), lambda: gm)
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
        nz = np.flatnonzero(blk[lo - rti * per:] != 0)
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
    out = _metadata_owners(image, tables, c)
    want = int(hm.references[c]) if c < len(hm.references) else 0
    if len(out) < want:
        out += _data_owners(image, tables, c, lo, hi, want - len(out))
    return out


def _metadata_owners(image, tables: tuple, c: int) -> list[Owner]:
    """The header fields and table entries that point at host cluster ``c``."""
    cs = image.cluster_size
    h = image.header
    out: list[Owner] = []
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
    return out


def _data_owners(image, tables: tuple, c: int, lo: np.ndarray, hi: np.ndarray,
                 want: int) -> list[Owner]:
    """L2 entries whose data or compressed bytes lie in host cluster ``c``: the L2
    tables scanned with numpy until ``want`` references are found."""
    cs = image.cluster_size
    offs, l1i, _, names = tables
    out: list[Owner] = []
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
        data = C.has_host_clusters(raw)
        first = np.where(data, off // U64(cs), U64(0))
        hit_d = data & ((first == U64(c)) | (((off + U64(cs - 1)) // U64(cs) == U64(c))
                                             & ((off & U64(cs - 1)) != 0)))
        coff, csize = layout.decode_array(raw)
        cend = coff + csize - U64(1)
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
