"""Consistency check and repair, counting exactly as ``qemu-img check`` 7.2 does.

:func:`check` follows ``qcow2_check_refcounts`` (block/qcow2-refcount.c):
the reference walk lives in :mod:`refscan`; here the found references are
compared with the refcounts on disk (``compare_refcounts``) and the result is
put in the shape of ``qemu-img check --output=json``.

:func:`repair` fixes refcounts in the order that keeps a crash harmless:
refcounts that are too low are raised and flushed first, leaked ones are
lowered after, so an interruption leaves at most leaks.  Where QEMU would
rebuild the refcount structure (a referenced cluster with refcount 0, a
damaged refcount table entry) it is rebuilt from the walk (:mod:`rebuild`),
never patched through a table entry that may point at guest data.  Then
COPIED flags are set to match the refcounts (as ``check_oflag_copied`` does),
and the dirty and corrupt bits are cleared once no corruption is left.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from . import clusters as C
from .errors import CorruptImageError, Qcow2Error, ReadOnlyError
from .header import INCOMPAT_CORRUPT, INCOMPAT_DIRTY
from .refcounts import REFT_RESERVED_MASK, decode_refcount_block
from .refscan import (MAX_FINDINGS, Cancel, DiskRefcounts, Finding, Progress, RefScan,
                      Scanner, check_cancel, read_zero_filled)
from .snapshots import SNAPSHOT_FIXED_SIZE, incomplete_snapshots, repack_snapshot_entry

__all__ = ["CheckResult", "Finding", "check", "repair"]


@dataclass
class CheckResult:
    """Field names as ``qemu-img check --output=json`` spells them (with _ for -)."""

    corruptions: int
    leaks: int
    check_errors: int
    total_clusters: int
    allocated_clusters: int
    fragmented_clusters: int
    compressed_clusters: int
    image_end_offset: int
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    findings: list[Finding] = field(default_factory=list)
    findings_dropped: int = 0        # findings beyond MAX_FINDINGS (counted, not listed)
    filename: str = ""
    format: str = "qcow2"
    rebuild_needed: bool = False     # QEMU would rebuild the refcount structure

    @property
    def clean(self) -> bool:
        return not (self.corruptions or self.leaks or self.check_errors)

    @property
    def exit_code(self) -> int:
        """qemu-img check's: 0 clean, 1 check failed, 2 corruptions, 3 leaks only."""
        if self.check_errors:
            return 1
        return 2 if self.corruptions else 3 if self.leaks else 0

    def to_json(self) -> dict:
        """Exactly qemu-img's keys; like qemu, zero optional counts are left out."""
        d: dict = {}
        if self.image_end_offset:
            d["image-end-offset"] = self.image_end_offset
        if self.total_clusters:
            d["total-clusters"] = self.total_clusters
        d["check-errors"] = self.check_errors
        if self.allocated_clusters:
            d["allocated-clusters"] = self.allocated_clusters
        d["filename"] = self.filename
        d["format"] = self.format
        if self.fragmented_clusters:
            d["fragmented-clusters"] = self.fragmented_clusters
        if self.compressed_clusters:
            d["compressed-clusters"] = self.compressed_clusters
        if self.corruptions:
            d["corruptions"] = self.corruptions
        if self.leaks:
            d["leaks"] = self.leaks
        if self.corruptions_fixed:
            d["corruptions-fixed"] = self.corruptions_fixed
        if self.leaks_fixed:
            d["leaks-fixed"] = self.leaks_fixed
        return d


def _classify(scan: RefScan, cluster: int, disk: int, refs: int) -> str:
    if cluster in scan.overlap_clusters:
        return "metadata_overlap"
    if disk == 0:
        return "refcount_zero"
    return "double_reference" if refs > 1 else "refcount_too_low"


CHUNK = 1 << 20   # clusters compared per numpy pass (bounded temporaries: ~10 MiB)


def _used_end(scan: RefScan, disk: DiskRefcounts) -> int:
    """Clusters past this one have neither a reference nor a refcount block: the
    comparison stops there (a file with a sparse tail costs nothing more)."""
    return min(scan.nb_clusters, max(len(scan.refs), disk.covered_end))


