"""Image operations in the window: Image menu entries and the Create / Apply / Delete
buttons under the header panel's Snapshots section.

Every operation says what it will do and asks before it runs (the text comes from
model/operations.py: "Writes 1.2 GiB into base.qcow2", "frees 312 MiB"), then
runs in a worker with a progress dialog and Cancel; the document re-reads its
header, tables and maps afterwards.
"""

from __future__ import annotations

import os
from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout,
                               QHBoxLayout, QInputDialog, QLabel, QLineEdit, QMessageBox,
                               QProgressDialog, QPushButton, QWidget)

from ..model import operations as ops
from ..model.header_model import NameRole
from ..model.units import parse_offset
from . import dialogs

#: tests and scripted runs answer instead of the user: ``answer(kind, title, text,
#: default)`` returns the value a dialog would ("confirm": bool, "text": str or None)
answer: Callable | None = None
#: the last "what it will do" text shown (tests read it)
last_description: str = ""


def _confirm(parent: QWidget, title: str, text: str) -> bool:
    global last_description
    last_description = text
    if answer is not None:
        return bool(answer("confirm", title, text, True))
    return QMessageBox.question(parent, title, text + "\n\nContinue?",
                                QMessageBox.Yes | QMessageBox.Cancel,
                                QMessageBox.Cancel) == QMessageBox.Yes


def _ask_text(parent: QWidget, title: str, label: str, default: str = "") -> str | None:
    if answer is not None:
        return answer("text", title, label, default)
    text, ok = QInputDialog.getText(parent, title, label, QLineEdit.Normal, default)
    return text if ok else None


def _ask_item(parent: QWidget, title: str, label: str, items: list[str],
              current: str | None) -> str | None:
    if answer is not None:
        return answer("item", title, label, current or (items[0] if items else None))
    if not items:
        dialogs.error(parent, title, "The image has no internal snapshots.")
        return None
    i = items.index(current) if current in items else 0
    item, ok = QInputDialog.getItem(parent, title, label, items, i, False)
    return item if ok else None


def run_job(window: QWidget, job: ops.OperationJob, done_text: str) -> ops.OperationJob:
    """Start ``job`` with a progress dialog (Cancel stops it); say how it ended."""
    dlg = QProgressDialog(f"{job.title}…", "Cancel", 0, 0, window)
    dlg.setWindowTitle(job.title)
    dlg.setWindowModality(Qt.WindowModal)
    dlg.setMinimumDuration(300)
    dlg.setAutoClose(False)
    dlg.setAutoReset(False)

    # a modal dialog's setValue runs the event loop, which may deliver the job's end:
    # the dialog must not be deleted under its own setValue (a segfault), so an end
    # that arrives there waits until setValue has returned.  That event loop may also
    # deliver the next progress report, whose setValue nests in the first: a depth,
    # not a flag, or the inner one's return lets the end delete the dialog while the
    # outer setValue still runs (seen as a rare segfault in setValue)
    state: dict = {"depth": 0, "deferred": None, "over": False}

    def progressed(done: int, total: int) -> None:
        if state["over"]:
            return
        state["depth"] += 1
        try:
            dlg.setMaximum(max(total, 1))
            dlg.setValue(min(done, max(total, 1)))
        finally:
            state["depth"] -= 1
        if state["depth"] == 0 and state["deferred"] is not None:
            finish(*state["deferred"])

    def finish(message: str | None = None, error: str | None = None) -> None:
        if state["depth"]:
            state["deferred"] = (message, error)
            return
        if state["over"]:
            return
        state["over"] = True
        dlg.reset()
        dlg.close()
        dlg.deleteLater()
        if error is not None:
            dialogs.error(window, f"{job.title} failed", error)
        bar = window.statusBar() if hasattr(window, "statusBar") else None
        if bar is not None and message:
            bar.showMessage(message, 10000)

    job.progressed.connect(progressed)
    job.done.connect(lambda _r: finish(done_text))
    job.cancelled.connect(lambda: finish(f"{job.title}: cancelled; the image is unchanged "
                                         "or valid as far as it got"))
    job.failed.connect(lambda text: finish(error=text))
    dlg.canceled.connect(job.cancel)
    job.start()
    return job


def _ok_cancel(dialog: QDialog) -> QDialogButtonBox:
    """OK and Cancel buttons that accept and reject ``dialog``."""
    buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    return buttons


