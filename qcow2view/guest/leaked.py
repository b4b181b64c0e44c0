"""What a leaked host cluster once held, where its bytes tell: an old L2 (or L1) table,
an old refcount block, or the very bytes of a guest cluster now held elsewhere (a
copy-on-write's leftover: the copy was written, its old home never freed).

Cheap by design: each leaked cluster is read once; the search for an equal guest
cluster first compares 64 bytes at the cluster's first non-zero spot with each data
cluster of the guest (one numpy gather over a read-only map of the image file and of
each qcow2 backing file; a raw backing file's through the guest read, at most
:data:`MAX_PROBES`), and reads a whole candidate only when those match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.kinds import GuestKind

MAX_LEAKS = 64          # leaked clusters named (a check finds few; a broken image many)
MAX_PROBES = 1 << 12    # guest reads for a raw backing file's clusters (slow)
PROBE = 64
_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00       # L1/L2 standard entry: host offset bits
_COPIED, _COMPRESSED, _ZERO = 1 << 63, 1 << 62, 1


@dataclass(frozen=True)
class LeakFate:
    """What leaked host ``cluster`` looks like it held."""

    cluster: int
    what: str                           # "zeros" | "L2 table" | "refcount block" | "copy" | "?"
    entries: int = 0                    # a table's non-zero entries
    guest: int | None = None            # copy: the guest cluster with the same bytes
    host: int | None = None             # copy: where that guest cluster lives now
    depth: int = 0                      # copy: 0 this image, N the Nth backing file


def _looks_like_l2(data: bytes, cs: int, file_size: int) -> int:
    """Non-zero entries, if every one reads as a table entry pointing into the file."""
    e = np.frombuffer(data, ">u8")
    nz = e[e != 0]
    if not len(nz):
        return 0
    std = nz[(nz & np.uint64(_COMPRESSED)) == 0]
    comp = nz[(nz & np.uint64(_COMPRESSED)) != 0]
    if not len(std) or (comp & np.uint64(_COPIED)).any():
        return 0
    off = std & np.uint64(_OFFSET_MASK)
    stray = std & ~np.uint64(_OFFSET_MASK | _COPIED | _ZERO)
    ok = (stray == 0).all() and (off % np.uint64(cs) == 0).all() \
        and (off < np.uint64(file_size)).all() and (off > 0).any()
    return int(len(nz)) if ok else 0


def _looks_like_refcounts(data: bytes, bits: int) -> int:
    """Non-zero entries, if every entry is a small count and the block counts several."""
    if bits not in (8, 16, 32, 64):
        return 0
    e = np.frombuffer(data, f">u{bits // 8}")
    nz = int(np.count_nonzero(e))
    return nz if nz >= 2 and int(e.max()) <= 64 else 0


def classify(image, cluster: int, data: bytes) -> LeakFate:
    """What ``data`` (host ``cluster``'s bytes) looks like, short of a guest search."""
    if not any(data):
        return LeakFate(cluster, "zeros")
    n = _looks_like_l2(data, image.cluster_size, image.file_size)
    if n:
        return LeakFate(cluster, "L2 table", n)
    n = _looks_like_refcounts(data, 1 << image.header.refcount_order)
    if n:
        return LeakFate(cluster, "refcount block", n)
    return LeakFate(cluster, "?")


def _data_clusters(gm):
    """(guest offsets, depths, host offsets) of the guest clusters holding data: this
    image's (depth 0) and its backing chain's (depth N: the host offset is the Nth
    backing file's)."""
    if gm is None or gm.clusters_per_entry != 1:
        z = np.zeros(0, np.int64)
        return z, z, z
    backing = gm.states == GuestKind.BACKING
    idx = np.nonzero((gm.states == GuestKind.DATA) | backing)[0]
    depth = np.where(backing[idx], np.maximum(gm.depth[idx].astype(np.int64), 1), 0)
    return idx.astype(np.int64) * gm.cluster_size, depth, gm.host_offsets[idx].astype(np.int64)


def _paths_by_depth(image) -> list:
    """The host file path of the image (0) and of each qcow2 backing file (N), None
    for a backing file whose host offsets do not address its file (raw)."""
    out, img = [], image
    while img is not None:
        f = getattr(img, "file", None) if hasattr(img, "l1_table") else None
        out.append(getattr(f, "path", None))
        img = getattr(img, "backing", None)
    return out


def _probe_hits(path: str, hosts: np.ndarray, p: int, probe: bytes) -> np.ndarray:
    """Indices into ``hosts`` whose cluster holds ``probe`` at ``p`` (one gather over a
    read-only map of the file: C speed, a page read per cluster)."""
    m = np.memmap(path, np.uint8, "r")
    ok = hosts + p + PROBE <= len(m)
    sel = np.nonzero(ok)[0]
    got = m[(hosts[sel] + p)[:, None] + np.arange(PROBE)]
    return sel[(got == np.frombuffer(probe, np.uint8)).all(axis=1)]


def _find_copy(image, gm, fate: LeakFate, data: bytes, budget: list[int]) -> LeakFate:
    cs = image.cluster_size
    first = len(data) - len(data.lstrip(b"\0"))
    p = min(first - first % PROBE, cs - PROBE)
    probe = data[p:p + PROBE]
    guests, depths, hosts = _data_clusters(gm)
    paths = _paths_by_depth(image)
    for d in np.unique(depths).tolist():
        at = np.nonzero(depths == d)[0]
        path = paths[d] if d < len(paths) else None
        if path is not None:
            hits = at[_probe_hits(path, hosts[at], p, probe)]
        else:           # a raw backing file: through the guest read, within the budget
            at = at[:max(0, budget[0])]
            budget[0] -= len(at)
            hits = [i for i in at.tolist()
                    if image.read(int(guests[i]) + p, PROBE) == probe]
        for i in hits[:16]:                 # a few full compares: equal probes are rare
            g, h = int(guests[i]), int(hosts[i])
            whole = (image.file.pread(h, cs) if d == 0 else image.read(g, cs))
            if whole == data:
                return LeakFate(fate.cluster, "copy", guest=g, host=h if d == 0 else None,
                                depth=d)
    return fate


def leaked_fates(image, clusters, guest_map) -> dict[int, LeakFate]:
    """What each of the (first :data:`MAX_LEAKS`) leaked host ``clusters`` once held;
    ``guest_map`` (the engine's, of the active disk) lists the guest clusters to compare
    with (None: no comparison)."""
    out: dict[int, LeakFate] = {}
    budget = [MAX_PROBES]
    cs = image.cluster_size
    for c in sorted(set(clusters))[:MAX_LEAKS]:
        try:
            data = image.file.pread(c * cs, cs)
            fate = classify(image, c, data) if len(data) == cs else LeakFate(c, "?")
            if fate.what == "?" and len(data) == cs:
                fate = _find_copy(image, guest_map, fate, data, budget)
        except Exception:       # noqa: BLE001 - a damaged image: that leak stays unnamed
            fate = LeakFate(c, "?")
        out[c] = fate
    return out
