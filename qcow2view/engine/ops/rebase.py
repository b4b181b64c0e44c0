"""Changing the backing file (qemu-img rebase).

Safe mode copies into the image every range it does not decide itself where the
old and the new backing file read differently, so the guest sees the same bytes
afterwards; then the header names the new file.  ``unsafe`` (``-u``) only
rewrites the name.  An empty name removes the backing file (safe mode then
copies everything the old one showed: the image is flattened).
"""

from __future__ import annotations

import os

import numpy as np

from .. import metadata_ops as M
from ..errors import Qcow2Error, RequestError
from ..image import open_image, probe_format
from .convert import open_source

CHUNK = 1 << 20


def _read(b, pos: int, n: int) -> bytes:
    """Guest bytes of a backing image; zeros past its end or with none."""
    if b is None or pos >= b.virtual_size:
        return bytes(n)
    k = min(n, b.virtual_size - pos)
    data = b.read(pos, k)
    return data + bytes(n - k) if k < n else data


@M.operation
def rebase_image(path: str, backing: str, backing_fmt: str | None = None, *,
                 unsafe: bool = False, progress=None) -> None:
    if not os.path.exists(path):
        raise Qcow2Error("no such file", path=path)
    if backing_fmt not in (None, "qcow2", "raw"):
        raise RequestError(f"backing format {backing_fmt!r} is not supported (qcow2 or raw)")
    full = None
    if backing:
        full = backing if os.path.isabs(backing) else os.path.join(
            os.path.dirname(os.path.abspath(path)), backing)
        if not os.path.exists(full):
            # -u with -F names a file that is not there (yet), as qemu-img allows;
            # without -F its format cannot be probed
            if not unsafe:
                raise RequestError(f"Could not open new backing file '{full}'")
            if backing_fmt is None:
                raise RequestError(f"Could not change the backing file to '{backing}': "
                                   "backing format must be specified")
            full = None
    if full and not unsafe and _in_chain(path, full):
        # qemu-img cannot open it: the image holds its own write lock
        raise RequestError(f"Could not open new backing file '{backing}': its backing "
                           "chain includes the image itself")
    with M.opened_writable(path, ignore_backing_errors=unsafe) as im:
        new = None
        if full:
            new = open_source(full, backing_fmt)
            backing_fmt = backing_fmt or new.format
        try:
            if not unsafe:
                if im.backing_chain and im.backing is None:
                    raise RequestError("Could not open old backing file: "
                                       f"{im.backing_chain[0].error}")
                _copy_differences(im, im.backing, new, progress)
                im.flush()
        finally:
            if new is not None:
                new.close()
        M.rewrite_header_cluster(im, backing_file=backing or None,
                                 backing_fmt=backing_fmt if backing else None)


def _in_chain(path: str, top: str) -> bool:
    """Is ``path`` the file ``top`` or one of its backing files?"""
    seen = 0
    while top and os.path.exists(top) and seen < 64:
        if os.path.samefile(path, top):
            return True
        try:
            if probe_format(top) != "qcow2":
                return False
            with open_image(top, ignore_backing_errors=True) as image:
                name = image.backing_filename
        except (Qcow2Error, OSError):
            return False
        top = name and (name if os.path.isabs(name) else os.path.join(
            os.path.dirname(os.path.abspath(top)), name))
        seen += 1
    return False


def _copy_differences(im, old, new, progress) -> None:
    granule, alloc = M.guest_allocation(im)
    free = ~alloc
    total = int(free.sum())
    done = 0
    per = max(1, CHUNK // granule)
    for a, b in M.runs(free):
        for lo in range(a, b, per):
            hi = min(b, lo + per)
            pos, end = lo * granule, min(hi * granule, im.virtual_size)
            want = _read(old, pos, end - pos)
            have = _read(new, pos, end - pos)
            if want != have:
                _write_differing(im, pos, want, have, granule)
            done += hi - lo
            M.report(progress, done, total)


def _write_differing(im, pos: int, want: bytes, have: bytes, granule: int) -> None:
    n = len(want)
    pad = (-n) % granule
    w = np.frombuffer(want + bytes(pad), dtype=np.uint8).reshape(-1, granule)
    h = np.frombuffer(have + bytes(pad), dtype=np.uint8).reshape(-1, granule)
    diff = (w != h).any(axis=1)
    for a, b in M.runs(diff):
        lo, hi = a * granule, min(b * granule, n)
        piece = want[lo:hi]
        if piece.count(0) == len(piece) and im.header.version >= 3:
            im.write_zeroes(pos + lo, hi - lo)
        else:
            im.write(pos + lo, piece)
