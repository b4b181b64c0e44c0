"""What each row of the table tree says: texts, offsets, refcounts and problems of
one table entry, computed from the container's numpy columns."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QModelIndex

from ..engine import Qcow2Error
from ..engine import clusters as C
from ..engine.clusters import ClusterType
from .table_nodes import (_RC_UNKNOWN, _RED, _TYPE_NAMES, CHILD_KIND, COL_FLAGS, COL_GUEST, COL_HOST,
                          COL_INDEX, COL_PROBLEM, COL_RAW, COL_REFCOUNT, COLUMNS, L1E, L2E,
                          PAGE_KIND, RBE, RTE, EntryOffsetRole, KindRole, Node)


class TableFacts:
    """Mixin of :class:`~.table_tree_model.TableTreeModel`: per-entry facts.  Needs
    ``_img``, ``_refcounts``, ``_rc_cache``, ``_problems_at`` and ``_problems_cluster``."""

    # -- per-entry facts ------------------------------------------------------------------
    @property
    def _cs(self) -> int:
        return self._img.cluster_size if self._img else 1

    def _entry_offset(self, holder: Node, kind: int, entry: int) -> int:
        img = self._img
        if kind == L2E:
            return holder.table_offset + img.header.l2_entry_size * entry
        if kind == RBE:
            return holder.table_offset + (entry << img.header.refcount_order) // 8
        return holder.table_offset + 8 * entry

    def _host_offset(self, holder: Node, kind: int, entry: int) -> int | None:
        raw = int(holder.raw[entry])
        img = self._img
        if kind == L1E:
            return (raw & C.L1E_OFFSET_MASK) or None
        if kind == RTE:
            return (raw & C.REFT_OFFSET_MASK) or None
        if kind == RBE:
            return (holder.entry * img.refcount_block_entries + entry) * self._cs
        t = holder.types[entry] if holder.types is not None else C.cluster_type(raw)
        if t == ClusterType.COMPRESSED:
            return img.layout.decode(raw)[0]
        return (raw & C.L2E_OFFSET_MASK) or (0 if t == ClusterType.NORMAL else None)

    def _guest_offset(self, holder: Node, kind: int, entry: int) -> int | None:
        img = self._img
        if kind == L1E:
            return entry * img.l2_size * self._cs
        if kind == L2E:
            return (holder.entry * img.l2_size + entry) * self._cs
        return None

    def _child_refcounts(self, holder: Node) -> np.ndarray:
        """Refcount of the host cluster each entry of ``holder``'s table points at, for
        the whole table (a page: its entries) at once from the host map, indexed from
        entry ``holder.rc_base`` (-1: points at nothing; _RC_UNKNOWN: past the map, or
        no map yet; looked up per row when shown)."""
        if holder.rc is not None:
            return holder.rc
        img = self._img
        raw = holder.raw if holder.raw is not None else np.zeros(0, dtype=np.uint64)
        types = holder.types
        lo = 0
        if holder.base is not holder and len(holder.cand):     # a page: its entries only
            lo, hi = int(holder.cand[0]), int(holder.cand[-1]) + 1
            raw = raw[lo:hi]
            types = None if types is None else types[lo:hi]
        kind = CHILD_KIND[holder.kind]
        if kind == L1E:
            hosts = raw & np.uint64(C.L1E_OFFSET_MASK)
        elif kind == RTE:
            hosts = raw & np.uint64(C.REFT_OFFSET_MASK)
        elif kind == L2E and not img.has_data_file:     # data file clusters have no refcount
            hosts = raw & np.uint64(C.L2E_OFFSET_MASK)
            if types is not None:
                comp = types == ClusterType.COMPRESSED
                if comp.any():
                    hosts[comp] = img.layout.decode_array(raw[comp])[0]
                hosts[(types == ClusterType.ZERO_PLAIN) | (types == ClusterType.UNALLOCATED)] = 0
        else:
            hosts = np.zeros(len(raw), dtype=np.uint64)
        clusters = (hosts >> np.uint64(img.cluster_bits)).astype(np.int64)
        out = np.where(hosts != 0, _RC_UNKNOWN, -1).astype(np.int64)
        rc = self._refcounts
        if rc is not None:
            known = (hosts != 0) & (clusters < len(rc))
            out[known] = rc[clusters[known]]
        holder.rc, holder.rc_hosts, holder.rc_base = out, hosts, lo
        return out

    def _refcount_from_blocks(self, host_offset: int) -> int:
        """One refcount read from its refcount block (a few blocks cached); 0 past
        the refcount table or in a block that cannot be read."""
        img = self._img
        rti, i = divmod(host_offset >> img.cluster_bits, img.refcount_block_entries)
        if rti >= len(img.refcount_table):
            return 0
        if rti not in self._rc_cache:
            try:
                blk = img.refcount_block(rti)
            except Qcow2Error:
                blk = None
            self._rc_cache[rti] = None if blk is None else blk[1]
            if len(self._rc_cache) > 64:
                self._rc_cache.popitem(last=False)
        counts = self._rc_cache[rti]
        return 0 if counts is None else int(counts[i])

    def _problems(self, holder: Node, kind: int, entry: int) -> list[str]:
        out = list(self._problems_at.get(self._entry_offset(holder, kind, entry), ()))
        host = self._host_offset(holder, kind, entry)
        if host is not None and not (
                kind == L2E and holder.types is not None and holder.types[entry]
                in (ClusterType.COMPRESSED, ClusterType.ZERO_PLAIN, ClusterType.UNALLOCATED)):
            out += self._problems_cluster.get(host // self._cs, [])
        if kind in (L1E, RTE):
            kid = holder.kids.get(self._pos_of(holder, entry))
            if kid is not None and kid.error:
                out.append(kid.error)
        return out

    def _pos_of(self, holder: Node, entry: int) -> int:
        if holder.cand is None:
            return -1
        pos = int(np.searchsorted(holder.cand, entry))
        return pos if pos < len(holder.cand) and holder.cand[pos] == entry else -1

    def _text(self, holder: Node, kind: int, entry: int, col: int) -> str:
        img = self._img
        raw = int(holder.raw[entry])
        cs = self._cs
        if col == COL_INDEX:
            return str(entry)
        if col == COL_GUEST:
            if kind in (L1E, L2E):
                g = self._guest_offset(holder, kind, entry)
                span = img.l2_size * cs if kind == L1E else cs
                return f"{g:#x} – {g + span - 1:#x}"
            if kind == RTE:
                per = img.refcount_block_entries
                return f"host clusters {entry * per:,} – {(entry + 1) * per - 1:,}"
            return f"host cluster {holder.entry * img.refcount_block_entries + entry:,}"
        if col == COL_RAW:
            if kind == RBE:
                return str(raw)
            text = f"{raw:016x}"
            if kind == L2E and holder.bitmap is not None:
                text += f" {int(holder.bitmap[entry]):016x}"
            return text
        if col == COL_HOST:
            h = self._host_offset(holder, kind, entry)
            if h is None:
                return ""
            if kind == L2E and holder.types is not None \
                    and holder.types[entry] == ClusterType.COMPRESSED:
                _, n = img.layout.decode(raw)
                return f"{h:#x} (+{n} B)"
            return f"{h:#x}"
        if col == COL_FLAGS:
            return self._flags(holder, kind, entry, raw)
        if col == COL_REFCOUNT:
            if kind == RBE:
                return ""
            rcs = self._child_refcounts(holder)
            i = entry - holder.rc_base
            rc = int(rcs[i])
            if rc == _RC_UNKNOWN:       # not in the host map (yet): its refcount block
                rc = rcs[i] = self._refcount_from_blocks(int(holder.rc_hosts[i]))
            return "" if rc < 0 else str(rc)
        if col == COL_PROBLEM:
            probs = self._problems(holder, kind, entry)
            return ("⚠ " + probs[0] + (f" (+{len(probs) - 1})" if len(probs) > 1 else "")
                    if probs else "")
        return ""

    def _flags(self, holder: Node, kind: int, entry: int, raw: int) -> str:
        parts: list[str] = []
        if kind == L1E:
            if raw & C.L1E_OFFSET_MASK:
                parts.append("L2 table")
            if raw & C.QCOW_OFLAG_COPIED:
                parts.append("COPIED")
            if raw & C.L1E_RESERVED_MASK:
                parts.append("RESERVED BITS SET")
        elif kind == L2E:
            t = ClusterType(int(holder.types[entry])) if holder.types is not None \
                else C.cluster_type(raw)
            if t == ClusterType.UNALLOCATED and self._img.backing_chain:
                parts.append("from backing")    # unallocated: the guest reads the backing file
            else:
                parts.append(_TYPE_NAMES.get(t, t.name.lower()))
            if raw & C.QCOW_OFLAG_COPIED:
                parts.append("COPIED")
            if t == ClusterType.COMPRESSED:
                parts.append(f"{self._img.layout.decode(raw)[1]} B")
            elif raw & C.QCOW_OFLAG_ZERO and holder.bitmap is None:
                parts.append("ZERO flag")
            if holder.bitmap is not None and t != ClusterType.COMPRESSED:
                bm = int(holder.bitmap[entry])
                if bm:
                    parts.append(f"sub-clusters alloc {bm & 0xFFFFFFFF:08x} "
                                 f"zero {bm >> 32:08x}")
        elif kind == RTE:
            if raw & C.REFT_OFFSET_MASK:
                parts.append("refcount block")
        return ", ".join(parts)

    # -- pages of a big table ------------------------------------------------------------
    def _page_span(self, holder: Node, row: int) -> tuple[int, int, int]:
        """First and last table entry of page ``row`` of ``holder``, and how many of its
        entries are shown (fewer than last - first + 1 with the allocated filter)."""
        cand = holder.cand[row * holder.span:(row + 1) * holder.span]
        return int(cand[0]), int(cand[-1]), len(cand)

    def _page_row(self, holder: Node, row: int) -> tuple:
        first, last, n = self._page_span(holder, row)
        texts = [""] * len(COLUMNS)
        texts[COL_INDEX] = f"entries {first:,} – {last:,}"
        if n != last - first + 1:
            texts[COL_FLAGS] = f"{n:,} shown"
        img = self._img
        kind, cs = CHILD_KIND[holder.kind], self._cs
        if kind in (L1E, L2E):
            span = img.l2_size * cs if kind == L1E else cs
            g0 = self._guest_offset(holder, kind, first)
            g1 = self._guest_offset(holder, kind, last) + span - 1
            texts[COL_GUEST] = f"{g0:#x} – {g1:#x}"
        else:
            per = img.refcount_block_entries
            if kind == RTE:
                texts[COL_GUEST] = f"host clusters {first * per:,} – {(last + 1) * per - 1:,}"
            else:
                c0 = holder.entry * per
                texts[COL_GUEST] = f"host clusters {c0 + first:,} – {c0 + last:,}"
        brushes: tuple = (None,) * len(COLUMNS)
        problems = self._page_problems(holder, row, kind, first, last)
        if problems:
            texts[COL_PROBLEM] = f"⚠ {problems:,} in these entries"
            brushes = (None,) * COL_PROBLEM + (_RED,) + (None,) * (len(COLUMNS) - COL_PROBLEM - 1)
        return tuple(texts), brushes, texts[COL_PROBLEM] or None

    def _page_problems(self, holder: Node, row: int, kind: int, first: int, last: int) -> int:
        """Findings at the page's entries or at the clusters they point to (what their
        rows would mark), counted with numpy over the page's entries."""
        at, clusters = self._problem_keys
        n = 0
        if len(at):
            lo = self._entry_offset(holder, kind, first)
            hi = self._entry_offset(holder, kind, last + 1)
            n += int(np.searchsorted(at, hi) - np.searchsorted(at, lo))
        if len(clusters) and kind in (L1E, RTE):
            raw = holder.raw[holder.cand[row * holder.span:(row + 1) * holder.span]]
            mask = C.L1E_OFFSET_MASK if kind == L1E else C.REFT_OFFSET_MASK
            hosts = (raw & np.uint64(mask)) >> np.uint64(self._img.cluster_bits)
            n += int(np.isin(hosts[hosts != 0].astype(np.int64), clusters).sum())
        return n

    def _page_data(self, holder: Node, row: int, role: int):
        if role == KindRole:
            return PAGE_KIND
        if role == EntryOffsetRole:     # its first entry's bytes
            return self._entry_offset(holder, CHILD_KIND[holder.kind],
                                      self._page_span(holder, row)[0])
        return None

    def entry_length(self, index: QModelIndex) -> int:
        """Bytes of the entry at ``index`` in the file (for the file hex view)."""
        kind = index.data(KindRole)
        img = self._img
        if img is None:
            return 0
        if kind == "l2":
            return img.header.l2_entry_size
        if kind == "refcount":
            return max(1, img.header.refcount_bits // 8)
        return 8

