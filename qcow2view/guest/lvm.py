"""LVM2 physical volumes: the logical volumes, each mapped back to guest offsets.

The label, PV header and metadata area are read here and the text metadata is
parsed with a small bounded parser (libvslvm lists logical volumes but does not
expose their segments, which are what map an LV's bytes back to the disk).
Linear segments on this PV are mapped; anything else is a listed problem.
"""

from __future__ import annotations

import re
import struct

from .files import Volume
from .partitions import Partition, Region

SECTOR = 512
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MAX_METADATA = 1 << 20
MAX_DEPTH = 16
_TOKEN = re.compile(rb'("(?:[^"\\]|\\.)*"|[{}\[\]=,]|[^\s{}\[\]=,"#]+)|#[^\n]*')


def _parse(text: bytes):
    """LVM text metadata -> nested dicts (sections) with str/int/list values."""
    toks = [m.group(1) for m in _TOKEN.finditer(text) if m.group(1) is not None]
    pos = 0

    def value():
        nonlocal pos
        t = toks[pos]
        pos += 1
        if t == b"[":
            out = []
            while toks[pos] != b"]":
                if toks[pos] != b",":
                    out.append(value())
                else:
                    pos += 1
            pos += 1
            return out
        if t.startswith(b'"'):
            return t[1:-1].decode("utf-8", "replace")
        try:
            return int(t)
        except ValueError:
            return t.decode("utf-8", "replace")

    def section(depth: int) -> dict:
        nonlocal pos
        if depth > MAX_DEPTH:
            raise ValueError("metadata nested too deep")
        out: dict = {}
        while pos < len(toks) and toks[pos] != b"}":
            key = toks[pos].decode("utf-8", "replace")
            pos += 1
            if toks[pos] == b"{":
                pos += 1
                out[key] = section(depth + 1)
                pos += 1
            elif toks[pos] == b"=":
                pos += 1
                out[key] = value()
            else:
                raise ValueError(f"unexpected token after {key!r}")
        return out

    return section(0)


def _pv_header(read) -> tuple[str, list[tuple[int, int]], int] | None:
    """(PV UUID, metadata areas (offset, size), label offset) of a PV's label."""
    head = read(0, 4 * SECTOR)
    for s in range(4):
        o = s * SECTOR
        if head[o:o + 8] == b"LABELONE" and head[o + 24:o + 32] == b"LVM2 001":
            h = o + struct.unpack_from("<I", head, o + 20)[0]
            if h + 40 > len(head):
                return None
            uuid = head[h:h + 32].decode("ascii", "replace")
            p = h + 40
            lists: list[list[tuple[int, int]]] = [[], []]
            for which in (0, 1):
                while p + 16 <= len(head) and len(lists[which]) < 8:
                    off, size = struct.unpack_from("<QQ", head, p)
                    p += 16
                    if off == 0:
                        break
                    lists[which].append((off, size))
            return uuid, lists[1], o
    return None


def _metadata_text(read, mdas: list[tuple[int, int]]) -> bytes | None:
    for start, size in mdas:
        hdr = read(start, SECTOR)
        if hdr[4:20] != MDA_MAGIC:
            continue
        off, length = struct.unpack_from("<QQ", hdr, 40)
        if not 0 < length <= MAX_METADATA or off >= size:
            continue
        first = min(length, size - off)
        text = read(start + off, first)
        if first < length:                     # the circular buffer wraps past its end
            text += read(start + SECTOR, length - first)
        return text.split(b"\0", 1)[0]
    return None


def read_lvm(src, gv) -> None:
    """Fill ``gv.logical_volumes`` of the PV ``gv`` (a GuestVolume) read through ``src``."""
    from .disk import GuestVolume
    got = _pv_header(src.pread)
    if got is None:
        gv.problems.append("LVM label unreadable")
        return
    pv_uuid, mdas, label_at = got
    for g, n in gv.volume.to_guest(label_at, SECTOR):
        gv.regions.append(Region(g, n, "LVM label"))
    for start, size in mdas:
        for g, n in gv.volume.to_guest(start, size):
            gv.regions.append(Region(g, n, "LVM metadata area"))
    text = _metadata_text(src.pread, mdas)
    if text is None:
        gv.problems.append("LVM metadata area unreadable")
        return
    try:
        meta = _parse(text)
    except (ValueError, IndexError) as e:
        gv.problems.append(f"LVM metadata unparsable ({e})")
        return
    for vg_name, vg in meta.items():
        if not isinstance(vg, dict) or "physical_volumes" not in vg:
            continue
        ext_bytes = int(vg.get("extent_size", 0)) * SECTOR
        pv_key, pe_start = None, 0
        for key, pv in vg["physical_volumes"].items():
            if isinstance(pv, dict) and str(pv.get("id", "")).replace("-", "") == pv_uuid:
                pv_key, pe_start = key, int(pv.get("pe_start", 0)) * SECTOR
        if pv_key is None or ext_bytes <= 0:
            gv.problems.append(f"LVM VG {vg_name}: this PV is not in its metadata")
            continue
        for n, (lv_name, lv) in enumerate(sorted(vg.get("logical_volumes", {}).items())):
            pieces, why = _lv_pieces(lv, pv_key, pe_start, ext_bytes, gv.volume)
            if why:
                gv.problems.append(f"LV {vg_name}/{lv_name}: {why}")
                continue
            size = sum(p[2] for p in pieces)
            part = Partition(gv.partition.index, pieces[0][1] if pieces else 0, size,
                             "LVM logical volume", lv.get("id", ""), f"{vg_name}/{lv_name}",
                             kind="lvm")
            gv.logical_volumes.append(GuestVolume(part, Volume(size, tuple(pieces)),
                                                  lv_name=f"{vg_name}/{lv_name}"))


def _lv_pieces(lv, pv_key: str, pe_start: int, ext_bytes: int, pv: Volume):
    if not isinstance(lv, dict):
        return [], "not a section"
    pieces = []
    segs = [v for k, v in lv.items() if k.startswith("segment") and isinstance(v, dict)]
    segs.sort(key=lambda s: int(s.get("start_extent", 0)))
    for seg in segs:
        stripes = seg.get("stripes")
        if seg.get("type") != "striped" or int(seg.get("stripe_count", 1)) != 1 \
                or not isinstance(stripes, list) or len(stripes) != 2:
            return [], f"segment of type {seg.get('type')} not mapped"
        if stripes[0] != pv_key:
            return [], "on another physical volume, not mapped"
        start = int(seg["start_extent"]) * ext_bytes
        count = int(seg["extent_count"]) * ext_bytes
        on_pv = pe_start + int(stripes[1]) * ext_bytes
        for g, n in pv.to_guest(on_pv, count):
            pieces.append((start, g, n))
            start += n
    return pieces, None
