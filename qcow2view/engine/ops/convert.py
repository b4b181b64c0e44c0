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


class Concatenated:
    """Several sources read as one disk, one after the other (qemu-img convert
    SRC1 SRC2 ... DST)."""

    format = "concatenated"
    backing = None

    def __init__(self, paths: list[str], fmt: str | None = None) -> None:
        self.parts: list = []
        try:
            for path in paths:
                self.parts.append(open_source(path, fmt))
        except BaseException:
            self.close()
            raise
        self.starts = np.cumsum([0] + [p.virtual_size for p in self.parts]).tolist()
        self.virtual_size = self.starts[-1]

    def read(self, pos: int, n: int) -> bytes:
        out = bytearray()
        for part, start in zip(self.parts, self.starts):
            lo, hi = max(pos, start), min(pos + n, start + part.virtual_size)
            if lo < hi:
                out += part.read(lo - start, hi - lo)
        return bytes(out)

    def close(self) -> None:
        for part in self.parts:
            part.close()


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
                  force_share: bool = False, threads: int = 2, backing: str | None = None,
                  backing_fmt: str | None = None, create: bool = True,
                  target_is_zero: bool = False, progress=None) -> None:
    """Write the guest disk of ``src_path`` (or of one of its snapshots) to a new
    image at ``dst_path`` (replaced if it exists, as qemu-img does).  A source in
    use by a VM is refused unless ``force_share`` (qemu-img's ``-U``): its copy
    would mix moments of a running disk.  ``threads`` compress at once with
    ``compress`` (qemu-img's ``-m``).  ``create=False`` (``-n``) writes into an
    existing image instead."""
    options, prealloc_all = _output_options(options, out_fmt, compress, backing,
                                            backing_fmt)
    if not create:
        if options:
            raise RequestError("-o has no effect when skipping image creation")
        if not os.path.exists(dst_path):
            raise Qcow2Error(f"Could not open '{dst_path}': No such file or directory")
    sources = [src_path] if isinstance(src_path, (str, os.PathLike)) else list(src_path)
    if len(sources) > 1 and snapshot:
        raise RequestError("No support for concatenating multiple snapshot")
    if os.path.exists(dst_path):
        if any(os.path.exists(s) and os.path.samefile(s, dst_path) for s in sources):
            raise RequestError("the output file is the input file", path=dst_path)
        M.refuse_if_in_use(dst_path)
    src = open_source(sources[0], src_fmt, snapshot) if len(sources) == 1 else \
        Concatenated(sources, src_fmt)
    try:
        for part in getattr(src, "parts", [src]):
            if getattr(part, "in_use", False) and not force_share:
                raise ImageInUseError(f"{part.path} is in use ({part.in_use_by or 'locked'}); "
                                      "is a VM or another qemu process using it? (-U copies "
                                      "it anyway)", path=part.path)
        size = src.virtual_size
        if not create:
            _into_existing(src, dst_path, out_fmt, size, compress, progress,
                           zeros=not target_is_zero)
        elif out_fmt == "raw":
            _to_raw(src, dst_path, size, progress)
            if prealloc_all:
                _allocate_file(dst_path)
        else:
            create_image(dst_path, size, overwrite=True, **options)
            # over a backing file the output holds what the source's top image decides
            own = _decided(src) if options.get("backing_file") else None
            with M.opened_writable(dst_path) as dst:
                # a new file nothing refers to yet: like qemu-img convert (cache=unsafe)
                # it is written without flushes; `sync` makes it durable
                dst.file.fsync = _no_flush
                if compress and threads > 1:
                    with ThreadPoolExecutor(threads) as pool:
                        _to_qcow2(src, dst, size, compress, progress, pool, own)
                else:
                    _to_qcow2(src, dst, size, compress, progress, own=own)
            if prealloc_all:
                _allocate_file(dst_path)
    finally:
        src.close()


def _output_options(options: dict | None, out_fmt: str, compress: bool,
                    backing: str | None, backing_fmt: str | None) -> tuple[dict, bool]:
    """``-o`` (with -B/-F folded in) checked as qemu-img convert checks them; returns
    the create_image options and whether the file is allocated to its end after
    (preallocation=falloc|full: metadata preallocation, then the host file)."""
    options = dict(options or {})
    if backing is not None:             # -B (an -o backing_file wins, as in qemu-img)
        options.setdefault("backing_file", backing)
    if backing_fmt is not None:
        options.setdefault("backing_fmt", backing_fmt)
    if out_fmt not in ("qcow2", "raw"):
        raise RequestError(f"output format {out_fmt!r} is not supported (qcow2 or raw)")
    if compress and out_fmt != "qcow2":
        raise RequestError("Compression not supported for this file format")
    if compress and options.get("preallocation", "off") != "off":
        raise RequestError("Compression and preallocation not supported at the same time")
    if out_fmt == "raw" and options.get("backing_file"):
        raise RequestError("Backing file not supported for file format 'raw'")
    if options.get("backing_fmt") and not options.get("backing_file"):
        raise RequestError("Backing format cannot be used without backing file")
    if out_fmt == "raw":
        prealloc = options.pop("preallocation", "off")
        if prealloc not in ("off", "falloc", "full"):
            raise RequestError(f"Unsupported preallocation mode: {prealloc}")
        if options:
            raise RequestError(f"raw images take no options ({', '.join(options)})")
        return options, prealloc != "off"
    if options.get("backing_file") and not options.get("backing_fmt"):
        raise RequestError("Use of backing file requires explicit backing format")
    prealloc_all = options.get("preallocation") in ("falloc", "full")
    if prealloc_all:
        options["preallocation"] = "metadata"
    return options, prealloc_all


