"""Creating QCOW2 images, as ``qemu-img create -f qcow2`` does.

Options carry the names ``qemu-img create -o`` gives them.  Every problem with
the options is found by :func:`validate_create_options` before any file is
touched, so a dialog can explain it next to the field.

Layout, as qemu-img lays it out: the header cluster, the refcount table, the
refcount block(s), the L1 table; with ``preallocation="metadata"`` every L2
table follows, then the (sparse) data clusters they map.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

import numpy as np

from .backing import probe_format
from .errors import Qcow2Error, RequestError
from .extensions import (EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FEATURE_NAME_TABLE,
                         pack_extension, pack_feature_name_table)
from .header import (AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS,
                     INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2,
                     MAX_BACKING_FILE_NAME, QCOW_MAGIC, QCOW_MAX_L1_SIZE,
                     QCOW_MAX_REFTABLE_SIZE, V2_HEADER_LENGTH, V3_HEADER_LENGTH_CT, Header)
from .image import Image
from .refcounts import block_entries, encode_refcount_block

COMPAT_VALUES = {"0.10": 2, "v2": 2, "1.1": 3, "v3": 3}
COMPRESSION_TYPES = {"zlib": 0, "zstd": 1}
PREALLOCATION_MODES = ("off", "metadata")
QEMU_PREALLOCATION_MODES = ("off", "metadata", "falloc", "full")
QCOW_OFLAG_COPIED = 1 << 63
MAX_VIRTUAL_SIZE = (1 << 63) - 512   # qemu: INT64_MAX rounded down to a sector

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "p": 1 << 50, "e": 1 << 60}


def parse_size(text: str | int) -> int:
    """``qemu-img`` size syntax: a number with an optional k/M/G/T/P/E suffix (powers of 1024)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtTpPeE]?)[iI]?[bB]?\s*", str(text))
    if not m:
        raise RequestError(f"invalid size {text!r} (use e.g. 65536, 512M, 10G, 1T)")
    num, unit = m.groups()
    value = float(num) * _UNITS[unit.lower()] if "." in num else int(num) * _UNITS[unit.lower()]
    return int(value)


def _bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "true", "yes", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("off", "false", "no", "0"):
        return False
    raise RequestError(f"{name} must be on or off, not {value!r}")


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def validate_create_options(*, size: int | None = None, cluster_size: int = 65536,
                            compat: str = "1.1", refcount_bits: int = 16,
                            lazy_refcounts: bool = False, extended_l2: bool = False,
                            compression_type: str = "zlib", preallocation: str = "off",
                            backing_file: str | None = None, backing_fmt: str | None = None,
                            data_file: str | None = None, data_file_raw: bool = False,
                            **unknown) -> list[str]:
    """The problems with a set of ``create_image`` options, as sentences (empty when fine).

    Texts follow qemu-img's messages so users recognise them.
    """
    problems: list[str] = [f"unknown option {k!r}" for k in unknown]
    version = COMPAT_VALUES.get(str(compat))
    if version is None:
        problems.append(f"compat must be 0.10 or 1.1, not {compat!r}")
        version = 3
    try:
        cluster_size = int(cluster_size)
    except (TypeError, ValueError):
        problems.append(f"cluster size {cluster_size!r} is not a number")
        cluster_size = 65536
    if not _is_pow2(cluster_size) or not 512 <= cluster_size <= 2 * 1024 * 1024:
        problems.append("Cluster size must be a power of two between 512 and 2048k")
        cluster_size = 65536
    try:
        refcount_bits = int(refcount_bits)
    except (TypeError, ValueError):
        problems.append(f"refcount width {refcount_bits!r} is not a number")
        refcount_bits = 16
    if not _is_pow2(refcount_bits) or refcount_bits > 64:
        problems.append("Refcount width must be a power of two and may not exceed 64 bits")
    elif version < 3 and refcount_bits != 16:
        problems.append("Different refcount widths than 16 bits require compatibility "
                        "level 1.1 or above")
    if compression_type not in COMPRESSION_TYPES:
        problems.append(f"compression type must be zlib or zstd, not {compression_type!r}")
    elif version < 3 and compression_type != "zlib":
        problems.append("Non-zlib compression type is only supported with compatibility "
                        "level 1.1 and above")
    if version < 3 and lazy_refcounts:
        problems.append("Lazy refcounts only supported with compatibility level 1.1 and above")
    if extended_l2:
        if version < 3:
            problems.append("Extended L2 entries are only supported with compatibility "
                            "level 1.1 and above")
        if cluster_size < 16384:
            problems.append("Extended L2 entries are only supported with cluster sizes "
                            "of at least 16384 bytes")
    if preallocation not in PREALLOCATION_MODES:
        if preallocation in QEMU_PREALLOCATION_MODES:
            problems.append(f"preallocation={preallocation} is not supported here "
                            "(use off or metadata)")
        else:
            problems.append(f"preallocation must be off or metadata, not {preallocation!r}")
    problems += _file_problems(version, extended_l2, preallocation, backing_file, backing_fmt,
                               data_file, data_file_raw)
    problems += _size_problems(size, backing_file, cluster_size, extended_l2)
    return problems


