"""The hex editor: a hex view with its toolbar, find bar, legend and inspector,
and the commands behind them (edit, save, revert, go to, find, history)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (QComboBox, QDialog, QLabel, QMessageBox, QToolBar, QUndoView,
                               QVBoxLayout, QWidget)

from ..model.hexdocument import HexDocument
from .find import FindBar
from .goto import GotoDialog
from .hexinspector import HexLegend, Inspector
from .hexstyle import OFFSET_MODES
from .hexview import HexView

GUEST_VIEW = "Hex (guest)"
FILE_VIEW = "Hex (file)"


class HexEditor(QWidget):
    """A hex view with its toolbar, find bar, legend and inspector.

    ``file_view=True`` makes the read-only view of the raw image file.
    """

    status = Signal(str)            # one-line summary for a status bar
    openRequested = Signal(str)

    #: tests replace this to answer the Save/Discard/Cancel question
    ask_unsaved = None

    def __init__(self, doc: HexDocument, parent: QWidget | None = None, *,
                 file_view: bool = False) -> None:
        super().__init__(parent)
        self.doc = doc
        self.file_view = file_view
        self.last_message = ""
        self.message_box: QMessageBox | None = None
        self.history: QDialog | None = None
        self.view = HexView(doc, self)
        self.banner = QLabel(self)
        self.banner.setWordWrap(True)
        self.banner.hide()
        self.findbar = FindBar(doc, lambda: self.view.cursor, self)
        self.findbar.hide()
        self.legend = HexLegend(doc.source.kinds_shown, self)
        if file_view:
            self.legend.hide()
        self.inspector = Inspector(self)
        self.toolbar = QToolBar(self)
        self._make_actions()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.toolbar)
        lay.addWidget(self.banner)
        lay.addWidget(self.findbar)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.legend)
        lay.addWidget(self.inspector)
        v = self.view
        v.cursorChanged.connect(self._update_inspector)
        v.selectionChanged.connect(lambda *_: self._update_inspector())
        v.message.connect(self.notify)
        v.requestGoto.connect(self.open_goto)
        v.requestFind.connect(lambda text: self.open_find("text" if text else None))
        v.requestFindNext.connect(self.find_next)
        v.requestEditable.connect(lambda: self.act_edit.trigger())
        v.requestSave.connect(self.save)
        self.findbar.found.connect(self._found)
        self.findbar.finished.connect(lambda: self.view.setFocus())
        doc.editableChanged.connect(self._editable_changed)
        doc.editingRefused.connect(self._refused)
        doc.modifiedChanged.connect(self._modified_changed)
        doc.saveFailed.connect(self._save_failed)
        # bound methods, not lambdas: Qt drops them with the editor (the document lives on)
        doc.saved.connect(self._saved)
        doc.contentChanged.connect(self._update_inspector)
        self._editable_changed(doc.editable)
        self._modified_changed(doc.modified)
        self._update_inspector()

    def _make_actions(self) -> None:
        tb, doc = self.toolbar, self.doc
        tb.setToolButtonStyle(Qt.ToolButtonTextOnly)
        self.act_edit = QAction("Enable editing", self, checkable=True)
        self.act_edit.setToolTip("Re-open the image for writing (Ctrl+E)")
        self.act_edit.triggered.connect(self.set_editing)
        self.act_save = QAction("Save", self, toolTip="Write the pending edits (Ctrl+S)")
        self.act_save.triggered.connect(self.save)
        self.act_revert = QAction("Revert", self, toolTip="Discard the pending edits")
        self.act_revert.triggered.connect(self.revert)
        # short texts (the command goes in the tooltip) keep the toolbar narrow
        st = doc.undo_stack
        self.act_undo = QAction("Undo", self, enabled=False)
        self.act_undo.triggered.connect(st.undo)
        st.canUndoChanged.connect(self.act_undo.setEnabled)
        st.undoTextChanged.connect(self._undo_tip)
        self.act_redo = QAction("Redo", self, enabled=False)
        self.act_redo.triggered.connect(st.redo)
        st.canRedoChanged.connect(self.act_redo.setEnabled)
        st.redoTextChanged.connect(self._redo_tip)
        self.act_history = QAction("History", self, toolTip="The undo history")
        self.act_history.triggered.connect(self.show_history)
        self.act_goto = QAction("Go to\u2026", self, toolTip="Go to offset or sector (Ctrl+G)")
        self.act_goto.triggered.connect(self.open_goto)
        self.act_find = QAction("Find\u2026", self, toolTip="Find hex bytes or text (Ctrl+F)")
        self.act_find.triggered.connect(lambda: self.open_find())
        if not self.file_view:
            for a in (self.act_edit, self.act_save, self.act_revert, self.act_undo,
                      self.act_redo, self.act_history):
                tb.addAction(a)
            tb.addSeparator()
        tb.addAction(self.act_goto)
        tb.addAction(self.act_find)
        tb.addSeparator()
        self.bpr_combo = QComboBox(self)
        self.bpr_combo.addItems(["16 bytes/row", "32 bytes/row"])
        self.bpr_combo.currentIndexChanged.connect(
            lambda i: self.view.set_bytes_per_row(16 if i == 0 else 32))
        self.mode_combo = QComboBox(self)
        for text, _ in OFFSET_MODES:
            self.mode_combo.addItem(text)
        self.mode_combo.currentIndexChanged.connect(
            lambda i: (self.view.set_sector_mode(OFFSET_MODES[i][1]), self._update_inspector()))
        tb.addWidget(self.bpr_combo)
        tb.addWidget(self.mode_combo)

    def _saved(self) -> None:
        self.notify("Saved")

    def _undo_tip(self, text: str) -> None:
        self.act_undo.setToolTip(f"Undo {text} (Ctrl+Z)")

    def _redo_tip(self, text: str) -> None:
        self.act_redo.setToolTip(f"Redo {text} (Ctrl+Shift+Z)")

    # -- notices -----------------------------------------------------------------------
    def notify(self, text: str) -> None:
        self.last_message = text
        self.status.emit(text)

    def _show_banner(self, text: str, error: bool) -> None:
        self.banner.setText(text)
        self.banner.setStyleSheet(
            "padding:4px 8px; " + ("background:#fde2e1; color:#8a0010; border-bottom:1px solid"
                                   " #e6a0a0" if error else
                                   "background:#e8f1fd; color:#123; border-bottom:1px solid "
                                   "#b0c8e8"))
        self.banner.show()

    def _refused(self, reason: str) -> None:
        self.notify(reason)
        self._show_banner(reason, True)
        self.act_edit.setChecked(self.doc.editable)
        box = QMessageBox(QMessageBox.Warning, "Editing not possible", reason,
                          QMessageBox.Ok, self)
        box.setAttribute(Qt.WA_DeleteOnClose)
        self.message_box = box
        box.open()              # non-modal for the event loop: tests can read it

    def _save_failed(self, reason: str) -> None:
        self.notify(reason)
        self._show_banner(reason, True)

    def _editable_changed(self, on: bool) -> None:
        self.act_edit.setChecked(on)
        for a in (self.act_save, self.act_revert):
            a.setEnabled(on and self.doc.modified)
        if on:
            self._show_banner("Editing enabled: edits stay pending (orange) until you "
                              "Save (Ctrl+S).", False)
        elif not self.file_view:
            self.banner.hide()
        self.view.viewport().update()

    def _modified_changed(self, m: bool) -> None:
        for a in (self.act_save, self.act_revert):
            a.setEnabled(m and self.doc.editable)
        self._update_inspector()

    def _update_inspector(self, *_) -> None:
        self.inspector.show_at(self.view)
        self.status.emit(self.inspector.summary)

    # -- commands ----------------------------------------------------------------------
    def set_editing(self, on: bool = True) -> bool:
        if not on and self.doc.modified and not self.confirm_close():
            self.act_edit.setChecked(True)
            return False
        self.findbar.cancel()          # the image is reopened
        ok = self.doc.set_editable(on)
        self.act_edit.setChecked(self.doc.editable)
        return ok

    def save(self) -> bool:
        self.findbar.cancel()          # the image may be reopened after the save
        ok = self.doc.save()
        self.view.viewport().update()
        return ok

    def revert(self) -> None:
        self.doc.revert()
        self.notify("Pending edits discarded")

    def open_goto(self) -> GotoDialog:
        dlg = GotoDialog(self, current=self.view.cursor, size=self.doc.size,
                         sector_size=self.view.sector_size)
        dlg.setAttribute(Qt.WA_DeleteOnClose)
        dlg.chosen.connect(self.view.goto)
        self.goto_dialog = dlg
        dlg.open()
        return dlg

    def open_find(self, mode: str | None = None) -> None:
        self.findbar.open_bar(mode)

    def find_next(self, forward: bool = True) -> None:
        if not self.findbar.edit.text():
            self.open_find()
            return
        self.findbar.show()
        self.findbar.start(forward)

    def _found(self, offset: int, length: int) -> None:
        self.view.select_range(offset, length, caret_at_start=True)

    def show_history(self) -> QDialog:
        if self.history is None:
            dlg = QDialog(self)
            dlg.setWindowTitle("Edit history")
            lay = QVBoxLayout(dlg)
            undo_view = QUndoView(self.doc.undo_stack, dlg)
            undo_view.setEmptyLabel("<saved / opened>")
            lay.addWidget(undo_view)
            dlg.resize(320, 360)
            self.history = dlg
        self.history.show()
        self.history.raise_()
        return self.history

    def confirm_close(self) -> bool:
        """Ask Save / Discard / Cancel when edits are pending; True to go on."""
        if not self.doc.modified:
            return True
        if HexEditor.ask_unsaved is not None:
            answer = HexEditor.ask_unsaved(self)
        else:
            r = QMessageBox.question(
                self, "Unsaved edits",
                f"{self.doc.pending_bytes():,} byte(s) of edits are not saved.",
                QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel, QMessageBox.Save)
            answer = {QMessageBox.Save: "save", QMessageBox.Discard: "discard"}.get(r, "cancel")
        if answer == "save":
            return self.save()
        if answer == "discard":
            self.doc.revert()
            return True
        return False

    def shutdown(self) -> None:
        """Stop the find worker (and join it); call before the widget goes away."""
        self.findbar.cancel()

    def closeEvent(self, e) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(e)
