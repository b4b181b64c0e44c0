"""What ``qemu-img check -r leaks|all`` 7.2 prints on stderr while it repairs, line
by line and in its order (the fprintf calls of block/qcow2-refcount.c), made from
the findings the check engine reports before and after the repair:

1. the reference walk's errors (calculate_refcounts);
2. every cluster whose refcount differs from its references (compare_refcounts):
   ``ERROR cluster N refcount=A reference=B`` (too low) or ``Leaked cluster ...``;
3. either ``ERROR need to rebuild refcount structures`` (-r leaks, a refcount of 0
   or a damaged refcount table: nothing is written), or ``Rebuilding refcount
   structure`` and the clusters of the old structure freed (``Repairing cluster``),
   or the comparison again with ``Repairing`` for what the mode fixes;
4. the COPIED flags (check_oflag_copied): ``Repairing|ERROR OFLAG_COPIED ...``
   against the refcounts as the repair leaves them;
5. when anything was fixed, qemu-img's double check of the repaired image (1, 2, 4).

:func:`check_lines` gives 1, 2 and 4 of a check without repair.  Walk errors the
engine words its own way are printed as ``ERROR <our words>``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine import clusters as C
from .engine.kinds import HostKind
from .engine.refcounts import REFT_RESERVED_MASK, decode_refcount_block

REFCOUNT_KINDS = ("leak", "refcount_zero", "refcount_too_low", "double_reference",
                  "metadata_overlap")
COPIED_KINDS = ("copied_flag_wrong_l1", "copied_flag_wrong_l2")
NEED_REBUILD = "ERROR need to rebuild refcount structures"
REBUILDING = "Rebuilding refcount structure"

_WALK_ORDER = {"reserved_bits": 0, "misaligned_offset": 1, "past_end_of_file": 2}
_REFCOUNT_HOST_KINDS = (HostKind.REFCOUNT_TABLE, HostKind.REFCOUNT_BLOCK)


def about_refcounts(f) -> bool:
    """A finding on the refcount structure (check_refblocks, or the refcount table's
    region): qemu-img reports those after the tables' ones."""
    return ("reftable_index" in f.facts
            or f.facts.get("host_kind", -1) in _REFCOUNT_HOST_KINDS)


def _qemu_words(f, repairing: bool, read_entry, extended: bool) -> str:
    """One walk finding as qemu-img words it (``ERROR <message>`` where unknown),
    from the finding's facts, never its message's wording."""
    facts, fix = f.facts, "Repairing" if repairing else "ERROR"
    if f.kind == "reserved_bits":
        if "l2_entry" in facts:
            return f"ERROR found l2 entry with reserved bits set: {facts['l2_entry']:x}"
        if "reftable_index" in facts:
            return (f"ERROR refcount table entry {facts['reftable_index']} has reserved "
                    "bits set")
        if "l1_entry" in facts:
            return f"ERROR found L1 entry with reserved bits set: {facts['l1_entry']:x}"
    if f.kind == "misaligned_offset":
        if "l1_entry" in facts:
            return (f"ERROR l2_offset={facts['l1_entry'] & C.L1E_OFFSET_MASK:x}: Table is "
                    "not cluster aligned; L1 entry corrupted")
        if "l2_entry" in facts:
            return _misaligned_data(facts["l2_entry"], f.entry_offset, repairing, read_entry,
                                    extended)
        if "reftable_index" in facts:
            return (f"ERROR refcount block {facts['reftable_index']} is not cluster "
                    "aligned; refcount table entry corrupted")
    if f.kind == "past_end_of_file":
        if "reftable_index" in facts:
            return f"{fix} refcount block {facts['reftable_index']} is outside image"
        if "offset" in facts:
            return ("ERROR: counting reference for region exceeding the end of the file by "
                    f"one cluster or more: offset {facts['offset']:#x} size "
                    f"{facts['size']:#x}")
    return f"ERROR {f.message}"


def is_preallocated(raw: int, entry_offset, read_entry, extended: bool) -> bool:
    """check_refcounts_l2: an entry whose cluster holds no data (zero flag; with
    extended L2 no sub-cluster allocated) is a preallocated one."""
    if extended:
        return entry_offset is not None and not read_entry(entry_offset + 8) & 0xFFFFFFFF
    return bool(raw & C.QCOW_OFLAG_ZERO)