class _OnDisk:
    """The refcounts on disk of a chunk of clusters, read again only where the walk
    did not see them all be 1 already (:attr:`RefScan.ones`)."""

    def __init__(self, scan: RefScan, disk: DiskRefcounts) -> None:
        self.disk = disk
        self.starts, self.ends = scan.ones_spans()
        self.buf: np.ndarray | None = None

    def range(self, lo: int, hi: int) -> np.ndarray:
        """Refcounts ``lo..hi-1`` (valid until the next call)."""
        disk = self.disk
        # the spans that meet the chunk, and the pieces of it they leave uncovered
        i0 = int(np.searchsorted(self.ends, lo, side="right"))
        i1 = int(np.searchsorted(self.starts, hi, side="left"))
        if i0 >= i1:
            return disk.range(lo, hi, keep=False)
        if self.buf is None or len(self.buf) < hi - lo:
            self.buf = np.empty(hi - lo, dtype=disk.dtype)
        out = self.buf[:hi - lo]
        out.fill(1)
        at = lo
        for a, b in zip(self.starts[i0:i1].tolist(), self.ends[i0:i1].tolist()):
            if a > at:
                out[at - lo:a - lo] = disk.range(at, a, keep=False)
            at = max(at, b)
        if at < hi:
            out[at - lo:] = disk.range(at, hi, keep=False)
        return out


def compare(scan: RefScan, disk: DiskRefcounts, image, on_chunk=None
            ) -> tuple[dict, list[Finding]]:
    """compare_refcounts: counts and findings, vectorised in chunks of clusters
    (the refcounts on disk streamed block by block, never held whole).
    ``on_chunk(lo, ondisk, counted)`` sees each chunk on the way (the host map
    marks leaks and corruption from it, so one pass serves both)."""
    nb = _used_end(scan, disk)
    stored = _OnDisk(scan, disk)
    cap = scan.refcount_max if scan.refcount_max < 0xFFFFFFFF else None
    out = {"check_errors": 0, "corruptions": 0, "leaks": 0, "highest": 0,
           "rebuild": False, "overflow": 0}
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    overs: list[np.ndarray] = []
    errs: list[np.ndarray] = []
    for lo in range(0, nb, CHUNK):
        hi = min(nb, lo + CHUNK)
        refs = scan.refs_range(lo, hi)
        over = cap is not None and len(refs) > 0 and int(refs.max()) > cap
        counted = np.minimum(refs, np.uint32(cap)) if over else refs
        ondisk = stored.range(lo, hi)
        if disk.bad_blocks:
            err = np.zeros(hi - lo, dtype=bool)
            for rti in disk.bad_blocks:
                a = max(rti * disk.per_block, lo)
                b = min((rti + 1) * disk.per_block, hi)
                if a < b:
                    err[a - lo:b - lo] = True
            ok = ~err
            out["check_errors"] += int(err.sum())
            errs.append(np.nonzero(err)[0] + lo)
        else:
            ok = None
        if on_chunk is not None:
            on_chunk(lo, ondisk, counted)
        ne = np.not_equal(ondisk, counted)       # mixed dtypes: no converted copies
        if ok is not None:
            ne &= ok
        if ne.any():
            idx = np.flatnonzero(ne)
            d, c = ondisk[idx].astype(np.uint64), counted[idx].astype(np.uint64)
            li = idx[d < c]
            hi_ = idx[d > c]
            out["corruptions"] += len(li)
            out["leaks"] += len(hi_)
            if len(li) and not out["rebuild"]:
                out["rebuild"] = bool((ondisk[li] == 0).any())
            if len(li) and sum(map(len, lows)) < MAX_FINDINGS:
                lows.append(li + lo)
            if len(hi_) and sum(map(len, highs)) < MAX_FINDINGS:
                highs.append(hi_ + lo)
        if over:
            ov = np.flatnonzero(refs > cap)
            if len(ov):
                out["overflow"] += int((refs[ov].astype(np.int64) - cap).sum())
                overs.append(ov + lo)
        del refs, counted, ondisk
    out["highest"] = _highest(scan, disk, nb)
    return out, _findings(scan, disk, cap, overs, errs, lows, highs)


