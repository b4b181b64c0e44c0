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

from . import clusters as C
from .compression import compress_cluster
from .errors import RequestError


def _place_streams(image, sizes: list[int]) -> list[int]:
    """Host byte offsets of streams of these sizes, placed as qemu's qcow2_alloc_bytes
    places them: after the last stream of the session (its free_byte_offset), a
    stream spilling into the next cluster only if that is the next one allocated.
    Each host cluster's refcount counts the streams touching it (raised here, in
    memory).  Unlike qemu 7.2 we go on after the last stream only while its cluster
    still counts just what we put there: qemu goes on into a cluster freed and
    reused meanwhile (corrupting it)."""
    cs = image.cluster_size
    refs = image.meta.refcounts
    writer = image._write_side()
    offset = 0
    tail = writer.compressed_tail
    if tail is not None and refs.refcount(tail[0] // cs) == tail[1]:
        offset = tail[0]
    places = []
    for size in sizes:
        if offset and refs.refcount(offset // cs) >= refs.max_rc:
            offset = 0                                # that cluster counts no more streams
        if not offset or cs - offset % cs < size:
            new = refs.alloc(1) * cs                  # counts this stream
            if offset and offset - offset % cs + cs == new:
                refs.change(offset - offset % cs, cs, 1)     # spills over from here
            else:
                offset = new
        else:
            refs.change(offset - offset % cs, cs, 1)
        places.append(offset)
        offset = (offset + size) % cs and offset + size
    writer.compressed_tail = (offset, refs.refcount(offset // cs)) if offset else None
    return places


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
    """Pack the streams into host clusters and point their L2 entries at them:
    refcounts raised and flushed, then the streams written and flushed, then the
    entries, and only then the clusters they replace freed."""
    cs = image.cluster_size
    meta = image.meta
    places = _place_streams(image, [len(stream) for _, stream in streams])
    meta.commit_refcounts()
    runs: list[tuple[int, list[bytes]]] = []        # contiguous streams, written together
    for place, (_, stream) in zip(places, streams):
        if runs and runs[-1][0] + sum(map(len, runs[-1][1])) == place:
            runs[-1][1].append(stream)
        else:
            runs.append((place, [stream]))
    for start, parts in runs:
        image.file.pwrite(start, b"".join(parts))
    image.file.fsync()
    entries = [(guest, image.layout.encode(place, len(stream)))
               for place, (guest, stream) in zip(places, streams)]
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
