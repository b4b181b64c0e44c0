"""Go to file… (Ctrl+Shift+G): a path with completion; Return puts the hex caret on
the file's first byte, the guest hex view focused, so typing edits the file.

Paths two filesystems share complete as ``PARTITION:PATH`` (``2:/etc/fstab``).
A file whose bytes live inline in the filesystem's metadata is refused with the
reason; a filesystem whose journal needs recovery is warned about first (Return
again goes there anyway).
"""

from __future__ import annotations

from PySide6.QtCore import QStringListModel, Qt, Signal
from PySide6.QtWidgets import (QCompleter, QDialog, QDialogButtonBox, QLabel, QLineEdit,
                               QVBoxLayout, QWidget)

from ..model.guest_files import GuestContents


def resolve_one(contents: GuestContents, text: str):
    """(the one file ``text`` names, None) or (None, the reason there is not one)."""
    if contents.index is None:
        return None, ("the guest's files are not read yet" if contents.state != "failed"
                      else f"the guest's files could not be read: {contents.error}")
    files = contents.resolve(text)
    if not files:
        return None, f"{text.strip()}: no such file in the guest"
    if len(files) > 1:
        parts = ", ".join(f"{f.volume.partition.index}:{f.path}" for f in files)
        return None, f"{len(files)} filesystems have {files[0].path}: say which ({parts})"
    return files[0], None


class GotoFileDialog(QDialog):
    """Asks for a guest path; :attr:`chosen` carries the IndexedFile."""

    chosen = Signal(object)

    def __init__(self, contents: GuestContents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Go to file")
        self.contents = contents
        self._warned = None         # the file whose journal warning was shown
        self.edit = QLineEdit()
        self.edit.setObjectName("gotoFilePath")
        self.edit.setPlaceholderText("/etc/fstab, or 2:/etc/fstab")
        self.completer = QCompleter(self)
        self.completer.setCaseSensitivity(Qt.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchContains)
        self.completer.setMaxVisibleItems(12)
        self.paths = QStringListModel(self)
        self.completer.setModel(self.paths)
        self.edit.setCompleter(self.completer)
        self.completer.activated.connect(self._completed)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setObjectName("gotoFileNote")
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.go)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Path of a file in the guest:"))
        lay.addWidget(self.edit)
        lay.addWidget(self.note)
        lay.addWidget(self.buttons)
        self.resize(460, self.sizeHint().height())
        contents.ready.connect(self._index_ready)
        self._index_ready()
        if contents.index is None:
            contents.ensure()

    def _index_ready(self) -> None:
        if self.contents.index is not None:
            self.paths.setStringList(self.contents.completions())
            self._say("")
        elif self.contents.building:
            self._say("Reading the guest's files…", error=False)
        elif self.contents.state == "failed":
            self._say(f"The guest's files could not be read: {self.contents.error}")

    def _say(self, text: str, error: bool = True) -> None:
        self.note.setStyleSheet(f"color: {'#b71c1c' if error else '#546e7a'}")
        self.note.setText(text)

    def _completed(self, text: str) -> None:
        self.edit.setText(text)
        self.go()

    def go(self) -> None:
        if self.result() == QDialog.Accepted:
            return          # the completer's activation and the Return key both ask
        f, why = resolve_one(self.contents, self.edit.text())
        if why is None:
            why = self.contents.edit_refusal(f) if not f.info.extents else None
        if why is not None:
            self._say(why)
            return
        warning = self.contents.journal_warning(f)
        if warning and self._warned is not f:
            # warned before the caret lands where typing edits: Return again goes on
            self._warned = f
            self._say(f"{warning}. Return again to go there anyway.", error=True)
            return
        self.chosen.emit(f)
        self.accept()

    def keyPressEvent(self, e) -> None:  # noqa: N802
        if e.key() in (Qt.Key_Return, Qt.Key_Enter):
            self.go()
            return
        super().keyPressEvent(e)


def open_goto_file(tab, contents: GuestContents) -> GotoFileDialog:
    """Show the dialog over ``tab``; a chosen file puts the hex caret on its first byte."""
    from .filespanel import show_guest_in_hex
    dlg = GotoFileDialog(contents, tab)
    dlg.setAttribute(Qt.WA_DeleteOnClose)

    def chosen(f) -> None:
        show_guest_in_hex(tab, f.info.extents[0][1])
        panel = tab.pane("files")
        if panel is not None:
            vol = contents.index.volumes.index(f.volume)
            panel.select_path(vol, f.path)
        warning = contents.journal_warning(f)
        if warning:
            tab.hex_guest.notify(warning)
    dlg.chosen.connect(chosen)
    dlg.open()
    dlg.edit.setFocus()
    return dlg
