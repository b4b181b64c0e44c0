"""One image in the main window: banner, header panel, table tree, pictures and hex.

The tab composes views over what its :class:`~qcow2view.model.document.ImageDocument`
owns (the models and the two hex documents) and wires them together: the
``showFileBytes`` / ``showGuestOffset`` / ``clusterSelected`` signals say what the
user asked to see; :meth:`register_action` lets a view take over a window action
(save, revert, find, goto, edit) for this tab, and :attr:`undo_stack` is the one
the window's Undo/Redo act on.
"""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QByteArray, Qt, QTimer, Signal
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QSplitter, QTabWidget, QVBoxLayout,
                               QWidget)

from ..model.document import ImageDocument
from ..model.operations import OperationJob
from .headerpanel import HeaderPanel
from .hexeditor import FILE_VIEW, GUEST_VIEW, HexEditor
from .problemspanel import ProblemsPanel
from .pyqtgraph_loader import loader as pyqtgraph_loader
from .tablepanel import TablePanel


class Banner(QLabel):
    """A coloured strip naming what is wrong with the image (hidden when nothing is)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextFormat(Qt.RichText)
        self.setObjectName("problemBanner")
        self.hide()

    def set_problems(self, lines: list[str], severe: bool, hint: str = "") -> None:
        if not lines:
            self.hide()
            return
        bg, fg = ("#ffebee", "#b71c1c") if severe else ("#fff8e1", "#8d6e00")
        self.setStyleSheet(f"QLabel#problemBanner {{ background: {bg}; color: {fg}; "
                           f"border: 1px solid {fg}; border-radius: 3px; padding: 6px; }}")
        head = "⚠ This image has problems" if severe else "⚠ Note"
        items = "".join(f"<li>{_esc(t)}</li>" for t in lines[:6])
        more = f"<li>… and {len(lines) - 6} more (see Problems)</li>" if len(lines) > 6 else ""
        self.setText(f"<b>{head}</b> (opened read-only, see the Problems tab):"
                     f"<ul style='margin:0'>{items}{more}</ul>"
                     + (f"<div style='margin-top:2px'>{_esc(hint)}</div>" if hint else ""))
        self.show()


class _Box(QWidget):
    """A tab page whose content is added later (it says so meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        note = QLabel("Building maps…", self)
        note.setAlignment(Qt.AlignCenter)
        note.setStyleSheet("color: #607d8b")
        lay.addWidget(note)


def _esc(t: str) -> str:
    return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ImageTab(QWidget):
    showFileBytes = Signal(object, object)   # offset, length in the image file
    showGuestOffset = Signal(object)         # guest byte offset
    clusterSelected = Signal(object)         # host cluster index
    titleChanged = Signal()
    actionsChanged = Signal()

    def __init__(self, document: ImageDocument, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.header_model = document.header_model
        self.tree_model = document.tree_model
        self.allocation = document.allocation
        self.problems_model = document.problems_model
        self._handlers: dict[str, tuple[Callable[[], None], bool]] = {}
        self.undo_stack: QUndoStack | None = None
        self._restored_layout = False
        self.repair_job: OperationJob | None = None     # Image > Repair writing to this file

        self.banner = Banner()
        self.header_panel = HeaderPanel(self.header_model)
        self.table_panel = TablePanel(self.tree_model)
        # the pictures need pyqtgraph, which takes a while to import (on this thread, in
        # slices): it is imported once the maps are in, when there is something to draw
        # and the analysis no longer competes for the interpreter
        self._heatmap = None
        self._mapping = None
        self._marked_cluster: int | None = None    # go_to_guest before the map was built
        self._map_box = _Box()
        self._mapping_box = _Box()
        self.problems = ProblemsPanel(self.problems_model)
        self.views = QTabWidget()
        self.views.setObjectName("views")
        self.views.setDocumentMode(True)
        self.views.addTab(self._map_box, "Map")
        self.views.addTab(self._mapping_box, "Mapping")
        self.views.addTab(self.problems, "Problems")
        self.hex_guest = HexEditor(document.hex_guest, self)
        self.hex_file = HexEditor(document.hex_file, self, file_view=True)
        self.views.addTab(self.hex_guest, GUEST_VIEW)
        self.views.addTab(self.hex_file, FILE_VIEW)
        from .filespanel import attach_files_pane     # the guest's files (issue 12)
        self.files_panel = attach_files_pane(self)

        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.setObjectName("imageSplitter")
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(self.header_panel)
        self.splitter.addWidget(self.table_panel)
        self.splitter.addWidget(self.views)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 4)
        self.splitter.setStretchFactor(2, 4)
        self._sized = False
        self._closed = False        # close_document() was called: build nothing more
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        top = QHBoxLayout()
        top.addWidget(self.banner, 1)
        lay.addLayout(top)
        lay.addWidget(self.splitter, 1)

        # navigation between the panels
        self.header_panel.showFileBytes.connect(self.showFileBytes)
        self.table_panel.showFileBytes.connect(self.showFileBytes)
        self.table_panel.showGuestOffset.connect(self.showGuestOffset)
        self.problems.entryRequested.connect(self._go_entry)
        self.problems.clusterRequested.connect(
            lambda c: self._cluster_clicked(c, "kind"))

        d = document
        d.loaded.connect(self._reload)
        d.changed.connect(self._reload)
        d.mapsReady.connect(self._maps_ready)
        d.analysisCancelled.connect(self._schedule_pictures)
        d.writableChanged.connect(lambda _w: self.titleChanged.emit())
        if d.image is not None:
            self._reload()
        if d.analysis is not None:
            self._maps_ready()
        self._wire_hex_editors()

    def showEvent(self, ev) -> None:
        super().showEvent(ev)
        if not self._sized:
            self._sized = True
            if not self._restored_layout:
                # proportions: QSplitter spreads its real width by these weights
                # header fields with offset and raw bytes in view; tree; pictures
                self.splitter.setSizes([3400, 2800, 3800])

    def restore_layout(self, state: QByteArray) -> None:
        """The panes' proportions as the user left them (QSplitter.saveState)."""
        self._restored_layout = self.splitter.restoreState(state)

    def _build_pictures(self, wait: bool = True) -> None:
        """Build the pyqtgraph views: the heatmap, then (next tick) the mapping plot,
        so neither construction holds the event loop for long.  Without ``wait``,
        pyqtgraph is imported in slices first and this is called again when it is in."""
        if self._heatmap is not None and self._mapping is not None:
            return
        if self._closed and not wait:
            return      # a tick queued before the close: no picture (nor its worker) now
        imports = pyqtgraph_loader()
        if not imports.ready:
            if not wait:
                imports.finished.connect(self._pictures_importable)
                imports.start()
                return
            imports.finish()
        if self._heatmap is None:
            from .heatmap import HeatmapView
            self._heatmap = HeatmapView(self.allocation)
            self._replace_page(self._map_box, self._heatmap, "Map")
            self._heatmap.clusterClicked.connect(self._cluster_clicked)
            if self._marked_cluster is not None:
                self._heatmap.select_cluster(self._marked_cluster)
            self._heatmap.redraw()
            if not wait:
                QTimer.singleShot(0, self, lambda: self._build_pictures(False))
                return
        if self._mapping is None:
            from .mappingplot import MappingPlot
            self._mapping = MappingPlot(self.allocation)
            self._replace_page(self._mapping_box, self._mapping, "Mapping")

    def _pictures_importable(self) -> None:
        self._build_pictures(False)

    def _replace_page(self, box: QWidget, widget: QWidget, name: str) -> None:
        """The real page takes its placeholder's place (and stays current if it was)."""
        i = self.views.indexOf(box)
        current = self.views.currentIndex() == i
        self.views.insertTab(i, widget, name)
        self.views.removeTab(self.views.indexOf(box))
        box.deleteLater()
        if current:
            self.views.setCurrentWidget(widget)

    @property
    def heatmap(self):
        self._build_pictures()
        return self._heatmap

    @property
    def mapping(self):
        self._build_pictures()
        return self._mapping

    # -- the hex editors -----------------------------------------------------------------------
    def _wire_hex_editors(self) -> None:
        """The window's actions (save, revert, find, goto, edit, history), Undo/Redo and
        the other panels' navigation requests act on the hex editors of this tab."""
        guest, filev, gdoc = self.hex_guest, self.hex_file, self.document.hex_guest
        # the window's toolbar has Enable editing, Save, Undo and Redo for this tab: one
        # button each (two "Enable editing" in one window read as two different things),
        # and the offset mode stays in view on the narrow pane
        for a in (guest.act_edit, guest.act_save, guest.act_undo, guest.act_redo):
            guest.toolbar.removeAction(a)
        self.register_action("save", guest.save, False)
        self.register_action("revert", guest.revert, False)
        self.register_action("find", lambda: self._current_editor().open_find(), True)
        self.register_action("goto", lambda: self._current_editor().open_goto(), True)
        self.register_action("edit", self._toggle_editing, True)
        self.register_action("history", guest.show_history, True)
        self.undo_stack = gdoc.undo_stack
        self._sync_edit_actions()
        gdoc.modifiedChanged.connect(self._sync_edit_actions)
        gdoc.editableChanged.connect(self._editable_changed)
        self.showFileBytes.connect(self._show_file_bytes)
        self.showGuestOffset.connect(self._show_guest_offset)
        self.document.closed.connect(guest.shutdown)
        self.document.closed.connect(filev.shutdown)

    def _current_editor(self) -> HexEditor:
        """The hex editor on show (the guest one unless the file one is), made current."""
        ed = self.hex_file if self.views.currentWidget() is self.hex_file else self.hex_guest
        self.views.setCurrentWidget(ed)
        return ed

    def _toggle_editing(self) -> None:
        self.views.setCurrentWidget(self.hex_guest)
        self.hex_guest.set_editing(not self.document.hex_guest.editable)

    def _sync_edit_actions(self, *_) -> None:
        gdoc = self.document.hex_guest
        pending = gdoc.modified and gdoc.editable
        self.set_action_enabled("save", pending)
        self.set_action_enabled("revert", pending)
        self.hex_guest.act_revert.setVisible(gdoc.editable)  # a lone greyed Revert says nothing

    def _editable_changed(self, _editable: bool) -> None:
        self._sync_edit_actions()
        self.titleChanged.emit()

    def _show_file_bytes(self, offset, length) -> None:
        self.views.setCurrentWidget(self.hex_file)
        self.hex_file.view.select_range(int(offset), int(length))

    def _show_guest_offset(self, offset) -> None:
        self.views.setCurrentWidget(self.hex_guest)
        self.hex_guest.view.goto(int(offset), focus=False)

    def track_repair(self, job: OperationJob) -> None:
        """Hold ``job`` as :attr:`repair_job` until it is done, failed or cancelled."""
        self.repair_job = job
        job.done.connect(self._repair_over)
        job.failed.connect(self._repair_over)
        job.cancelled.connect(self._repair_over)
        self.actionsChanged.emit()

    def _repair_over(self, *_) -> None:
        self.repair_job = None
        self.actionsChanged.emit()

    def confirm_close(self) -> bool:
        """Ask Save / Discard / Cancel when edits are pending; True to go on."""
        return self.hex_guest.confirm_close()

    # -- the picture area's pages -------------------------------------------------------------
    def view(self, name: str) -> QWidget | None:
        for i in range(self.views.count()):
            if self.views.tabText(i) == name:
                return self.views.widget(i)
        return None

    def show_view(self, name: str) -> bool:
        w = self.view(name)
        if w is not None:
            self.views.setCurrentWidget(w)
        return w is not None

    #: the picture area's tabs by the names the command line uses (``--view``)
    PANES = ("map", "mapping", "problems", "hex", "hex-file", "files")

    def pane(self, key: str) -> QWidget | None:
        """The page of the picture area called ``key`` in :data:`PANES` (None if absent)."""
        if key not in self.PANES:
            raise ValueError(f"no such view: {key!r}")
        page = {"map": self._heatmap or self._map_box,
                "mapping": self._mapping or self._mapping_box,
                "problems": self.problems,
                "files": self.files_panel,
                "hex": self.hex_guest,
                "hex-file": self.hex_file}[key]
        return page if page is not None and self.views.indexOf(page) >= 0 else None

    def show_pane(self, key: str) -> bool:
        page = self.pane(key)
        if page is not None:
            self.views.setCurrentWidget(page)
        return page is not None

    def go_to_guest(self, offset: int) -> None:
        """Show guest byte ``offset`` everywhere: the table entry that maps it, the guest
        hex view (made current) and, when this image holds it, its host cluster on the map."""
        self.table_panel.go_to_guest(offset)
        self.showGuestOffset.emit(offset)
        guest = self.document.hex_guest
        m = guest.mapping_at(offset)
        if m is not None and m.depth == 0 and m.host_offset is not None:
            self._marked_cluster = m.host_offset // guest.cluster_size
            if self._heatmap is not None:
                self._heatmap.select_cluster(self._marked_cluster)

    def register_action(self, name: str, handler: Callable[[], None], enabled: bool = True
                        ) -> None:
        """Handle window action ``name`` (save, revert, find, goto, edit) for this tab."""
        self._handlers[name] = (handler, enabled)
        self.actionsChanged.emit()

    def set_action_enabled(self, name: str, enabled: bool) -> None:
        if name in self._handlers:
            self._handlers[name] = (self._handlers[name][0], enabled)
            self.actionsChanged.emit()

    def action_enabled(self, name: str) -> bool:
        if name == "goto":
            return True
        h = self._handlers.get(name)
        return bool(h and h[1])

    def trigger(self, name: str) -> bool:
        h = self._handlers.get(name)
        if h is not None and h[1]:
            h[0]()
            return True
        if name == "goto":
            self.table_panel.focus_jump()
            return True
        return False

    # -- titles ------------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return self.document.name

    @property
    def mode_text(self) -> str:
        return "editing" if self.document.writable else "read-only"

    # -- document events ---------------------------------------------------------------------
    def _reload(self) -> None:
        img = self.document.image
        if img is not None:
            self.table_panel.set_extent(img.virtual_size, img.file.size, img.cluster_size,
                                        img.l2_size)
        self._update_banner()
        self.titleChanged.emit()

    def _maps_ready(self) -> None:
        self._update_banner()
        self._schedule_pictures()

    def _schedule_pictures(self) -> None:
        if self._heatmap is None or self._mapping is None:
            QTimer.singleShot(0, self, lambda: self._build_pictures(False))

    def _update_banner(self) -> None:
        d = self.document
        lines = d.problems()
        c = d.check_result
        img = d.image
        severe = bool(img is not None and img.corrupt) or bool(c is not None and c.corruptions) \
            or any("NOT FOUND" in t or "not found" in t for t in lines)
        hint = ""
        if c is not None and (c.corruptions or c.leaks):
            # what to do about it, and that it is the user's call (the image stays as it is)
            hint = ("Image ▸ Repair All… fixes the refcounts and frees leaked clusters "
                    "(as qemu-img check -r all), after asking." if c.corruptions else
                    "Leaked clusters waste space but do no harm to data. Image ▸ Repair "
                    "Leaks… frees them (as qemu-img check -r leaks), after asking.")
        self.banner.set_problems(lines, severe, hint)
        i = self.views.indexOf(self.problems)
        n = self.problems_model.rowCount()
        self.views.setTabText(i, f"Problems ({n})" if n else "Problems")

    # -- navigation --------------------------------------------------------------------------------
    def _go_entry(self, entry_offset: int) -> None:
        self.table_panel.go_to_entry(entry_offset)
        self.showFileBytes.emit(entry_offset, 8)

    def _cluster_clicked(self, cluster: int, mode: str) -> None:
        if mode in ("guest", "fs"):        # a guest cluster (the guest map's entry)
            gm = self.allocation.guest_map
            off = cluster * gm.cluster_size
            self.table_panel.go_to_guest(off)
            self.showGuestOffset.emit(off)
            return
        hm = self.allocation.host_map
        if hm is None:
            return
        cs = hm.cluster_size
        self.clusterSelected.emit(cluster)
        self.showFileBytes.emit(cluster * cs, cs)
        for o in self.allocation.owners(cluster):
            if o.entry_offset is not None and self.table_panel.go_to_entry(o.entry_offset):
                return
        self.table_panel.go_to_table(cluster * cs)

    @property
    def ready(self) -> bool:
        """Maps built (or failed) and the pictures drawn."""
        d = self.document
        return (d.analysis is not None and not d.busy and self._heatmap is not None
                and self._mapping is not None and self._heatmap.ready)

    def close_document(self) -> None:
        self._closed = True
        if self._heatmap is not None:
            self._heatmap.shut()
        self.document.close()
