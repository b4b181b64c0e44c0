"""One index per image: guest byte -> owner, and host cluster -> owners.

Build it once, in a worker thread if there is a GUI::

    idx = build_index(image, progress=cb)  # cb(done, total) -> False (or raise) cancels:
                                           # Cancelled is raised; a few seconds for 140k files
    top = build_top(image)                 # a first look: table, volumes, root directories
                                           #   only (~20 ms), for a tree to show meanwhile
    o = idx.owner(0x4c30000)               # Owner(offset, what="file data", partition=2,
                                           #   filesystem="ext4", path="/etc/hostname",
                                           #   file_offset=0, label=None, names=(...),
                                           #   volume=None)  -- a NamedTuple, ~2 us
    idx.ranges(start, length)              # [(guest offset, length, Owner)] across a range
    idx.what(offsets)                      # numpy uint8 WHAT code per offset (map colours)
    idx.find("/etc/hostname", partition=2) # [IndexedFile] (every filesystem if None)
    idx.paths(), idx.by_path()             # every path; (path, [IndexedFile]) pairs
    f.info.extents                         # (file offset, guest offset, length), FileInfo
    idx.host_owners(cluster)               # [(guest offset, length, Owner)] held by a host
                                           #   cluster of the image
    idx.disk                               # the GuestDisk: table, volumes, problems
    idx.volumes, idx.files                 # volumes (partitions, then their LVs) by id;
                                           #   IndexedFile by id
    idx.starts, idx.kind, idx.vol          # the merged ranges as numpy arrays (sorted
                                           #   starts; WHAT code; volume id or -1)

What a byte is (:data:`WHAT`, in the order codes are numbered): "unpartitioned",
"partition table", "free space" (in a partition, no file or metadata claims it),
"filesystem metadata" (a labelled region: superblock, inode table, FAT, MFT,
journal, a directory's blocks), "file data".  When ranges overlap the later kind
wins (file data over metadata over free space).  A file's last block counts as
its own (slack) although its extents stop at its size.

Hard links are keyed by (volume, inode): one :class:`IndexedFile` per file, with
every name in ``names``; ``owner`` reports the first name as ``path``.  Inline
(resident) data has no extents of its own: its bytes are inside the metadata
region that holds the inode or MFT record.

Lookups are a ``bisect`` over the sorted start offsets of the merged ranges;
:meth:`GuestIndex.what` is numpy ``searchsorted`` for many offsets at once.  An
index never changes after it is built, so any thread may read it.  It keeps the
Image only for :meth:`host_owners`, which reads the engine's guest map (built on
first use, cached by the engine; a read-only image's map may be built in a
worker).  Everything here is plain Python and numpy: no Qt.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
from array import array
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from .disk import GuestDisk, GuestVolume, read_disk
from .files import Cancelled, FileInfo

WHAT = ("unpartitioned", "partition table", "free space", "filesystem metadata", "file data")
UNPARTITIONED, PARTITION_TABLE, FREE, METADATA, FILE_DATA = range(5)
#: the label of blocks the allocation map says are in use that no file's data or named
#: structure claims (directories the library gives no extents, extent tree and
#: attribute blocks)
IN_USE = "in use (directory, extent tree or attributes)"

__all__ = ["WHAT", "Owner", "IndexedFile", "GuestIndex", "build_index", "build_top",
           "Cancelled"]


class Owner(NamedTuple):
    """What holds one guest byte (the keys are those of ``qcow2view-cli owner``).
    A NamedTuple: made on every hover, it must be cheap to build."""

    offset: int
    what: str
    partition: int | None = None        # partition index (LVs: their PV's partition)
    filesystem: str | None = None       # blkid TYPE
    path: str | None = None             # file (or directory) path, first name
    file_offset: int | None = None
    label: str | None = None            # metadata region label ("inode table", "MFT")
    names: tuple[str, ...] = ()         # every name of the file (hard links)
    volume: str | None = None           # LVM logical volume "vg/lv"

    def as_json(self) -> dict:
        return {"offset": self.offset, "what": self.what, "partition": self.partition,
                "filesystem": self.filesystem, "path": self.path,
                "file_offset": self.file_offset}


@dataclass(slots=True)
class IndexedFile:
    """One file of one filesystem, with every name it has."""

    id: int
    volume: GuestVolume
    info: FileInfo                      # the first name's entry
    names: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.info.path


class GuestIndex:
    """Sorted, non-overlapping ranges covering the guest disk, each with its owner."""

    def __init__(self, disk: GuestDisk, image=None) -> None:
        self.disk = disk
        self.image = image
        self.files: list[IndexedFile] = []
        self.volumes: list[GuestVolume] = [s for v in disk.volumes
                                           for s in [v] + v.logical_volumes]
        self._by_path: dict[str, list[IndexedFile]] = {}
        # per volume id: sorted inodes, their file ids, and the record tables
        self._records: dict[int, tuple] = {}
        self._regions: list[str] = []
        self._build()

    # -- building ---------------------------------------------------------------------
    def _build(self) -> None:
        # intervals: start, end, kind, volume id, ref (file id / region label id),
        # file offset, and whether ref is a file id; compact arrays, not lists of ints
        S, E, F = array("q", [0]), array("q", [self.disk.size]), array("q", [0])
        K, T = array("b", [UNPARTITIONED]), array("b", [0])
        V, R = array("i", [-1]), array("i", [-1])

        def add(s, n, k, v, r, f=0, is_file=0):
            if n > 0:
                S.append(s), E.append(s + n), K.append(k), V.append(v), R.append(r)
                F.append(f), T.append(is_file)

        labels: dict[str, int] = {}

        def label_id(text: str) -> int:
            if text not in labels:
                labels[text] = len(self._regions)
                self._regions.append(text)
            return labels[text]

        for r in self.disk.table.regions:
            add(r.start, r.length, PARTITION_TABLE, -1, label_id(r.label))
        for vi, gv in enumerate(self.volumes):
            for _v, g, n in gv.volume.pieces:
                add(g, n, FREE, vi, -1)
            for r in gv.regions:
                add(r.start, r.length, METADATA, vi, label_id(r.label))
            fs = gv.filesystem
            if fs is None:
                continue
            for r in fs.metadata:
                add(r.start, r.length, METADATA, vi, label_id(r.label))
            if fs.allocated:
                in_use = label_id(IN_USE)
                for g, n in fs.allocated:
                    add(g, n, METADATA, vi, in_use, 0, 2)
            self._add_files(gv, vi, fs, S, E, K, V, R, F, T)
        # per volume id: (partition index, filesystem type, LV name) for owners
        self._vol_names = [(gv.partition.index, gv.filesystem.type if gv.filesystem else None,
                            gv.lv_name) for gv in self.volumes]
        self._merge(*(np.frombuffer(a, dt) for a, dt in
                      ((S, np.int64), (E, np.int64), (K, np.int8), (V, np.int32),
                       (R, np.int32), (F, np.int64), (T, np.int8))))

    def _add_files(self, gv, vi, fs, S, E, K, V, R, F, T) -> None:
        """The files of one filesystem: one IndexedFile per inode, its extents as
        intervals (the hot loop of a build: methods bound once, a few calls per file;
        the extents become intervals in one numpy pass after it)."""
        files, by_path = self.files, self._by_path
        by_inode: dict[int, IndexedFile] = {}
        inos, fids = array("q"), array("q")      # every file's inode, for record_owner
        ino_add, fid_add = inos.append, fids.append
        exts: list[tuple[int, int, int]] = []    # every extent, file by file
        counts, owners, kinds = array("q"), array("q"), array("b")     # per file with extents
        ext_add, count_add, owner_add, kind_add = (exts.extend, counts.append, owners.append,
                                                   kinds.append)
        shared_names = fs.type == "ntfs"        # NTFS link counts come from the names
        for info in fs.files:
            linked = info.links > 1 or shared_names
            f = by_inode.get(info.inode) if linked else None
            if f is None:
                fid = len(files)
                f = IndexedFile(fid, gv, info, [info.path])   # a literal: no spare slots
                files.append(f)
                ino_add(info.inode), fid_add(fid)
                if linked:
                    by_inode[info.inode] = f
                ext = info.extents
                if ext:
                    ext_add(ext), count_add(len(ext)), owner_add(fid)
                    kind_add(METADATA if info.type == "dir" or info.system else FILE_DATA)
            else:
                f.names.append(info.path)
            got = by_path.get(info.path)
            if got is None:
                by_path[info.path] = [f]
            else:
                got.append(f)
        if exts:
            _extent_intervals(exts, counts, owners, kinds, vi, max(1, fs.block_size),
                              S, E, K, V, R, F, T)
        ino = np.frombuffer(inos, np.int64)
        order = np.argsort(ino, kind="stable")
        tables = sorted(fs.record_tables)
        self._records[vi] = (array("q", ino[order].tobytes()),
                             array("q", np.frombuffer(fids, np.int64)[order].tobytes()),
                             [t[0] for t in tables], tables)

    def _merge(self, S, E, K, V, R, F, T) -> None:
        """Paint the intervals, higher kind over lower, into non-overlapping ranges
        (vectorised: per kind, the interval that starts last at or before each
        elementary segment, else the one reaching furthest, covers it)."""
        np.clip(S, 0, self.disk.size, out=S)
        np.clip(E, 0, self.disk.size, out=E)
        keep = E > S
        if not keep.all():
            S, E, K, V, R, F, T = (a[keep] for a in (S, E, K, V, R, F, T))
        bp = np.unique(np.concatenate([S, E]))
        seg = bp[:-1]
        owner = np.full(len(seg), -1, np.int64)
        # paint levels: each kind in WHAT order, and under the other metadata the
        # blocks a filesystem's allocation map says are in use (T == 2)
        levels = [K == k for k in range(len(WHAT))]
        levels[METADATA:METADATA + 1] = [(K == METADATA) & (T == 2), (K == METADATA) & (T != 2)]
        for level in levels:
            ids = np.nonzero(level)[0]
            if len(ids) == 0:
                continue
            o = ids[np.argsort(S[ids], kind="stable")]
            s_k, e_k = S[o], E[o]
            j = np.searchsorted(s_k, seg, side="right") - 1
            ok = j >= 0
            jj = np.where(ok, j, 0)
            direct = ok & (e_k[jj] > seg)
            run_max = np.maximum.accumulate(e_k)
            reach = np.maximum.accumulate(np.where(e_k == run_max, np.arange(len(e_k)), 0))
            far = ok & ~direct & (run_max[jj] > seg)
            owner[direct] = o[jj[direct]]
            owner[far] = o[reach[jj[far]]]
        change = np.nonzero(np.diff(owner, prepend=-2))[0]
        self.starts = seg[change]
        own = owner[change]
        self.kind = K[own].astype(np.uint8)
        self.vol = V[own]
        self.ref = R[own]
        self.base = S[own]                  # the interval's own start, for file offsets
        self.foff = F[own]
        self.isfile = T[own] == 1
        # scalar lookups read these (a list for bisect, compact arrays for the rest:
        # indexing them is several times cheaper than indexing numpy arrays)
        self._starts_list = self.starts.tolist()
        self._row = tuple(array(c, a.tobytes()) for c, a in (
            ("B", self.kind), ("i", self.vol), ("i", self.ref), ("q", self.base),
            ("q", self.foff), ("b", self.isfile.astype(np.int8))))

    # -- questions --------------------------------------------------------------------
    def owner(self, offset: int) -> Owner:
        """What holds guest byte ``offset``."""
        if not 0 <= offset < self.disk.size:
            raise ValueError(f"guest offset {offset} lies outside the {self.disk.size}-byte disk")
        i = bisect.bisect_right(self._starts_list, offset) - 1
        return self._owner_at(i, offset)

    def _owner_at(self, i: int, offset: int) -> Owner:
        kind, vol, ref, base, foff, isfile = self._row
        k = kind[i]
        v = vol[i]
        if v < 0:
            label = self._regions[ref[i]] if k == PARTITION_TABLE else None
            return Owner(offset, WHAT[k], None, None, None, None, label)
        part, fstype, lv = self._vol_names[v]
        r = ref[i]
        if isfile[i]:
            f = self.files[r]
            info = f.info
            if k == FILE_DATA and not info.system:          # the common case, kept short
                return Owner(offset, "file data", part, fstype, info.path,
                             foff[i] + offset - base[i], None, tuple(f.names), lv)
            if info.system and info.inode == 0 and fstype == "ntfs":    # $MFT: whose record
                number, rf = self.record_owner(v, offset)
                if rf is not None:
                    return Owner(offset, WHAT[k], part, fstype, rf.path, None,
                                 f"MFT, record {number}", tuple(rf.names), lv)
            label = ("directory" if info.type == "dir" else
                     info.path.lstrip("/") if info.system else None)
            return Owner(offset, WHAT[k], part, fstype, info.path,
                         foff[i] + offset - base[i], label, tuple(f.names), lv)
        label = self._regions[r] if k == METADATA else None
        if label in ("inode table", "inode chunk", "MFT"):
            number, f = self.record_owner(v, offset)
            if number is not None:
                label = f"{label}, {'record' if label == 'MFT' else 'inode'} {number}"
                if f is not None:
                    return Owner(offset, WHAT[k], part, fstype, f.path, None, label,
                                 tuple(f.names), lv)
        return Owner(offset, WHAT[k], part, fstype, None, None, label, (), lv)

    def record_owner(self, vol: int, offset: int) -> tuple[int | None, IndexedFile | None]:
        """The inode (MFT record) number whose bytes hold guest ``offset`` in volume
        ``vol``, and the file it belongs to (None: unused, or not reached)."""
        rec = self._records.get(vol)
        if rec is None:
            return None, None
        inos, fids, starts, tables = rec
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            return None, None
        g, first, each, count = tables[i]
        k = (offset - g) // each
        if k >= count:
            return None, None
        number = first + k
        j = bisect.bisect_left(inos, number)
        f = self.files[fids[j]] if j < len(inos) and inos[j] == number else None
        return number, f

    def file_at(self, offset: int) -> IndexedFile | None:
        """The file whose data (or directory blocks) hold guest byte ``offset``."""
        if not 0 <= offset < self.disk.size:
            return None
        i = bisect.bisect_right(self._starts_list, offset) - 1
        _k, _v, ref, _b, _f, isfile = self._row
        return self.files[ref[i]] if isfile[i] else None

    def what(self, offsets: np.ndarray) -> np.ndarray:
        """WHAT codes (uint8) for many guest offsets at once."""
        i = np.searchsorted(self.starts, np.asarray(offsets, np.int64), side="right") - 1
        return self.kind[np.clip(i, 0, len(self.kind) - 1)]

    def ranges(self, start: int, length: int) -> list[tuple[int, int, Owner]]:
        """(guest offset, length, owner) of each owner in ``start..start+length``."""
        end = min(self.disk.size, start + length)
        out = []
        i = max(0, bisect.bisect_right(self._starts_list, start) - 1)
        while i < len(self._starts_list) and self._starts_list[i] < end:
            lo = max(start, self._starts_list[i])
            hi = min(end, self._starts_list[i + 1] if i + 1 < len(self._starts_list)
                     else self.disk.size)
            if hi > lo:
                out.append((lo, hi - lo, self._owner_at(i, lo)))
            i += 1
        return out

    def find(self, path: str, partition: int | None = None) -> list[IndexedFile]:
        """Files named ``path`` (on ``partition`` only, if given)."""
        got = self._by_path.get(path, [])
        if partition is not None:
            got = [f for f in got if f.volume.partition.index == partition]
        return got

    def paths(self) -> list[str]:
        """Every path of every filesystem (for completion)."""
        return list(self._by_path)

    def by_path(self):
        """(path, [IndexedFile, ...]) for every path: a path can name files on
        several filesystems."""
        return self._by_path.items()

    def host_owners(self, cluster: int) -> list[tuple[int, int, Owner]]:
        """What the guest bytes held by host cluster ``cluster`` of the image are:
        (guest offset, length, owner) for each owner, via the engine's guest map of
        the active disk; a cluster the active disk does not map (a snapshot's, a
        leaked one) is looked up through the host map's reverse references."""
        if self.image is None:
            return []
        cs = self.image.cluster_size
        out = []
        for g in self._guest_clusters_of(cluster):
            out.extend(self.ranges(g, min(cs, self.disk.size - g)))
        return out

    def _guest_clusters_of(self, cluster: int) -> list[int]:
        table = getattr(self, "_host_table", None)
        if table is None:
            table = self._host_table = _host_to_guest(self.image)
        keys, guests = table
        lo, hi = np.searchsorted(keys, [cluster, cluster + 1])
        got = guests[lo:hi].tolist()
        if got:
            return got
        hm = self.image.host_map()
        return sorted({o.guest_offset for o in hm.owners(cluster)
                       if o.guest_offset is not None and o.table.endswith("L2")
                       and o.guest_offset < self.disk.size})


