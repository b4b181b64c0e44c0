"""Image operations from the window (snapshot create/apply/delete, resize, commit,
rebase, convert, amend, repair): what each will do, said before it runs, and the
job that runs it in a worker thread.

The document's own image stays read-only; an operation opens a second, writable
handle (QEMU's writer locks: an image in use is refused) and the document re-reads
everything -- header, tables and maps -- afterwards.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from ..engine import CancelledError, open_image
from ..engine.metadata_ops import opened_writable
from ..engine.ops import snapshot as snapshot_ops
from ..engine.ops.amend import amend_image
from ..engine.ops.commit import commit_image, plan_commit
from ..engine.ops.convert import convert_image, open_source
from ..engine.ops.measure import measure
from ..engine.ops.rebase import rebase_image
from ..engine.ops.resize import resize_image, shrink_refusal
from .document import ImageDocument, open_error_text
from .units import count, human_size
from .workers import Worker

Run = Callable[[Callable[[int, int], None]], Any]


class OperationJob(QObject):
    """One operation on one document; ``done`` carries the operation's result."""

    progressed = Signal(int, int)
    done = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, document: ImageDocument, title: str, run: Run, parent=None) -> None:
        super().__init__(parent)
        self.document = document
        self.title = title
        self._run = run
        self.worker: Worker | None = None

    def refusal(self) -> str | None:
        if self.document.writable:
            return ("Editing is enabled for this image: save or revert the pending edits "
                    "and turn editing off first.")
        return None

    def start(self) -> bool:
        why = self.refusal()
        if why is not None:
            self.failed.emit(why)
            return False
        if self.document.busy:
            self.document.cancel_analysis()
            self.document.wait_analysis()
        run = self._run

        def work(progress, cancel):
            def report(done: int, total: int) -> None:
                progress(done, total)
                if cancel():
                    raise CancelledError("cancelled")
            return run(report)

        self.worker = Worker(self.title, work, self)
        self.worker.progressed.connect(lambda _t, d, n: self.progressed.emit(d, n))
        self.worker.progressed.connect(self.document.progress)
        self.worker.succeeded.connect(self._succeeded)
        self.worker.failed.connect(self._failed)
        self.worker.start()
        return True

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def _refresh(self) -> None:
        try:
            self.document.refresh()         # header, tables and maps read again
        except Exception as e:               # noqa: BLE001 - told to the user, never raised
            self.failed.emit(open_error_text(e))

    def _succeeded(self, result) -> None:
        self._refresh()
        self.done.emit(result)

    def _failed(self, error) -> None:
        self._refresh()
        if isinstance(error, CancelledError):
            self.cancelled.emit()
        else:
            self.failed.emit(open_error_text(error))


# -- what each operation does (said before it runs) --------------------------------------
def snapshot_names(document: ImageDocument) -> list[str]:
    img = document.image
    return [s.name for s in img.snapshots] if img is not None else []


def snapshot_refusal(document: ImageDocument) -> str | None:
    """Why no internal snapshot can be taken of this image (None: it can)."""
    img = document.image
    if img is not None and img.has_data_file:
        return ("qemu-img takes no internal snapshots of an image with an external "
                "data file (Operation not supported).")
    return None


def describe_snapshot(document: ImageDocument, kind: str, name: str) -> str:
    img_name = document.name
    if kind == "create":
        return (f"Takes snapshot '{name}' of {img_name}: the disk as it is now (guest "
                "state only, no VM state).")
    with open_image(document.path, ignore_backing_errors=True) as im:
        if kind == "apply":
            s = snapshot_ops._find(im, name)
            size = f" and its size to {human_size(s.disk_size)}" if (
                s.disk_size and s.disk_size != im.virtual_size) else ""
            return (f"Reverts the disk of {img_name} to snapshot '{name}'{size}. What the "
                    "disk holds now and no snapshot keeps is lost.")
        p = snapshot_ops.preview_delete(im, name)
    return (f"Deletes snapshot '{name}' of {img_name} and frees "
            f"{human_size(p.freed_bytes)} ({count(p.freed_clusters, 'cluster')}).")


def resize_refusal(document: ImageDocument, new_size: int) -> str | None:
    """Why resizing to ``new_size`` is not done here, said before asking (None: it is)."""
    return shrink_refusal(document.image, new_size) if document.image is not None else None


#: qemu-img resize --preallocation's modes, and what each does to the new area
RESIZE_PREALLOCATION = {
    "off": "",
    "metadata": "; the new area's tables and clusters are allocated, no data written",
    "falloc": "; the new area's clusters are allocated and reserved on the host",
    "full": "; the new area's clusters are allocated and written with zeros",
}


def describe_resize(document: ImageDocument, new_size: int, preallocation: str = "off"
                    ) -> str:
    img = document.image
    old = img.virtual_size
    data = os.path.basename(img.data_file_name or "") if img.has_data_file else ""
    if new_size >= old:
        grows = f" (its data file {data} grows with it)" if data else ""
        return (f"Grows the disk of {document.name} from {human_size(old)} to "
                f"{human_size(new_size)}{grows}{RESIZE_PREALLOCATION[preallocation]}.")
    return (f"Shrinks the disk of {document.name} from {human_size(old)} to "
            f"{human_size(new_size)}: everything past {human_size(new_size)} is lost.")


