"""Which files changed: an overlay against its backing chain, or the live disk
against an internal snapshot.

Candidates come from the tables (guest clusters this overlay maps itself; clusters
whose mapping differs between the live disk and the snapshot); each candidate is
then compared byte for byte, so a cluster rewritten with the same bytes is no
change, and the differing bytes are counted per owner through the guest index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..engine.errors import RequestError
from ..engine.kinds import GuestKind
from .files import Cancelled
from .index import GuestIndex

CHUNK = 4 << 20          # compare in runs of at most this many bytes


@dataclass
class ChangedFile:
    partition: int | None
    path: str
    bytes_changed: int
    names: tuple[str, ...] = ()


@dataclass
class Changes:
    against: str
    files: list[ChangedFile] = field(default_factory=list)   # most bytes first
    other_bytes_changed: int = 0        # changed bytes outside any file
    clusters_compared: int = 0

    def as_json(self) -> dict:
        return {"against": self.against,
                "files": [{"path": f.path, "partition": f.partition,
                           "bytes_changed": f.bytes_changed} for f in self.files],
                "other_bytes_changed": self.other_bytes_changed}


def _runs(mask: np.ndarray, unit: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) runs of set entries, split at CHUNK bytes."""
    idx = np.nonzero(mask)[0]
    if len(idx) == 0:
        return []
    breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
    out = []
    for run in np.split(idx, breaks):
        start, end = int(run[0]) * unit, min(size, (int(run[-1]) + 1) * unit)
        for s in range(start, end, CHUNK):
            out.append((s, min(CHUNK, end - s)))
    return out


def _compare(index: GuestIndex, runs, read_new, read_old, progress) -> tuple[dict, int]:
    per_file: dict[int, int] = {}
    other = 0
    total = sum(n for _s, n in runs)
    done = 0
    for start, n in runs:
        a = np.frombuffer(read_new(start, n), np.uint8)
        b = np.frombuffer(read_old(start, n), np.uint8)
        diff = a != b
        if diff.any():
            for lo, m, owner in index.ranges(start, n):
                c = int(np.count_nonzero(diff[lo - start:lo - start + m]))
                if not c:
                    continue
                f = index.file_at(lo) if owner.what == "file data" else None
                if f is not None:
                    per_file[f.id] = per_file.get(f.id, 0) + c
                else:
                    other += c
        done += n
        if progress is not None and progress(done, total) is False:
            raise Cancelled("cancelled")
    return per_file, other


def _result(index: GuestIndex, against: str, per_file: dict, other: int, runs) -> Changes:
    files = [ChangedFile(index.files[k].volume.partition.index, index.files[k].path, c,
                         tuple(index.files[k].names)) for k, c in per_file.items()]
    files.sort(key=lambda f: (-f.bytes_changed, f.path))
    return Changes(against, files, other, len(runs))


def _backing_reader(image):
    b = image.backing
    bsize = b.virtual_size

    def read(offset: int, length: int) -> bytes:
        n = max(0, min(length, bsize - offset))
        got = b.read(offset, n) if n else b""
        return got + bytes(length - n)
    return read


def changed_vs_backing(image, index: GuestIndex,
                       progress: Callable[[int, int], object] | None = None) -> Changes:
    """Files of the overlay ``image`` whose bytes differ from its backing chain."""
    if image.backing_filename is None:
        raise RequestError("the image has no backing file to compare with", path=image.path)
    if image.backing is None:
        raise RequestError(f"backing file {image.backing_filename} not found",
                           path=image.path)
    gm = image.guest_map()
    mask = (gm.depth == 0) & (gm.states != GuestKind.UNALLOCATED)
    runs = _runs(mask, gm.cluster_size, image.virtual_size)
    per_file, other = _compare(index, runs, image.read, _backing_reader(image), progress)
    return _result(index, f"backing file {image.backing_filename}", per_file, other, runs)


def changed_vs_snapshot(image, snapshot: str, index: GuestIndex,
                        progress: Callable[[int, int], object] | None = None) -> Changes:
    """Files of the live disk of ``image`` whose bytes differ from ``snapshot``'s view."""
    from ..engine.image import open_image
    snap = image.find_snapshot(snapshot)
    live = image.guest_map()
    old = image.guest_map(snapshot=snap)
    n = min(len(live.states), len(old.states))
    mask = live.states != GuestKind.UNALLOCATED     # past the snapshot's disk: any data
    mask[:n] = ((live.states[:n] != old.states[:n]) | (live.depth[:n] != old.depth[:n])
                | (live.host_offsets[:n] != old.host_offsets[:n]))
    runs = _runs(mask, live.cluster_size, image.virtual_size)
    with open_image(image.path, snapshot=snap.id_str,
                    ignore_backing_errors=True) as view:
        def read_old(offset: int, length: int) -> bytes:
            m = max(0, min(length, view.virtual_size - offset))
            return (view.read(offset, m) if m else b"") + bytes(length - m)
        per_file, other = _compare(index, runs, image.read, read_old, progress)
    return _result(index, f"snapshot {snap.name}", per_file, other, runs)


__all__ = ["Changes", "ChangedFile", "changed_vs_backing", "changed_vs_snapshot"]