# -- the operations -------------------------------------------------------------------------
def snapshot_action(window, tab, kind: str, name: str | None = None):
    doc = tab.document
    title = {"create": "Create snapshot", "apply": "Apply snapshot",
             "delete": "Delete snapshot"}[kind]
    if kind == "create":
        name = name or _ask_text(window, title, "Name of the new snapshot:")
    else:
        name = _ask_item(window, title, "Snapshot:", ops.snapshot_names(doc), name)
    if not name:
        return None
    try:
        text = ops.describe_snapshot(doc, kind, name)
    except Exception as e:       # noqa: BLE001 - an unknown name, an unreadable image
        dialogs.error(window, title, ops.open_error_text(e))
        return None
    if not _confirm(window, title, text):
        return None
    return run_job(window, ops.snapshot_job(doc, kind, name, tab),
                   f"{doc.name}: snapshot '{name}' {kind}d" if kind != "apply"
                   else f"{doc.name}: reverted to snapshot '{name}'")


def resize_action(window, tab):
    doc = tab.document
    text = _ask_text(window, "Resize", "New size (e.g. 20G, +1G):",
                     str(doc.image.virtual_size))
    if not text:
        return None
    try:
        t = text.strip()
        cur = doc.image.virtual_size
        size = cur + parse_offset(t[1:]) if t.startswith("+") else \
            cur - parse_offset(t[1:]) if t.startswith("-") else parse_offset(t)
    except ValueError as e:
        dialogs.error(window, "Resize", str(e))
        return None
    why = ops.resize_refusal(doc, size)
    if why is not None:
        dialogs.error(window, "Resize", why[:1].upper() + why[1:] + ".")
        return None
    prealloc = "off"
    if size > doc.image.virtual_size:
        # qemu-img resize --preallocation: how the new area is allocated
        prealloc = _ask_item(window, "Resize", "Preallocation of the new area:",
                             list(ops.RESIZE_PREALLOCATION), "off")
        if not prealloc:
            return None
    if not _confirm(window, "Resize", ops.describe_resize(doc, size, prealloc)):
        return None
    return run_job(window, ops.resize_job(doc, size, tab, prealloc), f"{doc.name}: resized")


def commit_action(window, tab):
    doc = tab.document
    bases = ops.commit_bases(doc)
    if not bases:
        dialogs.error(window, "Commit", f"{doc.name} has no backing file to commit into.")
        return None
    dlg = CommitDialog(window, bases)
    values = answer("commit", "Commit", "", dlg.values()) if answer else (
        dlg.values() if dlg.exec() == QDialog.Accepted else None)
    dlg.deleteLater()
    if not values:
        return None
    base, keep = values
    try:
        text = ops.describe_commit(doc, base, keep)
    except Exception as e:       # noqa: BLE001
        dialogs.error(window, "Commit", ops.open_error_text(e))
        return None
    if not _confirm(window, "Commit into the backing file", text):
        return None
    return run_job(window, ops.commit_job(doc, tab, base, keep), f"{doc.name}: committed")


def rebase_action(window, tab):
    doc = tab.document
    dlg = RebaseDialog(window, (doc.image.backing_filename or "") if doc.image else "")
    values = answer("rebase", "Rebase", "", dlg.values()) if answer else (
        dlg.values() if dlg.exec() == QDialog.Accepted else None)
    dlg.deleteLater()
    if not values:
        return None
    backing, unsafe, fmt = values
    if not _confirm(window, "Rebase", ops.describe_rebase(doc, backing, unsafe)):
        return None
    return run_job(window, ops.rebase_job(doc, backing, fmt, unsafe, tab),
                   f"{doc.name}: rebased")


class CommitDialog(QDialog):
    """Which image down the chain to write into (-b) and whether to keep the overlay (-d)."""

    def __init__(self, parent, bases: list[str]) -> None:
        super().__init__(parent)
        self.setWindowTitle("Commit into the backing file")
        self._bases = bases
        self.base = QComboBox()
        self.base.addItems([os.path.basename(b) for b in bases])
        for i, b in enumerate(bases):
            self.base.setItemData(i, b, Qt.ToolTipRole)
        self.keep = QCheckBox("Keep the overlay as it is (-d)")
        form = QFormLayout(self)
        form.addRow("Write into:", self.base)
        form.addRow("", self.keep)
        self.base.currentIndexChanged.connect(self._base_changed)
        form.addRow(_ok_cancel(self))

    def _base_changed(self, i: int) -> None:
        # as qemu-img: a base further down the chain (-b) implies -d
        if i > 0:
            self.keep.setChecked(True)
        self.keep.setEnabled(i == 0)

    def values(self) -> tuple[str | None, bool]:
        i = self.base.currentIndex()
        return (self._bases[i] if i > 0 else None, self.keep.isChecked())


