"""The guest's names for the other views: hover texts of the map, the hex inspector's
line, the map's "FS view" classes and the header panel's Guest section.

Each is a function of a :class:`~.guest_files.GuestContents` (None or empty until its
index is read), so the views ask the model and never the guest package.
"""

from __future__ import annotations

import numpy as np

from ..guest.index import GuestIndex, Owner
from ..guest.leaked import LeakFate, leaked_fates
from .guest_files import GuestContents, leaked_clusters
from .units import count, human_size


def owner_text(o: Owner) -> str:
    bits = []
    if o.partition is not None:
        where = f"partition {o.partition}" if o.partition else "whole disk"
        if o.volume:
            where += f" LV {o.volume}"
        bits.append(f"{where} ({o.filesystem})" if o.filesystem else where)
    if o.path is not None:
        bits.append(f"{o.path} +{o.file_offset:#x}" if o.what == "file data"
                    else f"{o.label or o.what} of {o.path}")
    elif o.label:
        bits.append(o.label)
    else:
        bits.append(o.what)
    return ", ".join(bits)


def cluster_namer(contents: GuestContents):
    """``namer(mode, cluster)`` for :meth:`AllocationModel.set_namer`: "host cluster
    0x1a2b: guest 0x4c30000, partition 2 (ext4), /var/log/syslog +0x10000" (a file's
    bytes before other owners of the cluster), None before the index is in."""
    def name(mode: str, cluster: int) -> str | None:
        idx = contents.index
        if idx is None:
            return None
        if mode in ("guest", "fs"):
            gm = contents.document.guest_map
            if gm is None:
                return None
            ranges = idx.ranges(cluster * gm.cluster_size, gm.cluster_size)
            head = f"guest cluster {cluster:#x}"
        else:
            try:
                ranges = idx.host_owners(cluster)
            except Exception:       # noqa: BLE001 - a hover never fails
                return None
            head = f"host cluster {cluster:#x}"
        if not ranges:
            note = leak_names(contents).get(cluster) if mode not in ("guest", "fs") else None
            return f"{head}: {note}" if note else None
        g, _n, o = next((r for r in ranges if r[2].what == "file data"), ranges[0])
        return f"{head}: guest {g:#x}, {owner_text(o)}"
    return name


def _held(ranges) -> str:
    """The files (up to three, with their offsets) among ``ranges``, else their first
    owner; "" for none."""
    files = list(dict.fromkeys(f"{o.path} +{o.file_offset:#x}" for _g, _n, o in ranges
                               if o.what == "file data" and o.path is not None))
    held = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return held or (owner_text(ranges[0][2]) if ranges else "")


def leak_text(contents: GuestContents, fate: LeakFate) -> str | None:
    """"leaked: once held /etc/fstab +0x0 (its bytes equal guest cluster 0x2e80000, now
    at host 0x330000)", "leaked: looks like an old L2 table (...)", or None."""
    if fate.what == "zeros":
        return "leaked: all zeros (what it held cannot be told)"
    if fate.what == "L2 table":
        return (f"leaked: looks like an old L2 table ({count(fate.entries, 'entry', 'entries')} "
                "pointing at clusters in the file)")
    if fate.what == "refcount block":
        return f"leaked: looks like an old refcount block ({count(fate.entries, 'count')})"
    if fate.what != "copy":
        return None
    idx = contents.index
    cs = contents.document.image.cluster_size
    ranges = idx.ranges(fate.guest, cs) if idx is not None else []
    held = _held(ranges) or f"guest cluster {fate.guest:#x}"
    now = (f"now at host {fate.host:#x}" if fate.depth == 0
           else f"now in backing file {fate.depth}")
    return f"leaked: once held {held} (its bytes equal guest cluster {fate.guest:#x}, {now})"


