"""One opened image as a Qt document: the engine Image plus its maps and check.

The header and tables are read synchronously on open (they are small and the
window shows them at once); the host map, guest map and check run in a
:class:`~.workers.Worker` with a second, read-only Image of the same file, so
the GUI thread and the worker never share caches.

The document owns everything the window shows of the image, as napari's
ViewerModel does: the header, table tree, allocation and problems models and the
two hex documents (guest disk and image file).  It keeps them up to date; the
views are built over them and only listen.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal

from ..engine import CancelledError, Image, ImageInUseError, Qcow2Error, open_image
from .allocation import AllocationModel, prepare
from .bytesource import ImageFileSource
from .header_model import HeaderModel
from .hexdocument import HexDocument
from .guest_files import GuestContents
from .problems_model import ProblemsModel
from .table_tree_model import TableTreeModel
from .units import count
from .workers import Worker


def open_error_text(exc: BaseException) -> str:
    """What to tell a person about an error: the engine's message, no traceback."""
    if isinstance(exc, Qcow2Error):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class Analysis:
    """What the worker found: maps and check result (any may be None)."""

    def __init__(self) -> None:
        self.image: Image | None = None      # the worker's Image, kept for lazy owner lookups
        self.host_map: Any = None
        self.guest_map: Any = None
        self.check: Any = None
        self.errors: list[str] = []
        self.prepared: dict = {}             # allocation.prepare output

    def close(self) -> None:
        if self.image is not None:
            self.image.close()
            self.image = None


def _analyse(path: str, worker: Worker, progress, cancel) -> Analysis:
    out = Analysis()
    out.image = img = open_image(path, ignore_backing_errors=True)
    try:
        # check before the guest map: its scratch memory is gone by then (peak RSS)
        stages = (("Building host map", "host_map", lambda: img.host_map(
                      progress=progress, cancel=cancel)),
                  ("Checking", "check", lambda: img.check(progress=progress, cancel=cancel)),
                  ("Building guest map", "guest_map", lambda: img.guest_map(
                      progress=progress, cancel=cancel)))
        for task, attr, run in stages:
            worker.set_task(task)
            if cancel():
                raise CancelledError("cancelled")
            try:
                setattr(out, attr, run())
            except CancelledError:
                raise
            except Qcow2Error as e:
                out.errors.append(f"{task}: {e}")
        worker.set_task("Preparing pictures")
        if out.host_map is not None or out.guest_map is not None:
            out.prepared = prepare(out.host_map, out.guest_map)
    except BaseException:
        out.close()
        raise
    return out


def _close_analysis(analysis: Analysis) -> None:
    analysis.close()