def other_overlays(base: str, exclude: str | list[str], limit: int = 200) -> int:
    """Images in the base's folder (but ``exclude``, the committed chain) whose backing
    file is ``base``."""
    folder = os.path.dirname(os.path.abspath(base))
    skip = {os.path.realpath(p) for p in ([exclude] if isinstance(exclude, str) else exclude)}
    n = 0
    try:
        names = sorted(os.listdir(folder))[:limit]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(folder, name)
        if os.path.realpath(path) in skip:
            continue
        try:
            with open(path, "rb") as f:
                if f.read(4) != b"QFI\xfb":
                    continue
            with open_image(path, ignore_backing_errors=True) as im:
                info = im.backing_chain[0] if im.backing_chain else None
                if info and info.path and os.path.exists(info.path) \
                        and os.path.samefile(info.path, base):
                    n += 1
        except Exception:                  # noqa: BLE001 - unreadable files do not count
            continue
    return n


def commit_bases(document: ImageDocument) -> list[str]:
    """Paths of the backing chain that a commit can write into (direct backing first)."""
    img = document.image
    chain = img.backing_chain if img is not None else []
    return [b.path for b in chain if b.found and b.path]


def describe_commit(document: ImageDocument, base: str | None = None,
                    keep: bool = False) -> str:
    """What commit does; a ``base`` down the chain implies ``keep`` (as qemu-img -b)."""
    plan = plan_commit(document.path, base)
    # the images between the overlay and the base are the committed chain, not others
    above = [document.path] + commit_bases(document)[:plan.depth - 1]
    others = other_overlays(plan.base, above)
    shared = f" (shared by {count(others, 'other overlay')})" if others else ""
    after = (f", and keeps {document.name} as it is" if keep or base is not None
             else f", then empties {document.name}")
    return (f"Writes {human_size(plan.bytes_to_write)} into "
            f"{os.path.basename(plan.base)}{shared}{after}.")


def describe_convert(document: ImageDocument, out_fmt: str, options: dict) -> str:
    src = open_source(document.path)
    try:
        m = measure(source=src, out_fmt=out_fmt, options=options)
    finally:
        src.close()
    return (f"Writes the disk of {document.name} into a new {out_fmt} image of "
            f"{human_size(m.required)} at most ({human_size(m.fully_allocated)} fully "
            "allocated).")


def describe_rebase(document: ImageDocument, backing: str, unsafe: bool) -> str:
    if unsafe:
        return f"Only rewrites the backing file name of {document.name} to '{backing}'."
    if not backing:
        return (f"Copies everything {document.name} reads from its backing file into it "
                "and removes the backing file name (flatten).")
    return (f"Copies into {document.name} every range where its backing file and "
            f"'{backing}' differ, then names '{backing}' as its backing file.")


# -- the work ------------------------------------------------------------------------------
def snapshot_job(document: ImageDocument, kind: str, name: str, parent=None) -> OperationJob:
    ops = {"create": lambda im, p: snapshot_ops.create_snapshot(im, name),
           "apply": lambda im, p: snapshot_ops.apply_snapshot(im, name, p),
           "delete": lambda im, p: snapshot_ops.delete_snapshot(im, name, p)}
    fn = ops[kind]
    return _image_job(document, f"Snapshot {kind}", fn, parent)


def resize_job(document: ImageDocument, new_size: int, parent=None,
               preallocation: str = "off") -> OperationJob:
    return _image_job(document, "Resizing",
                      lambda im, p: resize_image(im, new_size, shrink=True, progress=p,
                                                 preallocation=preallocation), parent)


def amend_job(document: ImageDocument, options: dict, parent=None) -> OperationJob:
    return _image_job(document, "Amending",
                      lambda im, p: amend_image(im, options, progress=p), parent)


def commit_job(document: ImageDocument, parent=None, base: str | None = None,
               keep: bool = False) -> OperationJob:
    path = document.path
    return OperationJob(document, "Committing", lambda p: commit_image(
        path, base, keep=keep, progress=p), parent)


def rebase_job(document: ImageDocument, backing: str, backing_fmt: str | None, unsafe: bool,
               parent=None) -> OperationJob:
    path = document.path
    return OperationJob(document, "Rebasing", lambda p: rebase_image(
        path, backing, backing_fmt, unsafe=unsafe, progress=p), parent)


def convert_job(document: ImageDocument, dst: str, out_fmt: str, compress: bool,
                options: dict, parent=None) -> OperationJob:
    path = document.path
    return OperationJob(document, "Converting", lambda p: convert_image(
        path, dst, out_fmt=out_fmt, compress=compress, options=options, progress=p), parent)


def repair_job(document: ImageDocument, *, fix_all: bool = False, parent=None) -> OperationJob:
    """Image > Repair, as ``qemu-img check -r leaks`` (``-r all`` with ``fix_all``): the
    handle is opened for repair (an image marked corrupt opens).  Only its first,
    read-only scan reports progress, so a cancel lands before anything is written."""
    path = document.path

    def run(progress):
        with open_image(path, writable=True, repair=True, ignore_backing_errors=True) as im:
            return im.repair(leaks=True, fix_all=fix_all, progress=progress)
    return OperationJob(document, "Repairing", run, parent)


def _image_job(document, title: str, fn, parent) -> OperationJob:
    path = document.path

    def run(progress):
        with opened_writable(path, ignore_backing_errors=True) as im:
            return fn(im, progress)
    return OperationJob(document, title, run, parent)
