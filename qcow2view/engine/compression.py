"""Compressed clusters: raw deflate (zlib type) and zstd, as QEMU's qcow2-threads.c."""

from __future__ import annotations

import io
import zlib

from .errors import CorruptImageError


def _zstandard():
    """The zstandard module, loaded on first use (most images never need it, and
    every command would pay for its import); None if it is not installed."""
    try:
        import zstandard
    except ImportError:  # pragma: no cover - zstandard is a runtime dependency
        return None
    return zstandard

COMPRESSION_ZLIB, COMPRESSION_ZSTD = 0, 1


def decompress_cluster(data: bytes, cluster_size: int, compression_type: int,
                       *, offset: int = 0) -> bytes:
    """Inflate one compressed cluster; it must produce exactly ``cluster_size`` bytes."""
    if compression_type == COMPRESSION_ZLIB:
        try:
            d = zlib.decompressobj(-12)
            out = d.decompress(data, cluster_size)
        except zlib.error as e:
            raise CorruptImageError(f"deflate stream is invalid ({e})",
                                    structure="compressed cluster", offset=offset) from None
    elif compression_type == COMPRESSION_ZSTD:
        if _zstandard() is None:
            raise CorruptImageError("zstd support needs the 'zstandard' package",
                                    structure="compressed cluster", offset=offset)
        out = _zstd_decompress(data, cluster_size, offset)
    else:
        raise CorruptImageError(f"unknown compression type {compression_type}",
                                structure="compressed cluster", offset=offset)
    if len(out) != cluster_size:
        raise CorruptImageError(
            f"compressed data inflates to {len(out)} bytes, not {cluster_size}",
            structure="compressed cluster", offset=offset)
    return out


# Bounds the decoder's window allocation, which a frame header chooses: QEMU's
# compressor never needs more than a cluster (2 MiB at most).
ZSTD_MAX_WINDOW = 8 * 1024 * 1024


def _zstd_decompress(data: bytes, cluster_size: int, offset: int) -> bytes:
    """QEMU's rule (qcow2_zstd_decompress): decode frames until the cluster is full;
    a frame still unfinished then is an error, bytes after the last frame are
    ignored.  Output is bounded by the cluster size, whatever a frame claims."""
    zstandard = _zstandard()
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    parts: list[bytes] = []
    got = 0
    rest = data
    try:
        while got < cluster_size and rest:
            declared = zstandard.frame_content_size(rest)
            if declared < 0 or declared >= zstandard.CONTENTSIZE_ERROR:   # unknown
                # no size recorded (QEMU always records it): a stream reader never
                # produces more than it is asked for
                with dctx.stream_reader(io.BytesIO(rest), read_across_frames=True) as r:
                    while got < cluster_size:
                        chunk = r.read(cluster_size - got)
                        if not chunk:
                            break
                        parts.append(chunk)
                        got += len(chunk)
                break
            if declared > cluster_size - got:
                raise CorruptImageError(
                    f"zstd frame holds {declared} bytes, more than the {cluster_size - got} "
                    "left in the cluster", structure="compressed cluster", offset=offset)
            # zstd stops a frame whose blocks outgrow its recorded size, so this
            # allocates at most about one block more than ``declared``
            obj = dctx.decompressobj()
            chunk = obj.decompress(rest)
            if not obj.eof:
                break                       # truncated: the length check reports it
            parts.append(chunk)
            got += len(chunk)
            rest = obj.unused_data
    except zstandard.ZstdError as e:
        raise CorruptImageError(f"zstd stream is invalid ({e})",
                                structure="compressed cluster", offset=offset) from None
    return b"".join(parts)


def compress_cluster(data: bytes, compression_type: int) -> bytes:
    """Compress one cluster the way QEMU does (deflate level default, window 4 KiB)."""
    if compression_type == COMPRESSION_ZLIB:
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9)
        return c.compress(data) + c.flush()
    if compression_type == COMPRESSION_ZSTD:
        return _zstandard().ZstdCompressor().compress(data)
    raise ValueError(f"unknown compression type {compression_type}")
