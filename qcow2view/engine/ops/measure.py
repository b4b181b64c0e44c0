"""Space a new image needs (qemu-img measure; QEMU's qcow2_measure).

``fully_allocated``: every cluster of the disk plus all the metadata a fully
allocated image has (qcow2_calc_prealloc_size).  ``required``: that metadata
plus only the clusters of the source that hold data (zero and unallocated
ranges need none); with no source, metadata only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import clusters as C
from .. import metadata_ops as M
from ..create import _bool, parse_size
from ..errors import RequestError
from ..header import QCOW_MAX_L1_SIZE
from ..image import RawImage

SEEK_DATA, SEEK_HOLE = getattr(os, "SEEK_DATA", 3), getattr(os, "SEEK_HOLE", 4)


@dataclass(frozen=True)
class Measurement:
    required: int
    fully_allocated: int
    bitmaps: int | None = None     # qcow2 into qcow2 only (qemu-img prints it then)


def refcount_metadata_size(clusters: int, cs: int, order: int) -> int:
    """qcow2_refcount_metadata_size: refcount blocks and table for ``clusters``,
    counting themselves (the fixed point)."""
    per_table_cluster = cs // 8
    per_block = cs * 8 // (1 << order)
    table = blocks = 0
    n, last = 0, -1
    while n != last:
        last = n
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table_cluster)
        n = clusters + blocks + table
    return (blocks + table) * cs


def prealloc_size(size: int, cs: int, order: int, extended_l2: bool) -> int:
    """qcow2_calc_prealloc_size: a fully allocated image of ``size`` bytes."""
    l2e = 16 if extended_l2 else 8
    aligned = -(-size // cs) * cs
    meta = cs
    nl2e = aligned // cs
    nl2e = -(-nl2e // (cs // l2e)) * (cs // l2e)
    meta += nl2e * l2e
    nl1e = nl2e * l2e // cs
    nl1e = -(-nl1e // (cs // 8)) * (cs // 8)
    meta += nl1e * 8
    meta += refcount_metadata_size((meta + aligned) // cs, cs, order)
    return meta + aligned


def measure(size: int | None = None, source=None, *, out_fmt: str = "qcow2",
            options: dict | None = None) -> Measurement:
    """Measure for a disk of ``size`` bytes or for the contents of ``source`` (an
    open image, from :func:`~qcow2view.engine.ops.convert.open_source`)."""
    options = dict(options or {})
    if (size is None) == (source is None):
        raise RequestError("Either --size N or one filename must be specified")
    vsize = source.virtual_size if source is not None else size
    if out_fmt not in ("qcow2", "raw"):
        raise RequestError(f"Block driver '{out_fmt}' does not support size measurement "
                           "here (qcow2 or raw)")
    if out_fmt == "raw":     # as qemu's raw_measure: whole sectors, no qcow2 options
        for key in options:
            if key not in ("preallocation", "size") + FILE_OPTIONS:
                raise RequestError(f"Invalid parameter '{key}' (not an option of raw)")
        vsize = -(-vsize // 512) * 512
        return Measurement(vsize, vsize)
    cs, order, ext, prealloc = qcow2_measure_options(options)
    allocate_all = prealloc in ("falloc", "full")
    aligned = -(-vsize // cs) * cs
    l2_tables = -(-(aligned // cs) // (cs // (16 if ext else 8)))
    if l2_tables * 8 > QCOW_MAX_L1_SIZE:
        raise RequestError("The image size is too large (try using a larger cluster size)")
    full = prealloc_size(vsize, cs, order, ext)
    data = 0
    if source is not None:
        data = int(np.count_nonzero(_data_clusters(source, cs))) * cs
    # qcow2_measure: only a v3 output from a v3 qcow2 source can carry bitmaps
    v3_source = getattr(getattr(source, "header", None), "version", 0) >= 3
    v3_out = str(options.get("compat", "1.1")) not in ("0.10", "v2")
    bitmaps = 0 if source is not None and v3_source and v3_out and \
        getattr(source, "format", "") == "qcow2" else None
    return Measurement(full if allocate_all else full - aligned + data, full, bitmaps)


MEASURE_OPTIONS = ("size", "compat", "backing_file", "backing_fmt", "data_file",
                   "data_file_raw", "encryption", "cluster_size", "preallocation",
                   "lazy_refcounts", "refcount_bits", "compression_type", "extended_l2")
#: the file protocol's create options: qemu-img measure accepts them, they change nothing
FILE_OPTIONS = ("nocow", "extent_size_hint")


def _switch(options: dict, key: str) -> bool:
    """An on/off option as -o spells it, or a bool (the window's create dialog), read
    as create reads it; refused in qemu-img measure's words."""
    value = options.get(key, False)
    if isinstance(value, str):          # qapi_bool_parse's spellings
        value = {"y": "on", "yes": "on", "true": "on", "n": "off", "no": "off",
                 "false": "off"}.get(value, value)
    try:
        return _bool(key, value)
    except RequestError:
        raise RequestError(f"Parameter '{key}' expects 'on' or 'off'") from None


def _number(value, parse):
    """-o numbers may be hexadecimal (qemu_strtou64 / qemu_strtosz take 0x)."""
    text = str(value).strip()
    return int(text, 16) if text[:2].lower() == "0x" else parse(text)


def qcow2_measure_options(options: dict) -> tuple[int, int, bool, str]:
    """(cluster size, refcount order, extended L2, preallocation) from ``-o``, checked
    as qcow2_measure checks them -- only these; combinations create refuses
    (compat=0.10 with lazy refcounts, ...) are measured all the same."""
    for key in options:
        if key.startswith("encrypt."):
            raise RequestError("encrypted images are not measured here")
        if key not in MEASURE_OPTIONS + FILE_OPTIONS:
            raise RequestError(f"Invalid parameter '{key}'")
    for key in ("lazy_refcounts", "data_file_raw", "encryption"):
        _switch(options, key)            # refused unless on/off
    ext = _switch(options, "extended_l2")
    cs = _number(options.get("cluster_size", 65536), parse_size)
    if cs < 512 or cs > 2 << 20 or cs & (cs - 1):
        raise RequestError("Cluster size must be a power of two between 512 and 2048k")
    if ext and cs < 16384:
        raise RequestError("Extended L2 entries are only supported with cluster sizes "
                           "of at least 16384 bytes")
    compat = str(options.get("compat", "1.1"))
    if compat not in ("0.10", "1.1"):
        raise RequestError(f"Invalid compatibility level: '{compat}'")
    try:
        bits = _number(options.get("refcount_bits", 16), int)
    except ValueError:
        bits = 0
    if bits < 1 or bits > 64 or bits & (bits - 1):
        raise RequestError("Refcount width must be a power of two and may not exceed 64 bits")
    if compat == "0.10" and bits != 16:
        raise RequestError("Different refcount widths than 16 bits require compatibility "
                           "level 1.1 or above (use compat=1.1 or greater)")
    prealloc = str(options.get("preallocation", "off"))
    if prealloc not in ("off", "metadata", "falloc", "full"):
        raise RequestError(f"invalid parameter value: {prealloc}")
    return cs, bits.bit_length() - 1, ext, prealloc


def _data_clusters(src, cs: int) -> np.ndarray:
    """For each ``cs``-sized cluster of the guest disk: does any of it read data
    (not zero, not unallocated down to the end of the chain)?"""
    n = -(-src.virtual_size // cs)
    data, decided = _layer(src, cs, n)
    below = getattr(src, "backing", None)
    while below is not None:
        d2, dec2 = _layer(below, cs, n)
        data |= ~decided & d2
        decided |= dec2
        below = getattr(below, "backing", None)
    return data


def _layer(im, cs: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(data, decided) per output cluster for one image of a chain."""
    if isinstance(im, RawImage):
        return _raw_layer(im, cs, n)
    g = im.cluster_size // C.SUBCLUSTERS if im.extended_l2 else im.cluster_size
    per = C.SUBCLUSTERS if im.extended_l2 else 1
    count = im.l1_table.size * im.l2_size * per
    data = np.zeros(count, dtype=bool)
    decided = np.zeros(count, dtype=bool)
    span = im.l2_size * per
    for l1i, e in enumerate(im.l1_table.entries.tolist()):
        l2off = e & C.L1E_OFFSET_MASK
        if not l2off:
            continue
        words = M.read_l2_words(im, l2off, l1i)
        sl = slice(l1i * span, (l1i + 1) * span)
        if im.extended_l2:
            raw, bm = words[0::2], words[1::2]
            shifts = np.arange(C.SUBCLUSTERS, dtype=np.uint64)
            alloc = ((bm[:, None] >> shifts) & np.uint64(1)) != 0
            zero = ((bm[:, None] >> (shifts + np.uint64(32))) & np.uint64(1)) != 0
            comp = ((raw & M.COMPRESSED) != 0)[:, None]
            data[sl] = (alloc | comp).reshape(-1)
            decided[sl] = (alloc | zero | comp).reshape(-1)
        else:
            t = C.decode_l2_types(words, None, im.has_data_file)
            data[sl] = (t == C.ClusterType.NORMAL) | (t == C.ClusterType.COMPRESSED)
            decided[sl] = t != C.ClusterType.UNALLOCATED
    return _regrid(data, g, cs, n, np.any), _regrid(decided, g, cs, n, np.all)


def _regrid(flags: np.ndarray, g: int, cs: int, n: int, how) -> np.ndarray:
    """Flags on a ``g`` grid as flags on a ``cs`` grid of ``n`` cells."""
    if g == cs:
        out = flags[:n]
    elif g < cs:
        k = cs // g
        need = n * k
        f = np.concatenate([flags, np.zeros(max(0, need - flags.size), bool)])[:need]
        out = how(f.reshape(n, k), axis=1)
    else:
        out = np.repeat(flags, g // cs)[:n]
    if out.size < n:
        out = np.concatenate([out, np.zeros(n - out.size, dtype=bool)])
    return out


def _raw_layer(im: RawImage, cs: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A raw file decides every byte it has; its holes read as zeros."""
    size = im.virtual_size
    data = np.zeros(n, dtype=bool)
    decided = np.zeros(n, dtype=bool)
    decided[:-(-size // cs)] = True
    fd, pos = im.file.fd, 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, SEEK_DATA)
        except OSError:
            break
        end = min(os.lseek(fd, start, SEEK_HOLE), size)
        data[start // cs:-(-end // cs)] = True
        pos = end
    return data, decided
