"""The Files tree: disk -> partitions -> filesystem -> directories -> files.

:class:`FilesModel` is a lazy ``QAbstractItemModel`` over a
:class:`~.guest_files.GuestContents`: a directory's rows are made in batches by
``fetchMore`` (Qt's "Fetch More" pattern), so a 140k-entry filesystem costs what
is on screen.  While the index builds, the tree shows the guest's first look
(``GuestContents.preview``: partitions, filesystems, root directories; a deeper
directory says it is being read) and is rebuilt when the index is in.
:meth:`FilesModel.set_filter` finds a name anywhere in the tree
(typing ``fstab`` finds ``/etc/fstab``) and lists the matches with their paths.
:meth:`FilesModel.sort` sorts by the raw values, directories first, here rather
than in a proxy: a QSortFilterProxyModel maps every row again on each filter
keystroke (half the keystroke's time) and sorts only the rows already fetched.
"""

from __future__ import annotations

import datetime as _dt
import stat

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QObject, Qt
from PySide6.QtGui import QColor

from ..guest.index import IndexedFile
from .units import count, hex_offset, human_size

BATCH = 1000                 # rows a directory shows per fetchMore
DISPLAY, TOOLTIP, FOREGROUND, ALIGNMENT = (int(r) for r in (
    Qt.DisplayRole, Qt.ToolTipRole, Qt.ForegroundRole, Qt.TextAlignmentRole))
RIGHT = int(Qt.AlignRight | Qt.AlignVCenter)
PROBLEM_COLOUR, NOTE_COLOUR = QColor("#b71c1c"), QColor("#78909c")
MAX_MATCHES = 1000           # filter results shown at most
SORT_ROLE = int(Qt.UserRole) + 1
NODE_ROLE = int(Qt.UserRole) + 2

COLUMNS = ("Name", "Size", "Type", "Details", "Modified", "Mode", "Guest offset")
(NAME, SIZE, TYPE, DETAILS, MTIME, MODE, OFFSET) = range(len(COLUMNS))
NCOLS = len(COLUMNS)

DISK, PART, FS, DIR, FILE, NOTE = range(6)
READING = "reading…"         # under a directory the first look did not list
FLAGS = Qt.ItemIsEnabled | Qt.ItemIsSelectable      # (an enum OR per call is slow)


class Node:
    """One row of the tree."""

    __slots__ = ("parent", "row", "kind", "name", "vol", "file", "children", "pending",
                 "path", "note")

    def __init__(self, parent: "Node | None", kind: int, name: str, vol: int = -1,
                 file: IndexedFile | None = None, path: str = "") -> None:
        self.parent = parent
        self.row = 0
        self.kind = kind
        self.name = name
        self.vol = vol
        self.file = file
        self.path = path
        self.note = ""
        self.children: list[Node] = []
        self.pending: list[tuple[str, int]] | None = None   # None: not listed yet

    def add(self, child: "Node") -> "Node":
        child.row = len(self.children)
        self.children.append(child)
        return child


def _mode_text(mode: int | None) -> str:
    return "" if mode is None else stat.filemode(mode)


def _mtime_text(t: float | None) -> str:
    if t is None:
        return ""
    try:
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return ""


