"""The Files tree: disk -> partitions -> filesystem -> directories -> files.

:class:`FilesModel` is a lazy ``QAbstractItemModel`` over a
:class:`~.guest_files.GuestContents`: a directory's rows are made in batches by
``fetchMore`` (Qt's "Fetch More" pattern), so a 140k-entry filesystem costs what
is on screen.  :meth:`FilesModel.set_filter` finds a name anywhere in the tree
(typing ``fstab`` finds ``/etc/fstab``): it shows the matches with their
directories only.  :class:`FilesSortModel` sorts by the raw values.
"""

from __future__ import annotations

import datetime as _dt
import stat

from PySide6.QtCore import (QAbstractItemModel, QModelIndex, QObject, QSortFilterProxyModel,
                            Qt)

from ..guest.index import IndexedFile
from .units import count, hex_offset, human_size

BATCH = 1000                 # rows a directory shows per fetchMore
MAX_MATCHES = 2000           # filter results shown at most
SORT_ROLE = Qt.UserRole + 1
NODE_ROLE = Qt.UserRole + 2

COLUMNS = ("Name", "Size", "Type", "Details", "Modified", "Mode", "Guest offset")
(NAME, SIZE, TYPE, DETAILS, MTIME, MODE, OFFSET) = range(len(COLUMNS))

