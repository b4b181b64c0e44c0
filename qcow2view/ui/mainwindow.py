"""The main window: image tabs, menus, status bar with progress and Cancel."""

from __future__ import annotations

import os

from PySide6.QtCore import QByteArray, QCoreApplication, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence, QUndoGroup
from PySide6.QtWidgets import (QFileDialog, QLabel, QMainWindow, QMessageBox, QProgressBar,
                               QPushButton, QStackedWidget, QTabWidget, QWidget)

from ..model import collector
from ..model.document import ImageDocument, open_error_text
from ..model.units import count
from . import dialogs
from .imagetab import ImageTab
from .settings import add_recent, clear_recent, recent_files, settings
from .startpage import StartPage

FILE_FILTER = "QCOW2 images (*.qcow2 *.qcow *.img);;All files (*)"


class MainWindow(QMainWindow):
    documentOpened = Signal(object)     # ImageTab
    documentClosed = Signal(str)        # path

    def __init__(self, *, edit: bool = False, remember: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        collector.install()           # cyclic garbage (closed tabs) freed on this thread
        self.remember = remember      # False: leave settings and recent files alone
        self.setObjectName("mainWindow")
        self.setWindowTitle("qcow2view")
        self.setAcceptDrops(True)
        self.open_for_editing = edit
        self.undo_group = QUndoGroup(self)

        self.start = StartPage()
        self.tabs = QTabWidget()
        self.tabs.setObjectName("documents")
        self.tabs.setTabsClosable(True)
        self.tabs.setMovable(True)
        self.tabs.setDocumentMode(True)
        self.tabs.tabCloseRequested.connect(self.close_tab)
        self.tabs.currentChanged.connect(self._current_changed)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.start)
        self.stack.addWidget(self.tabs)
        self.setCentralWidget(self.stack)

        self.start.openRequested.connect(self.open_dialog)
        self.start.newRequested.connect(self.new_image)
        self.start.demoRequested.connect(self.open_demo)
        self.start.recentRequested.connect(self.open_path)

        self._build_actions()
        self._build_status()
        self._refresh_recent()
        self._restore()
        self._update_state()

    # -- construction ------------------------------------------------------------------------
    def _act(self, text: str, slot=None, shortcut=None, tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setStatusTip(tip)
        if slot is not None:
            a.triggered.connect(slot)
        return a

    def _build_actions(self) -> None:
        K = QKeySequence.StandardKey
        self.act_new = self._act("&New image…", self.new_image, K.New,
                                 "Create a new QCOW2 image")
        self.act_open = self._act("&Open…", self.open_dialog, K.Open, "Open images")
        self.act_demo = self._act("Open &demo image", self.open_demo)
        self.act_save = self._act("&Save", lambda: self._trigger("save"), K.Save,
                                  "Write pending edits to the image")
        self.act_revert = self._act("Re&vert", lambda: self._trigger("revert"),
                                    tip="Forget pending edits")
        self.act_close = self._act("&Close", self.close_current, K.Close)
        self.act_quit = self._act("&Quit", self.close, K.Quit)
        self.act_quit.setMenuRole(QAction.QuitRole)
        self.act_undo = self.undo_group.createUndoAction(self, "&Undo")
        self.act_undo.setShortcut(QKeySequence(K.Undo))
        self.act_redo = self.undo_group.createRedoAction(self, "&Redo")
        self.act_redo.setShortcut(QKeySequence(K.Redo))
        self.act_history = self._act("Edit &history", lambda: self._trigger("history"),
                                     tip="The undo history of the hex editor")
        self.act_edit = self._act("Enable &editing", self._toggle_editing, "Ctrl+E",
                                  "Reopen the image for writing")
        self.act_edit.setCheckable(True)
        self.act_goto = self._act("&Go to…", lambda: self._trigger("goto"), "Ctrl+G",
                                  "Go to a guest offset")
        self.act_goto_file = self._act("Go to &file…", lambda: self._trigger("goto-file"),
                                       "Ctrl+Shift+G", "Go to a file of the guest by its path")
        self.act_find = self._act("&Find…", lambda: self._trigger("find"), K.Find)
        self.act_recheck = self._act("Re-run &check", self._recheck,
                                     tip="Build the maps and check the image again")
        self.act_repair_leaks = self._act(
            "Repair &Leaks…", lambda: self._repair(fix_all=False),
            tip="Free leaked clusters, as 'qemu-img check -r leaks' (asks first; writes "
                "to the image file)")
        self.act_repair_all = self._act(
            "Repair &All…", lambda: self._repair(fix_all=True),
            tip="Free leaked clusters and fix refcounts, as 'qemu-img check -r all' (asks "
                "first; writes to the image file)")
        self.act_about = self._act("&About qcow2view", self._about)
        self._build_menus()

    def _build_menus(self) -> None:
        """The menu bar and the main toolbar over the actions."""
        m = self.menuBar().addMenu("&File")
        m.addAction(self.act_new)
        m.addAction(self.act_open)
        self.recent_menu = m.addMenu("Open &recent")
        m.addAction(self.act_demo)
        m.addSeparator()
        m.addAction(self.act_save)
        m.addAction(self.act_revert)
        m.addSeparator()
        m.addAction(self.act_close)
        m.addAction(self.act_quit)
        self.file_menu = m
        m = self.menuBar().addMenu("&Edit")
        m.addAction(self.act_undo)
        m.addAction(self.act_redo)
        m.addAction(self.act_history)
        m.addSeparator()
        m.addAction(self.act_edit)
        m.addSeparator()
        m.addAction(self.act_goto)
        m.addAction(self.act_goto_file)
        m.addAction(self.act_find)
        self.edit_menu = m
        m = self.menuBar().addMenu("&Image")
        m.addAction(self.act_recheck)
        m.addSeparator()
        m.addAction(self.act_repair_leaks)
        m.addAction(self.act_repair_all)
        self.image_menu = m
        from .operations import install_operations     # Image > snapshot, resize, commit…
        install_operations(self)
        self.view_menu = self.menuBar().addMenu("&View")
        m = self.menuBar().addMenu("&Help")
        m.addAction(self.act_about)

        tb = self.addToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setMovable(False)
        for a in (self.act_open, self.act_new, self.act_save):
            tb.addAction(a)
        tb.addSeparator()
        for a in (self.act_undo, self.act_redo, self.act_edit):
            tb.addAction(a)
        self.toolbar = tb
        self.view_menu.addAction(tb.toggleViewAction())

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.status_label = QLabel()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop building maps / checking")
        self.cancel_button.clicked.connect(self._cancel)
        sb.addWidget(self.status_label, 1)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_button)
        self.progress.hide()
        self.cancel_button.hide()

    # -- settings --------------------------------------------------------------------------
    def _restore(self) -> None:
        if not self.remember:
            self.resize(1400, 860)
            self._splitter_state = None
            return
        s = settings()
        geo = s.value("geometry")
        if isinstance(geo, QByteArray) and not geo.isEmpty():
            self.restoreGeometry(geo)
        else:
            self.resize(1400, 860)
        state = s.value("windowState")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)
        split = s.value("imageSplitter")
        self._splitter_state = split if isinstance(split, QByteArray) else None

    def save_settings(self) -> None:
        if not self.remember:
            return
        s = settings()
        s.setValue("geometry", self.saveGeometry())
        s.setValue("windowState", self.saveState())
        tab = self.current_tab()
        if tab is not None:
            s.setValue("imageSplitter", tab.splitter.saveState())
        s.sync()

    def _refresh_recent(self) -> None:
        files = recent_files()
        self.start.set_recent(files)
        m = self.recent_menu
        m.clear()
        for i, p in enumerate(files):
            a = m.addAction(f"&{(i + 1) % 10} {os.path.basename(p)}")
            a.setToolTip(p)
            a.setData(p)
            a.triggered.connect(lambda _=False, p=p: self.open_path(p))
        if files:
            m.addSeparator()
            m.addAction("Clear list", self._clear_recent)
        m.setEnabled(bool(files))

    def _clear_recent(self) -> None:
        clear_recent()
        self._refresh_recent()

    # -- documents -------------------------------------------------------------------------
    def tabs_list(self) -> list[ImageTab]:
        return [self.tabs.widget(i) for i in range(self.tabs.count())]

    def current_tab(self) -> ImageTab | None:
        w = self.tabs.currentWidget()
        return w if isinstance(w, ImageTab) else None

    def open_path(self, path: str, *, writable: bool | None = None) -> ImageTab | None:
        """Open ``path`` in a tab (or show its tab); errors go to a dialog, None returned."""
        path = os.path.abspath(os.fspath(path))
        for tab in self.tabs_list():
            if tab.document.path == path:
                self.tabs.setCurrentWidget(tab)
                return tab
        doc = ImageDocument(path, writable=self.open_for_editing if writable is None
                            else writable, parent=self)
        try:
            doc.load_header()
        except Exception as e:   # noqa: BLE001 - every open failure is the user's to read
            doc.close()
            doc.deleteLater()
            dialogs.error(self, "Cannot open image", open_error_text(e))
            return None
        tab = ImageTab(doc)
        if self._splitter_state is not None:
            tab.restore_layout(self._splitter_state)
        tab.titleChanged.connect(self._update_state)
        tab.actionsChanged.connect(self._update_state)
        doc.progress.connect(lambda t, d, n, tab=tab: self._progress(tab, t, d, n))
        doc.busyChanged.connect(lambda b, tab=tab: self._busy(tab, b))
        doc.analysisCancelled.connect(lambda: self.status_label.setText("Cancelled"))
        doc.error.connect(lambda msg: self.statusBar().showMessage(msg, 8000))
        i = self.tabs.addTab(tab, doc.name)
        self.tabs.setTabToolTip(i, path)
        self.tabs.setCurrentIndex(i)
        self.stack.setCurrentWidget(self.tabs)
        if self.remember:
            add_recent(path)
            self._refresh_recent()
        doc.start_analysis()
        self.documentOpened.emit(tab)
        self._update_state()
        return tab

    def close_tab(self, index: int) -> None:
        tab = self.tabs.widget(index)
        if not isinstance(tab, ImageTab):
            return
        if tab.undo_stack is not None:
            if not tab.undo_stack.isClean() and not tab.confirm_close():
                return
            self.undo_group.removeStack(tab.undo_stack)
        job = tab.repair_job
        if job is not None and job.worker is not None:
            # a repair is writing: let it finish (it is short next to a check), then hand
            # its result over while the document is still open (it re-reads, says what
            # was fixed), so nothing arrives for a closed document later
            job.worker.wait()
            QCoreApplication.sendPostedEvents()
        self.tabs.removeTab(index)
        tab.close_document()
        path = tab.document.path
        tab.deleteLater()
        self.documentClosed.emit(path)
        if not self.tabs.count():
            self.stack.setCurrentWidget(self.start)
            self.status_label.setText("")
        self._update_state()

    def close_current(self) -> None:
        i = self.tabs.currentIndex()
        if i >= 0:
            self.close_tab(i)

    def close_all(self) -> None:
        while self.tabs.count():
            n = self.tabs.count()
            self.close_tab(n - 1)
            if self.tabs.count() == n:   # the user kept it
                return

    # -- actions -----------------------------------------------------------------------------
    def open_dialog(self) -> None:
        start = os.path.dirname(recent_files()[0]) if recent_files() else os.getcwd()
        paths, _ = QFileDialog.getOpenFileNames(self, "Open QCOW2 images", start, FILE_FILTER)
        for p in paths:
            self.open_path(p)

    def open_demo(self) -> ImageTab | None:
        from ..demo import demo_image_path
        try:
            path = demo_image_path()
        except Exception as e:   # noqa: BLE001 - making it needs qemu-img or disk space
            dialogs.error(self, "Demo image", f"Could not make the demo image: {e}")
            return None
        return self.open_path(os.fspath(path))

    def new_image(self) -> None:
        from .newimage import NewImageDialog
        dlg = NewImageDialog(self)
        dlg.created.connect(lambda p: self.open_path(os.fspath(p)))
        dlg.setAttribute(Qt.WA_DeleteOnClose)
        dlg.open()

    def _trigger(self, name: str) -> None:
        tab = self.current_tab()
        if tab is not None:
            tab.trigger(name)

    def _toggle_editing(self, on: bool) -> None:
        tab = self.current_tab()
        if tab is None:
            self.act_edit.setChecked(False)
            return
        if tab.trigger("edit"):
            self._update_state()
            return
        try:
            tab.document.reopen(writable=on)
        except Exception as e:   # noqa: BLE001
            dialogs.error(self, "Cannot enable editing", open_error_text(e))
        self._update_state()

    def _recheck(self) -> None:
        tab = self.current_tab()
        if tab is not None:
            tab.document.start_analysis()

    def _repair(self, *, fix_all: bool) -> None:
        """Image > Repair: the user confirms, then a second, writable handle repairs the
        file while the document stays read-only (see ui/repair.py)."""
        tab = self.current_tab()
        if tab is None or self._repairing(tab):
            return
        from .repair import repair_current
        job = repair_current(self, tab, fix_all=fix_all)
        if job is None or job.worker is None:
            return      # not confirmed, or refused (editing is on): nothing was written
        tab.track_repair(job)       # the tab says actionsChanged when it is over

    @staticmethod
    def _repairing(tab: ImageTab) -> bool:
        return tab.repair_job is not None

    def _cancel(self) -> None:
        tab = self.current_tab()
        if tab is not None:
            tab.document.cancel_analysis()

    def _about(self) -> None:
        from .. import __version__
        QMessageBox.about(self, "About qcow2view",
                          f"<b>qcow2view {__version__}</b><p>Look inside QCOW2 disk images "
                          "and edit them safely.</p>")

    # -- state -------------------------------------------------------------------------------
    def _current_changed(self, _i: int) -> None:
        tab = self.current_tab()
        if tab is not None and tab.undo_stack is not None:
            if tab.undo_stack not in self.undo_group.stacks():
                self.undo_group.addStack(tab.undo_stack)
            self.undo_group.setActiveStack(tab.undo_stack)
        else:
            self.undo_group.setActiveStack(None)
        self._sync_progress()
        self._update_state()

    def _update_state(self) -> None:
        tab = self.current_tab()
        if tab is None:
            self.setWindowTitle("qcow2view")
        else:
            i = self.tabs.indexOf(tab)
            self.tabs.setTabText(i, tab.title + ("" if not tab.document.writable else " ✎"))
            self.setWindowTitle(f"{tab.title} — {tab.mode_text} — qcow2view")
            if tab.undo_stack is not None and tab.undo_stack not in self.undo_group.stacks():
                self.undo_group.addStack(tab.undo_stack)
                self.undo_group.setActiveStack(tab.undo_stack)
        has = tab is not None
        for a in (self.act_close, self.act_goto, self.act_goto_file, self.act_recheck,
                  self.act_edit):
            a.setEnabled(has)
        self.act_edit.setChecked(bool(has and tab.document.writable))
        self.act_save.setEnabled(bool(has and tab.action_enabled("save")))
        self.act_revert.setEnabled(bool(has and tab.action_enabled("revert")))
        self.act_find.setEnabled(bool(has and tab.action_enabled("find")))
        # repair writes through its own handle: not while this one edits, not twice at once
        can_repair = bool(has and not tab.document.writable and not self._repairing(tab))
        for a in (self.act_repair_leaks, self.act_repair_all):
            a.setEnabled(can_repair)

    def _progress(self, tab: ImageTab, task: str, done: int, total: int) -> None:
        if tab is not self.current_tab():
            return
        self.status_label.setText(f"{tab.title}: {task}…")
        self.progress.setMaximum(max(total, 1) if total > 0 else 0)
        self.progress.setValue(min(done, max(total, 1)))

    def _busy(self, tab: ImageTab, busy: bool) -> None:
        if tab is self.current_tab():
            self._sync_progress()
        if not busy and tab is self.current_tab():
            c = tab.document.check_result
            text = f"{tab.title}: maps built"
            if c is not None:
                text += (f", check found {count(c.corruptions, 'corruption')}, "
                         f"{count(c.leaks, 'leak')}" if (c.corruptions or c.leaks)
                         else ", check found no problems")
            self.status_label.setText(text)

    def _sync_progress(self) -> None:
        tab = self.current_tab()
        busy = bool(tab is not None and tab.document.busy)
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        if busy:
            self.progress.setRange(0, 0)

    # -- drag and drop -----------------------------------------------------------------------
    def dragEnterEvent(self, ev) -> None:
        md = ev.mimeData()
        if md.hasUrls() and any(u.isLocalFile() for u in md.urls()):
            ev.acceptProposedAction()

    def dropEvent(self, ev) -> None:
        paths = [u.toLocalFile() for u in ev.mimeData().urls() if u.isLocalFile()]
        for p in paths:
            self.open_path(p)
        if paths:
            ev.acceptProposedAction()

    # -- closing -----------------------------------------------------------------------------
    def closeEvent(self, ev) -> None:
        self.save_settings()
        self.close_all()
        if self.tabs.count():
            ev.ignore()
            return
        ev.accept()