def leak_names(contents: GuestContents) -> dict[int, str]:
    """What each leaked host cluster the check found once held, and what each corrupt
    one in use holds, by cluster (computed once per check result and index: each
    leaked cluster is read once)."""
    doc = contents.document
    result, image = doc.check_result, doc.image
    key = (id(result), id(contents.index))
    cached = getattr(contents, "_leak_names", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    leaks = leaked_clusters(result)
    built = contents.built
    if built is not None and built.leaks_for == leaks:
        fates = built.leak_fates            # read by the index's worker
    elif leaks and image is not None:       # the check came after the index: read here
        fates = leaked_fates(image, leaks, doc.guest_map)
    else:
        fates = {}
    names = {}
    for c, fate in fates.items():
        text = leak_text(contents, fate)
        if text:
            names[c] = text
    idx = contents.index
    for f in getattr(result, "findings", None) or ():
        # a corrupt cluster still in use: what the guest keeps in it now
        if f.severity == "corruption" and f.references and idx is not None:
            try:
                held = _held(idx.host_owners(f.cluster))
            except Exception:       # noqa: BLE001 - a damaged table: left unnamed
                held = ""
            if held:
                names[f.cluster] = f"holds {held}"
    contents._leak_names = (key, names)
    return names


def byte_namer(contents: GuestContents):
    """``namer(guest offset)`` for the hex inspector: "partition 2 (ext4), block 5 of
    4 KiB, /etc/fstab +0x10" (None before the index is in)."""
    def name(offset: int) -> str | None:
        o = contents.owner(offset)
        if o is None:
            return None
        text = owner_text(o)
        b = contents.built
        fld = b.fields.at(offset) if b is not None and b.fields is not None else None
        if fld is not None:     # a field of the partition table or a superblock, named
            text += f", {fld.structure} {fld.name} = {fld.value}"
        idx = contents.index
        gv = next((v for v in idx.volumes if v.partition.index == o.partition
                   and v.lv_name == o.volume), None) if o.partition is not None else None
        fs = gv.filesystem if gv is not None else None
        if fs is not None and fs.block_size and len(gv.volume.pieces) == 1:
            block = (offset - gv.volume.start) // fs.block_size
            where, _sep, rest = text.partition(", ")
            text = f"{where}, block {block} of {human_size(fs.block_size)}" + (
                f", {rest}" if rest else "")
        return text
    return name


def file_at(contents: GuestContents):
    """``where(guest offset) -> (key, path, file offset, file size) | None`` for the hex
    view's file ruler: the file whose data holds the byte (key tells two files of one
    path apart; past the size lies the last block's slack)."""
    sizes: dict = {}

    def where(offset: int):
        o = contents.owner(offset)
        if o is None or o.what != "file data" or o.path is None or o.file_offset is None:
            return None
        key = (o.partition, o.volume, o.path)
        if key not in sizes:
            found = [f for f in contents.index.find(o.path, o.partition)
                     if f.volume.lv_name == o.volume]
            sizes[key] = found[0].info.size if found else None
        return key, o.path, o.file_offset, sizes[key]
    return where


def fs_classes(index: GuestIndex, guest_map, chunk: int = 1 << 20) -> np.ndarray:
    """One WHAT code per guest map entry: the most telling of what its bytes hold (any
    file data makes it "file data", then metadata, partition table, free space)."""
    n = len(guest_map.states)
    cs = guest_map.cluster_size
    kinds = np.append(index.kind, np.uint8(0))          # reduceat needs an end sentinel
    out = np.empty(n, np.uint8)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        first = np.arange(lo, hi, dtype=np.int64) * cs
        a = np.searchsorted(index.starts, first, side="right") - 1
        b = np.searchsorted(index.starts, np.minimum(first + cs, index.disk.size),
                            side="left")        # ranges a..b-1 overlap the entry
        b = np.maximum(b, a + 1)
        pairs = np.empty(2 * len(a), np.int64)
        pairs[0::2], pairs[1::2] = np.maximum(a, 0), b
        out[lo:hi] = np.maximum.reduceat(kinds, pairs)[0::2]
    past = np.arange(n, dtype=np.int64) * cs >= index.disk.size
    out[past] = 0
    return out


def guest_rows(contents: GuestContents) -> list:
    """The header panel's "Guest" section: the partition table and each partition with
    what it holds ("EFI System, 40 MiB, vfat “ESP”, UUID 1234-ABCD")."""
    from .header_model import HeaderRow
    idx = contents.index
    if idx is None:
        return []
    disk = idx.disk
    table = (disk.table.kind or "no partition table").upper() if disk.table.kind \
        else "no partition table"
    rows = [HeaderRow(f"Guest ({table}, {count(len(disk.volumes), 'volume')})", section=True)]
    if disk.unreadable:
        rows.append(HeaderRow("disk", meaning=disk.unreadable, name="guest:disk"))
    for gv in idx.volumes:
        p = gv.partition
        name = f"LV {gv.lv_name}" if gv.lv_name else (
            f"partition {p.index}" if p.index else "whole disk")
        if p.name:
            name += f": {p.name}"
        bits = [p.type, human_size(gv.volume.size)]
        fs = gv.filesystem
        if fs is not None:
            bits.append(fs.type + (f" “{fs.label}”" if fs.label else ""))
            if fs.uuid:
                bits.append(f"UUID {fs.uuid}")
        elif gv.probe is not None:
            bits.append(gv.probe.type)
        rows.append(HeaderRow(name, raw=f"{gv.volume.start:#x}", meaning=", ".join(bits),
                              name=f"guest:{idx.volumes.index(gv)}"))
    for text in disk.problems[:10]:
        rows.append(HeaderRow("problem", meaning=text, name="guest:problem"))
    return rows
