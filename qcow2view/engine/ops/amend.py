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
from ..create import COMPAT_VALUES, _bool
from ..errors import RequestError
from ..header import V3_HEADER_LENGTH_CT
from ..refcounts import block_entries, max_refcount

AMENDABLE = ("compat", "refcount_bits", "lazy_refcounts")


@M.operation
def amend_image(image, options: dict, progress=None) -> None:
    """Apply ``options`` (``qemu-img amend -o`` names) to a writable ``image``."""
    unknown = [k for k in options if k not in AMENDABLE]
    if unknown:
        raise RequestError(f"Changing the option {unknown[0]!r} is not supported "
                           f"(amend changes {', '.join(AMENDABLE)})")
    header = image.header
    version = COMPAT_VALUES.get(str(options.get("compat", header.compat)))
    if version is None:
        raise RequestError(f"Invalid compatibility level: '{options['compat']}'")
    lazy = _bool("lazy_refcounts", options.get("lazy_refcounts", header.lazy_refcounts))
    bits = int(options.get("refcount_bits", header.refcount_bits))
    if bits < 1 or bits > 64 or bits & (bits - 1):
        raise RequestError("Refcount width must be a power of two and may not exceed 64 bits")
    if version < 3 and lazy:
        raise RequestError("Lazy refcounts only supported with compatibility level 1.1 "
                           "and above (use compat=1.1 or greater)")
    if version < 3 and bits != 16:
        raise RequestError("Different refcount widths than 16 bits require compatibility "
                           "level 1.1 or above (use compat=1.1 or greater)")
    image.require_writable()
    image.flush()
    if version > header.version:
        _upgrade(image)
    if lazy != image.header.lazy_refcounts:
        image.meta.write_header(compatible_features=(
            image.header.compatible_features & ~1) | int(lazy))
    if bits != image.header.refcount_bits:
        change_refcount_width(image, bits, progress)
    if version < image.header.version:
        _downgrade(image)
    M.reload(image)


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
    header = image.header
    if header.refcount_order != 4:
        raise RequestError("compat=0.10 requires refcount_bits=16")
    if image.has_data_file or image.extended_l2 or header.compression_type != 0 or image.bitmaps:
        what = ("an external data file" if image.has_data_file else "extended L2 entries"
                if image.extended_l2 else "zstd compression" if header.compression_type
                else "persistent bitmaps")
        raise RequestError(f"Cannot downgrade an image with {what}")
    if header.incompatible_features:
        raise RequestError(f"Cannot downgrade an image with incompatible features "
                           f"{header.incompatible_features:#x} set")
    _expand_zero_clusters(image)
    M.rewrite_header_cluster(image, version=2, header_length=72, incompatible_features=0,
                             compatible_features=0, autoclear_features=0)
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
    new = words & ~np.uint64(C.QCOW_OFLAG_ZERO)
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