def _findings(scan: RefScan, disk: DiskRefcounts, cap: int | None, overs, errs, lows,
              highs) -> list[Finding]:
    """Findings for the clusters compare() collected, at most MAX_FINDINGS of each kind."""
    cs = scan.cluster_size
    findings: list[Finding] = []
    room = MAX_FINDINGS

    def cat(parts):
        return np.concatenate(parts)[:room].tolist() if parts else []

    for c in cat(overs):
        findings.append(Finding("refcount_overflow", c, disk.get(c), scan.ref(c),
                                f"cluster {c} at {c * cs:#x} has {scan.ref(c)} "
                                f"references, more than {scan.refcount_max} refcount bits "
                                "can count", None, "corruption"))
    for c in cat(errs):
        findings.append(Finding("refcount_block_unreadable", c, 0, scan.ref(c),
                                f"refcount of cluster {c} cannot be read (its refcount "
                                "block offset is not cluster aligned)", None, "check_error"))
    counted_of = (lambda c: min(scan.ref(c), cap)) if cap is not None else \
        (lambda c: scan.ref(c))
    for c in cat(lows):
        d, r = disk.get(c), counted_of(c)
        kind = _classify(scan, c, d, r)
        findings.append(Finding(kind, c, d, r, f"cluster {c} at {c * cs:#x}: refcount {d} "
                                f"but {r} references ({kind.replace('_', ' ')})",
                                None, "corruption"))
    for c in cat(highs):
        d, r = disk.get(c), counted_of(c)
        findings.append(Finding("leak", c, d, r, f"cluster {c} at {c * cs:#x} leaked: "
                                f"refcount {d} but {r} references", None, "leak"))
    return findings


def _highest(scan: RefScan, disk: DiskRefcounts, nb: int) -> int:
    """The last cluster with a refcount or a reference (readable refcounts only)."""
    for hi in range(nb, 0, -CHUNK):
        lo = max(0, hi - CHUNK)
        used = (disk.range(lo, hi, keep=False) != 0) | (scan.refs_range(lo, hi) != 0)
        for rti in disk.bad_blocks:
            a = max(rti * disk.per_block, lo)
            b = min((rti + 1) * disk.per_block, hi)
            if a < b:
                used[a - lo:b - lo] = False
        if used.any():
            return lo + int(np.flatnonzero(used)[-1])
    return 0


