"""The Files pane: the guest disk's partitions, filesystems and files.

A tree over :class:`~qcow2view.model.guest_model.FilesModel` with a name filter,
the index's progress and Cancel, and a one-line summary of the selection
("12 KiB in 3 extents, 2 host clusters, 1 shared with snapshot s1, 1 from
backing file base.qcow2") whose clusters light up on the map.  Context actions:
Show in hex, Save a copy as…, Copy path.  :func:`attach_files_pane` adds it to
an :class:`~.imagetab.ImageTab` and wires it to the map and the hex view.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QItemSelectionModel, QModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QMenu, QProgressBar, QPushButton, QSizePolicy, QTreeView,
                               QVBoxLayout, QWidget)

from ..model.guest_files import GuestContents, Summary
from ..model.guest_names import (byte_namer, cluster_namer, file_at, fs_classes,
                                 guest_rows, leak_names)
from ..model.guest_model import (DETAILS, DIR, FILE, FS, MODE, MTIME, NAME, NODE_ROLE,
                                 OFFSET, PART, SIZE, TYPE, FilesModel, Node)
from .filestrip import FileStrip

FILES_VIEW = "Files"


class FilesPanel(QWidget):
    """The tree, its filter and the selection's summary."""

    showInHex = Signal(object)              # guest offset
    highlight = Signal(object)              # Summary, or None to clear
    message = Signal(str)

    #: tests replace this: (suggested file name) -> a path to save to, or "" for cancelled
    ask_save_path = None

    def __init__(self, contents: GuestContents, parent: QWidget | None = None, *,
                 read_when_shown: bool = True) -> None:
        super().__init__(parent)
        self.contents = contents
        self.read_when_shown = read_when_shown
        self.model = FilesModel(contents, self)
        self.summary: Summary | None = None
        self.map_layer = None               # the map's highlight layer, once used
        self.partition_marks = None         # partition starts on the map's guest views

        bar = self._make_bar()
        self._make_tree()

        self.summary_label = QLabel(" ")
        self.summary_label.setObjectName("filesSummary")
        self.summary_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.summary_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.summary_label.setWordWrap(True)      # a narrow pane: two lines, not cut off
        self.summary_label.setStyleSheet("color: #263238; padding: 2px")

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(bar)
        lay.addWidget(self.tree, 1)
        self.strip = FileStrip()
        lay.addWidget(self.strip)
        lay.addWidget(self.summary_label)

        contents.progress.connect(self._progress)
        contents.busyChanged.connect(lambda _b: self._sync_state())
        contents.ready.connect(self._ready)
        contents.previewed.connect(self._previewed)
        contents.changesReady.connect(self._changes_ready)
        # the first look's rows give way to the index's: what was open stays open
        self._kept: tuple[list[tuple[int, str]], tuple[int, str] | None] | None = None
        self.model.modelAboutToBeReset.connect(self._keep_view)
        self._fill_choices()
        self._sync_state()

    def _make_bar(self) -> QHBoxLayout:
        """Filter, Show (all / changed files), match count, progress, Cancel, Read."""
        contents = self.contents
        self.filter = QLineEdit()
        self.filter.setObjectName("filesFilter")
        self.filter.setPlaceholderText("Find a name (e.g. fstab)")
        self.filter.setToolTip("Finds a name anywhere in the tree; with a '/', a part of "
                               "the path (/etc/ho)")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(lambda _t: self._filter_timer.start())
        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(0)       # coalesce a burst of keys, no delay
        self._filter_timer.timeout.connect(self.apply_filter)
        self.matches = QLabel()
        self.matches.setStyleSheet("color: #546e7a")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(160)
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop reading the guest's files")
        self.cancel_button.clicked.connect(contents.cancel)
        self.read_button = QPushButton("Read files")
        self.read_button.setToolTip("Read the partitions, filesystems and files of the guest disk")
        self.read_button.clicked.connect(contents.rebuild)
        self.show_what = QComboBox()
        self.show_what.setObjectName("filesShow")
        self.show_what.setToolTip("All files, or only the files whose bytes differ from the "
                                  "backing file or a snapshot, most bytes changed first")
        # "Changed vs backing file very-long-name.qcow2" must not squeeze the filter
        self.show_what.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.show_what.setMinimumContentsLength(12)
        self.show_what.activated.connect(self._show_what)
        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        bar.addWidget(self.filter, 2)
        bar.addWidget(self.show_what)
        bar.addWidget(self.matches)
        bar.addWidget(self.progress)
        bar.addWidget(self.cancel_button)
        bar.addWidget(self.read_button)
        return bar

    def _make_tree(self) -> None:
        self.tree = QTreeView()
        self.tree.setObjectName("filesTree")
        self.tree.setModel(self.model)
        self.tree.setUniformRowHeights(True)
        self.tree.setSortingEnabled(True)
        self.tree.sortByColumn(-1, Qt.AscendingOrder)       # table order until asked
        self.tree.setAlternatingRowColors(True)
        self.tree.setContextMenuPolicy(Qt.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._menu)
        self.tree.selectionModel().currentChanged.connect(self._current_changed)
        self.tree.activated.connect(self._activated)
        h = self.tree.header()
        h.setStretchLastSection(False)
        # a narrow pane scrolls sideways rather than squeezing the names to "…"
        for col, width in ((NAME, 230), (SIZE, 72), (TYPE, 90), (DETAILS, 230), (MTIME, 120),
                           (MODE, 90), (OFFSET, 90)):
            h.setSectionResizeMode(col, QHeaderView.Interactive)
            h.resizeSection(col, width)
        h.setMinimumSectionSize(40)

    # -- state -------------------------------------------------------------------------
    def _sync_state(self) -> None:
        c = self.contents
        busy = c.busy
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.read_button.setVisible(c.state in ("idle", "cancelled", "failed"))
        self.read_button.setText("Read again" if c.state != "idle" else "Read files")
        self.show_what.setEnabled(c.state == "ready" and not c.comparing)
        if busy:
            self.progress.setRange(0, 0)

    def _progress(self, _task: str, done: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(done, max(1, total)))

    def _fill_choices(self) -> None:
        self.show_what.clear()
        self.show_what.addItem("All files", "all")
        for label, snap in self.contents.compare_choices():
            self.show_what.addItem(f"Changed vs {label}", snap)
        self.show_what.setVisible(self.show_what.count() > 1)

    def _show_what(self, i: int) -> None:
        if i <= 0:
            self.model.set_changes(None)
            self.matches.setText("")
            self.expand_top()
            return
        self.filter.blockSignals(True)
        self.filter.clear()
        self.filter.blockSignals(False)
        self.matches.setText("comparing…")
        self.contents.find_changes(self.show_what.itemData(i))

    def show_changes(self, snapshot: str | None = None) -> None:
        """Changed files against the backing chain (or ``snapshot``)."""
        i = next((j for j in range(1, self.show_what.count())
                  if self.show_what.itemData(j) == snapshot), -1)
        if i > 0:
            self.show_what.setCurrentIndex(i)
            self._show_what(i)

    def _changes_ready(self, changes) -> None:
        if isinstance(changes, str):
            self.matches.setText(changes)
            return
        if self.show_what.currentIndex() <= 0:
            return          # the user went back to all files meanwhile
        self.tree.header().setSortIndicator(-1, Qt.AscendingOrder)   # most bytes first
        self.model.set_changes(changes)
        self.matches.setText(f"{len(changes.files):,} files changed")
        self.expand_top()
        first = self._first_file()
        if first.isValid():
            self.tree.selectionModel().setCurrentIndex(
                first, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)

    def _previewed(self) -> None:
        if not self.filter.text().strip():
            self.expand_top()

    def _keep_view(self) -> None:
        """Before the first look's rows go: the directories open and the current row."""
        if not self.model.previewing:
            return
        opened = []
        stack = [self.model.root]
        while stack:
            node = stack.pop()
            for c in node.children:
                if c.kind == DIR:       # deeper ones too: read on demand meanwhile
                    if self.tree.isExpanded(self._index_of(c)):
                        opened.append((c.vol, c.path))
                        stack.append(c)
                elif c.kind != FILE and c.children:
                    stack.append(c)
        cur = self.current_node()
        self._kept = (opened, (cur.vol, cur.path) if cur is not None
                      and cur.kind in (DIR, FILE) else None)

    def _index_of(self, node: Node) -> QModelIndex:
        return self.model.createIndex(node.row, 0, node)

    def _restore_view(self) -> None:
        kept, self._kept = self._kept, None
        if kept is None or self.contents.index is None:
            return
        opened, current = kept
        for vol, path in opened:
            i = self.model.find_path(vol, path)
            if i.isValid():
                self.tree.expand(i)
        if current is not None:
            i = self.model.find_path(*current)
            if i.isValid():
                self.tree.selectionModel().setCurrentIndex(
                    i, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)

    def _ready(self) -> None:
        self._fill_choices()
        self._sync_state()
        self.strip.set_layout(*self.contents.layout())
        if self.filter.text().strip():
            self._kept = None
            self.apply_filter()
        else:
            self.expand_top()
            self._restore_view()

    def expand_top(self) -> None:
        """Disk, partitions and filesystems open: the tree's first screen says what
        the disk holds."""
        p = self.model
        for r in range(p.rowCount()):
            disk = p.index(r, 0)
            self.tree.expand(disk)
            for i in range(p.rowCount(disk)):
                part = p.index(i, 0, disk)
                self.tree.expand(part)
                for j in range(p.rowCount(part)):
                    self.tree.expand(p.index(j, 0, part))

    def showEvent(self, ev) -> None:  # noqa: N802
        super().showEvent(ev)
        if self.read_when_shown:
            self.contents.ensure()

    # -- filter ------------------------------------------------------------------------
    def apply_filter(self) -> None:
        text = self.filter.text()
        if self.show_what.currentIndex() > 0:
            self.show_what.setCurrentIndex(0)
        self.model.set_filter(text)
        m = self.model.matches
        if text.strip() and self.contents.built is None:
            self.matches.setText("building index…" if self.contents.building else "")
        elif text.strip():
            self.matches.setText(f"first {m:,} shown" if self.model.more else f"{m:,} found")
            self.expand_top()
            first = self._first_file()
            if first.isValid():
                self.tree.selectionModel().setCurrentIndex(
                    first, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
                self.tree.scrollTo(first)
        else:
            self.matches.setText("")
            self.expand_top()

    def _first_file(self, parent: QModelIndex = QModelIndex()) -> QModelIndex:
        p = self.model
        for r in range(p.rowCount(parent)):
            i = p.index(r, 0, parent)
            if i.data(NODE_ROLE).kind == FILE:
                return i
            got = self._first_file(i)
            if got.isValid():
                return got
        return QModelIndex()

    # -- selection ---------------------------------------------------------------------
    def node(self, index: QModelIndex) -> Node | None:
        return index.data(NODE_ROLE) if index.isValid() else None

    def current_node(self) -> Node | None:
        return self.node(self.tree.currentIndex())

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        node = self.node(current)
        s = self.describe(node) if node is not None else None
        self.summary = s
        self.summary_label.setText(s.text if s is not None else " ")
        self.summary_label.setToolTip(s.text if s is not None else "")
        if s is None:
            self.strip.set_lit([], [])
        else:
            self.strip.set_lit(s.ranges, s.host_clusters)
        self.highlight.emit(s)

    def describe(self, node: Node) -> Summary | None:
        """Where the row's bytes live (a first look's row too: its extents are the
        index's, the maps say the rest)."""
        if self.contents.tree is None:
            return None
        if node.kind in (PART, FS):
            return self.contents.describe_volume(node.vol)
        if node.kind in (DIR, FILE) and node.file is not None:
            return self.contents.describe_file(node.file, node.path)
        return None

    def _activated(self, index: QModelIndex) -> None:
        node = self.node(index)
        if node is not None and node.kind == FILE:
            self.show_in_hex(node)

    # -- actions -----------------------------------------------------------------------
    def _menu(self, pos) -> None:
        node = self.node(self.tree.indexAt(pos))
        if node is None or node.file is None:
            return
        m = QMenu(self)
        a = m.addAction("Show in hex", lambda: self.show_in_hex(node))
        a.setEnabled(bool(node.file.info.extents))
        if node.kind == FILE:
            a = m.addAction("Save a copy as…", lambda: self.save_copy(node))
            a.setEnabled(self.contents.built is not None)     # not from the first look
        m.addAction("Copy path", lambda: self.copy_path(node))
        m.popup(self.tree.viewport().mapToGlobal(pos))

    def show_in_hex(self, node: Node) -> bool:
        why = self.contents.edit_refusal(node.file)
        if why is not None and not node.file.info.extents:
            self.message.emit(why)
            return False
        self.showInHex.emit(node.file.info.extents[0][1])
        return True

    def save_copy(self, node: Node) -> str | None:
        ask = type(self).ask_save_path
        name = os.path.basename(node.path) or "file"
        path = ask(name) if ask is not None else QFileDialog.getSaveFileName(
            self, f"Save a copy of {node.path}", name)[0]
        if not path:
            return None
        try:
            data = self.contents.read_file(node.file)
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            self.message.emit(f"Could not save {node.path}: {e.strerror or e}")
            return None
        self.message.emit(f"Saved {node.path} ({len(data):,} bytes) to {path}")
        return path

    def copy_path(self, node: Node) -> None:
        QGuiApplication.clipboard().setText(node.path)

    def select_path(self, vol: int, path: str) -> bool:
        """Make ``path`` of volume ``vol`` current in the tree (fetching on the way)."""
        if self.filter.text():
            self.filter.clear()
            self.apply_filter()
        i = self.model.find_path(vol, path)
        if not i.isValid():
            return False
        self.tree.selectionModel().setCurrentIndex(
            i, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
        self.tree.scrollTo(i)
        return True


# -- in an image tab ---------------------------------------------------------------------------
def attach_files_pane(tab) -> FilesPanel:
    """Add the Files pane to ``tab`` and wire it: Show in hex, the map's highlight, Go to
    file (Ctrl+Shift+G), and the index built once the maps are in."""
    contents = tab.document.guest
    panel = FilesPanel(contents, tab, read_when_shown=False)
    tab.views.insertTab(tab.views.indexOf(tab.problems) + 1, panel, FILES_VIEW)
    panel.showInHex.connect(lambda off: show_guest_in_hex(tab, int(off)))
    panel.highlight.connect(lambda s: _highlight(tab, panel, s))
    panel.message.connect(lambda text: _say(tab, text))
    # read the files once the window has settled (maps in, pictures built): a build
    # running beside pyqtgraph's import and the map's construction held the event loop
    # up to 0.8 s (the GIL); Go to file and --goto-file start it at once
    settle = QTimer(panel)
    settle.setInterval(20)         # a few property reads: the walk starts soon after

    def settled() -> None:
        if tab.ready:
            settle.stop()
            contents.ensure()
    settle.timeout.connect(settled)
    settle.start()
    tab.allocation.set_namer(cluster_namer(contents))

    def fs_mode() -> None:      # the map's "By file system" colours, once both are in
        gm = tab.document.guest_map
        idx = contents.index
        tab.allocation.set_fs_classes(
            fs_classes(idx, gm) if idx is not None and gm is not None else None)
        if idx is None:
            return
        heatmap = tab.heatmap
        if panel.partition_marks is None or panel.partition_marks.view is not heatmap:
            from .maphighlight import PartitionMarks
            panel.partition_marks = PartitionMarks(heatmap)
        panel.partition_marks.set(contents.layout()[1])
        if heatmap.mode() == "fs":
            heatmap.redraw()
    contents.ready.connect(fs_mode)
    tab.document.mapsReady.connect(fs_mode)
    contents.ready.connect(lambda: tab.header_model.set_guest(guest_rows(contents)))
    tab.header_panel.rowClicked.connect(lambda name: _guest_row_clicked(tab, panel, name))
    hexed = tab.hex_guest
    hexed.inspector.set_namer(byte_namer(contents))
    hexed.view.set_tooltip(byte_namer(contents))     # fields and files named on hover
    tab.document.hex_guest.set_edit_guard(contents.edit_guard)
    contents.ready.connect(lambda: hexed.inspector.show_at(hexed.view))

    def ruler() -> None:        # the file-offset column, once the index knows files
        from .hexruler import FileRuler
        idx = contents.index
        hexed.view.set_ruler(FileRuler(file_at(contents)) if idx is not None and idx.files
                             else None)
    contents.ready.connect(ruler)

    def leaks() -> None:        # the Problems list says what a leaked cluster once held
        # (once the index is in: its worker has read the leaked clusters)
        if tab.document.check_result is not None and contents.index is not None:
            tab.problems_model.set_notes(leak_names(contents))
    contents.ready.connect(leaks)
    tab.document.mapsReady.connect(leaks)

    def goto_file() -> None:
        from .gotofile import open_goto_file
        open_goto_file(tab, contents)
    tab.register_action("goto-file", goto_file, True)
    return panel


def show_guest_in_hex(tab, offset: int) -> None:
    """The guest hex view current and focused, its caret on ``offset``."""
    tab.go_to_guest(offset)
    tab.show_pane("hex")
    hexed = tab.pane("hex")
    if hexed is not None:
        hexed.view.goto(offset, focus=True)
        hexed.view.setFocus()


def _guest_row_clicked(tab, panel: FilesPanel, name: str) -> None:
    """A partition of the header panel's Guest section: its filesystem in Files."""
    vol = panel.contents.volume_of_row(name)
    if vol is not None:
        tab.show_pane("files")
        panel.select_path(vol, "/")


def _say(tab, text: str) -> None:
    w = tab.window()
    sb = w.statusBar() if hasattr(w, "statusBar") else None
    if sb is not None:
        sb.showMessage(text, 10000)


def _highlight(tab, panel: FilesPanel, s: Summary | None) -> None:
    """Light the selection's clusters on the map (the map is built if it is not yet)."""
    layer = panel.map_layer
    if s is None or (not len(s.guest_clusters) and not len(s.host_clusters)):
        if layer is not None:
            layer.clear()
        return
    heatmap = tab.heatmap
    if layer is None or layer.view is not heatmap:
        from .maphighlight import MapHighlight
        layer = panel.map_layer = MapHighlight(heatmap)
    layer.set(s.guest_clusters, s.host_clusters)


def read_files_now(tab, timeout: float = 120.0) -> GuestContents:
    """Read the guest's files of ``tab`` and wait for them (``--view files``,
    ``--goto-file``, ``--screenshot``)."""
    import time

    from PySide6.QtCore import QCoreApplication
    contents = tab.document.guest
    contents.ensure()
    deadline = time.monotonic() + timeout
    while contents.building and time.monotonic() < deadline:
        contents.wait(100)
        QCoreApplication.processEvents()      # the worker's result is a queued signal
    return contents


def go_to_file_now(tab, text: str, timeout: float = 120.0) -> str | None:
    """``--goto-file``: read the guest's files (waiting for them), then put the hex caret
    on the first byte of ``text``'s file; the reason when there is no such file."""
    from .gotofile import resolve_one
    contents = read_files_now(tab, timeout)
    f, why = resolve_one(contents, text)
    if why is not None:
        return why
    why = contents.edit_refusal(f) if not f.info.extents else None
    if why is not None:
        return why
    panel = tab.pane("files")
    if panel is not None:
        panel.select_path(contents.index.volumes.index(f.volume), f.path)
    show_guest_in_hex(tab, f.info.extents[0][1])
    return None
