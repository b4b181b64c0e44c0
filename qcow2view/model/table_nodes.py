"""The pieces of the table tree: row kinds, columns, roles and the container node.

Shared by :mod:`.table_tree_model` (the Qt model) and :mod:`.table_facts` (what
each entry row says).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor

from ..engine.clusters import ClusterType

BATCH = 256
#: A table with more entries than this shows them in pages of PAGE entries (pages of
#: pages past PAGE * PAGE), so that going to entry 4,000,000 of a 4M-entry L1 table
#: lays out two short lists, not four million rows: the view asks the model for every
#: row of an expanded container on each relayout.  Smaller tables (with 64 KiB
#: clusters: an 8192-entry L2 table, a 32768-entry refcount block) are shown whole.
PAGED_ABOVE = 32768
PAGE = 2048

ROOT, L1_ROOT, RT_ROOT, L1E, L2E, RTE, RBE = range(7)
CHILD_KIND = {ROOT: None, L1_ROOT: L1E, RT_ROOT: RTE, L1E: L2E, RTE: RBE}

COLUMNS = ("Entry", "Guest range", "Raw entry", "Host offset", "Flags", "Refcount", "Problem")
COL_INDEX, COL_GUEST, COL_RAW, COL_HOST, COL_FLAGS, COL_REFCOUNT, COL_PROBLEM = range(7)

EntryOffsetRole = Qt.UserRole + 1     # file offset of the entry's bytes
HostOffsetRole = Qt.UserRole + 2      # host offset the entry points at (or None)
GuestOffsetRole = Qt.UserRole + 3     # first guest byte the entry maps (or None)
KindRole = Qt.UserRole + 4            # "l1_table", "l1", "l2", "refcount_table", ...

PAGE_KIND = "entries"     # KindRole of a page row
_KIND_NAMES = {L1_ROOT: "l1_table", RT_ROOT: "refcount_table", L1E: "l1", L2E: "l2",
               RTE: "refcount_table_entry", RBE: "refcount"}
_TYPE_NAMES = {ClusterType.UNALLOCATED: "unallocated", ClusterType.ZERO_PLAIN: "zero",
               ClusterType.ZERO_ALLOC: "zero, allocated", ClusterType.NORMAL: "data",
               ClusterType.COMPRESSED: "compressed",
               ClusterType.UNALLOCATED_ALLOC: "allocated, unwritten",
               ClusterType.INVALID: "INVALID sub-cluster bitmap"}
PROBLEM_COLOR = QColor("#c0392b")
_ROW_FLAGS = Qt.ItemIsEnabled | Qt.ItemIsSelectable
_NO_FLAGS = Qt.NoItemFlags
# Plain ints: the delegate asks ~10 roles per painted cell, and every attribute
# lookup on a Qt enum class costs a few microseconds in PySide6.
_DISPLAY, _TOOLTIP, _FOREGROUND, _ALIGN = (int(Qt.DisplayRole), int(Qt.ToolTipRole),
                                           int(Qt.ForegroundRole), int(Qt.TextAlignmentRole))
_ROLES = frozenset({_DISPLAY, _TOOLTIP, _FOREGROUND, _ALIGN, int(EntryOffsetRole),
                    int(HostOffsetRole), int(GuestOffsetRole), int(KindRole)})
_ROW_ROLES = frozenset({_DISPLAY, _TOOLTIP, _FOREGROUND})
_ALIGN_RIGHT = int(Qt.AlignRight | Qt.AlignVCenter)
_RC_UNKNOWN = -2
_RED = QBrush(PROBLEM_COLOR)
_GREY = QBrush(QColor("#999999"))


class Node:
    """A container row: a root table, an L1 entry or a refcount table entry."""

    __slots__ = ("kind", "parent", "pos", "entry", "label", "snapshot", "cand", "count",
                 "kids", "error", "raw", "bitmap", "types", "table_offset", "loaded",
                 "rows", "rc", "rc_hosts", "rc_base", "span", "base")

    def __init__(self, kind: int, parent: "Node | None", pos: int, entry: int = -1) -> None:
        self.kind = kind
        self.parent = parent
        self.pos = pos                    # row under parent
        self.entry = entry                # index in the parent's table
        self.label = ""
        self.snapshot = None              # Snapshot for snapshot L1 roots
        self.cand: np.ndarray | None = None   # entry indices of the children shown
        self.count = 0                    # children fetched so far
        self.kids: dict[int, Node] = {}
        self.error: str | None = None
        self.raw: np.ndarray | None = None    # this container's table (uint64)
        self.bitmap: np.ndarray | None = None
        self.types: np.ndarray | None = None
        self.table_offset = 0
        self.loaded = False
        self.rows: dict[int, tuple] = {}      # row -> (texts, brushes, problem tooltip)
        self.rc: np.ndarray | None = None     # refcount of what each entry points at, -1: none
        self.rc_hosts: np.ndarray | None = None   # the host offsets those refcounts are of
        self.rc_base = 0                  # the entry rc[0] is of
        self.span = 0                     # >0: the rows are pages of this many entries
        self.base: Node = self            # the container whose table this is (pages: theirs)

    def page(self, row: int) -> "Node":
        """The page at ``row`` of a paged container: a node of the same kind that shares
        the table and shows ``span`` of its entries (its own rows, kids and caches)."""
        p = Node(self.kind, self, row, self.entry)
        p.base = self.base
        for name in ("label", "snapshot", "error", "raw", "bitmap", "types", "table_offset"):
            setattr(p, name, getattr(self, name))
        p.loaded = True
        p.cand = self.cand[row * self.span:(row + 1) * self.span]    # a view, no copy
        p.span = paging_span(len(p.cand), self.span)
        return p

    @property
    def total(self) -> int:
        """Rows this container has: its entries shown, or its pages."""
        n = 0 if self.cand is None else len(self.cand)
        return -(-n // self.span) if self.span else n


def paging_span(n: int, within: int = 0) -> int:
    """Entries per row of a container of ``n`` entries (0: rows are entries); a page of
    ``within`` entries is split again only when that is more than PAGE."""
    if within:
        return within // PAGE if within > PAGE else 0
    if n <= PAGED_ABOVE:
        return 0
    span = PAGE
    while -(-n // span) > PAGE:
        span *= PAGE
    return span

