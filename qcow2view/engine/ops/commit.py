"""Writing an overlay's data into its backing file (qemu-img commit).

Every guest range that the overlay -- or, with ``base``, any image between it
and ``base`` -- decides itself is copied as the overlay reads it into the base
(zeros as zero writes), through the base's own writer; the base grows first if
the overlay is larger.  Then, unless ``keep`` (or ``base``, as qemu-img), the overlay is emptied as
qcow2_make_empty does: its L1 table is cleared in one write and its L2 tables
and data clusters lose their references afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import metadata_ops as M
from ..errors import ImageInUseError, Qcow2Error, RequestError
from ..fileio import HostFile
from ..image import Image, RawImage, open_image
from .convert import nonzero_runs
from .resize import resize_image

CHUNK = 4 << 20


@dataclass(frozen=True)
class CommitPlan:
    overlay: str
    base: str                    # path of the image written into
    base_format: str
    depth: int                   # 1 = the direct backing file
    bytes_to_write: int          # guest bytes decided above the base


def _chain(top: Image) -> list:
    out, b = [top], top.backing
    while b is not None:
        out.append(b)
        b = getattr(b, "backing", None)
    return out


def _pick_base(top: Image, base: str | None) -> int:
    chain = _chain(top)
    if len(chain) < 2:
        raise RequestError("Image does not have a backing file", path=top.path)
    if base is None:
        return 1
    # as bdrv_find_backing_image: a relative BASE is taken from the directory of the
    # image that names each candidate (not from the working directory)
    for depth, im in enumerate(chain[1:], 1):
        above = os.path.dirname(os.path.abspath(chain[depth - 1].path))
        if os.path.realpath(os.path.join(above, base)) == os.path.realpath(im.path):
            return depth
    raise RequestError(f"'{base}' is not in the backing chain of '{top.path}'")


def _above_base(top: Image, depth: int) -> tuple[int, np.ndarray]:
    """(granule, flags): guest granules some image above the base decides."""
    chain = _chain(top)[:depth]
    granule = min(M.guest_allocation(im)[0] for im in chain)
    n = -(-top.virtual_size // granule)
    flags = np.zeros(n, dtype=bool)
    for im in chain:
        g, alloc = M.guest_allocation(im)
        spread = np.repeat(alloc, g // granule)[:n]
        flags[:spread.size] |= spread
    return granule, flags


def plan_commit(overlay: str, base: str | None = None) -> CommitPlan:
    with open_image(overlay) as top:
        depth = _pick_base(top, base)
        target = _chain(top)[depth]
        granule, flags = _above_base(top, depth)
        nbytes = min(int(flags.sum()) * granule, top.virtual_size)
        return CommitPlan(top.path, target.path, target.format, depth, nbytes)


@M.operation
def commit_image(overlay: str, base: str | None = None, *, keep: bool = False,
                 progress=None) -> CommitPlan:
    """Commit ``overlay`` into its backing file (or ``base`` down the chain; as
    qemu-img, giving ``base`` implies ``keep``: the overlay is not emptied)."""
    keep = keep or base is not None
    if not os.path.exists(overlay):
        raise Qcow2Error("no such file", path=overlay)
    with open_image(overlay) as top:
        if top.in_use:
            raise ImageInUseError(f"{overlay} is in use ({top.in_use_by or 'locked'}); is a "
                                  "VM or another qemu process using it?", path=overlay)
        depth = _pick_base(top, base)
        target = _chain(top)[depth]
        granule, flags = _above_base(top, depth)
        plan = CommitPlan(top.path, target.path, target.format, depth,
                          min(int(flags.sum()) * granule, top.virtual_size))
        if isinstance(target, RawImage):
            _into_raw(top, target.path, granule, flags, progress)
        else:
            with M.opened_writable(target.path) as dst:
                if dst.virtual_size < top.virtual_size:
                    resize_image(dst, top.virtual_size)
                _copy(top, granule, flags, dst.write, dst.write_zeroes, progress)
    if not keep:
        with M.opened_writable(overlay) as im:
            empty_image(im)
    return plan


def _copy(top, granule: int, flags: np.ndarray, write, write_zeroes, progress) -> None:
    total = int(flags.sum()) * granule
    done = 0
    per = max(1, CHUNK // granule)
    for a, b in M.runs(flags):
        for lo in range(a, b, per):
            hi = min(b, lo + per)
            pos, end = lo * granule, min(hi * granule, top.virtual_size)
            data = top.read(pos, end - pos)
            last = 0
            for da, db in nonzero_runs(data, granule):
                if da > last:
                    write_zeroes(pos + last, da - last)
                write(pos + da, memoryview(data)[da:db])
                last = db
            if last < len(data):
                write_zeroes(pos + last, len(data) - last)
            done += (hi - lo) * granule
            M.report(progress, done, total)


def _into_raw(top, path: str, granule: int, flags: np.ndarray, progress) -> None:
    M.refuse_if_in_use(path)
    out = HostFile(path, writable=True)
    try:
        if out.size < top.virtual_size:
            out.truncate(top.virtual_size)
        _copy(top, granule, flags, out.pwrite,
              lambda off, n: out.pwrite(off, bytes(n)), progress)
        out.fsync()
    finally:
        out.close()


@M.operation
def empty_image(image) -> None:
    """Make every guest cluster of a writable ``image`` unallocated (reads from the
    backing file again), as qcow2_make_empty: the L1 table is cleared in one
    write, then its tables and clusters lose the active disk's reference."""
    image.require_writable()
    image.flush()
    old = image.l1_table.entries.copy()
    if not old.any():
        return
    image.meta.write_l1(np.zeros(old.size, dtype=np.uint64))
    M.change_l1_refcounts(image, old, -1)
    M.sync_refcounts(image)
    M.reload(image)
