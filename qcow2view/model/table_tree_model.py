"""The L1/L2 and refcount tables as a lazy tree.

Roots: the active L1 table, each snapshot's L1 table, the refcount table.  L1
entries expand into their L2 entries and refcount table entries into their
refcount blocks.  Nothing below a root is read until it is expanded, and rows
arrive in batches of :data:`BATCH` through ``canFetchMore``/``fetchMore``.
With :meth:`TableTreeModel.set_paced` (what the table view uses) a container
reports more rows to fetch only for its first batch: QTreeView asks every
expanded container to fetch more on each relayout, which would otherwise load
hundreds of rows nobody looks at.  Later batches come when the view asks for
the text of a row near the end of what is loaded, i.e. when it is scrolled there.

Row text is made once per row, when the view first paints it, from columns the
container decodes once with numpy (cluster types, refcounts of what each entry
points at), and kept until the analysis changes.

Every index's internal pointer is the *container* node whose child it is;
containers get a :class:`Node` only once they are reached, so a table of a
million entries costs one small numpy array and the rows on screen.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PySide6.QtCore import QAbstractItemModel, QModelIndex, QPersistentModelIndex, Qt, QTimer
from PySide6.QtGui import QBrush

from ..engine import Qcow2Error
from ..engine import clusters as C
from ..engine.clusters import ClusterType
from ..engine.image import Image
from .table_facts import TableFacts
from .table_nodes import (_ALIGN, _ALIGN_RIGHT, _DISPLAY, _FOREGROUND, _GREY,  # noqa: F401
                          _KIND_NAMES, _NO_FLAGS, _RED, _ROLES, _ROW_FLAGS, _ROW_ROLES,
                          BATCH, CHILD_KIND, COL_FLAGS, COL_GUEST, COL_HOST, COL_INDEX,
                          COL_PROBLEM, COL_RAW, COL_REFCOUNT, COLUMNS, L1_ROOT, L1E, L2E,
                          PROBLEM_COLOR, ROOT, RT_ROOT, RTE, EntryOffsetRole,
                          GuestOffsetRole, HostOffsetRole, KindRole, Node, PAGE_KIND,
                          paging_span)
# (COL_*, the roles and BATCH are imported from here by the views and tests)


class TableTreeModel(TableFacts, QAbstractItemModel):
    """Lazy tree of the image's tables."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._img: Image | None = None
        self._root = Node(ROOT, None, 0)
        self._root.cand = np.zeros(0, dtype=np.int64)
        self._allocated_only = False
        self._rc_cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._refcounts: np.ndarray | None = None     # from the host map when ready
        self._problems_at: dict[int, list[str]] = {}  # entry file offset -> messages
        self._problems_cluster: dict[int, list[str]] = {}
        self._problem_keys = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # for pages
        self.tables_read = 0      # L2 tables / refcount blocks / snapshot L1s read so far
        self._paced = False
        self._wanted: set[Node] = set()     # containers whose end the view has reached
        self._fetch_timer = QTimer(self)
        self._fetch_timer.setSingleShot(True)
        self._fetch_timer.setInterval(0)
        self._fetch_timer.timeout.connect(self._fetch_wanted)

    # -- content -----------------------------------------------------------------------
    def set_paced(self, on: bool) -> None:
        """Fetch later batches only when a view shows the end of the loaded rows."""
        self._paced = on

    def set_image(self, img: Image | None) -> None:
        self.beginResetModel()
        self._img = img
        self._rc_cache.clear()
        self._refcounts = None
        self._build_roots()
        self.endResetModel()

    def set_allocated_only(self, on: bool) -> None:
        if on == self._allocated_only:
            return
        self.beginResetModel()
        self._allocated_only = on
        self._build_roots()
        self.endResetModel()

    @property
    def allocated_only(self) -> bool:
        return self._allocated_only

    def set_analysis(self, refcounts: np.ndarray | None, findings) -> None:
        """Refcounts from the host map and check findings, once the worker has them."""
        self._refcounts = refcounts
        self._problems_at = {}
        self._problems_cluster = {}
        for f in findings or ():
            if getattr(f, "entry_offset", None) is not None:
                self._problems_at.setdefault(f.entry_offset, []).append(f.message)
            else:
                self._problems_cluster.setdefault(f.cluster, []).append(f.message)
        self._problem_keys = (np.array(sorted(self._problems_at), dtype=np.int64),
                              np.array(sorted(self._problems_cluster), dtype=np.int64))
        self._announce_all()

    def _announce_all(self) -> None:
        def walk(node: Node, parent: QModelIndex) -> None:
            node.rows = {}
            node.rc = node.rc_hosts = None
            if node.count:
                self.dataChanged.emit(self.index(0, COL_REFCOUNT, parent),
                                      self.index(node.count - 1, COL_PROBLEM, parent))
            for pos, kid in list(node.kids.items()):
                if pos < node.count:
                    walk(kid, self.index(pos, 0, parent))
        walk(self._root, QModelIndex())

    def _build_roots(self) -> None:
        root = self._root
        root.kids = {}
        self._wanted.clear()
        img = self._img
        if img is None:
            root.cand = np.zeros(0, dtype=np.int64)
            root.count = 0
            return
        roots: list[Node] = []
        n = Node(L1_ROOT, root, 0)
        n.label = "Active L1 table"
        n.table_offset = img.l1_table.offset
        n.raw = img.l1_table.entries
        n.loaded = True
        roots.append(n)
        for s in img.snapshots:
            n = Node(L1_ROOT, root, len(roots))
            n.label = f"Snapshot {s.id_str} '{s.name}' L1 table"
            n.snapshot = s
            n.table_offset = s.l1_table_offset
            roots.append(n)
        n = Node(RT_ROOT, root, len(roots))
        n.label = "Refcount table"
        n.table_offset = img.header.refcount_table_offset
        n.raw = img.refcount_table
        n.loaded = True
        roots.append(n)
        root.kids = dict(enumerate(roots))
        root.cand = np.arange(len(roots), dtype=np.int64)
        root.count = len(roots)

    # -- loading -----------------------------------------------------------------------
    def _load(self, node: Node) -> None:
        """Read the container's own table (once) and choose the children shown."""
        if node.cand is not None:
            return
        img = self._img
        try:
            if not node.loaded:
                self._read_table(node)
        except Qcow2Error as e:
            node.error = str(e)
            node.raw = np.zeros(0, dtype=np.uint64)
        node.loaded = True
        raw = node.raw if node.raw is not None else np.zeros(0, dtype=np.uint64)
        if node.kind in (L1_ROOT, L1E, RT_ROOT) and self._allocated_only:
            mask = raw != 0
            if node.kind == L1_ROOT:
                mask = (raw & np.uint64(C.L1E_OFFSET_MASK)) != 0
            if node.bitmap is not None:
                mask |= node.bitmap != 0
            node.cand = np.flatnonzero(mask)
        elif node.kind == RTE and self._allocated_only:
            node.cand = np.flatnonzero(raw != 0)
        else:
            node.cand = np.arange(len(raw), dtype=np.int64)
        if node.kind == L1E and img is not None and node.raw is not None and len(node.raw):
            node.types = C.decode_l2_types(node.raw, node.bitmap, img.has_data_file)
        node.span = paging_span(len(node.cand))

    def _read_table(self, node: Node) -> None:
        img = self._img
        assert img is not None
        self.tables_read += 1
        if node.kind == L1_ROOT:
            t = img.snapshot_l1_table(node.snapshot)
            node.raw = t.entries
        elif node.kind == L1E:
            l2 = img.l2_table(node.table_offset, node.entry)
            node.raw, node.bitmap = l2.raw, l2.bitmap
        elif node.kind == RTE:
            blk = img.refcount_block(node.entry)
            node.raw = np.zeros(0, dtype=np.uint64) if blk is None else blk[1]

    def _container(self, parent: QModelIndex) -> Node | None:
        """The Node of the row ``parent`` (the root for an invalid index)."""
        if not parent.isValid():
            return self._root
        holder: Node = parent.internalPointer()
        pos = parent.row()
        kid = holder.kids.get(pos)
        if kid is not None:
            return kid
        if holder.span:
            kid = holder.kids[pos] = holder.page(pos)
            return kid
        kind = CHILD_KIND.get(holder.kind)
        if kind not in (L1E, RTE):
            return None
        self._load(holder)
        entry = int(holder.cand[pos])
        raw = int(holder.raw[entry])
        kid = Node(kind, holder, pos, entry)
        kid.table_offset = raw & (C.L1E_OFFSET_MASK if kind == L1E else C.REFT_OFFSET_MASK)
        if not kid.table_offset:
            kid.cand = np.zeros(0, dtype=np.int64)
            kid.loaded = True
        holder.kids[pos] = kid
        return kid

    def _has_kids(self, node: Node) -> bool:
        if node.kind == ROOT:
            return True
        if node.kind in (L1_ROOT, RT_ROOT):
            return node.cand is None or len(node.cand) > 0
        return bool(node.table_offset) and (node.cand is None or len(node.cand) > 0)

    # -- Qt API ---------------------------------------------------------------------------
    def index(self, row: int, column: int, parent=QModelIndex()) -> QModelIndex:
        if column < 0 or column >= len(COLUMNS) or row < 0:
            return QModelIndex()
        node = self._container(parent)
        if node is None or row >= node.count:
            return QModelIndex()
        return self.createIndex(row, column, node)

    def parent(self, index=QModelIndex()) -> QModelIndex:  # type: ignore[override]
        if not index.isValid():
            return QModelIndex()
        holder: Node = index.internalPointer()
        if holder is self._root or holder.parent is None:
            return QModelIndex()
        return self.createIndex(holder.pos, 0, holder.parent)

    def rowCount(self, parent=QModelIndex()) -> int:
        if parent.isValid() and parent.column() != 0:
            return 0
        node = self._container(parent)
        return 0 if node is None else node.count

    def columnCount(self, parent=QModelIndex()) -> int:
        return len(COLUMNS)

    def hasChildren(self, parent=QModelIndex()) -> bool:
        if not parent.isValid():
            return True
        if parent.column() != 0:
            return False
        holder: Node = parent.internalPointer()
        if holder.span:
            return True     # a page
        if holder.kind in (L1E, RTE):
            return False    # L2 entries and refcounts are leaves
        kid = holder.kids.get(parent.row())
        if kid is not None or holder.kind == ROOT:
            return kid is not None and self._has_kids(kid)
        # an L1 or refcount table entry: asked for every row on expand, so answered
        # from the raw entry without making a Node for it
        raw = int(holder.raw[int(holder.cand[parent.row()])])
        return bool(raw & (C.L1E_OFFSET_MASK if holder.kind == L1_ROOT else C.REFT_OFFSET_MASK))

    def canFetchMore(self, parent=QModelIndex()) -> bool:
        if parent.isValid() and parent.column() != 0:
            return False
        node = self._container(parent)
        if node is None or node.kind == ROOT or not self._has_kids(node):
            return False
        if node.cand is None:
            return True
        return node.count < node.total and (not self._paced or node.count == 0)

    def fetchMore(self, parent=QModelIndex()) -> None:
        node = self._container(parent)
        if node is None or node.kind == ROOT:
            return
        self._load(node)
        self._fetch_to(node, parent, node.count + BATCH)

    def _fetch_to(self, node: Node, parent: QModelIndex, upto: int) -> None:
        assert node.cand is not None
        upto = min(upto, node.total)
        if upto <= node.count:
            return
        self._wanted.discard(node)
        self.beginInsertRows(parent, node.count, upto - 1)
        node.count = upto
        self.endInsertRows()

    def _want_more(self, holder: Node) -> None:
        if holder not in self._wanted:
            self._wanted.add(holder)
            self._fetch_timer.start()

    def _fetch_wanted(self) -> None:
        for node in list(self._wanted):
            self._wanted.discard(node)
            if node.parent is not None:
                self._fetch_to(node, self.createIndex(node.pos, 0, node.parent),
                               node.count + BATCH)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole \
                and 0 <= section < len(COLUMNS):
            return COLUMNS[section]
        return None

    def flags(self, index):
        # a constant: the view asks for every row on expand, enum arithmetic is slow
        return _ROW_FLAGS if index.isValid() else _NO_FLAGS

    def data(self, index: QModelIndex | QPersistentModelIndex, role=_DISPLAY):
        if role not in _ROLES or not index.isValid():
            return None     # the delegate asks ~10 roles a cell: answer the rest fast
        holder: Node = index.internalPointer()
        row, col = index.row(), index.column()
        if holder.kind == ROOT:
            return self._root_data(holder.kids[row], col, role)
        if holder.cand is None or row >= holder.total:
            return None
        if role in _ROW_ROLES:
            cached = holder.rows.get(row)
            if cached is None:
                cached = holder.rows[row] = (self._page_row(holder, row) if holder.span
                                             else self._row(holder, row))
                if self._paced and row >= holder.count - BATCH // 4 \
                        and holder.count < holder.total:
                    self._want_more(holder)
            texts, brushes, problems = cached
            if role == _DISPLAY:
                return texts[col]
            if role == _FOREGROUND:
                return brushes[col]
            return problems if col == COL_PROBLEM else (texts[col] or None)
        if role == _ALIGN:
            return _ALIGN_RIGHT if col == COL_REFCOUNT else None
        if holder.span:
            return self._page_data(holder, row, role)
        entry = int(holder.cand[row])
        kind = CHILD_KIND[holder.kind]
        if role == EntryOffsetRole:
            return self._entry_offset(holder, kind, entry)
        if role == HostOffsetRole:
            return self._host_offset(holder, kind, entry)
        if role == GuestOffsetRole:
            return self._guest_offset(holder, kind, entry)
        if role == KindRole:
            return _KIND_NAMES[kind]
        return None

    def _row(self, holder: Node, row: int) -> tuple:
        """Texts, brushes and problem tooltip of one row, made once."""
        entry = int(holder.cand[row])
        kind = CHILD_KIND[holder.kind]
        texts = tuple(self._text(holder, kind, entry, col) for col in range(len(COLUMNS)))
        brushes = [None] * len(COLUMNS)
        if texts[COL_PROBLEM]:
            brushes[COL_PROBLEM] = _RED
        if kind == L2E and holder.types is not None \
                and holder.types[entry] == ClusterType.INVALID:
            brushes[COL_FLAGS] = _RED
        if int(holder.raw[entry]) == 0:
            brushes[COL_RAW] = _GREY
        problems = "\n".join(self._problems(holder, kind, entry)) if texts[COL_PROBLEM] else None
        return texts, tuple(brushes), problems

    def _root_data(self, node: Node, col: int, role: int):
        if role == Qt.DisplayRole:
            if col == COL_INDEX:
                return node.label
            if col == COL_GUEST:
                n = len(node.raw) if node.raw is not None else (
                    node.snapshot.l1_size if node.snapshot else 0)
                return f"{n:,} entr{'y' if n == 1 else 'ies'}"
            if col == COL_HOST:
                return f"{node.table_offset:#x}"
            if col == COL_PROBLEM:
                return node.error or ""
            return ""
        if role == Qt.ForegroundRole and col == COL_PROBLEM:
            return QBrush(PROBLEM_COLOR)
        if role == Qt.ToolTipRole and col == COL_PROBLEM:
            return node.error
        if role == EntryOffsetRole:
            return node.table_offset
        if role == HostOffsetRole:
            return node.table_offset
        if role == KindRole:
            return _KIND_NAMES[node.kind]
        return None

    # -- navigation ----------------------------------------------------------------------
    def root_index(self, kind: str = "l1_table", snapshot: str | None = None) -> QModelIndex:
        for pos, node in self._root.kids.items():
            if kind == "refcount_table" and node.kind == RT_ROOT:
                return self.createIndex(pos, 0, self._root)
            if kind == "l1_table" and node.kind == L1_ROOT:
                s = node.snapshot
                if (snapshot is None and s is None) or (
                        s is not None and snapshot in (s.id_str, s.name)):
                    return self.createIndex(pos, 0, self._root)
        return QModelIndex()

    def _child_index(self, parent: QModelIndex, entry: int) -> QModelIndex:
        """Fetch as far as needed and return the row of table entry ``entry``."""
        node = self._container(parent)
        if node is None:
            return QModelIndex()
        self._load(node)
        pos = self._pos_of(node, entry)
        if pos < 0:
            return QModelIndex()
        while node.span:        # down through the pages that hold it
            page, pos = divmod(pos, node.span)
            if page >= node.count:
                self._fetch_to(node, parent, page + 1 + BATCH // 4)
            parent = self.index(page, 0, parent)
            node = self._container(parent)
        if pos >= node.count:
            self._fetch_to(node, parent, pos + 1 + BATCH // 4)
        return self.index(pos, 0, parent)

    def index_for_guest(self, guest_offset: int, snapshot: str | None = None) -> QModelIndex:
        """The L2 entry mapping ``guest_offset`` (or its L1 entry when it has no L2 table)."""
        img = self._img
        if img is None or guest_offset < 0 or guest_offset >= max(img.virtual_size, 1):
            return QModelIndex()
        cidx = guest_offset // self._cs
        l1i, l2i = divmod(cidx, img.l2_size)
        root = self.root_index("l1_table", snapshot)
        if not root.isValid():
            return QModelIndex()
        l1 = self._child_index(root, l1i)
        if not l1.isValid():
            return root
        l2 = self._child_index(l1, l2i)
        return l2 if l2.isValid() else l1

    def index_for_entry_offset(self, offset: int) -> QModelIndex:
        """The row whose entry bytes are at file offset ``offset`` (L1, L2, refcount)."""
        img = self._img
        if img is None:
            return QModelIndex()
        cs = self._cs
        for pos, node in list(self._root.kids.items()):
            root = self.createIndex(pos, 0, self._root)
            self._load(node)
            raw = node.raw
            n = 0 if raw is None else len(raw)
            if node.table_offset <= offset < node.table_offset + 8 * n:
                return self._child_index(root, (offset - node.table_offset) // 8)
            # an entry inside one of this root's child tables?
            cluster_start = offset - offset % cs
            if node.kind == L1_ROOT:
                hits = np.flatnonzero((raw & np.uint64(C.L1E_OFFSET_MASK))
                                      == np.uint64(cluster_start)) if n else []
                for l1i in hits:
                    l1 = self._child_index(root, int(l1i))
                    if l1.isValid():
                        idx = self._child_index(
                            l1, (offset - cluster_start) // img.header.l2_entry_size)
                        return idx if idx.isValid() else l1
            elif node.kind == RT_ROOT and n:
                hits = np.flatnonzero((raw & np.uint64(C.REFT_OFFSET_MASK))
                                      == np.uint64(cluster_start))
                for rti in hits:
                    rte = self._child_index(root, int(rti))
                    if rte.isValid():
                        bits = img.header.refcount_bits
                        idx = self._child_index(rte, (offset - cluster_start) * 8 // bits)
                        return idx if idx.isValid() else rte
        return QModelIndex()

    def index_for_table(self, host_offset: int) -> QModelIndex:
        """The row of the table that lives at ``host_offset`` (roots, L2 tables, blocks)."""
        cs = self._cs
        start = host_offset - host_offset % cs
        for pos, node in list(self._root.kids.items()):
            root = self.createIndex(pos, 0, self._root)
            self._load(node)
            n = 0 if node.raw is None else len(node.raw)
            if node.table_offset <= host_offset < node.table_offset + max(8 * n, 1):
                return root
            mask = C.L1E_OFFSET_MASK if node.kind == L1_ROOT else C.REFT_OFFSET_MASK
            if n:
                hits = np.flatnonzero((node.raw & np.uint64(mask)) == np.uint64(start))
                if len(hits):
                    idx = self._child_index(root, int(hits[0]))
                    if idx.isValid():
                        return idx
        return QModelIndex()
