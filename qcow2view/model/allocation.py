"""The cluster-allocation picture: HostMap/GuestMap as indexed-colour images.

One cell per host cluster (modes ``kind`` and ``refcount``) or per guest cluster
(mode ``guest``), laid out row by row.  When there are more clusters than cells
they are binned and each bin shows its most severe member, so one leaked or
corrupt cluster among millions still shows red.  Every mode uses one shared
256-entry palette (:data:`PALETTE`), so a view sets its lookup table once.

Memory: nothing here holds a per-cluster array of its own.  The ``kind`` mode
reads the host map's kinds, the ``guest`` mode one byte per guest map entry,
and the ``refcount`` mode is computed a chunk at a time from the kinds and the
refcounts (which the engine reads from the refcount blocks), both when binning
a picture and for the few clusters a hover or a zoom asks about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QColor, QImage

from ..engine.kinds import GUEST_KIND_RANK, HOST_KIND_SEVERITY, GuestKind, HostKind
from .units import human_size

MODES = ("kind", "refcount", "guest", "fs")
MODE_TITLES = {"kind": "Host clusters by kind", "refcount": "Host clusters by refcount",
               "guest": "Guest clusters", "fs": "Guest clusters by what the guest keeps there"}
GUEST_MODES = ("guest", "fs")      # one cell per guest cluster (the guest map's entries)

# what a host cluster holds (the engine's HostKind) -> name, colour
HOST_KINDS: dict[HostKind, tuple[str, str]] = {
    HostKind.FREE: ("free", "#eceff1"),
    HostKind.HEADER: ("header", "#263238"),
    HostKind.L1_TABLE: ("L1 table", "#6a1b9a"),
    HostKind.L2_TABLE: ("L2 table", "#ab47bc"),
    HostKind.REFCOUNT_TABLE: ("refcount table", "#e65100"),
    HostKind.REFCOUNT_BLOCK: ("refcount block", "#ffa726"),
    HostKind.SNAPSHOT_TABLE: ("snapshot table", "#00695c"),
    HostKind.SNAPSHOT_L1_TABLE: ("snapshot L1 table", "#26a69a"),
    HostKind.BITMAP_DIRECTORY: ("bitmap directory", "#5d4037"),
    HostKind.BITMAP_TABLE: ("bitmap table", "#8d6e63"),
    HostKind.BITMAP_DATA: ("bitmap data", "#d7ccc8"),
    HostKind.DATA: ("data", "#1e88e5"),
    HostKind.COMPRESSED: ("compressed", "#43a047"),
    HostKind.LEAKED: ("leaked", "#ff5252"),
    HostKind.CORRUPT: ("corrupt", "#b71c1c"),
    HostKind.ENCRYPTION_HEADER: ("encryption header", "#fdd835"),
    HostKind.SNAPSHOT_L2_TABLE: ("snapshot L2 table", "#80cbc4"),
}
LEAKED, CORRUPT = HostKind.LEAKED, HostKind.CORRUPT
# a refcount past the end of the file (a truncated image): the engine's host map
# marks it LEAKED, but qemu-img check compares refcounts only up to the end of the
# file (or the last cluster referenced), so it is no leak there; its own colour
PAST_EOF = 20
PAST_EOF_NAME = "refcount past end of file"
PAST_EOF_COLOUR = "#f8bbd0"

RC_BASE = 32
REFCOUNT_CLASSES = [("refcount 0", "#eceff1"), ("refcount 1", "#1e88e5"),
                    ("refcount 2", "#fbc02d"), ("refcount 3+", "#8e24aa")]

GUEST_BASE = 64
# what backs a guest cluster (the engine's GuestKind) -> name, colour; BACKING is
# split by depth below
GUEST_STATES: dict[GuestKind, tuple[str, str]] = {
    GuestKind.UNALLOCATED: ("unallocated", "#eceff1"),
    GuestKind.ZERO: ("zero", "#cfd8dc"),
    GuestKind.DATA: ("data", "#1e88e5"),
    GuestKind.COMPRESSED: ("compressed", "#43a047"),
    GuestKind.MIXED: ("mixed sub-clusters", "#7e57c2"),
}
BACKING_BASE = 80
BACKING_COLOURS = ["#ffb74d", "#fb8c00", "#ef6c00", "#bf360c"]   # depth 1, 2, 3, 4+
# mode "fs": the guest index's WHAT codes (qcow2view.guest.index.WHAT, in that order)
FS_BASE = 96
FS_CLASSES = [("unpartitioned", "#eceff1"), ("partition table", "#263238"),
              ("free in the filesystem", "#c5e1a5"), ("filesystem metadata", "#8e24aa"),
              ("file data", "#1e88e5")]
PAST_END = 255
SEGMENT_CHUNK = 1 << 20
MAX_SEGMENTS = 50000
PAST_END_COLOUR = "#00000000"


def _palette() -> np.ndarray:
    lut = np.zeros((256, 4), dtype=np.uint8)
    lut[:, 3] = 255

    def put(i: int, colour: str) -> None:
        c = QColor(colour)
        lut[i] = (c.red(), c.green(), c.blue(), c.alpha())

    for k, (_, col) in HOST_KINDS.items():
        put(k, col)
    put(PAST_EOF, PAST_EOF_COLOUR)
    for i, (_, col) in enumerate(REFCOUNT_CLASSES):
        put(RC_BASE + i, col)
    for s, (_, col) in GUEST_STATES.items():
        put(GUEST_BASE + s, col)
    for i, col in enumerate(BACKING_COLOURS):
        put(BACKING_BASE + i, col)
    for i, (_, col) in enumerate(FS_CLASSES):
        put(FS_BASE + i, col)
    put(PAST_END, PAST_END_COLOUR)
    return lut


PALETTE = _palette()


def colour(index: int) -> QColor:
    r, g, b, a = (int(v) for v in PALETTE[index])
    return QColor(r, g, b, a)


@dataclass(frozen=True)
class Picture:
    """An index image: ``data[row, col]`` is a palette index."""

    mode: str
    data: np.ndarray        # uint8 (rows, width), C-contiguous
    width: int              # cells per row
    bin: int                # clusters per cell
    count: int              # clusters in total
    cluster_size: int

    @property
    def rows(self) -> int:
        return self.data.shape[0]

    def clusters_of(self, row: int, col: int) -> range:
        k = row * self.width + col
        lo = k * self.bin
        return range(min(lo, self.count), min(lo + self.bin, self.count))

    def cell_of(self, cluster: int) -> tuple[int, int]:
        k = cluster // self.bin
        return divmod(k, self.width)


@dataclass(frozen=True)
class DetailPicture:
    """A finer picture of overview cells ``rows r0..r0+cells_rows, cols c0..c0+cells_cols``
    of ``base``: each overview cell split into ``sub`` x ``sub`` sub-cells, row by row,
    sub-cell q holding clusters ``[q*bin0//sub², (q+1)*bin0//sub²)`` of the cell (at
    least one), binned by severity like the overview.  With ``sub² >= bin0`` every
    sub-cell is a single cluster.  It covers the same place as the cells it refines,
    so zooming in stays where it was."""

    mode: str
    data: np.ndarray        # uint8 (cells_rows * sub, cells_cols * sub)
    base: Picture
    r0: int
    c0: int
    sub: int
    count: int
    cluster_size: int

    @property
    def rows(self) -> int:
        return self.data.shape[0]

    @property
    def width(self) -> int:
        return self.data.shape[1]

    @property
    def bin(self) -> int:
        """Clusters per sub-cell (at most)."""
        return max(1, -(-self.base.bin // (self.sub * self.sub)))

    def clusters_of(self, row: int, col: int) -> range:
        s, b = self.sub, self.base.bin
        S = s * s
        cr, sr = divmod(row, s)
        cc, sc = divmod(col, s)
        k = (self.r0 + cr) * self.base.width + self.c0 + cc
        q = sr * s + sc
        lo = q * b // S
        hi = max((q + 1) * b // S, lo + 1)
        n = self.count
        return range(min(k * b + lo, n), min(k * b + hi, n))

    def cell_of(self, cluster: int) -> tuple[int, int]:
        """(row, col) of the sub-cell holding ``cluster`` (may lie outside ``data``)."""
        s, b = self.sub, self.base.bin
        k, j = divmod(cluster, b)
        q = ((j + 1) * s * s - 1) // b
        r, c = divmod(k, self.base.width)
        return (r - self.r0) * s + q // s, (c - self.c0) * s + q % s


def auto_width(n: int) -> int:
    """Cells per row: about square, a power of two between 4 and 512."""
    if n <= 16:
        return 4
    return int(min(512, max(4, 1 << math.ceil(math.log2(math.sqrt(n))))))


def _bin_most_severe(values: np.ndarray, severity: np.ndarray, b: int) -> np.ndarray:
    """Per group of ``b`` values, the value whose severity is highest."""
    if b == 1:
        return values
    n = len(values)
    groups = -(-n // b)
    pad = groups * b - n
    v = np.concatenate([values, np.full(pad, values[-1] if n else 0, values.dtype)]) \
        if pad else values
    v = v.reshape(groups, b)
    sev = severity[v]
    pick = sev.argmax(axis=1)
    return v[np.arange(groups), pick]


def _host_severity() -> np.ndarray:
    """Binning order of host kinds: the engine's HOST_KIND_SEVERITY (corrupt > leaked >
    the rest > free), refined inside "the rest" so metadata shows through data."""
    base = np.zeros(256, dtype=np.uint16)
    base[:len(HOST_KIND_SEVERITY)] = np.asarray(HOST_KIND_SEVERITY, dtype=np.uint16)
    rank = np.full(256, 3, dtype=np.uint16)      # metadata of every kind
    rank[HostKind.FREE] = 0
    rank[HostKind.DATA] = 1
    rank[HostKind.COMPRESSED] = 2
    sev = base * 4 + rank
    sev[PAST_EOF] = sev[LEAKED] - 1         # shows through everything but damage
    return sev.astype(np.uint8)


CHUNK = 1 << 22     # clusters per pass when binning (bounded temporaries)


def refcount_indices(kinds: np.ndarray, refcounts) -> np.ndarray:
    """Refcount-mode palette indices of a run of clusters (leaks and corruption
    keep their kind's colour)."""
    kinds = np.asarray(kinds, dtype=np.uint8)
    idx = np.minimum(np.asarray(refcounts), 3).astype(np.uint8)
    idx += np.uint8(RC_BASE)
    bad = (kinds == LEAKED) | (kinds == CORRUPT)
    idx[bad] = kinds[bad]
    return idx


def counted_end(host_map) -> int:
    """Host clusters qemu-img check compares refcounts for: up to the end of the
    file, or past it up to the last cluster some table references (QEMU's
    in-memory refcount array grows to cover it).  The host map may go on past
    this with on-disk refcounts of a truncated image."""
    n = len(host_map.kinds)
    end = min(n, -(-host_map.file_size // host_map.cluster_size))
    if end >= n:
        return n
    past = np.flatnonzero(np.asarray(host_map.references[end:n]) != 0)
    return end + (int(past[-1]) + 1 if len(past) else 0)


def mode_indices(mode: str, host_map, guest_map, lo: int = 0, hi: int | None = None
                 ) -> np.ndarray:
    """Palette index per cluster ``lo..hi-1`` for ``mode`` (before binning); a view
    of the host map's kinds in mode ``kind``."""
    if mode == "kind":
        return np.asarray(host_map.kinds[lo:hi], dtype=np.uint8)
    if mode == "refcount":
        hi = len(host_map.kinds) if hi is None else hi
        return refcount_indices(host_map.kinds[lo:hi], host_map.refcounts[lo:hi])
    if mode == "guest":
        st = np.asarray(guest_map.states, dtype=np.uint8)
        idx = st + np.uint8(GUEST_BASE)
        back = st == GuestKind.BACKING
        if back.any():
            d = np.asarray(guest_map.depth, dtype=np.uint8)[back]
            idx[back] = np.where(d == 0, GUEST_BASE + GuestKind.UNALLOCATED,
                                 BACKING_BASE + np.minimum(d, 4) - 1).astype(np.uint8)
        return idx[lo:hi]
    raise ValueError(f"unknown mode {mode!r}")


def prepare(host_map, guest_map) -> dict:
    """What is cheap to have ahead, for a worker thread: the guest mode's indices
    (one byte per guest map entry) and class counts, and the mapping plot's
    segments.  The host modes' counts come with their first picture (one pass
    over the host clusters for both)."""
    indices, counts = {}, {}
    if guest_map is not None:
        indices["guest"] = mode_indices("guest", None, guest_map)
        counts["guest"] = _counts(indices["guest"])
    segments = {MAX_SEGMENTS: mapping_segments(guest_map)} if guest_map is not None else {}
    return {"indices": indices, "counts": counts, "segments": segments}


def _counts(idx: np.ndarray) -> np.ndarray:
    """bincount of a uint8 array in chunks (np.bincount makes an intp copy: 8x the size)."""
    out = np.zeros(256, dtype=np.int64)
    for lo in range(0, len(idx), SEGMENT_CHUNK):
        out += np.bincount(idx[lo:lo + SEGMENT_CHUNK], minlength=256)
    return out


class AllocationModel(QObject):
    """Host and guest maps as pictures, legends and hover texts."""

    changed = Signal()
    _namer = None       # set_namer: the guest's names for hover texts

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.host_map = None
        self.guest_map = None
        self._cache: dict[tuple, Picture] = {}
        self._fs: np.ndarray | None = None      # mode "fs": palette index per guest entry
        self._index: dict[str, np.ndarray] = {}
        self._counts: dict[str, np.ndarray] = {}
        self._segments: dict[int, tuple] = {}
        self._gen = 0       # bumped by set_maps: late prefetch results are dropped
        self._host_severity = _host_severity()
        self._counted_end = 0   # host clusters qemu-img check compares (counted_end)
        self._hidden_leaks: int | None = None   # leaks drawn as corrupt (overlaps)

    # -- content -----------------------------------------------------------------------
    def set_maps(self, host_map, guest_map, prepared: dict | None = None) -> None:
        """New maps; ``prepared`` is :func:`prepare` output computed off the GUI thread."""
        self._gen += 1
        self.host_map = host_map
        self.guest_map = guest_map
        self._counted_end = 0 if host_map is None else counted_end(host_map)
        self._hidden_leaks = None
        self._cache = {}
        self._index = dict((prepared or {}).get("indices", {}))
        self._counts = dict((prepared or {}).get("counts", {}))
        self._segments = dict((prepared or {}).get("segments", {}))
        self.changed.emit()

    def set_fs_classes(self, codes: np.ndarray | None) -> None:
        """Mode ``fs``: one WHAT code (:data:`FS_CLASSES` order) per guest map entry,
        from the guest index (None: not known, the mode is not available).  No
        :attr:`changed`: the other modes' pictures stand (a view showing ``fs`` redraws)."""
        self._fs = None if codes is None else np.asarray(codes, dtype=np.uint8) + np.uint8(
            FS_BASE)
        for key in [k for k in self._cache if k[0] == "fs"]:
            del self._cache[key]
        self._counts.pop("fs", None)

    def available(self, mode: str) -> bool:
        if mode == "fs":
            return self.guest_map is not None and self._fs is not None \
                and len(self._fs) == len(self.guest_map.states)
        return (self.guest_map if mode in GUEST_MODES else self.host_map) is not None

    def count(self, mode: str) -> int:
        m = self.guest_map if mode in GUEST_MODES else self.host_map
        if m is None:
            return 0
        return len(m.states) if mode in GUEST_MODES else len(m.kinds)

    def free_tail(self, mode: str) -> int:
        """Unused host clusters after the last one mapped, up to the end of the file
        (a sparse tail, summarised rather than drawn)."""
        if mode == "guest" or self.host_map is None:
            return 0
        return int(getattr(self.host_map, "free_tail", 0))

    # per-cluster palette indices, before binning, of clusters lo..hi-1
    def _indices(self, mode: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        if mode == "fs":
            return self._fs[lo:hi]
        if mode != "guest":
            got = mode_indices(mode, self.host_map, None, lo, hi)
            hi = len(self.host_map.kinds) if hi is None else hi
            if hi > self._counted_end:      # a refcount past the end of the file
                got = got.copy()
                a = max(0, self._counted_end - lo)
                tail = got[a:]
                tail[self.host_map.kinds[lo + a:hi] == LEAKED] = PAST_EOF
            return got
        got = self._index.get(mode)
        if got is None:
            gen = self._gen
            got = mode_indices(mode, None, self.guest_map)
            if gen == self._gen:
                self._index[mode] = got
        return got[lo:hi]

    def _mode_counts(self, mode: str) -> np.ndarray:
        got = self._counts.get(mode)
        if got is None:
            gen = self._gen
            n = self.count(mode)
            got = np.zeros(256, dtype=np.int64)
            for lo in range(0, n, CHUNK):
                got += _counts(self._indices(mode, lo, min(n, lo + CHUNK)))
            if gen == self._gen:
                self._counts[mode] = got
        return got

    def prefetch(self, requests, cancel=lambda: False, progress=None) -> None:
        """Compute pictures ahead (may run in a worker thread: numpy drops the GIL).

        ``requests`` are (mode, max_rows, width) tuples; results land in the cache,
        and ``progress(done, total)`` tells after each one (so a view can show the
        first while the others are binned).
        """
        for i, (mode, max_rows, width) in enumerate(requests):
            if cancel():
                return
            if self.available(mode):
                self.picture(mode, max_rows=max_rows, width=width)
                self._mode_counts(mode)
            if progress is not None:
                progress(i + 1, len(requests))

    def _severity(self, mode: str) -> np.ndarray:
        if mode == "kind":
            return self._host_severity
        sev = np.zeros(256, dtype=np.uint8)
        if mode == "fs":        # a cell shows file data if any cluster of it holds some
            sev[FS_BASE:FS_BASE + len(FS_CLASSES)] = np.arange(1, len(FS_CLASSES) + 1)
            return sev
        if mode == "refcount":
            for i in range(4):
                sev[RC_BASE + i] = i + 1
            sev[PAST_EOF] = 253
            sev[LEAKED] = 254
            sev[CORRUPT] = 255
        else:
            for kind in GuestKind:
                sev[GUEST_BASE + kind] = GUEST_KIND_RANK[kind] * 10
            for i in range(4):
                sev[BACKING_BASE + i] = GUEST_KIND_RANK[GuestKind.BACKING] * 10 + i
        return sev

    def cached_picture(self, mode: str, *, max_rows: int = 512, width: int | None = None
                       ) -> Picture | None:
        return self._cache.get((mode, max_rows, width))

    def picture(self, mode: str, *, max_rows: int = 512, width: int | None = None) -> Picture:
        """The index image of ``mode`` with at most ``max_rows`` rows of ``width`` cells."""
        key = (mode, max_rows, width)
        got = self._cache.get(key)
        if got is not None:
            return got
        gen = self._gen
        m = self.guest_map if mode in GUEST_MODES else self.host_map
        if m is None or not self.available(mode):
            raise LookupError(f"no map for mode {mode!r} yet")
        n = self.count(mode)
        w = width or auto_width(n)
        b = max(1, -(-n // (w * max_rows)))
        cells = -(-n // b)
        rows = max(1, -(-cells // w))
        data = np.full(rows * w, PAST_END, dtype=np.uint8)
        counts = np.zeros(256, dtype=np.int64) if mode not in self._counts else None
        sev = self._severity(mode)
        step = max(1, CHUNK // b) * b           # whole bins per pass
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            idx = self._indices(mode, lo, hi)
            data[lo // b:-(-hi // b)] = _bin_most_severe(idx, sev, b)
            if counts is not None:
                counts += _counts(idx)
        if counts is not None and gen == self._gen:
            self._counts[mode] = counts
        pic = Picture(mode, np.ascontiguousarray(data.reshape(rows, w)), w, b, n,
                      m.cluster_size)
        if gen == self._gen:
            self._cache[key] = pic
        return pic

    def detail(self, pic: Picture, r0: int, r1: int, c0: int, c1: int, sub: int
               ) -> DetailPicture:
        """Overview cells rows ``r0:r1``, cols ``c0:c1`` of ``pic`` at ``sub`` x ``sub``
        sub-cells each (see :class:`DetailPicture`).  Costs one pass over the clusters
        of those rows: numpy, most severe member per sub-cell with ``maximum.reduceat``."""
        w, b, n = pic.width, pic.bin, pic.count
        S = sub * sub
        rows, cols = r1 - r0, c1 - c0
        a = (r0 * w + c0) * b
        e = min(((r1 - 1) * w + c1) * b, n)
        idx = self._indices(pic.mode, a, e)
        # key = severity << 8 | index: the max of a sub-cell is its most severe member
        keys = np.empty(len(idx) + 1, dtype=np.uint16)
        keys[:-1] = self._severity(pic.mode)[idx]
        keys[:-1] <<= 8
        keys[:-1] |= idx
        keys[-1] = 0        # past the last cluster (marked below)
        k = (np.arange(r0, r1, dtype=np.int64)[:, None] * w
             + np.arange(c0, c1, dtype=np.int64)[None, :])
        lo = k[:, :, None] * b + (np.arange(S, dtype=np.int64) * b // S)[None, None, :]
        starts = lo.reshape(rows, cols * S) - a
        # each row's region ends where the columns outside it begin (a segment dropped below)
        gap = (np.arange(r0, r1, dtype=np.int64) * w + c1) * b - a
        starts = np.concatenate([starts, gap[:, None]], axis=1)
        starts = np.minimum(starts.ravel(), len(keys) - 1)
        got = np.maximum.reduceat(keys, starts).reshape(rows, -1)[:, :cols * S]
        cells = (got & 0xFF).astype(np.uint8)
        cells[(lo.reshape(rows, cols * S) >= n)] = PAST_END
        data = cells.reshape(rows, cols, sub, sub).transpose(0, 2, 1, 3).reshape(
            rows * sub, cols * sub)
        return DetailPicture(pic.mode, np.ascontiguousarray(data), pic, r0, c0, sub, n,
                             pic.cluster_size)

    # -- legend --------------------------------------------------------------------------
    def legend(self, mode: str) -> list[tuple[str, QColor, int]]:
        """(label, colour, number of clusters) for every class present (plus the basics)."""
        if not self.available(mode):
            return []
        counts = self._mode_counts(mode)
        out = []
        if mode in ("kind", "refcount"):
            # leaked as qemu-img check counts them: with the ones drawn as corrupt
            counts = counts.copy()
            counts[LEAKED] += self._leaks_drawn_corrupt()
        if mode == "kind":
            entries = [(k, name) for k, (name, _) in HOST_KINDS.items()]
            entries.insert(entries.index((LEAKED, "leaked")) + 1, (PAST_EOF, PAST_EOF_NAME))
            always = {0, 1, 11}
        elif mode == "refcount":
            entries = [(RC_BASE + i, name) for i, (name, _) in enumerate(REFCOUNT_CLASSES)]
            entries += [(LEAKED, "leaked"), (PAST_EOF, PAST_EOF_NAME), (CORRUPT, "corrupt")]
            always = {RC_BASE, RC_BASE + 1}
        elif mode == "fs":
            entries = [(FS_BASE + i, name) for i, (name, _) in enumerate(FS_CLASSES)]
            always = set()
        else:
            entries = [(GUEST_BASE + s, name) for s, (name, _) in GUEST_STATES.items()]
            entries += [(BACKING_BASE + i, f"backing file, depth {i + 1}" + ("+" if i == 3 else ""))
                        for i in range(4)]
            always = {GUEST_BASE + GuestKind.UNALLOCATED, GUEST_BASE + GuestKind.DATA}
        for i, name in entries:
            if counts[i] or i in always:
                out.append((name, colour(i), int(counts[i])))
        return out

    def _leaks_drawn_corrupt(self) -> int:
        """Clusters qemu-img check counts as leaked (refcount above the references)
        that the map draws as corrupt, the more severe thing they also are (metadata
        overlapping other metadata); read once per map, a chunk of kinds at a time."""
        got, gen, hm = self._hidden_leaks, self._gen, self.host_map
        if got is None:
            got = 0
            for lo in range(0, self._counted_end, CHUNK):
                hi = min(self._counted_end, lo + CHUNK)
                bad = lo + np.flatnonzero(hm.kinds[lo:hi] == CORRUPT)
                if len(bad):
                    rc = np.asarray(hm.refcounts[bad], dtype=np.uint64)
                    got += int((rc > np.asarray(hm.references[bad], dtype=np.uint64)).sum())
            if gen == self._gen:
                self._hidden_leaks = got
        return got

    # -- questions about one cell ----------------------------------------------------------
    def representative(self, pic: Picture, row: int, col: int) -> int | None:
        """The cluster a click on a cell means: the most severe one of its bin."""
        r = pic.clusters_of(row, col)
        if not len(r):
            return None
        if pic.bin == 1:
            return r.start
        idx = self._indices(pic.mode, r.start, r.stop)
        return r.start + int(self._severity(pic.mode)[idx].argmax())

    def owners(self, cluster: int) -> list:
        hm = self.host_map
        if hm is None or cluster >= len(hm.kinds):
            return []
        try:
            return list(hm.owners(cluster))
        except Exception:   # a damaged table met during the reverse lookup
            return []

    def describe(self, pic: Picture, row: int, col: int) -> str:
        """Tooltip text for a cell."""
        r = pic.clusters_of(row, col)
        if not len(r):
            return ""
        cs = pic.cluster_size
        lines = []
        if pic.bin > 1:
            lines.append(f"clusters {r.start:,} – {r.stop - 1:,} "
                         f"({r.start * cs:#x} – {r.stop * cs - 1:#x})")
            idx = self._indices(pic.mode, r.start, r.stop)
            counts = np.bincount(idx, minlength=256)
            names = self._names(pic.mode)
            parts = [f"{int(counts[i]):,} {names.get(i, str(i))}"
                     for i in np.argsort(-counts) if counts[i]]
            lines.append(", ".join(parts[:6]))
            rep = self.representative(pic, row, col)
            if rep is not None and self._severity(pic.mode)[idx[rep - r.start]] \
                    >= self._severity(pic.mode)[idx].max() and counts.astype(bool).sum() > 1:
                lines.append("")
                lines.append("most severe:")        # named too: a leak, what it held
                lines += self._named(pic.mode, rep) + self._describe_cluster(pic.mode, rep)
            return "\n".join(lines)
        return "\n".join(self._named(pic.mode, r.start)
                         + self._describe_cluster(pic.mode, r.start))

    def set_namer(self, namer) -> None:
        """``namer(mode, cluster) -> str | None``: what the guest keeps in a cluster
        ("host cluster 0x1a2b: guest 0x4c30000, partition 2 (ext4), /etc/fstab +0x0"),
        the first line of its hover text."""
        self._namer = namer

    def _named(self, mode: str, cluster: int) -> list[str]:
        text = self._namer(mode, cluster) if self._namer is not None else None
        return [text] if text else []

    def _names(self, mode: str) -> dict[int, str]:
        if mode == "kind":
            return {k: n for k, (n, _) in HOST_KINDS.items()} | {PAST_EOF: PAST_EOF_NAME}
        if mode == "refcount":
            d = {RC_BASE + i: n for i, (n, _) in enumerate(REFCOUNT_CLASSES)}
            d.update({LEAKED: "leaked", CORRUPT: "corrupt", PAST_EOF: PAST_EOF_NAME})
            return d
        if mode == "fs":
            return {FS_BASE + i: n for i, (n, _) in enumerate(FS_CLASSES)}
        d = {GUEST_BASE + s: n for s, (n, _) in GUEST_STATES.items()}
        d.update({BACKING_BASE + i: f"backing (depth {i + 1})" for i in range(4)})
        return d

    def _describe_cluster(self, mode: str, c: int) -> list[str]:
        if mode in GUEST_MODES:
            gm = self.guest_map
            cs = gm.cluster_size
            st = int(gm.states[c])
            name = GUEST_STATES.get(st, ("backing file", ""))[0]
            k = getattr(gm, "clusters_per_entry", 1)
            where = f"{c * cs:#x} – {(c + 1) * cs - 1:#x}"
            lines = ([f"guest cluster {c:,}: {where}"] if k == 1 else
                     [f"guest clusters {c * k:,} – {(c + 1) * k - 1:,}: {where}",
                      f"(a huge disk: one cell stands for {k:,} clusters and shows "
                      "the most significant of them)"]) + [f"state: {name}"]
            d = int(gm.depth[c])
            if st == 4:
                lines.append(f"found in backing file at depth {d}" if d
                             else "no backing file has it: reads as zeros")
            h = int(gm.host_offsets[c])
            if st in (2, 3) or h:
                lines.append(f"host offset: {h:#x}")
            return lines
        hm = self.host_map
        cs = hm.cluster_size
        kind = int(hm.kinds[c])
        try:        # read from the refcount block (the image may be closing meanwhile)
            rc = str(int(hm.refcounts[c]))
        except Exception:
            rc = "?"
        name = HOST_KINDS.get(kind, (str(kind), ""))[0]
        if kind == LEAKED and c >= self._counted_end:
            name = PAST_EOF_NAME + " (not a leak to qemu-img check)"
        lines = [f"host cluster {c:,} at {c * cs:#x}", f"kind: {name}",
                 f"refcount {rc}, references found {int(hm.references[c])}"]
        if c * cs >= hm.file_size:
            lines.append("past the end of the file")
        for o in self.owners(c)[:4]:
            where = o.table
            if o.snapshot:
                where += f" (snapshot {o.snapshot})"
            if o.entry_offset is not None:
                where += f" entry at {o.entry_offset:#x}"
            if o.guest_offset is not None:
                where += f", guest {o.guest_offset:#x}"
            lines.append("owner: " + where)
        return lines

    # -- rendering without a view (tests, ``qcow2view map``) ------------------------------
    def to_qimage(self, pic: Picture, scale: int = 1) -> QImage:
        data = pic.data
        if scale > 1:
            data = np.repeat(np.repeat(data, scale, axis=0), scale, axis=1)
        data = np.ascontiguousarray(data)
        h, w = data.shape
        img = QImage(data.data, w, h, w, QImage.Format_Indexed8)
        img.setColorTable([int.from_bytes(bytes((a, r, g, b)), "big")
                           for r, g, b, a in PALETTE.tolist()])
        return img.copy()   # own the pixels: ``data`` may go away

    # -- guest-to-host mapping plot ---------------------------------------------------------
    def mapping_segments(self, max_segments: int = None) -> tuple[np.ndarray, np.ndarray, int]:
        """Line segments of contiguous guest->host runs (see :func:`mapping_segments`)."""
        max_segments = max_segments or MAX_SEGMENTS
        got = self._segments.get(max_segments)
        if got is None:
            got = self._segments[max_segments] = mapping_segments(self.guest_map, max_segments)
        return got


def mapping_segments(gm, max_segments: int = MAX_SEGMENTS) -> tuple[np.ndarray, np.ndarray, int]:
    """Line segments (x0, y0, x1, y1 flattened as pairs) of contiguous guest->host runs.

    Returns (x, y, number of runs) in bytes; with more runs than
    ``max_segments`` every k-th run is kept so the picture stays fast.
    """
    if gm is None:
        return np.zeros(0), np.zeros(0), 0
    cs = gm.cluster_size
    states = np.asarray(gm.states)
    depth = np.asarray(gm.depth)
    hosts = np.asarray(gm.host_offsets, dtype=np.uint64)
    n = len(states)
    step = np.uint64(cs)
    starts_l: list[np.ndarray] = []
    ends_l: list[np.ndarray] = []
    # in chunks, so a 16-million-cluster disk never needs 16 million int64s at once
    for lo in range(0, n, SEGMENT_CHUNK):
        hi = min(n, lo + SEGMENT_CHUNK)
        a, b = max(lo - 1, 0), min(n, hi + 1)
        st = states[a:b]
        sel = ((st == 2) | (st == 3) | (st == 5)) & (depth[a:b] == 0)
        h = hosts[a:b]
        cont = np.zeros(b - a, dtype=bool)
        cont[1:] = sel[1:] & sel[:-1] & (h[1:] == h[:-1] + step)
        k = lo - a
        here = sel[k:k + hi - lo]
        nxt = np.zeros(hi - lo, dtype=bool)
        tail = cont[k + 1:k + 1 + hi - lo]
        nxt[:len(tail)] = tail
        starts_l.append(np.flatnonzero(here & ~cont[k:k + hi - lo]) + lo)
        ends_l.append(np.flatnonzero(here & ~nxt) + lo)
    starts = np.concatenate(starts_l) if starts_l else np.zeros(0, dtype=np.int64)
    ends = np.concatenate(ends_l) if ends_l else np.zeros(0, dtype=np.int64)
    if not len(starts):
        return np.zeros(0), np.zeros(0), 0
    runs = len(starts)
    if runs > max_segments:
        keep = np.linspace(0, runs - 1, max_segments).astype(np.int64)
        starts, ends = starts[keep], ends[keep]
    x = np.empty(2 * len(starts))
    y = np.empty(2 * len(starts))
    x[0::2] = starts.astype(np.float64) * cs
    x[1::2] = ends.astype(np.float64) * cs + cs
    y[0::2] = hosts[starts].astype(np.float64)
    # a summarised map (a huge disk) vouches for one image cluster in a lone entry
    lone = getattr(gm, "image_cluster_size", cs)
    y[1::2] = hosts[ends].astype(np.float64) + np.where(ends > starts, cs, lone)
    return x, y, runs


def describe_size(n: int) -> str:
    return human_size(n)
