"""Copying a guest disk into a new image (qemu-img convert).

The source (qcow2 -- any snapshot of it -- or raw, backing chain followed) is
read in chunks; runs of zeros are skipped, so the output is sparse, and the
rest is written through the engine's writer into an image made by
:func:`~qcow2view.engine.create.create_image` (``-O qcow2``, with its ``-o``
options; ``-c`` writes compressed clusters with the image's compression type)
or into a sparse raw file (``-O raw``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import metadata_ops as M
from ..compressed_write import compress_clusters, write_compressed
from ..create import create_image
from ..errors import ImageInUseError, Qcow2Error, RequestError
from ..fileio import HostFile
from ..image import RawImage, open_image, probe_format

CHUNK = 4 << 20
RAW_GRANULE = 4096          # qemu-img convert's default -S (min sparse) is 4 KiB


@dataclass(frozen=True)
class SnapshotParam:
    """``-l``: ``snapshot.name=NAME``, ``snapshot.id=ID`` or an id or name."""
    key: str

    @classmethod
    def parse(cls, text: str | None) -> "SnapshotParam | None":
        if not text:
            return None
        for item in text.split(","):
            k, sep, v = item.partition("=")
            if sep and k in ("snapshot.name", "snapshot.id") and v:
                return cls(v)
            if not sep:
                return cls(item)
        raise RequestError(f"invalid snapshot parameter {text!r} "
                           "(use snapshot.name=NAME or snapshot.id=ID)")


def open_source(path: str, fmt: str | None = None, snapshot: str | None = None):
    """A source disk for reading: a qcow2 :class:`Image` (snapshot view) or raw."""
    if not os.path.exists(path):
        raise Qcow2Error("no such file", path=path)
    fmt = fmt or probe_format(path)
    if fmt == "raw":
        if snapshot:
            raise RequestError("a raw image has no snapshots", path=path)
        return RawImage(path)
    if fmt != "qcow2":
        raise RequestError(f"format {fmt!r} is not supported (qcow2 or raw)", path=path)
    return open_image(path, snapshot=snapshot)


def nonzero_runs(data: bytes, granule: int) -> list[tuple[int, int]]:
    """[start, end) byte runs of ``data`` whose ``granule``-sized pieces hold a nonzero byte."""
    n = len(data)
    pad = (-n) % granule
    arr = np.frombuffer(bytes(data) + bytes(pad) if pad else data, dtype=np.uint8)
    flags = arr.view(np.uint64).reshape(-1, granule // 8).any(axis=1)
    idx = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
    return [(int(a) * granule, min(int(b) * granule, n)) for a, b in zip(idx[::2], idx[1::2])]


@M.operation
def convert_image(src_path: str, dst_path: str, *, out_fmt: str = "qcow2",
                  compress: bool = False, options: dict | None = None,
                  snapshot: str | None = None, src_fmt: str | None = None,
                  force_share: bool = False, threads: int = 2, progress=None) -> None:
    """Write the guest disk of ``src_path`` (or of one of its snapshots) to a new
    image at ``dst_path`` (replaced if it exists, as qemu-img does).  A source in
    use by a VM is refused unless ``force_share`` (qemu-img's ``-U``): its copy
    would mix moments of a running disk.  ``threads`` compress at once with
    ``compress`` (qemu-img's ``-m``)."""
    options = dict(options or {})
    if out_fmt not in ("qcow2", "raw"):
        raise RequestError(f"output format {out_fmt!r} is not supported (qcow2 or raw)")
    if compress and out_fmt != "qcow2":
        raise RequestError("Compression not supported for this file format")
    if compress and (options or {}).get("preallocation", "off") != "off":
        raise RequestError("Compression and preallocation not supported at the same time")
    if out_fmt == "raw" and options:
        raise RequestError(f"raw images take no options ({', '.join(options)})")
    if os.path.exists(dst_path):
        if os.path.samefile(src_path, dst_path):
            raise RequestError("the output file is the input file", path=dst_path)
        M.refuse_if_in_use(dst_path)
    src = open_source(src_path, src_fmt, snapshot)
    try:
        if getattr(src, "in_use", False) and not force_share:
            raise ImageInUseError(f"{src_path} is in use ({src.in_use_by or 'locked'}); is "
                                  "a VM or another qemu process using it? (-U copies it "
                                  "anyway)", path=src_path)
        size = src.virtual_size
        if out_fmt == "raw":
            _to_raw(src, dst_path, size, progress)
        else:
            create_image(dst_path, size, overwrite=True, **options)
            with M.opened_writable(dst_path) as dst:
                # a new file nothing refers to yet: like qemu-img convert (cache=unsafe)
                # it is written without flushes; `sync` makes it durable
                dst.file.fsync = _no_flush
                if compress and threads > 1:
                    with ThreadPoolExecutor(threads) as pool:
                        _to_qcow2(src, dst, size, compress, progress, pool)
                else:
                    _to_qcow2(src, dst, size, compress, progress)
    finally:
        src.close()


def _no_flush() -> None:
    """fsync of the output file: skipped, as qemu-img convert's default cache=unsafe."""


def _to_raw(src, dst_path: str, size: int, progress) -> None:
    fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.close(fd)
    out = HostFile(dst_path, writable=True)
    try:
        out.truncate(size)
        for pos in range(0, size, CHUNK):
            n = min(CHUNK, size - pos)
            data = src.read(pos, n)
            for a, b in nonzero_runs(data, RAW_GRANULE):
                out.pwrite(pos + a, memoryview(data)[a:b])
            M.report(progress, pos + n, size)
    finally:
        out.close()


def _to_qcow2(src, dst, size: int, compress: bool, progress, pool=None) -> None:
    cs = dst.cluster_size
    ctype = dst.header.compression_type
    chunk = max(CHUNK // cs, 1) * cs
    for pos in range(0, size, chunk):
        n = min(chunk, size - pos)
        data = src.read(pos, n)
        for a, b in nonzero_runs(data, cs):
            piece = memoryview(data)[a:b]
            whole = (b - a) // cs * cs
            if compress and whole:
                clusters = bytes(piece[:whole])
                write_compressed(dst, pos + a, clusters,
                                 compressed=compress_clusters(clusters, cs, ctype, pool))
                if whole < b - a:    # the disk's last, partial cluster
                    dst.write(pos + a + whole, piece[whole:])
            else:
                dst.write(pos + a, piece)
        M.report(progress, pos + n, size)
    dst.flush()