class ImageDocument(QObject):
    """Owns an engine Image and the models over it; views ask it for everything."""

    loaded = Signal()                   # header and tables are readable
    changed = Signal()                  # re-read after a save / reopen
    error = Signal(str)                 # a problem worth telling the user
    progress = Signal(str, int, int)    # task, done, total
    busyChanged = Signal(bool)
    mapsReady = Signal()                # host map / guest map / check are in (or failed)
    analysisCancelled = Signal()
    writableChanged = Signal(bool)
    closed = Signal()

    def __init__(self, path: str | os.PathLike, *, writable: bool = False,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = os.path.abspath(os.fspath(path))
        self._writable = writable
        self.image: Image | None = None
        self.analysis: Analysis | None = None
        self._worker: Worker | None = None
        self._is_closed = False
        self.read_only_reason: str | None = None    # asked to edit, opened read-only: why
        self.header_model = HeaderModel(self)
        self.tree_model = TableTreeModel(self)
        self.allocation = AllocationModel(self)
        self.problems_model = ProblemsModel(self)
        #: the guest's partitions, filesystems and files (read on request, in a worker)
        self.guest = GuestContents(self)
        #: the guest disk and the image file in the hex editor; a save through the guest
        #: document re-reads everything
        # (through a weak reference: a cycle would leave this QObject to the garbage
        # collector, which may run, and delete it, on a worker thread)
        me = weakref.ref(self)
        self.hex_guest = HexDocument(None, self,
                                     reopen=lambda writable: me()._reopen_for_edit(writable),
                                     after_save=lambda: me().refresh())
        self.hex_file = HexDocument(None, self, source=ImageFileSource)
        # connected first, so the models are up to date when a view hears these
        self.loaded.connect(self._image_changed)
        self.changed.connect(self._image_changed)
        self.mapsReady.connect(self._maps_changed)

    # -- lifecycle -------------------------------------------------------------------
    def load(self) -> None:
        """Open the image (raises the engine's Qcow2Error) and start the analysis."""
        self.load_header()
        self.start_analysis()

    def load_header(self) -> None:
        """Open the image: header and tables, no maps yet (raises Qcow2Error).  Asked to
        edit an image a VM is using, it opens read-only and says why."""
        try:
            self.image = open_image(self.path, writable=self._writable,
                                    ignore_backing_errors=True)
        except ImageInUseError as e:
            if not self._writable:
                raise
            self.image = open_image(self.path, ignore_backing_errors=True)
            self._writable = False
            self.read_only_reason = e.reason
        self.loaded.emit()

    def close(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        self._stop_worker()
        if self.analysis is not None:
            self.analysis.close()
            self.analysis = None
        if self.image is not None:
            try:
                self.image.close()
            except Qcow2Error:
                # a failed save was reported and its edits given up by the user
                self.image.close(discard=True)
            self.image = None
        self.closed.emit()

    def reopen(self, writable: bool) -> None:
        """Open the file again for writing (or read-only); on failure stay as it was."""
        if writable == self._writable and self.image is not None:
            return
        old = self.image
        try:
            new = open_image(self.path, writable=writable, ignore_backing_errors=True)
        except Qcow2Error:
            raise
        if old is not None:
            old.close()
        self.image = new
        self._writable = writable
        self.read_only_reason = None      # what kept --edit out is over, or asked anew
        self.writableChanged.emit(writable)
        self.changed.emit()

    def refresh(self) -> None:
        """Re-read header, tables and maps (after the file changed, e.g. a save)."""
        self._stop_worker()
        if self.image is not None:
            self.image.close()
        self.image = open_image(self.path, writable=self._writable,
                                ignore_backing_errors=True)
        if self.analysis is not None:
            self.analysis.close()
            self.analysis = None
        self.changed.emit()
        self.start_analysis()

    # -- the models ----------------------------------------------------------------------
    def _image_changed(self) -> None:
        img = self.image
        self.header_model.set_image(img)
        self.tree_model.set_image(img)
        self.problems_model.set_document(self)
        for hex_doc in (self.hex_guest, self.hex_file):
            if img is not None and hex_doc.image is not img:
                hex_doc.set_image(img)

    def _maps_changed(self) -> None:
        hm = self.host_map
        self.allocation.set_maps(hm, self.guest_map,
                                 self.analysis.prepared if self.analysis else None)
        findings = None if self.check_result is None else self.check_result.findings
        self.tree_model.set_analysis(None if hm is None else hm.refcounts, findings)
        self.problems_model.set_document(self)

    def _reopen_for_edit(self, writable: bool) -> Image | None:
        self.reopen(writable)
        return self.image

    # -- facts for views ---------------------------------------------------------------
    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def busy(self) -> bool:
        """Until the analysis's result is delivered (its thread ends a moment before:
        isRunning() said not busy while mapsReady was still on its way)."""
        return self._worker is not None

    @property
    def host_map(self):
        return None if self.analysis is None else self.analysis.host_map

    @property
    def guest_map(self):
        return None if self.analysis is None else self.analysis.guest_map

    @property
    def check_result(self):
        return None if self.analysis is None else self.analysis.check

    def problems(self) -> list[str]:
        """One line per thing that is wrong, most important first (for the banner)."""
        out: list[str] = []
        img = self.image
        if img is not None:
            if self.read_only_reason:
                out.append(f"opened read-only, not for editing: {self.read_only_reason}")
            elif img.in_use:
                out.append(f"in use: {img.in_use_by}; opened read-only, and editing is "
                           "refused while it is")
            if img.corrupt:
                out.append("the corrupt bit is set: QEMU will refuse to write to this image")
            if img.dirty:
                out.append("the dirty bit is set: refcounts may be stale "
                           "(the image was not closed cleanly)")
            for b in img.backing_chain:
                if not b.found:
                    out.append(b.error or f"backing file {b.filename!r} not found")
        c = self.check_result
        if c is not None:
            if c.corruptions:
                out.append(f"check: {count(c.corruptions, 'corruption')}")
            if c.leaks:
                out.append(f"check: {count(c.leaks, 'leaked cluster')}")
            if c.check_errors:
                out.append(f"check: {count(c.check_errors, 'error')} while checking")
        if self.analysis is not None:
            out.extend(self.analysis.errors)
        return out

    # -- background analysis ----------------------------------------------------------
    def start_analysis(self) -> None:
        self._stop_worker()
        path = self.path
        worker = Worker("Opening", lambda p, c: _analyse(path, worker, p, c), self)
        worker.progressed.connect(self.progress)
        worker.succeeded.connect(self._analysis_done)
        worker.failed.connect(self._analysis_failed)
        worker.finished.connect(self._worker_finished)
        self._worker = worker
        self.busyChanged.emit(True)
        worker.start()

    def cancel_analysis(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def wait_analysis(self, timeout_ms: int = 60000) -> bool:
        """Block until the worker ends (tests and --screenshot); True if it did."""
        w = self._worker
        return True if w is None else w.wait(timeout_ms)

    def _stop_worker(self) -> None:
        w = self._worker
        if w is None:
            return
        self._worker = None
        w.disconnect(self)      # nothing of this worker reaches the document any more
        # a result that arrives after this still owns an open Image: close it
        # in the worker's thread as it is emitted
        w.succeeded.connect(_close_analysis, Qt.DirectConnection)
        w.stop()
        w.deleteLater()

    def _analysis_done(self, analysis: Analysis) -> None:
        if self.sender() is not self._worker or self._is_closed:
            analysis.close()
            return
        if self.analysis is not None:
            self.analysis.close()
        self.analysis = analysis
        for msg in analysis.errors:
            self.error.emit(msg)
        self.mapsReady.emit()

    def _analysis_failed(self, exc: BaseException) -> None:
        if self.sender() is not self._worker:
            return
        if isinstance(exc, CancelledError):
            self.analysisCancelled.emit()
            return
        # the maps are over either way (a MemoryError too): the views stop waiting
        self.analysis = Analysis()
        self.analysis.errors.append(open_error_text(exc))
        self.error.emit(open_error_text(exc))
        self.mapsReady.emit()
        if not isinstance(exc, (Qcow2Error, OSError)):
            raise exc   # a bug, or out of memory: the excepthook shows it

    def _worker_finished(self) -> None:
        # a stopped worker's queued signal can arrive with sender() None
        if self._worker is not None and self.sender() is self._worker:
            self._worker.deleteLater()
            self._worker = None
            self.busyChanged.emit(False)