class RebaseDialog(QDialog):
    """The new backing file, its format (-F: needed with -u for a file not there yet),
    and -u: only rewrite the name, copy nothing."""

    FORMATS = ["probe", "qcow2", "raw"]

    def __init__(self, parent, current: str) -> None:
        super().__init__(parent)
        self.setWindowTitle("Rebase")
        self.backing = QLineEdit(current)
        self.backing.setPlaceholderText("none: flatten")
        self.fmt = QComboBox()
        self.fmt.addItems(self.FORMATS)
        self.unsafe = QCheckBox("Only rewrite the name, copy nothing (-u)")
        form = QFormLayout(self)
        form.addRow("New backing file:", self.backing)
        form.addRow("Its format (-F):", self.fmt)
        form.addRow("", self.unsafe)
        form.addRow(_ok_cancel(self))

    def values(self) -> tuple[str, bool, str | None]:
        fmt = self.fmt.currentText()
        return (self.backing.text(), self.unsafe.isChecked(), None if fmt == "probe" else fmt)


def convert_action(window, tab):
    doc = tab.document
    dlg = ConvertDialog(window, doc.path)
    values = answer("convert", "Convert", "", dlg.values()) if answer else (
        dlg.values() if dlg.exec() == QDialog.Accepted else None)
    if not values:
        return None
    dst, fmt, compress, options = values
    try:
        text = ops.describe_convert(doc, fmt, options)
    except Exception as e:       # noqa: BLE001
        dialogs.error(window, "Convert", ops.open_error_text(e))
        return None
    if not _confirm(window, "Convert", f"{text}\nTo: {dst}"):
        return None
    return run_job(window, ops.convert_job(doc, dst, fmt, compress, options, tab),
                   f"{doc.name}: converted to {os.path.basename(dst)}")


def amend_action(window, tab):
    doc = tab.document
    h = doc.image.header
    dlg = AmendDialog(window, h.compat, h.refcount_bits, h.lazy_refcounts)
    options = answer("amend", "Amend", "", dlg.values()) if answer else (
        dlg.values() if dlg.exec() == QDialog.Accepted else None)
    if not options:
        return None
    text = "Changes " + ", ".join(f"{k} to {v}" for k, v in options.items()) + \
        f" in {doc.name}" + (" (writes a new refcount structure)"
                             if "refcount_bits" in options else "") + "."
    if not _confirm(window, "Amend", text):
        return None
    return run_job(window, ops.amend_job(doc, options, tab), f"{doc.name}: amended")


class ConvertDialog(QDialog):
    """Where and how to write the copy."""

    def __init__(self, parent, src: str) -> None:
        super().__init__(parent)
        self.setWindowTitle("Convert")
        base, _ = os.path.splitext(src)
        self.dst = QLineEdit(base + "-copy.qcow2")
        self.fmt = QComboBox()
        self.fmt.addItems(["qcow2", "raw"])
        self.compress = QCheckBox("Compress (-c)")
        self.ctype = QComboBox()
        self.ctype.addItems(["zlib", "zstd"])
        form = QFormLayout(self)
        form.addRow("Output file:", self.dst)
        form.addRow("Format:", self.fmt)
        form.addRow("", self.compress)
        form.addRow("Compression type:", self.ctype)
        form.addRow(_ok_cancel(self))

    def values(self):
        fmt = self.fmt.currentText()
        opts = {"compression_type": self.ctype.currentText()} if fmt == "qcow2" else {}
        return (self.dst.text(), fmt, self.compress.isChecked() and fmt == "qcow2", opts)