def _misaligned_data(raw: int, entry_offset, repairing: bool, read_entry,
                     extended: bool) -> str:
    off = raw & C.L2E_OFFSET_MASK
    if is_preallocated(raw, entry_offset, read_entry, extended):
        return (f"{'Repairing' if repairing else 'ERROR'} offset={off:x}: Preallocated "
                "cluster is not properly aligned; L2 entry corrupted.")
    return f"ERROR offset={off:x}: Data cluster is not properly aligned; L2 entry corrupted."


def walk_findings(result) -> list:
    found = [f for f in result.findings
             if f.kind not in REFCOUNT_KINDS + COPIED_KINDS + ("refcount_block_unreadable",)
             and f.severity != "leak"]
    found.sort(key=lambda f: (about_refcounts(f), f.entry_offset or 0,
                              _WALK_ORDER.get(f.kind, 3)))
    return found


def walk_lines(result, read_entry, extended: bool, repairing: bool = False) -> list[str]:
    """Step 1: the walk's errors, the tables' before the refcount structure's."""
    return [_qemu_words(f, repairing, read_entry, extended) for f in walk_findings(result)]


def mismatches(result) -> list:
    """The refcount findings, one per cluster, in cluster order (compare_refcounts)."""
    seen: dict = {}
    for f in result.findings:
        if f.kind in REFCOUNT_KINDS:
            seen.setdefault(f.cluster, f)
    return [seen[c] for c in sorted(seen)]


def compare_lines(found, fix_leaks: bool = False, fix_errors: bool = False) -> list[str]:
    out = []
    for f in found:
        low = f.refcount < f.references
        fixed = (not low and fix_leaks) or (low and fix_errors)
        label = "Repairing" if fixed else "ERROR" if low else "Leaked"
        out.append(f"{label} cluster {f.cluster} refcount={f.refcount} "
                   f"reference={f.references}")
    return out


def copied_lines_after(result, read_entry) -> list[str]:
    """Step 4 of a check that fixes nothing: its COPIED findings in qemu-img's words
    (``read_entry(offset)``: the table entry at that file offset, as it is now)."""
    out = []
    found = sorted((f for f in result.findings if f.kind in COPIED_KINDS),
                   key=lambda f: f.entry_offset or 0)
    for f in found:
        rc = f.facts.get("refcount", "?")
        raw = read_entry(f.entry_offset)
        if f.kind == "copied_flag_wrong_l1":
            out.append(f"ERROR OFLAG_COPIED L2 cluster: l1_index="
                       f"{f.facts.get('l1_index', '?')} l1_entry={raw:x} refcount={rc}")
        else:
            out.append(f"ERROR OFLAG_COPIED data cluster: l2_entry={raw:x} refcount={rc}")
    return out


