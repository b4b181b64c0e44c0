"""Image > Repair: confirm, run the repair off the GUI thread, say what was fixed."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget

from ..model.operations import OperationJob, repair_job
from ..model.units import count
from . import dialogs

# auto-confirm for tests and scripted runs (None: ask the user)
assume_yes: bool | None = None


def repair_current(window: QWidget, tab, *, fix_all: bool = False) -> OperationJob | None:
    """Repair the image of ``tab`` (leaks, or with ``fix_all`` also too-low refcounts)."""
    doc = tab.document
    what = "leaked clusters and refcounts that are too low" if fix_all else "leaked clusters"
    if assume_yes is None:
        answer = QMessageBox.question(
            window, "Repair image",
            f"Repair {what} in {doc.name}?\n\nThis writes to the image file (as "
            f"'qemu-img check -r {'all' if fix_all else 'leaks'}' would). Guest data is not "
            "changed. Make sure no virtual machine uses the image.",
            QMessageBox.Yes | QMessageBox.Cancel, QMessageBox.Cancel)
        if answer != QMessageBox.Yes:
            return None
    elif not assume_yes:
        return None
    job = repair_job(doc, fix_all=fix_all, parent=tab)
    job.failed.connect(lambda text: dialogs.error(window, "Repair failed", text))

    def report(result) -> None:
        fixed = (f"{count(result.leaks_fixed, 'leak')} and "
                 f"{count(result.corruptions_fixed, 'corruption')} fixed")
        left = result.leaks + result.corruptions
        msg = f"{doc.name}: repaired, {fixed}"
        if left:
            msg += f"; {count(left, 'problem')} remain{'s' if left == 1 else ''}"
        bar = window.statusBar() if hasattr(window, "statusBar") else None
        if bar is not None:
            bar.showMessage(msg, 10000)

    job.done.connect(report)
    job.start()
    return job
