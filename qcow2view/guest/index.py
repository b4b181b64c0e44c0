"""One index per image: guest byte -> owner, and host cluster -> owners.

Build it once, in a worker thread if there is a GUI::

    idx = build_index(image, progress=cb)     # cb(done, total) -> False (or raise) cancels
    o = idx.owner(0x4c30000)                  # Owner(what="file data", partition=2,
                                              #   filesystem="ext4", path="/etc/hostname",
                                              #   file_offset=0, names=(...), label=None)
    idx.what(offsets)                         # numpy: WHAT code per guest offset (maps)
    idx.find("/etc/hostname", partition=2)    # [IndexedFile] (every filesystem if None)
    idx.file_ranges(f)                        # its (file offset, guest offset, length)
    idx.host_owners(cluster)                  # [(guest offset, length, Owner)] for a
                                              #   host cluster of the image

What a byte is (:data:`WHAT`, in the order codes are numbered): "unpartitioned",
"partition table", "free space" (in a partition, no file or metadata claims it),
"filesystem metadata" (a labelled region: superblock, inode table, FAT, MFT,
journal, a directory's blocks), "file data".  When ranges overlap the later kind
wins (file data over metadata over free space).

Hard links are keyed by (volume, inode): one :class:`IndexedFile` per file, with
every name in ``names``; ``owner`` reports the first name as ``path``.

Lookups are a ``bisect`` over the sorted start offsets of the merged ranges
(a few microseconds); :meth:`GuestIndex.what` is numpy ``searchsorted`` for many
offsets at once.  The index holds no Image reference except for
:meth:`host_owners`, which reads the engine's guest map (built on first use and
cached by the engine).  Everything here is plain Python and numpy: no Qt.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .disk import GuestDisk, GuestVolume, read_disk
from .files import Cancelled, FileInfo

WHAT = ("unpartitioned", "partition table", "free space", "filesystem metadata", "file data")
UNPARTITIONED, PARTITION_TABLE, FREE, METADATA, FILE_DATA = range(5)

__all__ = ["WHAT", "Owner", "IndexedFile", "GuestIndex", "build_index", "Cancelled"]


@dataclass(frozen=True)
class Owner:
    """What holds one guest byte (the keys are those of ``qcow2view-cli owner``)."""

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


@dataclass
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
        self._regions: list[str] = []
        self._build()

    # -- building ---------------------------------------------------------------------
    def _build(self) -> None:
        # intervals: start, end, kind, volume id, ref (file id / region label id), file offset
        S: list[int] = [0]
        E: list[int] = [self.disk.size]
        K: list[int] = [UNPARTITIONED]
        V: list[int] = [-1]
        R: list[int] = [-1]
        F: list[int] = [0]
        T: list[bool] = [False]              # ref is a file id (else a label id)

        def add(s, n, k, v, r, f=0, is_file=False):
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
            fs = gv.filesystem
            if fs is None:
                continue
            for r in fs.metadata:
                add(r.start, r.length, METADATA, vi, label_id(r.label))
            by_inode: dict[int, IndexedFile] = {}
            bs = max(1, fs.block_size)
            for info in fs.files:
                f = by_inode.get(info.inode) if info.links > 1 or fs.type == "ntfs" else None
                if f is None:
                    f = IndexedFile(len(self.files), gv, info)
                    self.files.append(f)
                    by_inode[info.inode] = f
                    kind = FILE_DATA if info.type != "dir" and not info.system else METADATA
                    last = len(info.extents) - 1
                    for j, (fo, g, n) in enumerate(info.extents):
                        if j == last:      # the last block's slack belongs to the file too
                            n = -(-n // bs) * bs
                        add(g, n, kind, vi, f.id, fo, True)
                f.names.append(info.path)
                self._by_path.setdefault(info.path, []).append(f)
        self._merge(np.array(S, np.int64), np.array(E, np.int64), np.array(K, np.uint8),
                    np.array(V, np.int32), np.array(R, np.int32), np.array(F, np.int64),
                    np.array(T, bool))

    def _merge(self, S, E, K, V, R, F, T) -> None:
        """Paint the intervals, higher kind over lower, into non-overlapping ranges."""
        np.clip(S, 0, self.disk.size, out=S)
        np.clip(E, 0, self.disk.size, out=E)
        keep = E > S
        S, E, K, V, R, F, T = S[keep], E[keep], K[keep], V[keep], R[keep], F[keep], T[keep]
        bp = np.unique(np.concatenate([S, E]))
        owner = np.full(len(bp), -1, np.int64)
        order = np.lexsort((np.arange(len(S)), K))      # by kind, then by appearance
        lo = np.searchsorted(bp, S)
        hi = np.searchsorted(bp, E)
        for i in order.tolist():
            owner[lo[i]:hi[i]] = i
        # merge neighbours painted by the same interval
        seg = np.nonzero(np.diff(owner[:-1], prepend=-2))[0]
        self.starts = bp[seg]
        own = owner[seg]
        self.kind = K[own]
        self.vol = V[own]
        self.ref = R[own]
        self.base = S[own]                  # the interval's own start, for file offsets
        self.foff = F[own]
        self.isfile = T[own]
        self._starts_list = self.starts.tolist()

    # -- questions --------------------------------------------------------------------
    def owner(self, offset: int) -> Owner:
        """What holds guest byte ``offset``."""
        if not 0 <= offset < self.disk.size:
            raise ValueError(f"guest offset {offset} lies outside the {self.disk.size}-byte disk")
        i = bisect.bisect_right(self._starts_list, offset) - 1
        return self._owner_at(i, offset)

    def _owner_at(self, i: int, offset: int) -> Owner:
        k = int(self.kind[i])
        v = int(self.vol[i])
        if v < 0:
            label = self._regions[self.ref[i]] if k == PARTITION_TABLE else None
            return Owner(offset, WHAT[k], label=label)
        gv = self.volumes[v]
        fs = gv.filesystem
        common = dict(partition=gv.partition.index, filesystem=fs.type if fs else None,
                      volume=gv.lv_name)
        r = int(self.ref[i])
        if self.isfile[i]:
            f = self.files[r]
            fo = int(self.foff[i]) + offset - int(self.base[i])
            return Owner(offset, WHAT[k], path=f.path, file_offset=fo,
                         names=tuple(f.names),
                         label=("directory" if f.info.type == "dir" else
                                f.path.lstrip("/") if f.info.system else None), **common)
        if k == METADATA:
            return Owner(offset, WHAT[k], label=self._regions[r], **common)
        return Owner(offset, WHAT[k], **common)

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


def _host_to_guest(image) -> tuple[np.ndarray, np.ndarray]:
    """Sorted host cluster numbers and the guest offsets they hold (this image's
    own data and compressed clusters; compressed ones under the cluster where their
    bytes start)."""
    from ..engine.maps import GuestState
    gm = image.guest_map()
    if gm.clusters_per_entry != 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    mask = (gm.depth == 0) & ((gm.states == GuestState.DATA)
                              | (gm.states == GuestState.COMPRESSED))
    idx = np.nonzero(mask)[0]
    keys = (gm.host_offsets[idx] // np.uint64(image.cluster_size)).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], idx[order].astype(np.int64) * gm.cluster_size


def build_index(image, progress: Callable[[int, int], object] | None = None) -> GuestIndex:
    """Read the guest disk of ``image`` and index it (raises Cancelled if asked)."""
    return GuestIndex(read_disk(image, progress), image)