class RefcountReader:
    """Refcounts as they are on disk (qcow2_get_refcount: 0 past the table or where
    no block is named; a misaligned block cannot be read), a few blocks kept: the
    COPIED prediction walks the tables in order, so their clusters share blocks."""

    KEEP = 8

    def __init__(self, image) -> None:
        self.file, self.cs = image.file, image.cluster_size
        self.order = image.header.refcount_order
        self.per = (self.cs * 8) >> self.order
        self.table = np.asarray(image.refcount_table, dtype=np.uint64)
        self.blocks: dict[int, np.ndarray | None] = {}

    def _block(self, rti: int) -> np.ndarray | None:
        if rti in self.blocks:
            return self.blocks[rti]
        off = int(self.table[rti]) & C.REFT_OFFSET_MASK if rti < self.table.size else 0
        if off & (self.cs - 1):
            counts = None                       # -EIO in QEMU: the entry is skipped
        elif not off:
            counts = np.zeros(self.per, dtype=np.uint64)
        else:
            buf = self.file.pread(off, self.cs).ljust(self.cs, b"\0")
            counts = decode_refcount_block(buf, self.order)
        if len(self.blocks) >= self.KEEP:
            self.blocks.pop(next(iter(self.blocks)))
        self.blocks[rti] = counts
        return counts

    def counts(self, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(refcounts, readable) of ``clusters``."""
        clusters = np.asarray(clusters, dtype=np.int64)
        rc = np.zeros(clusters.size, dtype=np.int64)
        ok = np.ones(clusters.size, dtype=bool)
        rtis = clusters // self.per
        for rti in sorted(set(rtis.tolist())):
            sel = rtis == rti
            block = self._block(rti)
            if block is None:
                ok[sel] = False
            else:
                rc[sel] = block[clusters[sel] - rti * self.per].astype(np.int64)
        return rc, ok

    def get(self, cluster: int) -> int | None:
        rc, ok = self.counts(np.array([cluster]))
        return int(rc[0]) if ok[0] else None


def counts_after(disk: RefcountReader, fixed: dict[int, int], clusters: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Refcounts of ``clusters`` once the repair has set ``fixed`` ones (the rest as
    on disk), and which could be read."""
    clusters = np.asarray(clusters, dtype=np.int64)
    rc, ok = disk.counts(clusters)
    if fixed and clusters.size:
        keys = np.array(sorted(fixed), dtype=np.int64)
        at = np.minimum(np.searchsorted(keys, clusters), keys.size - 1)
        for k in np.flatnonzero(keys[at] == clusters).tolist():
            rc[k], ok[k] = fixed[int(clusters[k])], True
    return rc, ok


def predicted_copied_lines(image, disk, fixed: dict[int, int], repair: bool,
                           skip: set[int] = frozenset()) -> list[str]:
    """Step 4 of the repair itself, before it runs: the active L1 and L2 entries
    whose COPIED flag will disagree with the refcount the repair leaves (see
    :func:`counts_after`; one that cannot be read is skipped, as QEMU skips it);
    read from ``image`` as it is on disk, in check_oflag_copied's order, a table
    at a time."""
    prefix = "Repairing" if repair else "ERROR"
    cb, step = image.cluster_bits, 2 if image.extended_l2 else 1
    out = []
    for i, l1e in enumerate(int(e) for e in image.l1_table.entries):
        l2off = l1e & C.L1E_OFFSET_MASK
        if not l2off:
            continue
        rc, ok = counts_after(disk, fixed, np.array([l2off >> cb]))
        if not ok[0]:
            continue
        if (rc[0] == 1) != bool(l1e & C.QCOW_OFLAG_COPIED):
            out.append(f"{prefix} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x} "
                       f"refcount={rc[0]}")
        buf = image.file.pread(l2off, image.l2_size * 8 * step)
        raw = np.frombuffer(buf[:len(buf) // 8 * 8], dtype=">u8").astype(np.uint64)[::step]
        copied = (raw & np.uint64(C.QCOW_OFLAG_COPIED)) != 0
        has = (raw & np.uint64(C.L2E_OFFSET_MASK)) != 0
        if image.has_data_file:
            has |= copied
        cand = np.flatnonzero(has & ((raw & np.uint64(C.QCOW_OFLAG_COMPRESSED)) == 0))
        if skip:
            cand = np.array([j for j in cand.tolist() if l2off + 8 * step * j not in skip],
                            dtype=np.int64)
        if not cand.size:
            continue
        if image.has_data_file:
            rc, ok = np.ones(cand.size, dtype=np.int64), np.ones(cand.size, dtype=bool)
        else:
            rc, ok = counts_after(disk, fixed, (raw[cand] & np.uint64(C.L2E_OFFSET_MASK))
                                  >> np.uint64(cb))
        bad = ok & ((rc == 1) != copied[cand])
        for k in np.flatnonzero(bad).tolist():
            out.append(f"{prefix} OFLAG_COPIED data cluster: l2_entry={int(raw[cand[k]]):x} "
                       f"refcount={rc[k]}")
    return out


def refcount_structure(image) -> set[int]:
    """Clusters of the refcount table and of the blocks its entries name (aligned)."""
    h, cb, cs = image.header, image.cluster_bits, image.cluster_size
    first = h.refcount_table_offset >> cb
    out = set(range(first, first + h.refcount_table_clusters))
    for e in image.refcount_table:
        off = int(e) & C.REFT_OFFSET_MASK
        if off and not off & (cs - 1):
            out.add(off >> cb)
    return out


@dataclass
class Mismatch:
    """A refcount that differs from the references (a finding, or one derived)."""
    cluster: int
    refcount: int
    references: int


class RepairLog:
    """The lines of one ``check -r``: :meth:`before` reads the image as the repair
    will find it (opened read-only, before the repair), :meth:`after` takes the
    repaired image and the check the repair returned."""

    def __init__(self, fix_all: bool) -> None:
        self.fix_all = fix_all
        self.walk: list[str] = []
        self.blocks: list[str] = []
        self.found: list = []
        self.copied: list[str] = []
        self.rebuild = False
        self.old_structure: dict[int, int] = {}      # cluster: refcount after a rebuild
        self.outside: list[tuple[int, int]] = []     # (reftable index, block cluster)
        self.unreadable: list[tuple[int, str]] = []  # (cluster, line) of compare's reads

    def before(self, image, first) -> None:
        read = _reader(image)
        ext = image.extended_l2
        self.walk = walk_lines(first, read, ext, repairing=self.fix_all)
        disk = RefcountReader(image)
        on_disk = disk.get
        found = {f.cluster: Mismatch(f.cluster, f.refcount, f.references)
                 for f in mismatches(first)}
        zeroed = self._drop_zeroed_preallocated(first, found, on_disk, read, ext,
                                                image.cluster_size) if self.fix_all else set()
        self.found = [found[c] for c in sorted(found)]
        self.unreadable = self._unreadable(image, first)
        self.blocks = self._shared_blocks(image, found)
        self.rebuild = first.rebuild_needed or bool(self.blocks)
        if zeroed:              # decided on the image as the zeroing leaves it
            self.rebuild = bool(self.blocks) or any(
                m.refcount == 0 for m in self.found) or any(
                about_refcounts(f) and f.kind != "past_end_of_file"
                for f in walk_findings(first))
        self.outside = [] if not self.fix_all else [
            (i, (int(e) & C.REFT_OFFSET_MASK) >> image.cluster_bits)
            for i, e in enumerate(image.refcount_table)
            if not int(e) & REFT_RESERVED_MASK       # check_refblocks: named as damaged only
            and (int(e) & C.REFT_OFFSET_MASK) >> image.cluster_bits >= -(
                -image.file.size // image.cluster_size)]
        if self.outside:
            self.rebuild = True
        if self.rebuild and not self.fix_all:
            return                                   # the repair refuses: nothing more
        fixed = {m.cluster: m.references for m in self.found
                 if self.rebuild or m.refcount > m.references or self.fix_all}
        if self.rebuild:
            # the rebuilt structure counts the old one's clusters; freed after it
            # (one reference less: other references of such a cluster stay)
            for c in refcount_structure(image):
                counted = fixed[c] if c in fixed else on_disk(c)
                if counted:
                    self.old_structure[c] = counted
                    fixed[c] = counted - 1

        copied_first = sum(1 for f in first.findings if f.kind in COPIED_KINDS)
        lows = sum(1 for m in self.found if m.refcount < m.references)
        walk_left = first.corruptions - copied_first - lows
        repair = self.fix_all or (not first.check_errors and walk_left + lows == 0)
        self.copied = predicted_copied_lines(image, disk, fixed, repair, zeroed)

    @staticmethod
    def _unreadable(image, first, repairing: bool = True) -> list[tuple[int, str]]:
        """compare_refcounts on a cluster whose refcount block cannot be read: the
        image is marked corrupt (said once; a check opened read-only only says it
        is), then each cluster named."""
        out: list[tuple[int, str]] = []
        for f in sorted((f for f in first.findings if f.kind == "refcount_block_unreadable"),
                        key=lambda f: f.cluster):
            if not out:
                rti = f.cluster // ((image.cluster_size * 8) >> image.header.refcount_order)
                off = int(image.refcount_table[rti]) & C.REFT_OFFSET_MASK
                index = f"{rti:#x}" if rti else "0"          # printf's %#x
                said = ("Marking image as corrupt", "") if repairing else (
                    "Image is corrupt", "non-fatal ")
                out.append((f.cluster, f"qcow2: {said[0]}: Refblock offset {off:#x} "
                            f"unaligned (reftable index: {index}); further {said[1]}"
                            "corruption events will be suppressed"))
            out.append((f.cluster, f"Can't get refcount for cluster {f.cluster}: "
                        "Input/output error"))
        return out

    @staticmethod
    def _drop_zeroed_preallocated(first, found, on_disk, read, ext, cs: int) -> set[int]:
        """-r all zeroes a misaligned preallocated entry during the walk, before
        its clusters are counted: the comparison never sees its references.
        Returns the file offsets of those entries."""
        zeroed: set[int] = set()
        for f in walk_findings(first):
            if f.kind != "misaligned_offset" or "l2_entry" not in f.facts:
                continue
            raw = f.facts["l2_entry"]
            if not is_preallocated(raw, f.entry_offset, read, ext):
                continue
            zeroed.add(f.entry_offset)
            off = raw & C.L2E_OFFSET_MASK
            for c in range(off // cs, (off + cs - 1) // cs + 1):
                m = found.get(c)
                rc = m.refcount if m else on_disk(c)
                if rc is None:
                    continue
                refs = (m.references if m else rc) - 1
                if refs == rc:
                    found.pop(c, None)
                else:
                    found[c] = Mismatch(c, rc, refs)
        return zeroed

    @staticmethod
    def _shared_blocks(image, found) -> list[str]:
        """check_refblocks: a refcount block referenced more than once."""
        out = []
        for i, e in enumerate(image.refcount_table):
            off = int(e) & C.REFT_OFFSET_MASK
            if int(e) & REFT_RESERVED_MASK:
                continue                    # named as damaged, not counted
            m = found.get(off >> image.cluster_bits) if off else None
            if m is not None and m.references != 1 and not off & (image.cluster_size - 1):
                out.append(f"ERROR refcount block {i} refcount={m.references}")
        return out

    def _compared(self, found) -> list[str]:
        """compare_refcounts' first pass: mismatches and unreadable refcounts, by cluster."""
        lines = [(m.cluster, 1, line) for m, line in zip(found, compare_lines(found))]
        lines += [(c, 0, line) for c, line in self.unreadable]
        return [line for _, _, line in sorted(lines, key=lambda t: (t[0], t[1]))]

    def refused(self) -> list[str]:
        """-r leaks where a rebuild is needed: what qemu-img prints before it stops."""
        return self.walk + self.blocks + self._compared(self.found) + (
            [NEED_REBUILD] if self.rebuild and not self.fix_all else [])

    def after(self, image, result) -> list[str]:
        """Every line, in qemu-img's order, once the repair is done."""
        read = _reader(image)
        ext = image.extended_l2
        lines = list(self.walk)
        found = list(self.found)
        end = -(-image.file.size // image.cluster_size)
        for i, c in self.outside:
            if c < end:         # the file was grown to the block: counted, refcount 0
                found.append(Mismatch(c, 0, 1))
                self.old_structure.setdefault(c, 1)
            else:
                named = f"Repairing refcount block {i} is outside image"
                at = lines.index(named) + 1 if named in lines else len(lines)
                lines.insert(at, "ERROR could not resize image: Invalid argument")
        found.sort(key=lambda m: m.cluster)
        lines += self.blocks + self._compared(found)
        if self.rebuild:
            lines.append(REBUILDING)
            lines += walk_lines(result, read, ext)
            new = refcount_structure(image)
            for c, counted in sorted(self.old_structure.items()):
                if c < end and c not in new:
                    lines.append(f"Repairing cluster {c} refcount={counted} "
                                 f"reference={counted - 1}")
        elif found:
            lines += compare_lines(found, fix_leaks=True, fix_errors=self.fix_all)
        lines += self.copied
        if result.leaks_fixed or result.corruptions_fixed:      # qemu-img's double check
            lines += walk_lines(result, read, ext) + compare_lines(mismatches(result))
            lines += copied_lines_after(result, read)
        return lines


def _reader(image):
    return lambda off: int.from_bytes(image.file.pread(off, 8).ljust(8, b"\0"), "big")


def check_lines(image, result) -> list[str]:
    """What ``qemu-img check`` (no repair) prints on stderr for ``result``, the
    check of ``image``: the walk's errors, the refcount comparison, the COPIED
    flags; findings the engine counted but did not list are said at the end."""
    read = _reader(image)
    log = RepairLog(False)
    found = {m.cluster: m for m in mismatches(result)}
    log.unreadable = log._unreadable(image, result, repairing=False)
    lines = walk_lines(result, read, image.extended_l2)
    lines += log._shared_blocks(image, found) + log._compared(list(found.values()))
    lines += copied_lines_after(result, read)
    if result.findings_dropped:
        lines.append(f"... and {result.findings_dropped} more findings, not listed")
    return lines