def _scan(image, progress: Progress, cancel: Cancel) -> tuple[RefScan, DiskRefcounts]:
    nb = -(-image.file.size // image.cluster_size)
    disk = DiskRefcounts(image, nb + 1, cancel)
    scan = Scanner(image, disk=disk, check_copied=True, compact=True, progress=progress,
                   cancel=cancel).run()
    return scan, disk


def check(image, progress: Progress = None, cancel: Cancel = None) -> CheckResult:
    """Check the image like ``qemu-img check`` (read-only)."""
    cached = _cached_scan(image)
    if cached is not None:
        check_cancel(cancel)
        if progress is not None:
            progress(1, 1)
        return _result(image, *cached)
    scan, disk = _scan(image, progress, cancel)
    return _result(image, scan, disk)


def _cached_scan(image):
    """The walk behind the image's cached host map, if it is still current:
    (scan, disk refcounts, the comparison already made)."""
    if image.writable:
        return None
    hit = image.cached_map(("host",))
    return None if hit is None else getattr(hit, "_scan", None)


def _snapshot_findings(image) -> list[Finding]:
    """qcow2_check_read_snapshot_table: every v3 entry needs 16 bytes of extra data."""
    cs = image.cluster_size
    return [Finding("snapshot_incomplete", s.offset // cs, 0, 0,
                    f"snapshot table entry {s.index} is incomplete", s.offset + 36,
                    "corruption")
            for s in incomplete_snapshots(image.snapshots, image.header.version)]


def _result(image, scan: RefScan, disk: DiskRefcounts, compared=None) -> CheckResult:
    cmp, found = compared if compared is not None else compare(scan, disk, image)
    found = list(found)
    snaps = _snapshot_findings(image)
    findings = snaps + found + scan.findings
    dropped = scan.findings_dropped + max(0, len(findings) - MAX_FINDINGS)
    findings[len(snaps):] = sorted(findings[len(snaps):], key=lambda f: (f.cluster, f.kind))
    cs = image.cluster_size
    return CheckResult(
        corruptions=len(snaps) + scan.corruptions + cmp["corruptions"] + cmp["overflow"],
        leaks=cmp["leaks"],
        check_errors=scan.check_errors + cmp["check_errors"],
        total_clusters=-(-image.virtual_size // cs),
        allocated_clusters=scan.allocated_clusters,
        fragmented_clusters=scan.fragmented_clusters,
        compressed_clusters=scan.compressed_clusters,
        image_end_offset=(cmp["highest"] + 1) * cs,
        findings=findings[:MAX_FINDINGS], findings_dropped=dropped,
        filename=image.path, rebuild_needed=scan.rebuild or cmp["rebuild"])


# -- repair ---------------------------------------------------------------------------
def repair(image, leaks: bool = True, fix_all: bool = False, progress: Progress = None,
           cancel: Cancel = None) -> CheckResult:
    """Fix leaks (and with ``fix_all``, refcounts that are too low), like ``qemu-img
    check -r leaks|all``; returns the check of the repaired image with
    ``leaks_fixed``/``corruptions_fixed`` set."""
    if not image.writable:
        raise ReadOnlyError("repair needs the image opened for writing "
                            "(open_image(path, writable=True))", path=image.path)
    fix_errors = bool(fix_all)
    fix_leaks = bool(leaks or fix_all)
    image.flush()                      # pending metadata of earlier writes first
    try:
        return _repair(image, fix_leaks, fix_errors, progress, cancel)
    except OSError as e:
        # each step of a repair leaves the file no worse than before: say which
        # file failed and why
        raise Qcow2Error(f"repair stopped: {e.strerror or e}; the image is no worse than "
                         "before (check it again)", path=image.path) from e
    finally:
        # the store caches refcount blocks the repair rewrote underneath it
        image.meta.forget_refcounts()


def _repair(image, fix_leaks: bool, fix_errors: bool, progress: Progress,
            cancel: Cancel) -> CheckResult:
    # the snapshot table first, as qcow2_check_fix_snapshot_table: the walk below
    # then counts the new table's clusters and the old one's release
    fixed_snapshots = _fix_snapshot_table(image) if fix_errors else 0
    # what QEMU's first walk fixes as it goes (fix_errors only)
    fixed_early, must_rebuild, unseen = 0, False, 0
    if fix_errors:
        fixed_early, must_rebuild = _grow_to_outside_refblocks(image)
        zeroed, unseen = _zero_misaligned_preallocated(image)
        fixed_early += zeroed
    scan, disk = _scan(image, progress, cancel)
    first = _result(image, scan, disk)
    rebuild = must_rebuild or first.rebuild_needed or _refblock_shared(image, scan)
    if rebuild and not fix_errors:
        # qemu-img check -r leaks: "ERROR need to rebuild refcount structures",
        # the check fails (exit 1) and nothing is written
        raise CorruptImageError(
            "need to rebuild refcount structures (a referenced cluster has refcount 0 or "
            "a refcount block is damaged); repair with 'all'", structure="refcount table",
            offset=image.header.refcount_table_offset, path=image.path)
    if rebuild:
        del disk                         # the old refcounts play no part
        fixed_c, fixed_l = _rebuild(image, scan, first, cancel, unseen)
    else:
        up_i, down_i, targets = _mismatches(scan, disk, fix_errors, fix_leaks)
        # raised first and flushed, leaks lowered after: a crash leaves leaks at most
        fixed_c = _write_refcounts(image, disk, up_i, targets[0])
        fixed_l = _write_refcounts(image, disk, down_i, targets[1])
        del up_i, down_i, targets, disk
    image.invalidate_caches()
    del scan, first                      # one walk's arrays at a time

    # COPIED flags: always with -r all; with -r leaks only if nothing else is wrong
    scan2, disk2 = _scan(image, None, cancel)
    mid = _result(image, scan2, disk2)
    other = mid.corruptions - scan2.copied_corruptions
    copied, overlaps = scan2.copied_entries, scan2.metadata_overlaps
    del scan2, disk2
    fixed_flags = 0
    if fix_errors or (not mid.check_errors and not other and not mid.leaks):
        fixed_flags = _fix_copied(image, copied, overlaps)
        fixed_c += fixed_flags
    if fixed_flags:
        scan3, disk3 = _scan(image, None, cancel)      # the double check, as qemu-img's
        after = _result(image, scan3, disk3)
        del scan3, disk3
    else:
        after = mid
    if not after.check_errors and not after.corruptions:
        _mark_clean(image)
    after.corruptions_fixed = fixed_c + fixed_snapshots + fixed_early
    after.leaks_fixed = fixed_l
    return after


def _grow_to_outside_refblocks(image) -> tuple[int, bool]:
    """check_refblocks with BDRV_FIX_ERRORS: a refcount block past the end of the file
    is brought inside by growing the file to its end (the block reads as zeros: the
    walk then finds it referenced with refcount 0).  Returns (blocks brought in,
    whether the refcounts must be rebuilt): QEMU rebuilds them after any such block,
    also one the file cannot grow to ("ERROR could not resize image")."""
    cs, rt = image.cluster_size, image.refcount_table
    grown, rebuild = 0, False
    for i in np.nonzero(rt)[0].tolist():
        raw = int(rt[i])
        off = raw & C.REFT_OFFSET_MASK
        if raw & REFT_RESERVED_MASK or off & (cs - 1) or off < image.file.size:
            continue
        rebuild = True
        if off > (1 << 63) - 1 - cs:
            continue
        try:
            image.file.truncate(off + cs)
        except OSError:
            continue                # left outside: still a corruption
        grown += 1
    return grown, rebuild


def _zero_misaligned_preallocated(image) -> tuple[int, int]:
    """check_refcounts_l2 with BDRV_FIX_ERRORS (fix_l2_entry_by_zero): an entry whose
    host offset is not cluster aligned and that holds no data (a preallocated zero
    cluster; with extended L2, no subcluster allocated) becomes a plain zero
    cluster, in the L2 tables of the active disk and of every snapshot.  An entry
    that holds data stays a corruption, as in QEMU.  Returns the entries fixed and,
    of those, the ones with reserved bits set too (a corruption QEMU's walk counted
    before the fix, and counts as fixed when the refcounts are then rebuilt)."""
    cs = image.cluster_size
    if cs <= 512:
        return 0, 0     # every offset in an entry is a multiple of 512: none misaligned
    ext = bool(image.extended_l2)
    size = image.file.size
    l1s = [image.l1_table.entries] + [image.snapshot_l1_table(s).entries
                                      for s in image.snapshots]
    seen: set[int] = set()
    fixed = reserved = 0
    for l1 in l1s:
        for e in l1.tolist():
            l2 = int(e) & C.L1E_OFFSET_MASK
            if not l2 or l2 & (cs - 1) or l2 + cs > size or l2 in seen:
                continue
            seen.add(l2)
            words = image.meta.l2_words(l2)
            ent = words[0::2] if ext else words
            off = ent & np.uint64(C.L2E_OFFSET_MASK)
            bad = ((ent & np.uint64(C.QCOW_OFLAG_COMPRESSED)) == 0) & (off != 0) & (
                (off & np.uint64(cs - 1)) != 0)
            if ext:
                bad &= (words[1::2] & np.uint64(C.L2_BITMAP_ALL_ALLOC)) == 0
            else:
                bad &= (ent & np.uint64(C.QCOW_OFLAG_ZERO)) != 0
            for i in np.flatnonzero(bad).tolist():
                reserved += bool(int(ent[i]) & C.L2E_STD_RESERVED_MASK)
                if ext:
                    bm = int(words[2 * i + 1])
                    bm = (bm | (bm << 32)) & C.L2_BITMAP_ALL_ZERO
                    image.meta.write_l2(l2, np.array([0, bm], dtype=np.uint64), 2 * i)
                else:
                    image.meta.write_l2(l2, np.array([C.QCOW_OFLAG_ZERO], dtype=np.uint64), i)
                fixed += 1
    if fixed:
        image.file.fsync()
        image.invalidate_caches()
    return fixed, reserved


def _fix_snapshot_table(image) -> int:
    """Rewrite the snapshot table as qcow2_write_snapshots does when an entry lacks
    the extra data v3 needs; returns the entries fixed."""
    bad = incomplete_snapshots(image.snapshots, image.header.version)
    if not bad:
        return 0
    table = bytearray()
    for s in image.snapshots:
        table += bytes((-len(table)) % 8)
        what = f"snapshot table entry {s.index}"
        head = image.file.pread_exact(s.offset, SNAPSHOT_FIXED_SIZE, what)
        id_len, name_len = struct.unpack_from(">HH", head, 12)
        extra_len = struct.unpack_from(">I", head, 36)[0]
        raw = image.file.pread_exact(
            s.offset, SNAPSHOT_FIXED_SIZE + extra_len + id_len + name_len, what)
        table += repack_snapshot_entry(raw, s, image.virtual_size)
    image.meta.write_snapshot_table(bytes(table), len(image.snapshots))
    image.meta.reload()
    return len(bad)


def _refblock_shared(image, scan: RefScan) -> bool:
    """A refcount block whose cluster something else uses too (guest data, an L2
    table): writing refcounts into it would damage that.  With 1-bit refcounts
    QEMU's saturating count hides this (it reports an overflow and may patch the
    block in place); the walk's raw count does not."""
    rt = image.refcount_table
    offs = rt[rt != 0] & np.uint64(C.REFT_OFFSET_MASK)
    offs = offs[(offs & np.uint64(image.cluster_size - 1)) == 0]
    cl = (offs >> np.uint64(image.cluster_bits)).astype(np.int64)
    cl = cl[cl < len(scan.refs)]   # past the array: no references
    return bool((scan.refs[cl] > 1).any())


def _rebuild(image, scan: RefScan, first: CheckResult, cancel: Cancel,
             unseen: int = 0) -> tuple[int, int]:
    """qcow2_check_refcounts' rebuild branch; returns (corruptions, leaks) fixed,
    counted as QEMU counts them: every refcount corruption and leak found before,
    less the corruptions the walk still finds (COPIED flags are counted after).
    ``unseen``: corruptions QEMU's first walk counted in entries fixed before ours."""
    before = first.corruptions - scan.copied_corruptions + unseen
    from .rebuild import rebuild_refcount_structure     # repairs only
    rebuild_refcount_structure(image, scan.counted())
    image.reload_metadata()
    scan2, disk2 = _scan(image, None, cancel)
    cmp2, _ = compare(scan2, disk2, image)
    still = scan2.corruptions - scan2.copied_corruptions + cmp2["overflow"]
    # the old table and blocks are leaks now: freed, not counted (as QEMU)
    _, down_i, targets = _mismatches(scan2, disk2, False, True)
    _write_refcounts(image, disk2, down_i, targets[1])
    return max(0, before - still), first.leaks


def _mismatches(scan: RefScan, disk: DiskRefcounts, fix_errors: bool, fix_leaks: bool):
    """Clusters whose refcount to raise (too low, including 0 where QEMU would
    rebuild: we set them in place) and to lower (leaks), with their new values;
    found chunk by chunk (a function, so no view outlives the walk's arrays)."""
    cap = scan.refcount_max if scan.refcount_max < 0xFFFFFFFF else None
    up: list[np.ndarray] = []
    down: list[np.ndarray] = []
    end = _used_end(scan, disk)
    for lo in range(0, end, CHUNK):
        hi = min(end, lo + CHUNK)
        refs = scan.refs_range(lo, hi)
        counted = np.minimum(refs, np.uint32(cap)) if cap is not None else refs
        ondisk = disk.range(lo, hi, keep=False)
        ne = np.not_equal(ondisk, counted)
        for rti in disk.bad_blocks:
            a, b = max(rti * disk.per_block, lo), min((rti + 1) * disk.per_block, hi)
            if a < b:
                ne[a - lo:b - lo] = False
        idx = np.flatnonzero(ne)
        if len(idx):
            low = ondisk[idx].astype(np.uint64) < counted[idx].astype(np.uint64)
            if fix_errors:
                up.append(idx[low] + lo)
            if fix_leaks:
                down.append(idx[~low] + lo)
    up_i = np.concatenate(up) if up else np.zeros(0, np.intp)
    down_i = np.concatenate(down) if down else np.zeros(0, np.intp)
    targets = [scan.refs_at(i).astype(np.uint64) for i in (up_i, down_i)]
    if cap is not None:
        targets = [np.minimum(t, np.uint64(cap)) for t in targets]
    return up_i, down_i, targets


def _write_refcounts(image, disk: DiskRefcounts, clusters: np.ndarray,
                     values: np.ndarray) -> int:
    """Set the refcounts of ``clusters`` to ``values`` block by block, then flush."""
    if len(clusters) == 0:
        return 0
    file = image.file
    cs = image.cluster_size
    order = image.header.refcount_order
    per = disk.per_block
    meta = image.meta
    done = 0
    order_ = np.argsort(clusters, kind="stable")
    clusters, values = clusters[order_], values[order_]
    rtis = clusters // per
    blocks, starts = np.unique(rtis, return_index=True)
    ends = np.r_[starts[1:], len(clusters)]
    for rti, lo, hi in zip(blocks.tolist(), starts.tolist(), ends.tolist()):
        members, vals = clusters[lo:hi], values[lo:hi]
        rt = image.refcount_table
        off = int(rt[rti]) & C.REFT_OFFSET_MASK if rti < len(rt) else 0
        if not off or off & (cs - 1):
            # refcount 0 where no block covers a cluster means a rebuild, not this
            raise CorruptImageError("no usable refcount block for a refcount to fix",
                                    structure="refcount table entry",
                                    offset=image.header.refcount_table_offset + 8 * rti,
                                    path=image.path)
        counts = decode_refcount_block(read_zero_filled(file, off, cs), order)
        counts[members - rti * per] = vals
        meta.put_refcount_block(off, counts)
        disk.forget([rti])
        done += len(members)
    file.fsync()
    return done


def _fix_copied(image, entries: list[tuple[int, int, bool, int]],
                overlaps: set[int]) -> int:
    file = image.file
    cb = image.cluster_bits
    fixed = 0
    for eo, raw, is_l1, table in entries:
        if not is_l1 and any(cluster in overlaps for cluster in
                             range(table >> cb, ((table + image.cluster_size - 1) >> cb) + 1)):
            # an "L2 table" that is also other metadata: QEMU's overlap check refuses
            # the write, we leave the entry alone (one that is guest data too is
            # written, as QEMU writes it: its check knows only metadata)
            continue
        cur = struct.unpack(">Q", file.pread(eo, 8))[0]
        if cur != raw:
            continue
        # the store knows an active L1 entry by its offset (is_l1) and updates it
        image.meta.write_table_entry(eo, raw ^ C.QCOW_OFLAG_COPIED)
        fixed += 1
    if fixed:
        file.fsync()
        image.invalidate_caches()
    return fixed


def _mark_clean(image) -> None:
    """qcow2_mark_clean + qcow2_mark_consistent: clear the dirty and corrupt bits."""
    header = image.header
    if header.version < 3:
        return
    bits = header.incompatible_features & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)
    if not bits:
        return
    image.meta.write_header(incompatible_features=header.incompatible_features & ~bits)

