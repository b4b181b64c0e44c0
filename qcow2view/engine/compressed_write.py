"""Writing compressed clusters (QEMU's qcow2_co_pwritev_compressed, qcow2.c).

Like ``qemu-io -c 'write -c'``: whole clusters only, into clusters with no
host cluster yet.  Compressed streams are packed back to back, a stream may
spill into the next host cluster, and each host cluster's refcount counts the
streams that touch it (qcow2_alloc_bytes).  A cluster that does not shrink is
written uncompressed, as QEMU does.
"""

from __future__ import annotations

from concurrent.futures import Executor
from functools import partial

import numpy as np

from . import clusters as C
from .compression import compress_cluster
from .errors import RequestError


def compress_clusters(data: bytes, cluster_size: int, compression_type: int,
                      pool: Executor | None = None) -> list[bytes]:
    """Each cluster of ``data`` compressed as QEMU compresses it; with a thread pool
    on several cores at once (zlib and zstd release the GIL while they work)."""
    view = memoryview(data)
    clusters = [view[pos:pos + cluster_size] for pos in range(0, len(data), cluster_size)]
    squeeze = partial(compress_cluster, compression_type=compression_type)
    return list(pool.map(squeeze, clusters) if pool is not None else map(squeeze, clusters))


def write_compressed(image, offset: int, data: bytes, *,
                     compressed: list[bytes] | None = None) -> None:
    """Write whole clusters of ``data`` at cluster-aligned ``offset``, compressed
    (``compressed``: the clusters already compressed by :func:`compress_clusters`)."""
    cs = image.cluster_size
    if offset % cs or len(data) % cs:
        raise RequestError("compressed writes need whole, cluster-aligned clusters")
    image.check_request(offset, len(data))
    if image.has_data_file:
        raise RequestError("images with an external data file cannot hold compressed clusters")
    image.require_writable()
    if compressed is None:
        compressed = compress_clusters(data, cs, image.header.compression_type)
    streams: list[tuple[int, bytes]] = []     # (guest offset, compressed bytes)
    for pos, stream in zip(range(0, len(data), cs), compressed):
        if len(stream) > cs - 1:     # qemu compresses into cluster_size - 1 bytes or not at all
            image.write(offset + pos, data[pos:pos + cs])
        else:
            streams.append((offset + pos, stream))
    if not streams:
        return
    # every target needs an L2 table the active L1 owns alone: a zero write creates
    # it, or copies one shared with a snapshot (qemu's get_cluster_table -> l2_allocate)
    for guest, _ in streams:
        where = image.guest_mapping(guest)
        if where.l2_entry_offset is None \
                or not image.meta.l1[where.l1_index] & C.QCOW_OFLAG_COPIED:
            image.write_zeroes(guest, cs)
    image.flush()
    _write_streams(image, streams)


def _write_streams(image, streams: list[tuple[int, bytes]]) -> None:
    """Pack the streams into new host clusters and point their L2 entries at them:
    refcounts raised and flushed, then the streams written and flushed, then the
    entries, and only then the clusters they replace freed."""
    cs = image.cluster_size
    meta = image.meta
    refs = meta.refcounts
    total = sum(len(stream) for _, stream in streams)
    nclusters = -(-total // cs)
    host = refs.alloc(nclusters) * cs           # refcount 1 each
    entries = []
    # refcount = number of streams touching each host cluster
    touching = np.zeros(nclusters, dtype=np.int64)
    pos = host
    for guest, stream in streams:
        entries.append((guest, image.layout.encode(pos, len(stream))))
        touching[(pos - host) // cs:(pos + len(stream) - 1 - host) // cs + 1] += 1
        pos += len(stream)
    for index, count in enumerate(touching.tolist()):
        if count > 1:
            refs.change(host + index * cs, cs, count - 1)
    meta.commit_refcounts()
    image.file.pwrite(host, b"".join(stream for _, stream in streams))
    image.file.fsync()
    # now point the L2 entries at the streams, releasing whatever was there
    frees = []
    for guest, entry in entries:
        where = image.guest_mapping(guest)
        l1_entry = meta.l1[where.l1_index]
        if not l1_entry & C.QCOW_OFLAG_COPIED:
            raise RequestError("the L2 table is shared with a snapshot; write compressed "
                               "clusters before taking snapshots")
        old = int.from_bytes(image.file.pread_exact(where.l2_entry_offset, 8, "L2 entry"),
                             "big")
        if old & C.QCOW_OFLAG_COMPRESSED:
            frees.append(image.layout.decode(old))     # the sectors its stream spans
        elif C.has_host_cluster(old):
            frees.append((old & C.L2E_OFFSET_MASK, cs))
        meta.write_l2_entries(l1_entry & C.L1E_OFFSET_MASK, where.l2_index, [entry],
                              [0] if image.extended_l2 else None)
    image.file.fsync()
    if frees:
        meta.free(frees)
    meta.reload()