def _extent_intervals(exts, counts, owners, kinds, vi: int, bs: int, S, E, K, V, R, F, T) -> None:
    """Append the files' extents (file offset, guest offset, length), file by file,
    to the interval arrays: ``counts`` extents each, owned by file ``owners`` as
    ``kinds``; a file's last extent runs to the end of its block (the slack is its)."""
    # a few thousand tuples per conversion: one call holds the GIL (the window waits)
    e = np.concatenate([np.array(exts[k:k + 8192], np.int64).reshape(-1, 3)
                        for k in range(0, len(exts), 8192)])
    per = np.frombuffer(counts, np.int64)
    g = e[:, 1].copy()
    n = e[:, 2].copy()
    last = np.cumsum(per) - 1
    n[last] = -(-n[last] // bs) * bs
    S.frombytes(g.tobytes())
    E.frombytes((g + n).tobytes())
    K.frombytes(np.repeat(np.frombuffer(kinds, np.int8), per).tobytes())
    V.frombytes(np.full(len(g), vi, np.int32).tobytes())
    R.frombytes(np.repeat(np.frombuffer(owners, np.int64), per).astype(np.int32).tobytes())
    F.frombytes(e[:, 0].copy().tobytes())
    T.frombytes(np.ones(len(g), np.int8).tobytes())


def _host_to_guest(image) -> tuple[np.ndarray, np.ndarray]:
    """Sorted host cluster numbers and the guest offsets they hold (this image's
    own data and compressed clusters; compressed ones under the cluster where their
    bytes start)."""
    from ..engine.kinds import GuestKind
    gm = image.guest_map()
    if gm.clusters_per_entry != 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    mask = (gm.depth == 0) & ((gm.states == GuestKind.DATA)
                              | (gm.states == GuestKind.COMPRESSED))
    idx = np.nonzero(mask)[0]
    keys = (gm.host_offsets[idx] // np.uint64(image.cluster_size)).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], idx[order].astype(np.int64) * gm.cluster_size


@contextlib.contextmanager
def _no_gc_pauses():
    """Hold back the cyclic garbage collector while a build makes its ~10^6 acyclic
    objects: each full collection would walk them all again (half the build time on
    a 140k-file disk).  Nothing the build makes is cyclic; collection resumes after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def build_top(image) -> GuestIndex:
    """A first look at the guest disk of ``image``: its table, volumes and each
    filesystem's root directory, indexed (for a tree to show while :func:`build_index`
    reads the rest; its owners are not the disk's: the deeper files are missing)."""
    return GuestIndex(read_disk(image, top_only=True), image)


def build_index(image, progress: Callable[[int, int], object] | None = None) -> GuestIndex:
    """Read the guest disk of ``image`` and index it (raises Cancelled if asked).

    ``progress(done, total)`` is called every thousand entries or so; returning False
    or raising cancels.  Safe to call from a worker thread: it reads the image only
    through ``Image.read`` (and ``guest_map`` later, for :meth:`GuestIndex.host_owners`)."""
    with _no_gc_pauses():
        return GuestIndex(read_disk(image, progress), image)
