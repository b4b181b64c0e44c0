"""Directories of the Files tree's first look, read on demand while the index builds.

The first look (:attr:`GuestContents.preview`) lists each filesystem's root
directory only; a directory opened in the tree before the index is in is read
alone (:func:`qcow2view.guest.disk.list_directory`) by a :class:`~.workers.Worker`
on a read-only Image of its own (the index's worker reads through another), and
its entries join the first look's listing on the GUI thread.  The index's rows
replace them all when it is in.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from ..engine import CancelledError, Qcow2Error, open_image
from ..guest.disk import list_directory
from ..guest.files import Cancelled
from ..guest.index import IndexedFile
from .workers import Worker


def read_directory(file: str, gv, path: str, cancel):
    """Worker side: directory ``path``'s entries as files of the first look (their
    ids given on the GUI thread), sorted by name; or why it could not be read."""
    def tick(_n: int) -> None:
        if cancel():
            raise Cancelled("cancelled")
    with open_image(file, ignore_backing_errors=True) as img:
        fs = list_directory(img, gv, path, tick)
    named = sorted((info.path.rpartition("/")[2], k) for k, info in enumerate(fs.files))
    made = [IndexedFile(-1, gv, fs.files[k], [fs.files[k].path]) for _name, k in named]
    if not made and (not fs.readable or fs.problems):
        return (fs.reason if not fs.readable else fs.problems[0]) or "unreadable"
    return [name for name, _k in named], made


def merge_directory(first, vol: int, path: str, got) -> None:
    """Directory ``path`` of volume ``vol`` (:func:`read_directory`'s names and files,
    or the reason it could not be read) into the first look ``first`` (a Built): the
    files join its index, the names its listing; an unreadable directory is listed as
    one note (file id -1) saying why.  A few ms for 20,000 entries."""
    if isinstance(got, str):
        first.listing.children[vol][path] = [(got, -1)]
        return
    names, made = got
    files = first.index.files
    base = len(files)
    for k, f in enumerate(made):
        f.id = base + k
    files.extend(made)
    first.listing.children[vol][path] = list(zip(names, range(base, base + len(made))))


class DirectoryReads(QObject):
    """The on-demand reads of one GuestContents (its parent): at most one per
    directory at a time; :attr:`read` says when a directory's entries are in."""

    read = Signal(int, str)         # volume, directory path

    def __init__(self, contents: QObject) -> None:
        super().__init__(contents)
        self._running: dict[Worker, tuple[object, int, str]] = {}

    def request(self, first, vol: int, path: str) -> bool:
        """Read directory ``path`` of volume ``vol`` of the first look ``first`` (a
        Built); False when there is nothing to read it with."""
        if any(r == (first, vol, path) for r in self._running.values()):
            return True
        gv = first.index.volumes[vol] if 0 <= vol < len(first.index.volumes) else None
        if gv is None or gv.probe is None or gv.filesystem is None:
            return False
        file = self.parent().document.path
        w = Worker(f"Reading {path}", lambda _p, c: read_directory(file, gv, path, c), self)
        w.succeeded.connect(self._done)
        w.failed.connect(self._failed)
        self._running[w] = (first, vol, path)
        w.start()
        return True

    def _over(self) -> tuple[object, int, str] | None:
        w = self.sender()
        got = self._running.pop(w, None)
        if got is not None:
            w.wait()                # its run() has returned: a moment
            w.deleteLater()
        return got

    def _merge(self, got, fs) -> None:
        first, vol, path = got
        if self.parent().preview is not first:
            return                  # the index is in (or being read again) meanwhile
        merge_directory(first, vol, path, fs)
        self.read.emit(vol, path)

    def _done(self, fs) -> None:
        got = self._over()
        if got is not None:
            self._merge(got, fs)

    def _failed(self, exc: BaseException) -> None:
        got = self._over()
        if got is None or isinstance(exc, (Cancelled, CancelledError)):
            return
        if isinstance(exc, (Qcow2Error, OSError)):
            self._merge(got, f"unreadable: {getattr(exc, 'reason', None) or exc}")
            return
        raise exc

    def stop(self) -> None:
        """Cancel and join every read (the document closes, the index is read again)."""
        running, self._running = self._running, {}
        for w in running:
            w.detach(w.succeeded, w.failed)
            w.stop()
            w.deleteLater()

    @property
    def busy(self) -> bool:
        return bool(self._running)