DISK, PART, FS, DIR, FILE, NOTE = range(6)


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
        self.matches = 0            # filter matches (may exceed what is shown)
        self.changes = None         # Changes shown instead of the tree (changed files)
        self._changed: dict[int, int] = {}      # file id -> bytes changed
        contents.reset.connect(self._rebuild)
        contents.ready.connect(self._rebuild)
        self._rebuild()

    # -- building the top of the tree ---------------------------------------------------
    def _rebuild(self) -> None:
        if self.changes is not None and self.contents.index is None:
            self.changes = None
            self._changed = {}
        self.beginResetModel()
        self.root = Node(None, DISK, "")
        self._fill(self.root, None)
        self.endResetModel()

    def _fill(self, root: Node, keep: dict | None) -> None:
        """Disk, partitions and filesystems (eager: a handful); with ``keep`` (a
        filter's result) only the branches that lead to a match."""
        c = self.contents
        idx = c.index
        if idx is None:
            text = {"building": "reading the guest disk…", "cancelled": "cancelled",
                    "failed": f"unreadable: {c.error}"}.get(c.state, "not read yet")
            root.add(Node(root, NOTE, text)).note = text
            return
        disk = idx.disk
        table = (disk.table.kind or "no partition table").upper() \
            if disk.table.kind else "no partition table"
        d = root.add(Node(root, DISK, f"Disk ({table})"))
        if disk.unreadable:
            d.add(Node(d, NOTE, disk.unreadable)).note = disk.unreadable
        for p in disk.problems[:50]:
            if keep is None:
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
            elif self.changes is not None:
                self._fill_flat(fn, vi, keep[vi])
            else:
                self._fill_filtered(fn, vi, keep[vi])

    def _fill_filtered(self, fs_node: Node, vi: int, entries: list[tuple[str, int]]) -> None:
        """The matched paths of one filesystem, with their directories, eagerly."""
        idx = self.contents.index
        dirs: dict[str, Node] = {"/": fs_node}
        fs_node.pending = []

        def dir_node(path: str) -> Node:
            n = dirs.get(path)
            if n is None:
                parent_path, name = path.rsplit("/", 1)
                parent = dir_node(parent_path or "/")
                f = next((x for x in idx.find(path) if x.volume is idx.volumes[vi]), None)
                n = parent.add(Node(parent, DIR, name, vi, f, path))
                n.pending = []
                dirs[path] = n
            return n

        for path, fid in sorted(entries):
            parent_path, name = path.rsplit("/", 1)
            parent = dir_node(parent_path or "/")
            f = idx.files[fid]
            if path in dirs:
                continue
            kind = DIR if f.info.type == "dir" else FILE
            n = parent.add(Node(parent, kind, name, vi, f, path))
            if kind == DIR:
                n.pending = []
                dirs[path] = n

    def _fill_flat(self, fs_node: Node, vi: int, entries: list[tuple[str, int]]) -> None:
        """Changed files: one row per file, its whole path as its name, most bytes first."""
        files = self.contents.index.files
        fs_node.pending = []
        for path, fid in sorted(entries, key=lambda e: (-self._changed.get(e[1], 0), e[0])):
            fs_node.add(Node(fs_node, FILE, path, vi, files[fid], path))

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
        """Show only names containing ``text`` (a path, with '/': the whole path),
        with their directories; empty shows everything."""
        text = text.strip()
        self.filter_text = text
        self.changes = None
        self._changed = {}
        c = self.contents
        if not text or c.built is None:
            self.matches = 0
            self._rebuild()
            return
        low = text.lower()
        keep: dict[int, list[tuple[str, int]]] = {}
        n = 0
        if "/" in low:
            hits = ((vi, fid, path) for _nm, vi, fid, path in c.built.listing.names
                    if low in path.lower())
        else:
            hits = ((vi, fid, path) for nm, vi, fid, path in c.built.listing.names
                    if low in nm)
        for vi, fid, path in hits:
            n += 1
            if n <= MAX_MATCHES:
                keep.setdefault(vi, []).append((path, fid))
        self.matches = n
        self.beginResetModel()
        self.root = Node(None, DISK, "")
        self._fill(self.root, keep)
        self.endResetModel()

    # -- lazy directories --------------------------------------------------------------
    def _listing(self, node: Node) -> list[tuple[str, int]]:
        b = self.contents.built
        if b is None or node.vol < 0:
            return []
        return b.listing.children[node.vol].get(node.path, [])

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
            node.pending = list(self._listing(node))
        if not node.pending:
            return
        batch, node.pending = node.pending[:BATCH], node.pending[BATCH:]
        files = self.contents.index.files
        first = len(node.children)
        self.beginInsertRows(parent, first, first + len(batch) - 1)
        base = node.path.rstrip("/")
        for name, fid in batch:
            f = files[fid]
            kind = DIR if f.info.type == "dir" else FILE
            node.add(Node(node, kind, name, node.vol, f, f"{base}/{name}"))
        self.endInsertRows()

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
        node = self.node(parent)
        if not (0 <= row < len(node.children) and 0 <= column < len(COLUMNS)):
            return QModelIndex()
        return self.createIndex(row, column, node.children[row])

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
        if not index.isValid():
            return Qt.NoItemFlags
        return Qt.ItemIsEnabled | Qt.ItemIsSelectable

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if not index.isValid():
            return None
        node = index.internalPointer()
        col = index.column()
        if role == Qt.DisplayRole:
            return self._text(node, col)
        if role == SORT_ROLE:
            return self._sort_key(node, col)
        if role == NODE_ROLE:
            return node
        if role == Qt.ToolTipRole:
            return node.note or self._details(node) or None
        if role == Qt.ForegroundRole and node.kind == NOTE:
            from PySide6.QtGui import QColor
            return QColor("#b71c1c" if node.note else "#78909c")
        if role == Qt.TextAlignmentRole and col in (SIZE, OFFSET):
            return int(Qt.AlignRight | Qt.AlignVCenter)
        return None

    # -- cell texts ----------------------------------------------------------------------
    def _gv(self, node: Node):
        idx = self.contents.index
        return idx.volumes[node.vol] if idx is not None and node.vol >= 0 else None

    def _text(self, node: Node, col: int) -> str:
        if col == NAME:
            return ("⚠ " + node.name) if node.kind == NOTE and node.note else node.name
        if node.kind == DISK:
            idx = self.contents.index
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
        idx = self.contents.index
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

    def _sort_key(self, node: Node, col: int):
        # partitions and notes keep disk order whatever the column
        if node.kind not in (DIR, FILE) or node.file is None:
            return (0, node.row)
        info = node.file.info
        group = 1 if node.kind == DIR else 2          # directories first
        if col == NAME:
            return (group, node.name.lower(), node.name)
        if col == SIZE:
            return (group, info.size)
        if col == TYPE:
            return (group, info.type)
        if col == MTIME:
            return (group, info.mtime or 0.0)
        if col == MODE:
            return (group, info.mode or 0)
        if col == DETAILS:
            return (group, self._changed.get(node.file.id, 0), len(info.extents))
        return (group, info.extents[0][1] if info.extents else -1)

    # -- for the views -----------------------------------------------------------------
    def find_path(self, vol: int, path: str) -> QModelIndex:
        """The index of ``path`` on volume ``vol``, fetching directories on the way."""
        fs_node = None
        for d in self.root.children:
            for pn in d.children:
                if pn.vol == vol:
                    fs_node = next((c for c in pn.children if c.kind == FS), None)
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


class FilesSortModel(QSortFilterProxyModel):
    """Sorts the Files tree by raw values (sizes as numbers, directories first)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)

    def lessThan(self, left: QModelIndex, right: QModelIndex) -> bool:  # noqa: N802
        a = left.data(SORT_ROLE)
        b = right.data(SORT_ROLE)
        try:
            return a < b
        except TypeError:
            return str(a) < str(b)