class AmendDialog(QDialog):
    """compat, refcount_bits and lazy_refcounts, as qemu-img amend -o changes them."""

    def __init__(self, parent, compat: str, bits: int, lazy: bool) -> None:
        super().__init__(parent)
        self.setWindowTitle("Amend image options")
        self._start = (compat, bits, lazy)
        self.compat = QComboBox()
        self.compat.addItems(["0.10", "1.1"])
        self.compat.setCurrentText(compat)
        self.bits = QComboBox()
        self.bits.addItems([str(1 << i) for i in range(7)])
        self.bits.setCurrentText(str(bits))
        self.lazy = QCheckBox("Lazy refcounts")
        self.lazy.setChecked(lazy)
        form = QFormLayout(self)
        form.addRow("Compatibility:", self.compat)
        form.addRow("Refcount bits:", self.bits)
        form.addRow("", self.lazy)
        form.addRow(_ok_cancel(self))

    def values(self) -> dict:
        out = {}
        compat, bits, lazy = self._start
        if self.compat.currentText() != compat:
            out["compat"] = self.compat.currentText()
        if int(self.bits.currentText()) != bits:
            out["refcount_bits"] = int(self.bits.currentText())
        if self.lazy.isChecked() != lazy:
            out["lazy_refcounts"] = "on" if self.lazy.isChecked() else "off"
        return out


# -- wiring ---------------------------------------------------------------------------------
MENU = [("Create &snapshot…", lambda w, t: snapshot_action(w, t, "create")),
        ("A&pply snapshot…", lambda w, t: snapshot_action(w, t, "apply")),
        ("&Delete snapshot…", lambda w, t: snapshot_action(w, t, "delete")),
        (None, None),
        ("Re&size…", resize_action),
        ("&Commit into backing file…", commit_action),
        ("Re&base…", rebase_action),
        ("Con&vert…", convert_action),
        ("A&mend options…", amend_action)]


def install_operations(window) -> None:
    """Add the operations to the window's Image menu and a snapshot button row to the
    header panel of every tab it opens."""
    menu = window.image_menu
    menu.addSeparator()
    actions = []
    for text, fn in MENU:
        if text is None:
            menu.addSeparator()
            continue
        act = menu.addAction(text)
        act.setObjectName("op:" + text.replace("&", "").rstrip("…"))
        act.triggered.connect(lambda _=False, fn=fn: _run_on_current(window, fn))
        actions.append(act)

    def enable() -> None:
        tab = window.current_tab()
        ok = bool(tab is not None and tab.document.image is not None
                  and not tab.document.writable)
        for a in actions:
            a.setEnabled(ok)
    menu.aboutToShow.connect(enable)
    window.documentOpened.connect(lambda tab: add_snapshot_buttons(window, tab))


def _run_on_current(window, fn) -> None:
    tab = window.current_tab()
    if tab is not None and not tab.document.writable:
        fn(window, tab)


class SnapshotButtons(QWidget):
    """Create / Apply / Delete for the snapshot selected in the header panel."""

    def __init__(self, window, tab) -> None:
        super().__init__(tab.header_panel)
        self.setObjectName("snapshotButtons")
        self.tab = tab
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Snapshots:"))
        self.buttons = {}
        for kind, label in (("create", "Create…"), ("apply", "Apply…"), ("delete", "Delete…")):
            b = QPushButton(label)
            b.setObjectName(f"snapshot-{kind}")
            b.clicked.connect(lambda _=False, k=kind: snapshot_action(
                window, tab, k, self.selected()))
            row.addWidget(b)
            self.buttons[kind] = b
        row.addStretch(1)
        # Apply and Delete need a snapshot to act on: greyed out while the image has none
        tab.document.loaded.connect(self.update_enabled)
        tab.document.changed.connect(self.update_enabled)
        self.update_enabled()

    def update_enabled(self) -> None:
        has = bool(ops.snapshot_names(self.tab.document))
        for kind in ("apply", "delete"):
            self.buttons[kind].setEnabled(has)
            self.buttons[kind].setToolTip("" if has else "The image has no internal snapshots.")
        why = ops.snapshot_refusal(self.tab.document)
        self.buttons["create"].setEnabled(why is None)
        self.buttons["create"].setToolTip(why or "")

    def selected(self) -> str | None:
        """The snapshot of the selected header row ("snapshot:ID" rows), by name."""
        view = self.tab.header_panel.view
        key = view.currentIndex().data(NameRole) or ""
        if not key.startswith("snapshot:"):
            return None
        sid = key.split(":", 1)[1]
        img = self.tab.document.image
        for s in img.snapshots if img is not None else []:
            if s.id_str == sid:
                return s.name
        return None


def add_snapshot_buttons(window, tab) -> None:
    panel = getattr(tab, "header_panel", None)
    if panel is not None and panel.findChild(SnapshotButtons) is None:
        panel.layout().addWidget(SnapshotButtons(window, tab))
