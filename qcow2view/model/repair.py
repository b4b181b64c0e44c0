"""Repairing an image from the GUI, as ``qemu-img check -r leaks|all`` does.

The document's own image stays read-only; the repair opens a second, writable
handle (taking QEMU's writer locks, so a running VM is never repaired under its
feet) in a worker thread, then the document re-reads everything.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from ..engine import open_image
from .document import ImageDocument, open_error_text
from .workers import Worker


class RepairJob(QObject):
    """One repair of one document; ``done`` carries the engine's CheckResult."""

    done = Signal(object)
    failed = Signal(str)

    def __init__(self, document: ImageDocument, *, fix_all: bool = False,
                 parent=None) -> None:
        super().__init__(parent)
        self.document = document
        self.fix_all = fix_all      # also too-low refcounts (qemu-img check -r all)
        self.worker: Worker | None = None

    def refusal(self) -> str | None:
        """Why this repair cannot start now, or None."""
        if self.document.writable:
            return ("Editing is enabled for this image: save or revert the pending edits "
                    "and turn editing off before repairing it.")
        if self.document.busy:
            self.document.cancel_analysis()
            self.document.wait_analysis()
        return None

    def start(self) -> bool:
        why = self.refusal()
        if why is not None:
            self.failed.emit(why)
            return False
        path, fix_all = self.document.path, self.fix_all

        def run(progress, cancel):
            with open_image(path, writable=True, repair=True,
                            ignore_backing_errors=True) as im:
                return im.repair(leaks=True, fix_all=fix_all, progress=progress, cancel=cancel)

        self.worker = Worker("Repairing", run, self)
        self.worker.progressed.connect(self.document.progress)
        self.worker.succeeded.connect(self._succeeded)
        self.worker.failed.connect(lambda e: self.failed.emit(open_error_text(e)))
        self.worker.start()
        return True

    def _succeeded(self, result) -> None:
        self.document.refresh()
        self.done.emit(result)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