class FilesModel(QAbstractItemModel):
    """The guest disk's tree (see the module docstring)."""

    def __init__(self, contents, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.contents = contents
        self.root = Node(None, DISK, "")
        self.filter_text = ""
        self.matches = 0            # filter matches shown
        self.more = False           # more matches than MAX_MATCHES
        self.changes = None         # Changes shown instead of the tree (changed files)
        self._sort: tuple[int, Qt.SortOrder] | None = None      # column, order
        self._changed: dict[int, int] = {}      # file id -> bytes changed
        self.previewing = False     # the rows are the first look's, the index is not in
        contents.reset.connect(self._rebuild)
        contents.ready.connect(self._rebuild)
        contents.previewed.connect(self._rebuild)
        contents.dirs.read.connect(self._dir_read)
        self._rebuild()

    # -- building the top of the tree ---------------------------------------------------
    def _rebuild(self) -> None:
        if self.changes is not None and self.contents.index is None:
            self.changes = None
            self._changed = {}
        self.beginResetModel()
        self.root = Node(None, DISK, "")
        if self.filter_text and self.contents.building:
            self._fill_waiting(self.root)
        else:
            self._fill(self.root, None)
        self.endResetModel()

    def _fill_waiting(self, root: Node) -> None:
        """A filter typed while the index builds: it says so (no empty result; the
        matches follow when it is in)."""
        self.previewing = False
        root.add(Node(root, NOTE, "building the index…"))

    def _fill(self, root: Node, keep: dict | None) -> None:
        """Disk, partitions and filesystems (eager: a handful); with ``keep`` (a
        filter's result) only the branches that lead to a match."""
        c = self.contents
        tree = c.tree
        idx = tree.index if tree is not None else None
        self.previewing = idx is not None and c.built is None
        if idx is None:
            text = {"building": "reading the guest disk…", "cancelled": "cancelled",
                    "failed": f"unreadable: {c.error}"}.get(c.state, "not read yet")
            root.add(Node(root, NOTE, text)).note = text if c.state == "failed" else ""
            return
        disk = idx.disk
        table = (disk.table.kind or "no partition table").upper() \
            if disk.table.kind else "no partition table"
        d = root.add(Node(root, DISK, f"Disk ({table})"))
        if self.previewing:
            d.add(Node(d, NOTE, "reading the guest's files…"))
        if disk.unreadable:
            d.add(Node(d, NOTE, disk.unreadable)).note = disk.unreadable
        for p in disk.problems[:50]:
            if keep is None and not self.previewing:    # the first look checks little
                d.add(Node(d, NOTE, p)).note = p
        for vi, gv in enumerate(idx.volumes):
            if keep is not None and vi not in keep:
                continue
            part = gv.partition
            label = f"LV {gv.lv_name}" if gv.lv_name else (
                f"Partition {part.index}" if part.index else "Whole disk")
            if part.name:
                label += f": {part.name}"
            pn = d.add(Node(d, PART, label, vi))
            fs = gv.filesystem
            if fs is None:
                what = gv.probe.type if gv.probe is not None else "no filesystem found"
                if keep is None:
                    pn.add(Node(pn, NOTE, what)).note = what
                continue
            name = fs.type + (f" “{fs.label}”" if fs.label else "")
            fn = pn.add(Node(pn, FS, name, vi, path="/"))
            if not fs.readable:
                # "unreadable: ..." is a problem; "files of swap are not listed" is not
                text = fs.reason or "unreadable"
                note = fn.add(Node(fn, NOTE, text))
                note.note = text if text.startswith("unreadable") else ""
            if keep is None:
                fn.pending = None
            else:
                self._fill_flat(fn, vi, keep[vi])

    def _fill_flat(self, fs_node: Node, vi: int, entries: list[tuple[str, int]]) -> None:
        """Filter results and changed files: one row per file, its whole path as its
        name (no deep tree to open), by path or most bytes changed first."""
        files = self.contents.tree.index.files
        fs_node.pending = []
        for path, fid in sorted(entries, key=lambda e: (-self._changed.get(e[1], 0), e[0])):
            fs_node.add(Node(fs_node, FILE, path, vi, files[fid], path))
        self._sort_children(fs_node)

    # -- changed files -----------------------------------------------------------------
    def set_changes(self, changes) -> None:
        """Show only the files ``changes`` (a guest.changed.Changes) lists, with the
        bytes changed; None shows the tree again."""
        self.changes = changes
        self._changed = {}
        idx = self.contents.index
        if changes is None or idx is None:
            self.changes = None
            self._rebuild()
            return
        keep: dict[int, list[tuple[str, int]]] = {}
        vols = {id(gv): i for i, gv in enumerate(idx.volumes)}
        for cf in changes.files:
            for f in idx.find(cf.path, cf.partition)[:1]:
                self._changed[f.id] = cf.bytes_changed
                keep.setdefault(vols[id(f.volume)], []).append((cf.path, f.id))
        self.matches = len(changes.files)
        self.beginResetModel()
        self.root = Node(None, DISK, "")
        self._fill(self.root, keep)
        if changes.other_bytes_changed and self.root.children:
            d = self.root.children[0]
            text = f"{human_size(changes.other_bytes_changed)} changed outside any file"
            d.add(Node(d, NOTE, text)).note = ""
        self.endResetModel()

    def bytes_changed(self, node: Node) -> int | None:
        """Bytes of ``node``'s file that changed (changed-files view), else None."""
        return None if node.file is None else self._changed.get(node.file.id)

    # -- filter ------------------------------------------------------------------------
    def set_filter(self, text: str) -> None:
        """Show only the files whose name contains ``text`` (with a '/': whose path
        does), one row each with its whole path; empty shows the tree again."""
        text = text.strip()
        self.filter_text = text
        self.changes = None
        self._changed = {}
        c = self.contents
        if not text or c.built is None:
            self.matches, self.more = 0, False
            self._rebuild()
            return
        listing = c.built.listing
        hits, more = listing.search(text.lower(), MAX_MATCHES)
        keep: dict[int, list[tuple[str, int]]] = {}
        for k in hits:
            vi, fid, path = listing.names[k]
            keep.setdefault(vi, []).append((path, fid))
        self.matches = len(hits)
        self.more = more
        self.beginResetModel()
        self.root = Node(None, DISK, "")
        self._fill(self.root, keep)
        self.endResetModel()

    # -- lazy directories --------------------------------------------------------------
    def _listing(self, node: Node) -> list[tuple[str, int]]:
        b = self.contents.tree
        if b is None or node.vol < 0:
            return []
        got = b.listing.children[node.vol].get(node.path)
        if got is None and self.previewing and node.kind == DIR:
            return [(READING, -1)]      # not listed by the first look: said, not empty
        return got or []

    def canFetchMore(self, parent: QModelIndex) -> bool:  # noqa: N802 - Qt API
        node = self.node(parent)
        if node.kind not in (FS, DIR):
            return False
        if node.pending is None:
            return bool(self._listing(node))
        return bool(node.pending)

    def fetchMore(self, parent: QModelIndex) -> None:  # noqa: N802 - Qt API
        node = self.node(parent)
        if node.kind not in (FS, DIR):
            return
        if node.pending is None:
            listing = self._listing(node)
            if listing and listing[0][1] < 0:
                node.pending = []
                self.beginInsertRows(parent, 0, 0)
                note = node.add(Node(node, NOTE, listing[0][0]))
                note.note = "" if note.name == READING else note.name
                self.endInsertRows()
                if note.name == READING:        # read it now, not when the index is in
                    self.contents.read_dir(node.vol, node.path)
                return
            node.pending = self._sorted_entries(list(listing))
        self._add_batch(parent, node)

    def _add_batch(self, parent: QModelIndex, node: Node) -> None:
        """The next BATCH of ``node``'s pending entries as rows."""
        if not node.pending:
            return
        batch, node.pending = node.pending[:BATCH], node.pending[BATCH:]
        files = self.contents.tree.index.files
        first = len(node.children)
        self.beginInsertRows(parent, first, first + len(batch) - 1)
        base = node.path.rstrip("/")
        for name, fid in batch:
            f = files[fid]
            kind = DIR if f.info.type == "dir" else FILE
            node.add(Node(node, kind, name, node.vol, f, f"{base}/{name}"))
        self.endInsertRows()

    def _dir_read(self, vol: int, path: str) -> None:
        """A directory of the first look was read on demand: its rows replace the
        'reading…' row (added before that row goes, so the directory stays open)."""
        node = self._fs_node(vol)
        for name in [p for p in path.split("/") if p]:
            if node is None:
                return
            node = next((c for c in node.children if c.kind == DIR and c.name == name), None)
        if node is None or [(c.kind, c.name) for c in node.children] != [(NOTE, READING)]:
            return          # not shown (filtered, collapsed away, rebuilt) or shown already
        parent = self.createIndex(node.row, 0, node)
        listing = self._listing(node)
        note = node.children[0]
        if listing and listing[0][1] < 0:           # unreadable: the row says why
            note.name = note.note = listing[0][0]
            i = self.createIndex(0, 0, note)
            self.dataChanged.emit(i, i.siblingAtColumn(NCOLS - 1))
            return
        node.pending = self._sorted_entries(list(listing))
        self._add_batch(parent, node)
        self.beginRemoveRows(parent, 0, 0)
        del node.children[0]
        for i, c in enumerate(node.children):
            c.row = i
        self.endRemoveRows()

    def hasChildren(self, parent: QModelIndex = QModelIndex()) -> bool:  # noqa: N802
        node = self.node(parent)
        if node.children:
            return True
        if node.kind in (FS, DIR):
            return bool(node.pending) if node.pending is not None \
                else bool(self._listing(node))
        return False

    # -- QAbstractItemModel --------------------------------------------------------------
    def node(self, index: QModelIndex) -> Node:
        return index.internalPointer() if index.isValid() else self.root

    def index(self, row: int, column: int, parent: QModelIndex = QModelIndex()
              ) -> QModelIndex:
        children = (parent.internalPointer() if parent.isValid() else self.root).children
        if 0 <= row < len(children) and 0 <= column < NCOLS:
            return self.createIndex(row, column, children[row])
        return QModelIndex()

    def parent(self, index: QModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore
        if not index.isValid():
            return QModelIndex()
        p = index.internalPointer().parent
        if p is None or p is self.root:
            return QModelIndex()
        return self.createIndex(p.row, 0, p)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self.node(parent).children)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return len(COLUMNS)

    def headerData(self, section: int, orientation, role: int = Qt.DisplayRole):  # noqa: N802
        if orientation == Qt.Horizontal and role == Qt.DisplayRole \
                and 0 <= section < len(COLUMNS):
            return COLUMNS[section]
        return None

    def flags(self, index: QModelIndex):
        return FLAGS if index.isValid() else Qt.NoItemFlags

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        # roles compared as plain ints: an enum comparison per call was half the paint
        if not index.isValid():
            return None
        node = index.internalPointer()
        col = index.column()
        role = int(role)
        if role == DISPLAY:
            return self._text(node, col)
        if role == SORT_ROLE:
            return self._sort_key(node, col)
        if role == NODE_ROLE:
            return node
        if role == TOOLTIP:     # a note's text may be cut off in a narrow pane
            return node.name if node.kind == NOTE else self._details(node) or None
        if role == FOREGROUND and node.kind == NOTE:
            return PROBLEM_COLOUR if node.note else NOTE_COLOUR
        if role == ALIGNMENT and col in (SIZE, OFFSET):
            return RIGHT
        return None

    # -- cell texts ----------------------------------------------------------------------
    def _tree_index(self):
        t = self.contents.tree
        return t.index if t is not None else None

    def _gv(self, node: Node):
        idx = self._tree_index()
        return idx.volumes[node.vol] if idx is not None and node.vol >= 0 else None

    def _text(self, node: Node, col: int) -> str:
        if col == NAME:
            return ("⚠ " + node.name) if node.kind == NOTE and node.note else node.name
        if node.kind == DISK:
            idx = self._tree_index()
            return {SIZE: human_size(idx.disk.size) if idx else "",
                    DETAILS: self._details(node)}.get(col, "")
        if node.kind in (PART, FS):
            gv = self._gv(node)
            if gv is None:
                return ""
            if col == SIZE:
                return human_size(gv.volume.size)
            if col == TYPE:
                return gv.partition.type if node.kind == PART else gv.filesystem.type
            if col == DETAILS:
                return self._details(node)
            if col == OFFSET:
                return hex_offset(gv.volume.start)
            return ""
        f = node.file
        if f is None:
            return ""
        info = f.info
        if col == SIZE:
            return "" if info.type == "dir" else human_size(info.size)
        if col == TYPE:
            return info.type
        if col == MTIME:
            return _mtime_text(info.mtime)
        if col == MODE:
            return _mode_text(info.mode)
        if col == DETAILS:
            return self._details(node)
        if col == OFFSET:
            return hex_offset(info.extents[0][1]) if info.extents else ""
        return ""

    def _details(self, node: Node) -> str:
        idx = self._tree_index()
        if idx is None:
            return ""
        if node.kind == DISK:
            t = idx.disk.table
            return f"{(t.kind or 'no table').upper()}, {count(len(idx.volumes), 'volume')}"
        gv = self._gv(node)
        if node.kind == PART and gv is not None:
            p = gv.partition
            bits = [f"start {human_size(p.start)} (LBA {p.start // 512})", f"type {p.type}"]
            if p.name:
                bits.append(f"name {p.name}")
            return ", ".join(bits)
        if node.kind == FS and gv is not None:
            fs = gv.filesystem
            b = self.contents.built
            bits = [f"label {fs.label}" if fs.label else "no label"]
            if fs.uuid:
                bits.append(f"UUID {fs.uuid}")
            bits.append(f"{human_size(fs.block_size)} blocks")
            if b is not None:
                bits.append(f"{human_size(b.listing.used[node.vol])} used, "
                            f"{human_size(b.listing.free[node.vol])} free")
            return ", ".join(bits)
        f = node.file
        if f is None:
            return ""
        info = f.info
        bits = []
        if f.id in self._changed:
            bits.append(f"{human_size(self._changed[f.id])} changed")
        if info.type == "symlink" and info.target:
            bits.append(f"→ {info.target}")
        if info.inline:
            bits.append("inline")
        elif info.type != "dir":
            bits.append(count(len(info.extents), "extent"))
        if info.sparse:
            bits.append("sparse")
        if len(f.names) > 1:
            bits.append(f"{len(f.names)} names")
        return ", ".join(bits)

    def _key(self, kind: int, name: str, f: IndexedFile | None, col: int) -> tuple:
        """(group, value) a row sorts by in column ``col``: directories before files."""
        if kind not in (DIR, FILE) or f is None:
            return (0, 0)
        info = f.info
        group = 1 if kind == DIR else 2
        if col == NAME:
            return (group, (name.lower(), name))
        if col == SIZE:
            return (group, info.size)
        if col == TYPE:
            return (group, info.type)
        if col == MTIME:
            return (group, info.mtime or 0.0)
        if col == MODE:
            return (group, info.mode or 0)
        if col == DETAILS:
            return (group, (self._changed.get(f.id, 0), len(info.extents)))
        return (group, info.extents[0][1] if info.extents else -1)

    def _sort_key(self, node: Node, col: int):
        return self._key(node.kind, node.name, node.file, col)

    def _ordered(self, items: list, key) -> list:
        """``items`` by the current sort (stable; groups ascending either way)."""
        col, order = self._sort
        items.sort(key=lambda x: key(x, col)[1], reverse=order == Qt.DescendingOrder)
        items.sort(key=lambda x: key(x, col)[0])
        return items

    def _sorted_entries(self, entries: list[tuple[str, int]]) -> list[tuple[str, int]]:
        idx = self._tree_index()
        if self._sort is None or idx is None:
            return entries
        files = idx.files
        return self._ordered(entries, lambda e, col: self._key(
            DIR if files[e[1]].info.type == "dir" else FILE, e[0], files[e[1]], col))

    def _sort_children(self, node: Node) -> None:
        if self._sort is not None:
            if any(c.kind in (DIR, FILE) for c in node.children):
                self._ordered(node.children, self._sort_key)
                for i, c in enumerate(node.children):
                    c.row = i
            if node.pending:
                node.pending = self._sorted_entries(node.pending)
        for c in node.children:
            self._sort_children(c)

    def sort(self, column: int, order: Qt.SortOrder = Qt.AscendingOrder) -> None:
        """Sort every directory (rows fetched and still to fetch) by ``column``; -1
        keeps the filesystem's order."""
        if column < 0 or column >= NCOLS:
            self._sort = None       # rows fetched from now on: in the filesystem's order
            return
        self._sort = (column, order)
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        nodes = [(i.internalPointer(), i.column()) for i in old]
        self._sort_children(self.root)
        self.changePersistentIndexList(old, [self.createIndex(n.row, c, n) for n, c in nodes])
        self.layoutChanged.emit()

    # -- for the views -----------------------------------------------------------------
    def _fs_node(self, vol: int) -> Node | None:
        """The filesystem row of volume ``vol``."""
        fs_node = None
        for d in self.root.children:
            for pn in d.children:
                if pn.vol == vol:
                    fs_node = next((c for c in pn.children if c.kind == FS), None)
        return fs_node

    def find_path(self, vol: int, path: str) -> QModelIndex:
        """The index of ``path`` on volume ``vol``, fetching directories on the way."""
        fs_node = self._fs_node(vol)
        if fs_node is None:
            return QModelIndex()
        node = fs_node
        for name in [p for p in path.split("/") if p]:
            parent = self.createIndex(node.row, 0, node)
            nxt = None
            while nxt is None:
                nxt = next((c for c in node.children if c.name == name), None)
                if nxt is None:
                    if not self.canFetchMore(parent):
                        return QModelIndex()
                    self.fetchMore(parent)
            node = nxt
        return self.createIndex(node.row, 0, node)
