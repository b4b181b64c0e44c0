"""Changing image options in place (qemu-img amend; QEMU's qcow2_amend_options).

``compat`` (0.10 / 1.1), ``lazy_refcounts`` and ``refcount_bits`` can change, in
QEMU's order: upgrade, lazy refcounts, refcount width, downgrade.  A new
refcount width means a new refcount structure (qcow2_change_refcount_order):
the table and blocks are written anew past the end of the file, the header
switched to them in one write, and the old ones freed.  A downgrade to version
2 expands zero clusters of the active disk first (v2 has no zero flag).
"""

from __future__ import annotations

import numpy as np

from .. import clusters as C
from .. import metadata_ops as M
from ..create import COMPAT_VALUES, _bool, parse_size
from ..errors import RequestError
from ..header import (AUTOCLEAR_DATA_FILE_RAW, INCOMPAT_COMPRESSION, INCOMPAT_DIRTY,
                      V3_HEADER_LENGTH_CT)
from ..refcounts import block_entries, max_refcount
from .resize import resize_image

AMENDABLE = ("size", "compat", "backing_file", "backing_fmt", "data_file", "data_file_raw",
             "lazy_refcounts", "refcount_bits")
CREATE_ONLY = ("cluster_size", "preallocation", "compression_type", "extended_l2",
               "encryption", "encrypt")


@M.operation
def amend_image(image, options: dict, progress=None) -> None:
    """Apply ``options`` (``qemu-img amend -o`` names) to a writable ``image``;
    as qcow2_amend_options, only the options given change anything."""
    _refuse_unknown(options)
    header = image.header
    version = COMPAT_VALUES.get(str(options.get("compat", header.compat)))
    if version is None:
        raise RequestError(f"Unknown compatibility level {options['compat']}")
    lazy = _bool("lazy_refcounts", options.get("lazy_refcounts", header.lazy_refcounts))
    bits = _refcount_bits(options.get("refcount_bits", header.refcount_bits))
    new_size = parse_size(str(options["size"])) if "size" in options else 0
    raw = _bool("data_file_raw", options.get("data_file_raw", header.data_file_raw))
    _refuse_data_file(image, options, raw)
    if version < 3 and bits != header.refcount_bits and bits != 16:
        raise RequestError("Refcount widths other than 16 bits require compatibility "
                           "level 1.1 or above (use compat=1.1 or greater)")
    if "backing_file" in options or "backing_fmt" in options:
        if (options.get("backing_file") != image.backing_filename
                or options.get("backing_fmt") != image.backing_format):
            raise RequestError("Cannot amend the backing file (use qemu-img rebase)")
    if version < 3 and lazy and not header.lazy_refcounts:
        # turning lazy refcounts on; left on, a downgrade drops them (qemu-img too)
        raise RequestError("Lazy refcounts only supported with compatibility level 1.1 "
                           "and above (use compat=1.1 or greater)")
    if version < header.version:
        _refuse_downgrade(image, new_size or image.virtual_size)
    image.require_writable()
    image.flush()
    if version > header.version:
        _upgrade(image)
    if bits != image.header.refcount_bits:
        change_refcount_width(image, bits, progress)
    if raw != image.header.data_file_raw or "data_file" in options:
        _set_data_file(image, options.get("data_file"), raw)
    if lazy != image.header.lazy_refcounts:
        image.meta.write_header(compatible_features=(
            image.header.compatible_features & ~1) | int(lazy))
    if new_size and new_size != image.virtual_size:
        resize_image(image, new_size, shrink=True)
    if version < image.header.version:
        _downgrade(image)
    M.reload(image)


def _refuse_unknown(options: dict) -> None:
    for k in options:
        if k in CREATE_ONLY or k.startswith("encrypt."):
            raise RequestError(f"Invalid parameter '{k}': this option is only supported "
                               "for image creation")
        if k not in AMENDABLE:
            raise RequestError(f"Invalid parameter '{k}'")


def _refcount_bits(value) -> int:
    try:
        bits = int(value)
    except ValueError:
        bits = 0
    if bits < 1 or bits > 64 or bits & (bits - 1):
        raise RequestError("Refcount width must be a power of two and may not exceed 64 bits")
    return bits


def _refuse_data_file(image, options: dict, raw: bool) -> None:
    if options.get("data_file") and not image.has_data_file:
        raise RequestError("data-file can only be set for images that use an external "
                           "data file")
    if raw and not image.header.data_file_raw:
        raise RequestError("data-file-raw cannot be set on existing images")