def _into_existing(src, dst_path: str, out_fmt: str, size: int, compress: bool,
                   progress, zeros: bool = True) -> None:
    """-n: the guest disk over an existing image (its own format, size and options
    kept), zeros written as zeros since the target may hold anything there
    (unless ``zeros`` is False: --target-is-zero)."""
    if out_fmt == "raw":
        out = HostFile(dst_path, writable=True)
        try:
            if out.size < size:
                raise RequestError("output file is smaller than input file", path=dst_path)
            for pos in range(0, size, CHUNK):
                n = min(CHUNK, size - pos)
                data = src.read(pos, n)
                if zeros:
                    out.pwrite(pos, data)
                else:
                    for a, b in nonzero_runs(data, RAW_GRANULE):
                        out.pwrite(pos + a, memoryview(data)[a:b])
                M.report(progress, pos + n, size)
        finally:
            out.close()
        return
    with M.opened_writable(dst_path) as dst:
        if dst.virtual_size < size:
            raise RequestError("output file is smaller than input file", path=dst_path)
        cs = dst.cluster_size
        chunk = max(CHUNK // cs, 1) * cs
        for pos in range(0, size, chunk):
            n = min(chunk, size - pos)
            _copy_chunk(src, dst, pos, n, compress, None, zeros=zeros)
            M.report(progress, pos + n, size)
        dst.flush()


def _decided(src) -> tuple[int, np.ndarray] | None:
    """(granule, flags): the source's guest ranges its top image decides (data, zero
    or compressed; all of them without a backing file), as qemu-img convert -B reads
    the block status of the top image only; None: all of the disk."""
    if getattr(src, "format", "") != "qcow2" or src.backing is None:
        return None
    granule, own = M.guest_allocation(src)
    past = -(-src.backing.virtual_size // granule)   # past the backing file: zeros
    own[past:] = True
    return granule, own


def _allocate_file(path: str) -> None:
    """preallocation=falloc|full: the file's clusters allocated on the host."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


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


def _to_qcow2(src, dst, size: int, compress: bool, progress, pool=None,
              own: tuple[int, np.ndarray] | None = None) -> None:
    cs = dst.cluster_size
    chunk = max(CHUNK // cs, 1) * cs
    if own is not None:
        chunk = max(chunk // own[0], 1) * own[0]
    if own is None:
        # the next chunk is read in a second thread while this one is written (the
        # reads release the GIL): a source that is not in the page cache streams
        with ThreadPoolExecutor(1, thread_name_prefix="qcow2view-convert-read") as ahead:
            nxt = ahead.submit(src.read, 0, min(chunk, size))
            for pos in range(0, size, chunk):
                n = min(chunk, size - pos)
                data = nxt.result()
                if pos + n < size:
                    nxt = ahead.submit(src.read, pos + n, min(chunk, size - pos - n))
                _write_chunk(data, dst, pos, compress, pool)
                M.report(progress, pos + n, size)
        dst.flush()
        return
    for pos in range(0, size, chunk):
        n = min(chunk, size - pos)
        # only what the top image decides, zeros written as zeros: the output's
        # backing file must not show through them
        for lo, hi in _own_spans(own, pos, n, cs if compress else 1, size):
            _copy_chunk(src, dst, lo, hi - lo, compress, pool, zeros=True)
        M.report(progress, pos + n, size)
    dst.flush()


def _own_spans(own, pos: int, n: int, align: int, size: int) -> list[tuple[int, int]]:
    """The byte spans of [pos, pos + n) the top image decides, widened to ``align``
    (whole output clusters for compressed writes: the rest reads the same there)
    and merged."""
    granule, flags = own
    first = pos // granule
    out: list[tuple[int, int]] = []
    for a, b in M.runs(flags[first:first + -(-n // granule)]):
        lo, hi = pos + a * granule, min(pos + b * granule, pos + n)
        lo, hi = lo // align * align, min(-(-hi // align) * align, size)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def _copy_chunk(src, dst, pos: int, n: int, compress: bool, pool,
                zeros: bool = False) -> None:
    """The nonzero clusters of ``n`` guest bytes at ``pos`` written (compressed);
    with ``zeros`` the zero ones between them written as zeros."""
    _write_chunk(src.read(pos, n), dst, pos, compress, pool, zeros)


def _write_chunk(data: bytes, dst, pos: int, compress: bool, pool, zeros: bool = False) -> None:
    """:func:`_copy_chunk` of bytes already read."""
    cs = dst.cluster_size
    ctype = dst.header.compression_type
    n = len(data)
    end = 0
    for a, b in nonzero_runs(data, cs):
        if zeros and a > end:
            dst.write_zeroes(pos + end, a - end)
        end = b
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
    if zeros and n > end:
        dst.write_zeroes(pos + end, n - end)