def _file_problems(version: int, extended_l2: bool, preallocation: str,
                   backing_file: str | None, backing_fmt: str | None, data_file: str | None,
                   data_file_raw: bool) -> list[str]:
    """What is wrong with the backing file and data file options."""
    problems = []
    if backing_fmt and not backing_file:
        problems.append("Backing format cannot be used without backing file")
    if backing_fmt and backing_fmt not in ("qcow2", "raw"):
        problems.append(f"backing format {backing_fmt!r} is not supported (qcow2 or raw)")
    if backing_file and len(os.fsencode(backing_file)) > MAX_BACKING_FILE_NAME:
        problems.append("backing file name is longer than 1023 bytes")
    if backing_file and preallocation != "off" and not extended_l2:
        problems.append("Backing file and preallocation can only be used at the same time "
                        "if extended_l2 is on")
    if data_file:
        if version < 3:
            problems.append("External data files are only supported with compatibility "
                            "level 1.1 and above")
        if backing_file and data_file_raw:
            problems.append("Backing file and data-file-raw cannot be used at the same time")
    elif data_file_raw:
        problems.append("data-file-raw requires data-file")
    return problems


def _size_problems(size, backing_file: str | None, cluster_size: int,
                   extended_l2: bool) -> list[str]:
    problems = []
    if size is None:
        if not backing_file:
            problems.append("Image size must be given (or a backing file to take it from)")
    else:
        try:
            size = int(size)
        except (TypeError, ValueError):
            problems.append(f"size {size!r} is not a number")
            return problems
        if size < 0:
            problems.append("Image size must not be negative")
        elif size > MAX_VIRTUAL_SIZE:
            problems.append("Image size is too large")
        else:
            l2_entry = 16 if extended_l2 else 8
            per_l1 = cluster_size * (cluster_size // l2_entry)
            l1_bytes = -(-size // per_l1) * 8
            if l1_bytes > QCOW_MAX_L1_SIZE:
                problems.append("The image size is too large for file format 'qcow2' "
                                "(try using a larger cluster size)")
    return problems


def _backing_size(path: str, image_path: str, fmt: str | None, *,
                  unsafe: bool = False) -> int | None:
    """The backing file's disk size.  Like qemu-img create, the backing file must
    open (a missing one is refused) unless ``unsafe`` (``-u``), which does not look
    at it at all and returns None; and like qemu-img, refuse a backing file that is
    not a regular file or a block device (a FIFO would hang the open, a folder has
    no disk)."""
    full = path if os.path.isabs(path) else os.path.join(
        os.path.dirname(os.path.abspath(image_path)), path)
    if unsafe:
        return None
    try:
        mode = os.stat(full).st_mode
    except FileNotFoundError:
        raise RequestError(f"Could not open backing file {path!r} (looked for {full}): "
                           "No such file or directory (-u creates the image without "
                           "opening it)", path=image_path) from None
    except (OSError, ValueError) as e:
        raise RequestError(f"Could not open backing file {path!r}: "
                           f"{getattr(e, 'strerror', None) or e}", path=image_path) from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise RequestError(f"'file' driver requires {path!r} to be a regular file; could "
                           "not open the backing image", path=image_path)
    fmt = fmt or probe_format(full)
    if fmt == "raw":
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            return os.lseek(fd, 0, os.SEEK_END)     # a block device's st_size is 0
        finally:
            os.close(fd)
    with Image(full, ignore_backing_errors=True) as b:
        return b.virtual_size


def _layout(size: int, cs: int, refcount_order: int, l2_entry: int, prealloc: bool,
            has_data_file: bool) -> tuple[int, int, int, int, int, int]:
    """Cluster counts (T reftable, B refblocks, L L1, N2 L2 tables, D data, l1_size)."""
    l2_size = cs // l2_entry
    nclusters_guest = -(-size // cs)
    l1_size = -(-nclusters_guest // l2_size)
    L = max(1, -(-l1_size * 8 // cs))
    N2 = l1_size if prealloc else 0
    D = nclusters_guest if prealloc and not has_data_file else 0
    per = block_entries(cs.bit_length() - 1, refcount_order)
    T, B = 1, 1
    while True:
        n = 1 + T + B + L + N2 + D
        B2 = -(-n // per)
        T2 = max(1, -(-B2 * 8 // cs))
        if (B2, T2) == (B, T):
            break
        B, T = B2, T2
    if T * cs > QCOW_MAX_REFTABLE_SIZE:
        raise RequestError("the refcount table would exceed QEMU's limit of 8 MiB "
                           "(use a larger cluster size or refcount width)")
    return T, B, L, N2, D, l1_size


@dataclass(frozen=True)
class _Plan:
    """Where everything of a new image goes (cluster numbers and byte offsets)."""

    size: int
    cs: int
    refcount_order: int
    l2_entry: int
    prealloc: bool
    reftable_clusters: int
    refblock_clusters: int
    l1_size: int
    l2_first: int            # first preallocated L2 table
    data_first: int          # first preallocated data cluster
    used: int                # clusters 0..used-1 have refcount 1

    @property
    def reftable_offset(self) -> int:
        return self.cs

    @property
    def refblock_offset(self) -> int:
        return (1 + self.reftable_clusters) * self.cs

    @property
    def l1_offset(self) -> int:
        return (1 + self.reftable_clusters + self.refblock_clusters) * self.cs


def create_image(path: str | os.PathLike, size: int | str | None, *,
                 cluster_size: int = 65536, compat: str = "1.1", refcount_bits: int = 16,
                 lazy_refcounts: bool = False, extended_l2: bool = False,
                 compression_type: str = "zlib", preallocation: str = "off",
                 backing_file: str | None = None, backing_fmt: str | None = None,
                 data_file: str | None = None, data_file_raw: bool = False,
                 overwrite: bool = False, unsafe: bool = False) -> None:
    """Create a QCOW2 image at ``path`` (options and defaults as ``qemu-img create -o``).

    ``size`` None takes the backing file's size.  The backing file must open, as
    qemu-img create wants, unless ``unsafe`` (its ``-u``: with a size given, the
    backing file is named but not opened).  Sizes round up to 512 bytes
    as qemu-img rounds them.  Raises :class:`RequestError` with the reason for
    invalid options, before any file is touched; an existing file (image or
    data file) is replaced only with ``overwrite=True`` (qemu-img would silently
    truncate an existing data file).

    A relative ``data_file`` is created next to the image (where our reader
    looks first); QEMU 7.2 resolves relative data file names from its working
    directory, so give an absolute name for images QEMU will open from elsewhere.
    """
    path = os.fspath(path)
    for what, name in (("image", path), ("data file", data_file)):
        if name and "\0" in name:      # os.open would raise a bare ValueError
            raise RequestError(f"the {what} name cannot contain a NUL byte",
                               path=path.replace("\0", "\\0"))
    if isinstance(size, str):
        size = parse_size(size)
    lazy_refcounts = _bool("lazy_refcounts", lazy_refcounts)
    extended_l2 = _bool("extended_l2", extended_l2)
    data_file_raw = _bool("data_file_raw", data_file_raw)
    problems = validate_create_options(
        size=size, cluster_size=cluster_size, compat=str(compat), refcount_bits=refcount_bits,
        lazy_refcounts=lazy_refcounts, extended_l2=extended_l2,
        compression_type=compression_type, preallocation=preallocation,
        backing_file=backing_file, backing_fmt=backing_fmt, data_file=data_file,
        data_file_raw=data_file_raw)
    if problems:
        raise RequestError("; ".join(problems), path=path)
    if backing_file:
        if unsafe and size is None:
            raise RequestError("-u needs the image size (the backing file is not opened)",
                               path=path)
        found = _backing_size(backing_file, path, backing_fmt, unsafe=unsafe)
        size = found if size is None else size
    size = -(-int(size) // 512) * 512
    data_path = _new_files_allowed(path, data_file, overwrite)
    cluster_size, refcount_order = int(cluster_size), int(refcount_bits).bit_length() - 1
    plan = _plan(size, cluster_size, refcount_order, 16 if extended_l2 else 8,
                 preallocation == "metadata", bool(data_file))
    header = Header(
        magic=QCOW_MAGIC, version=COMPAT_VALUES[str(compat)], backing_file_offset=0,
        backing_file_size=0, cluster_bits=cluster_size.bit_length() - 1, size=size,
        crypt_method=0, l1_size=plan.l1_size, l1_table_offset=plan.l1_offset,
        refcount_table_offset=plan.reftable_offset,
        refcount_table_clusters=plan.reftable_clusters, nb_snapshots=0, snapshots_offset=0,
        incompatible_features=((INCOMPAT_EXTL2 if extended_l2 else 0)
                               | (INCOMPAT_DATA_FILE if data_file else 0)
                               | (INCOMPAT_COMPRESSION if compression_type == "zstd" else 0)),
        compatible_features=COMPAT_LAZY_REFCOUNTS if lazy_refcounts else 0,
        autoclear_features=AUTOCLEAR_DATA_FILE_RAW if data_file_raw else 0,
        refcount_order=refcount_order, header_length=0,
        compression_type=COMPRESSION_TYPES[compression_type], unknown_header_bytes=b"")
    head = _header_cluster(header, backing_file, backing_fmt, data_file, path)
    _write_new_image(path, head, plan, data_path, bool(data_file_raw), overwrite)


def _new_files_allowed(path: str, data_file: str | None, overwrite: bool) -> str | None:
    """Refuse to replace an image or data file unless asked; the data file's path."""
    if os.path.exists(path) and not overwrite:
        raise RequestError("the file exists (pass overwrite=True / --force to replace it)",
                           path=path)
    if not data_file:
        return None
    data_path = data_file if os.path.isabs(data_file) else os.path.join(
        os.path.dirname(os.path.abspath(path)), data_file)
    if os.path.exists(data_path) and not overwrite:
        raise RequestError(f"the data file {data_file!r} exists (pass overwrite=True / "
                           "--force to replace it)", path=path)
    return data_path


def _plan(size: int, cs: int, refcount_order: int, l2_entry: int, prealloc: bool,
          has_data_file: bool) -> _Plan:
    reftable_clusters, refblock_clusters, l1_clusters, l2_tables, data_clusters, l1_size = \
        _layout(size, cs, refcount_order, l2_entry, prealloc, has_data_file)
    l2_first = 1 + reftable_clusters + refblock_clusters + l1_clusters
    return _Plan(size, cs, refcount_order, l2_entry, prealloc, reftable_clusters,
                 refblock_clusters, l1_size, l2_first, l2_first + l2_tables,
                 l2_first + l2_tables + data_clusters)


def _header_cluster(header: Header, backing_file: str | None, backing_fmt: str | None,
                    data_file: str | None, path: str) -> bytes:
    """The first cluster's bytes: header, extensions, backing file name."""
    v3 = header.version == 3
    length = V3_HEADER_LENGTH_CT if v3 else V2_HEADER_LENGTH
    exts = b""
    if backing_file and backing_fmt:
        exts += pack_extension(EXT_BACKING_FORMAT, backing_fmt.encode())
    if data_file:
        exts += pack_extension(EXT_DATA_FILE, data_file.encode())
    if v3:
        exts += pack_extension(EXT_FEATURE_NAME_TABLE, pack_feature_name_table())
    exts += bytes(8)   # end of extensions
    name = os.fsencode(backing_file) if backing_file else b""
    if length + len(exts) + len(name) > 1 << header.cluster_bits:
        raise RequestError("header, extensions and backing file name do not fit in one "
                           "cluster (use a larger cluster size)", path=path)
    header = header.replace(backing_file_offset=length + len(exts) if name else 0,
                            backing_file_size=len(name), header_length=length,
                            unknown_header_bytes=bytes(7) if v3 else b"")
    packed = header.pack()
    assert len(packed) == length
    return packed + exts + name


def _write_new_image(path: str, head: bytes, plan: _Plan, data_path: str | None,
                     data_file_raw: bool, overwrite: bool) -> None:
    """Write the new file (and make its data file); nothing stays behind on failure."""
    cs = plan.cs
    # refcount table and blocks: clusters 0..used-1 have refcount 1
    per = block_entries(cs.bit_length() - 1, plan.refcount_order)
    reftable = np.zeros(plan.reftable_clusters * cs // 8, dtype=">u8")
    reftable[:plan.refblock_clusters] = (
        plan.refblock_offset + np.arange(plan.refblock_clusters, dtype=np.uint64) * cs)
    counts = np.zeros(plan.refblock_clusters * per, dtype=np.uint64)
    counts[:plan.used] = 1
    l1 = np.zeros(plan.l1_size, dtype=">u8")
    if plan.prealloc:
        l1[:] = (QCOW_OFLAG_COPIED
                 + (plan.l2_first + np.arange(plan.l1_size, dtype=np.uint64)) * np.uint64(cs))
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    if not overwrite:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise Qcow2Error(f"cannot create: {e.strerror}", path=path) from e
    made_data = False
    try:
        if data_path:
            made_data = not os.path.exists(data_path)
            dfd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(dfd, plan.size)
            finally:
                os.close(dfd)
        os.pwrite(fd, head, 0)
        os.pwrite(fd, reftable.tobytes(), plan.reftable_offset)
        os.pwrite(fd, encode_refcount_block(counts, plan.refcount_order), plan.refblock_offset)
        os.pwrite(fd, l1.tobytes(), plan.l1_offset)
        if plan.prealloc:
            _write_prealloc_l2(fd, plan.size, cs, plan.l2_entry, plan.l1_size, plan.l2_first,
                               plan.data_first, bool(data_path), data_file_raw)
            end = plan.used * cs
        else:
            # qemu-img leaves the file ending right after the L1 entries
            end = plan.l1_offset + plan.l1_size * 8
        os.ftruncate(fd, max(end, plan.refblock_offset + cs))
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        fd = -1
        # nothing of a failed create stays behind: the image, nor a data file it made
        for made in (path, data_path if made_data else None):
            try:
                if made:
                    os.unlink(made)
            except OSError:
                pass
        raise Qcow2Error(f"cannot write the new image: {e.strerror}", path=path) from e
    finally:
        if fd >= 0:
            os.close(fd)


def _write_prealloc_l2(fd: int, size: int, cs: int, l2_entry: int, l1_size: int,
                       l2_first: int, data_first: int, has_data_file: bool,
                       data_file_raw: bool) -> None:
    """Every L2 table, mapping every guest cluster (zeros are left as sparse holes)."""
    l2_size = cs // l2_entry
    nguest = -(-size // cs)
    # write in groups of tables to bound memory
    group = max(1, (16 << 20) // cs)
    for t0 in range(0, l1_size, group):
        t1 = min(l1_size, t0 + group)
        n = (t1 - t0) * l2_size
        idx = np.arange(t0 * l2_size, t0 * l2_size + n, dtype=np.uint64)
        valid = idx < nguest
        if has_data_file:
            host = idx * np.uint64(cs)            # data file: host offset == guest offset
        else:
            host = (np.uint64(data_first) + idx) * np.uint64(cs)
        entries = np.where(valid, host | np.uint64(QCOW_OFLAG_COPIED), np.uint64(0))
        if l2_entry == 16:
            # as qemu: the host cluster is reserved, every sub-cluster stays
            # unallocated (reads zeros, or the backing file)
            out = np.zeros(2 * n, dtype=">u8")
            out[0::2] = entries
        else:
            out = entries.astype(">u8")
        os.pwrite(fd, out.tobytes(), (l2_first + t0) * cs)