def _set_data_file(image, name: str | None, raw: bool) -> None:
    """data_file_raw cleared and/or the data file renamed, in one header write."""
    autoclear = image.header.autoclear_features & ~AUTOCLEAR_DATA_FILE_RAW
    fields = {"autoclear_features": autoclear | (AUTOCLEAR_DATA_FILE_RAW if raw else 0)}
    if name:
        M.rewrite_header_cluster(image, data_file=name, **fields)
    else:
        image.meta.write_header(**fields)
    M.reload(image)


def _refuse_downgrade(image, size: int) -> None:
    """qcow2_downgrade's refusals, checked before anything is written (qemu-img
    finds some only after expanding zero clusters; the image ends the same)."""
    header = image.header
    if header.refcount_order != 4:
        raise RequestError("compat=0.10 requires refcount_bits=16")
    if image.has_data_file:
        raise RequestError("Cannot downgrade an image with a data file")
    for s in image.snapshots:
        if (s.disk_size is not None and s.disk_size != size) or s.vm_state_size > 0xFFFFFFFF:
            raise RequestError("Internal snapshots prevent downgrade of image")
    incompat = header.incompatible_features & ~(INCOMPAT_DIRTY | INCOMPAT_COMPRESSION)
    if incompat:
        raise RequestError(f"Cannot downgrade an image with incompatible features "
                           f"{incompat:#x} set")
    if image.bitmaps:
        raise RequestError("Cannot downgrade an image with persistent bitmaps")
    if header.compression_type != 0 and _has_compressed_clusters(image):
        raise RequestError("Cannot downgrade an image with zstd compression type and "
                           "existing compressed clusters")


def _has_compressed_clusters(image) -> bool:
    """Any compressed cluster in the active disk or a snapshot (qemu-img looks at the
    active disk only; a snapshot's zstd clusters would read as zlib after)."""
    l1s = [image.l1_table.entries] + [image.snapshot_l1_table(s).entries
                                      for s in image.snapshots]
    for l1 in l1s:
        for l1i, e in enumerate(l1.tolist()):
            l2off = e & C.L1E_OFFSET_MASK
            if l2off:
                words = M.read_l2_words(image, l2off, l1i)
                if (C.decode_l2_types(words, None, image.has_data_file)
                        == C.ClusterType.COMPRESSED).any():
                    return True
    return False


def _upgrade(image) -> None:
    for s in image.snapshots:
        if s.extra_data_size < 16:
            raise RequestError(f"snapshot {s.name!r} has a table entry too short for "
                               "version 3 (upgrading it is not supported here)")
    M.rewrite_header_cluster(image, version=3, header_length=V3_HEADER_LENGTH_CT,
                             incompatible_features=0, compatible_features=0,
                             autoclear_features=0, refcount_order=4, compression_type=0,
                             unknown_header_bytes=bytes(7))
    M.reload(image)


def _downgrade(image) -> None:
    _refuse_downgrade(image, image.virtual_size)
    _expand_zero_clusters(image)
    # no compressed cluster left to read as zstd: the type goes back to zlib
    M.rewrite_header_cluster(image, version=2, header_length=72, incompatible_features=0,
                             compatible_features=0, autoclear_features=0,
                             compression_type=0)
    M.reload(image)


def _expand_zero_clusters(image) -> None:
    """Zero-flag entries become what v2 can say (qcow2_expand_zero_clusters), in the
    active disk and every snapshot: unallocated when no backing file shows through,
    else a new cluster of zeros (counted once per L1 table sharing its L2 table); a
    preallocated zero cluster is written with zeros and keeps its place."""
    cb = image.cluster_bits
    l1s = [image.l1_table.entries] + [image.snapshot_l1_table(s).entries
                                      for s in image.snapshots]
    data = _plain_data_clusters(image, l1s)
    seen: set[int] = set()
    for l1 in l1s:
        for l1i, e in enumerate(l1.tolist()):
            l2off = e & C.L1E_OFFSET_MASK
            if not l2off or l2off in seen:
                continue
            seen.add(l2off)
            words = M.read_l2_words(image, l2off, l1i)
            types = C.decode_l2_types(words, None, image.has_data_file)
            zeros = (types == C.ClusterType.ZERO_PLAIN) | (types == C.ClusterType.ZERO_ALLOC)
            if zeros.any():
                _expand_table(image, l2off, words, zeros,
                              image.meta.refcounts.refcount(l2off >> cb),
                              data)


def _plain_data_clusters(image, l1s) -> set[int]:
    """Host offsets some L2 entry maps as data (no zero flag), over all the L1 tables."""
    out: set[int] = set()
    for l1 in l1s:
        for l1i, e in enumerate(l1.tolist()):
            l2off = e & C.L1E_OFFSET_MASK
            if l2off:
                w = M.read_l2_words(image, l2off, l1i)
                plain = C.decode_l2_types(w, None, image.has_data_file) == C.ClusterType.NORMAL
                out.update((w[plain] & M.OFFSET_MASK).tolist())
    out.discard(0)
    return out


def _expand_table(image, l2off: int, words, zeros, l2_refcount: int,
                  data_clusters: set[int]) -> None:
    cs = image.cluster_size
    alloc = image.meta.refcounts
    off = words & M.OFFSET_MASK
    new = words.copy()
    # only the zero entries lose the flag: bit 0 of a compressed entry is its offset's
    new[zeros] &= ~np.uint64(C.QCOW_OFLAG_ZERO)
    fill = [int(o) for o in off[zeros & (off != 0)].tolist()]
    for host in fill:
        if host in data_clusters:
            raise RequestError(f"Cannot downgrade: the zero cluster at {host:#x} holds data "
                               "for a snapshot (writing zeros into it would change the "
                               "snapshot)")
    plain = np.flatnonzero(zeros & (off == 0))
    if image.backing is None:
        new[plain] = 0                   # nothing below: unallocated reads zeros
    else:
        for i in plain.tolist():
            host = alloc.alloc(1) * cs
            if l2_refcount > 1:
                alloc.change(host, cs, l2_refcount - 1)
            new[i] = host | (C.QCOW_OFLAG_COPIED if l2_refcount == 1 else 0)
            fill.append(host)
        M.sync_refcounts(image)   # counted before anything points there
    for host in fill:
        image.file.pwrite(host, bytes(cs))
    image.file.fsync()
    image.meta.write_l2(l2off, new)
    image.file.fsync()


def change_refcount_width(image, bits: int, progress=None) -> None:
    """Rewrite the refcount structure with ``bits``-wide entries."""
    cs = image.cluster_size
    order = bits.bit_length() - 1
    old = image.meta.refcounts
    nfile = -(-image.file.size // cs)
    counts = np.zeros(max(nfile, M.last_used_cluster(image) + 1), dtype=np.uint64)
    for rti in range(len(old.reftable)):
        block = old.block(rti)
        if block is None:
            continue
        lo = rti * old.per
        hi = min(counts.size, lo + old.per)
        counts[lo:hi] = block[:hi - lo]
        M.report(progress, rti + 1, 2 * len(old.reftable))
    top = int(counts.max()) if counts.size else 0
    if top > max_refcount(order):
        cluster = int(np.flatnonzero(counts > max_refcount(order))[0])
        raise RequestError(f"Cannot decrease refcount entry width to {bits} bits: Cluster "
                           f"at offset {cluster * cs:#x} has a refcount of {int(counts[cluster])}")
    per = block_entries(image.cluster_bits, order)
    # the new blocks and table go past everything the old structure covers
    area = counts.size
    nblocks, tclusters = 1, 1
    while True:
        end = area + nblocks + tclusters
        need_blocks = -(-end // per)
        need_t = max(1, -(-need_blocks * 8 // cs))
        if (need_blocks, need_t) == (nblocks, tclusters):
            break
        nblocks, tclusters = max(need_blocks, nblocks), max(need_t, tclusters)
    total = np.zeros(nblocks * per, dtype=np.uint64)
    total[:counts.size] = counts
    total[area:area + nblocks + tclusters] = 1
    table = np.zeros(tclusters * cs // 8, dtype=np.uint64)
    meta = image.meta
    for j in range(nblocks):
        table[j] = (area + j) * cs
        meta.put_refcount_block((area + j) * cs, total[j * per:(j + 1) * per], order)
    meta.write_table((area + nblocks) * cs, table.astype(">u8").tobytes())
    image.file.fsync()
    header = image.header
    old_spans = [(header.refcount_table_offset, header.refcount_table_clusters * cs)]
    old_spans += [(int(e) & C.REFT_OFFSET_MASK, cs) for e in old.reftable.tolist()
                  if int(e) & C.REFT_OFFSET_MASK]
    meta.switch_refcount_structure((area + nblocks) * cs, tclusters, refcount_order=order)
    M.free_spans(image, old_spans)
    M.finish(progress, 1)
