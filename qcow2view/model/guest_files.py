"""The guest disk's contents for the window: the index, built in the background.

:class:`GuestContents` belongs to an :class:`~.document.ImageDocument`.  It builds
the guest index (:func:`qcow2view.guest.index.build_index`) in a
:class:`~.workers.Worker` on a second, read-only Image of the file (the worker
thread runs only that pure-Python build and the directory listing below; every
Qt object stays on the main thread), then answers the views' questions: which
file is this path, what holds this guest byte, which clusters hold this file.
The worker first hands over a first look (:attr:`GuestContents.preview`: the
table, volumes and root directories, ~20 ms) so the Files tree has rows long
before the index is in; nothing else reads it.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import os
import threading
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal

from ..engine import CancelledError, Qcow2Error, open_image
from ..engine.kinds import GuestKind
from ..guest.fields import FieldIndex, structure_fields
from ..guest.files import Cancelled
from ..guest.index import GuestIndex, IndexedFile, Owner, build_index, build_top
from ..guest.journal import needs_recovery
from . import collector
from .guest_dirs import DirectoryReads
from .units import count, human_size
from .workers import Worker



@dataclass
class Listing:
    """Directory contents per filesystem, for the lazy tree: ``children[vol][dir]``
    is the sorted (name, file id) entries of directory ``dir`` of volume ``vol``."""

    children: list[dict[str, list[tuple[str, int]]]]
    #: (volume, file id, path) of every name, for the filter
    names: list[tuple[int, int, str]]
    free: list[int]             # bytes of free space per volume
    used: list[int]             # bytes of file data and metadata per volume
    #: every lower-case name (and path), one per line, and where each line starts: a
    #: filter is one str.find per hit, not a Python loop over 140k names
    name_blob: str = ""
    path_blob: str = ""
    name_starts: list[int] = field(default_factory=list)
    path_starts: list[int] = field(default_factory=list)

    def search(self, text: str, limit: int) -> tuple[list[int], bool]:
        """Indices into :attr:`names` of the names (with a '/': paths) containing the
        lower-case ``text``, at most ``limit``; and whether there are more."""
        blob, starts = ((self.path_blob, self.path_starts) if "/" in text
                        else (self.name_blob, self.name_starts))
        hits: list[int] = []
        pos = 0
        while True:
            i = blob.find(text, pos)
            if i < 0:
                return hits, False
            k = bisect.bisect_right(starts, i) - 1
            if len(hits) == limit:
                return hits, True
            hits.append(k)
            pos = starts[k + 1] if k + 1 < len(starts) else len(blob)


BLOB_CHUNK = 4096      # lines lowered per call: one call holds the GIL (the window waits)


def _blob(lines: list[str]) -> tuple[str, list[int]]:
    """The lower-cased lines joined, and where each starts.  Lowered a few thousand
    lines per call (one str.lower over 8 MB held the GIL ~40 ms), each chunk at once
    unless lowering changes its length ('İ' becomes two characters): then line by line."""
    parts: list[str] = []
    lengths: list[int] = []
    for k in range(0, len(lines), BLOB_CHUNK):
        chunk = lines[k:k + BLOB_CHUNK]
        text = "\n".join(chunk) + "\n"
        low = text.lower()
        if len(low) != len(text):
            chunk = [line.lower() for line in chunk]
            low = "\n".join(chunk) + "\n"
        parts.append(low)
        lengths.extend([len(line) + 1 for line in chunk])
    starts = list(accumulate(lengths, initial=0))
    starts.pop()
    return "".join(parts), starts


def list_dirs(index: GuestIndex) -> Listing:
    """Group every name of every file under its directory (pure Python: worker-safe;
    the loop runs once per name of a 140k-file disk, so it stays plain)."""
    vols = {id(gv): i for i, gv in enumerate(index.volumes)}
    children: list[dict[str, list[tuple[str, int]]]] = [{} for _ in index.volumes]
    names: list[tuple[int, int, str]] = []
    leaves: list[str] = []
    add_name, add_leaf = names.append, leaves.append
    volume, vi, dirs = None, -1, {}
    for f in index.files:
        if f.volume is not volume:
            volume = f.volume
            vi = vols[id(volume)]
            dirs = children[vi]
        fid = f.id
        for path in f.names:
            parent, _slash, name = path.rpartition("/")     # paths are "/a/b", never "a"
            entries = dirs.get(parent or "/")
            if entries is None:
                dirs[parent or "/"] = [(name, fid)]
            else:
                entries.append((name, fid))
            add_name((vi, fid, path))
            add_leaf(name)
    for d in children:
        for entries in d.values():
            entries.sort()
    # free / used bytes per volume from the painted ranges
    ends = np.append(index.starts[1:], index.disk.size)
    lengths = ends - index.starts
    free, used = [], []
    for vi in range(len(index.volumes)):
        mine = index.vol == vi
        free.append(int(lengths[mine & (index.kind == 2)].sum()))
        used.append(int(lengths[mine & (index.kind >= 3)].sum()))
    listing = Listing(children, names, free, used)
    listing.name_blob, listing.name_starts = _blob(leaves)
    listing.path_blob, listing.path_starts = _blob([n[2] for n in names])
    return listing


@dataclass
class Built:
    """What the worker hands back: the index, its listing, and the Image it read
    (kept open: host cluster questions read its guest map)."""

    index: GuestIndex
    listing: Listing
    image: Any
    recovery: dict[int, bool] = field(default_factory=dict)   # volume -> journal needs it
    fields: FieldIndex | None = None    # named fields of the tables and superblocks
    leaks_for: tuple[int, ...] = ()     # the leaked host clusters the check had found
    leak_fates: dict = field(default_factory=dict)  # cluster -> LeakFate, read in the worker

    def close(self) -> None:
        if self.image is not None:
            self.image.close()
            self.image = None


_gc_lock = threading.Lock()
_gc_paused = 0               # builds running (two tabs may build at once)
_gc_was_enabled = True
_gc_freeze = False
FREEZE_OBJECTS = 200_000        # index entries (files and names) worth freezing


@contextlib.contextmanager
def _cyclic_gc_paused():
    """The index makes several objects per file; the cyclic collector's full passes
    over them (0.3-0.5 s each on 140k files, with the GIL held) froze the window while
    it built.  Pause the collector meanwhile, then move what the build made out of its
    reach (``gc.freeze``: the index has no reference cycles; reference counting still
    frees it)."""
    global _gc_paused, _gc_was_enabled, _gc_freeze
    with _gc_lock:
        if _gc_paused == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_paused += 1
    made = {"objects": 0}
    try:
        with collector.paused():        # the GUI thread's collector too
            yield made
    finally:
        with _gc_lock:
            _gc_paused -= 1
            _gc_freeze = _gc_freeze or made["objects"] >= FREEZE_OBJECTS
            if _gc_paused == 0 and (_gc_was_enabled or collector.installed()):
                # a small index is collected as usual (freezing also keeps whatever cyclic
                # garbage exists at that moment for good)
                if _gc_freeze:
                    gc.freeze()
                _gc_freeze = False
                if _gc_was_enabled:
                    gc.enable()


def _build(path: str, progress, cancel, leaks: tuple[int, ...] = (), preview=None) -> Built:
    with _cyclic_gc_paused() as made:
        built = _build_index(path, progress, cancel, preview)
        if leaks:           # here, not on the GUI thread: the search probes every cluster
            from ..guest.leaked import leaked_fates
            try:
                built.leak_fates = leaked_fates(built.image, leaks, built.image.guest_map())
                built.leaks_for = leaks
            except (Qcow2Error, OSError):
                pass        # a nicety: the Problems list keeps the check's own words
        made["objects"] = len(built.index.files) + len(built.listing.names)
        return built


def _build_index(path: str, progress, cancel, preview=None) -> Built:
    img = open_image(path, ignore_backing_errors=True)
    try:
        def cb(done: int, total: int) -> bool:
            progress(done, total)
            return not cancel()
        if preview is not None:     # the tree's first rows, before the long walk
            preview(_first_look(img))
        index = build_index(img, progress=cb)
        if cancel():
            raise Cancelled("cancelled")
        listing = list_dirs(index)
        recovery = {}
        for vi, gv in enumerate(index.volumes):
            fs = gv.filesystem
            if fs is not None and fs.type in ("ext3", "ext4"):
                recovery[vi] = needs_recovery(img.read, gv.volume.start)
        try:
            fields = FieldIndex(structure_fields(index.disk, img.read))
        except Qcow2Error:
            fields = None       # the labels are a nicety: an unreadable sector loses them
        return Built(index, listing, img, recovery, fields)
    except BaseException:
        img.close()
        raise


def _first_look(img) -> Built | None:
    """The table, volumes and root directories (a few ms), as a Built without an
    Image: only the tree reads it (its owners would be wrong: deeper files are missing)."""
    try:
        top = build_top(img)
    except (Qcow2Error, OSError):
        return None             # the full build says why
    top.image = None
    return Built(top, list_dirs(top), None)


class _IndexWorker(Worker):
    previewed = Signal(object)          # the first look's Built (or None), from the thread


def leaked_clusters(check_result) -> tuple[int, ...]:
    """The host clusters the check found leaked (none before it ran)."""
    return tuple(sorted({f.cluster for f in getattr(check_result, "findings", None) or ()
                         if f.severity == "leak" and f.cluster is not None}))


def _close_built(b: Built) -> None:
    b.close()


@dataclass
class Summary:
    """What the Files pane says and lights up for a selected entry."""

    text: str
    guest_clusters: np.ndarray          # guest cluster numbers (of the guest map)
    host_clusters: np.ndarray           # host cluster numbers
    first_offset: int | None = None     # the first guest byte (Show in hex)
    ranges: list[tuple[int, int]] = field(default_factory=list)   # guest byte ranges


def _changes(path: str, index: GuestIndex, snapshot: str | None, progress, cancel):
    from ..guest.changed import changed_vs_backing, changed_vs_snapshot

    def cb(done: int, total: int) -> bool:
        progress(done, total)
        return not cancel()
    with open_image(path, ignore_backing_errors=True) as img:
        if snapshot is None:
            return changed_vs_backing(img, index, cb)
        return changed_vs_snapshot(img, snapshot, index, cb)


class GuestContents(QObject):
    """The guest index of one document, built on request in the background."""

    progress = Signal(str, int, int)    # task, done, total
    busyChanged = Signal(bool)
    ready = Signal()                    # index in (or failed / cancelled: see state)
    previewed = Signal()                # the first look is in (preview), the index is not
    reset = Signal()                    # the index is gone (rebuilding)
    changesReady = Signal(object)       # Changes, or a str: why there are none

    def __init__(self, document) -> None:
        super().__init__(document)
        self.built: Built | None = None
        #: while building: the table, volumes and root directories, for the tree only
        self.preview: Built | None = None
        self.state = "idle"             # idle | building | ready | cancelled | failed
        self.error: str | None = None
        self._worker: Worker | None = None
        self._stamp: tuple[int, int] | None = None     # the file as the index read it
        self.changes = None                 # the last Changes found (changed files)
        self._changes_worker: Worker | None = None
        #: directories of the first look read on demand (its ``read`` signal: one is in)
        self.dirs = DirectoryReads(self)
        document.closed.connect(self.close)
        document.changed.connect(self._file_changed)

    @property
    def document(self):
        """The owning ImageDocument (the parent: an attribute would make a reference
        cycle, leaving the document to the garbage collector, which may delete it on a
        worker thread)."""
        return self.parent()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.document.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _file_changed(self) -> None:
        """Re-read after a save (the document re-read the file); a reopen for editing
        leaves the file as it was and the index stays."""
        if self.state in ("ready", "building") and self._file_stamp() != self._stamp:
            self.rebuild()

    # -- building ----------------------------------------------------------------------
    def ensure(self) -> None:
        """Start building unless built, building, or cancelled by the user."""
        if self.state == "idle":
            self.rebuild()

    def rebuild(self) -> None:
        self._stop()
        self._drop()
        path = self.document.path
        self._stamp = self._file_stamp()
        leaks = leaked_clusters(self.document.check_result)
        w = _IndexWorker("Reading the guest's files",
                         lambda p, c: _build(path, p, c, leaks, w.previewed.emit), self)
        w.previewed.connect(self._previewed)
        w.progressed.connect(self.progress)
        w.succeeded.connect(self._done)
        w.failed.connect(self._failed)
        self._worker = w
        self.state = "building"
        self.error = None
        self.reset.emit()
        self.busyChanged.emit(True)
        w.start()

    def cancel(self) -> None:
        for w in (self._worker, self._changes_worker):
            if w is not None:
                w.cancel()

    def wait(self, timeout_ms: int = 60000) -> bool:
        w = self._worker
        return True if w is None else w.wait(timeout_ms)

    @property
    def building(self) -> bool:
        return self.state == "building"

    @property
    def busy(self) -> bool:
        return self.state == "building" or self._changes_worker is not None

    def close(self) -> None:
        self._stop()
        self._drop()
        self.state = "idle"

    # -- changed files -------------------------------------------------------------------
    def compare_choices(self) -> list[tuple[str, str | None]]:
        """(label, snapshot name or None for the backing chain) of what this disk can be
        compared with."""
        img = self.document.image
        if img is None:
            return []
        out = []
        if img.backing_filename is not None:
            out.append((f"backing file {os.path.basename(img.backing_filename)}", None))
        out.extend((f"snapshot {s.name}", s.name) for s in img.snapshots)
        return out

    def find_changes(self, snapshot: str | None) -> None:
        """Compare with the backing chain (or ``snapshot``) in the background; the
        result comes with :attr:`changesReady`."""
        self._stop_changes()
        idx = self.index
        if idx is None:
            self.changesReady.emit("the guest's files are not read yet")
            return
        path = self.document.path
        w = Worker("Comparing", lambda p, c: _changes(path, idx, snapshot, p, c), self)
        w.progressed.connect(self.progress)
        w.succeeded.connect(self._changes_done)
        w.failed.connect(self._changes_failed)
        self._changes_worker = w
        self.busyChanged.emit(True)
        w.start()

    @property
    def comparing(self) -> bool:
        return self._changes_worker is not None

    def _stop_changes(self) -> None:
        w, self._changes_worker = self._changes_worker, None
        if w is not None:
            w.detach(w.progressed, w.succeeded, w.failed)
            w.stop()
            w.deleteLater()
            self.busyChanged.emit(False)

    def _changes_over(self) -> None:
        w, self._changes_worker = self._changes_worker, None
        if w is not None:
            w.wait()
            w.deleteLater()
        self.busyChanged.emit(False)

    def _changes_done(self, changes) -> None:
        if self.sender() is not self._changes_worker:
            return
        self._changes_over()
        self.changes = changes
        self.changesReady.emit(changes)

    def _changes_failed(self, exc: BaseException) -> None:
        if self.sender() is not self._changes_worker:
            return
        self._changes_over()
        if isinstance(exc, (Cancelled, CancelledError)):
            self.changesReady.emit("cancelled")
        elif isinstance(exc, Qcow2Error):
            self.changesReady.emit(exc.reason)
        else:
            self.changesReady.emit(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, OSError):
                raise exc

    def read_dir(self, vol: int, path: str) -> bool:
        """Read directory ``path`` of volume ``vol`` now, in the background, while the
        first look lacks it and the index is not in (``dirs.read`` tells when it is)."""
        first = self.preview
        if first is None or self.built is not None or not self.building:
            return False
        return self.dirs.request(first, vol, path)

    def _drop(self) -> None:
        self.dirs.stop()
        self._stop_changes()
        self.changes = None
        self.preview = None
        if self.built is not None:
            self.built.close()
            self.built = None

    def _stop(self) -> None:
        w = self._worker
        if w is None:
            return
        self._worker = None
        w.detach(w.progressed, w.succeeded, w.failed, w.previewed)
        w.succeeded.connect(_close_built, Qt.DirectConnection)
        w.stop()
        w.deleteLater()
        if self.state == "building":
            self.state = "idle"
            self.busyChanged.emit(False)

    def _finish(self, state: str) -> None:
        w, self._worker = self._worker, None
        if w is not None:
            w.wait()
            w.deleteLater()
        self.state = state
        self.preview = None
        self.busyChanged.emit(False)
        self.ready.emit()

    def _previewed(self, first: Built | None) -> None:
        if self.sender() is not self._worker or first is None or self.state != "building":
            return
        self.preview = first
        self.previewed.emit()

    def _done(self, built: Built) -> None:
        if self.sender() is not self._worker:
            built.close()
            return
        self.built = built
        self._finish("ready")

    def _failed(self, exc: BaseException) -> None:
        if self.sender() is not self._worker:
            return
        if isinstance(exc, (Cancelled, CancelledError)):
            self.error = "cancelled"
            self._finish("cancelled")
            return
        self.error = (str(exc) if isinstance(exc, Qcow2Error)
                      else f"{type(exc).__name__}: {exc}")
        self._finish("failed")
        if not isinstance(exc, (Qcow2Error, OSError)):
            raise exc

    # -- questions ---------------------------------------------------------------------
    @property
    def index(self) -> GuestIndex | None:
        return None if self.built is None else self.built.index

    @property
    def tree(self) -> Built | None:
        """What the Files tree shows: the index, else the first look while building."""
        return self.built if self.built is not None else self.preview

    def owner(self, offset: int) -> Owner | None:
        idx = self.index
        if idx is None or not 0 <= offset < idx.disk.size:
            return None
        return idx.owner(offset)

    def resolve(self, text: str) -> list[IndexedFile]:
        """Files named ``PATH`` or ``PARTITION:PATH`` (every filesystem's when no
        partition is given)."""
        idx = self.index
        if idx is None:
            return []
        part = None
        head, sep, rest = text.partition(":")
        if sep and head.strip().isdigit() and rest.startswith("/"):
            part, text = int(head), rest
        path = "/" + text.strip().strip("/") if text.strip() not in ("", "/") else "/"
        return idx.find(path, part)

    def completions(self) -> list[str]:
        """Every path, and ``PARTITION:PATH`` for paths two filesystems share."""
        idx = self.index
        if idx is None:
            return []
        out = []
        for path, files in idx._by_path.items():
            parts = {f.volume.partition.index for f in files}
            if len(parts) > 1:
                out.extend(f"{p}:{path}" for p in sorted(parts))
            else:
                out.append(path)
        return sorted(out)

    def layout(self) -> tuple[int, list[tuple[int, int, str]], int, int]:
        """(disk size, [(start, size, name) per partition], image file size, cluster
        size), for pictures of where things are."""
        d = self.document
        img = d.image
        idx = self.index
        parts = []
        if idx is not None:
            for gv in idx.disk.volumes:
                p = gv.partition
                fs = gv.filesystem
                name = (f"{p.index}" if p.index else "disk") + (f" {fs.type}" if fs else "")
                parts.append((gv.volume.start, gv.volume.size, name))
        disk = idx.disk.size if idx is not None else (img.virtual_size if img else 0)
        file_size = img.file.size if img is not None else 0
        return disk, parts, file_size, img.cluster_size if img is not None else 1

    def edit_refusal(self, f: IndexedFile) -> str | None:
        """Why the bytes of ``f`` cannot be edited in place in the hex view."""
        info = f.info
        if info.inline:
            return (f"{f.path}: its bytes are inline data inside the filesystem's metadata "
                    "(checksummed), not blocks of their own; editing them in place is refused")
        if info.type == "dir":
            return f"{f.path} is a directory"
        if not info.extents:
            return f"{f.path} has no data blocks (empty or all holes)"
        return None

    def volume_of_row(self, name: str) -> int | None:
        """The volume a header panel row ("guest:N", from :func:`guest_rows`) stands for."""
        head, _sep, tail = name.partition(":")
        if head != "guest" or not tail.isdigit() or self.index is None:
            return None
        vol = int(tail)
        return vol if vol < len(self.index.volumes) else None

    def edit_guard(self, offset: int, length: int) -> str | None:
        """Why an edit of guest bytes ``offset..offset+length`` is refused: it would
        land in the inode (MFT record) of a file whose bytes are inline there, inside
        checksummed metadata.  None when the index is not read or all is well."""
        idx = self.index
        if idx is None or length <= 0:
            return None
        vols = {(gv.partition.index, gv.lv_name): i for i, gv in enumerate(idx.volumes)}
        for lo, n, o in idx.ranges(offset, min(length, 1 << 20)):
            if o.what != "filesystem metadata" or o.partition is None:
                continue
            vi = vols.get((o.partition, o.volume))
            if vi is None:
                continue
            # records are 128 bytes or more: one probe per 128 bytes meets each of them
            for at in list(range(lo, lo + n, 128))[:64] + [lo + n - 1]:
                number, f = idx.record_owner(vi, at)
                if f is not None and f.info.inline:
                    where = "MFT record" if f.volume.filesystem.type == "ntfs" else "inode"
                    return (f"{f.path}: its bytes are inline data in {where} {number}, "
                            "inside checksummed filesystem metadata; editing them in "
                            "place is refused")
        return None

    def journal_warning(self, f: IndexedFile) -> str | None:
        """A warning when ``f``'s filesystem has a journal that needs recovery."""
        b = self.built
        if b is None:
            return None
        vi = next((i for i, gv in enumerate(b.index.volumes) if gv is f.volume), None)
        if vi is not None and b.recovery.get(vi):
            return (f"partition {f.volume.partition.index} ({f.volume.filesystem.type}): the "
                    "journal needs recovery (the guest was not shut down cleanly); the guest "
                    "will replay it on the next mount and may overwrite an edit here")
        return None

    def read_file(self, f: IndexedFile) -> bytes:
        """The file's bytes, as ``qcow2view-cli cat`` gives them (holes as zeros)."""
        from ..guest.disk import read_through_library
        from ..guest.source import GuestSource
        img = self.built.image
        info = f.info
        if info.inline:
            return read_through_library(GuestSource.of_image(img), f.volume, info.path,
                                        info.size)
        out = bytearray(info.size)
        for fo, g, n in info.extents:
            out[fo:fo + n] = img.read(g, n)
        return bytes(out[:info.size])

    def describe_volume(self, vol: int) -> Summary:
        """A partition (or LV) with what it holds, its bytes lit (the first look's
        volumes are the index's: this needs no index)."""
        gv = self.tree.index.volumes[vol]
        what = f"partition {gv.partition.index}" if gv.partition.index else "whole disk"
        if gv.filesystem is not None:
            what += f" ({gv.filesystem.type})"
        return self.summary([(g, n) for _v, g, n in gv.volume.pieces], gv.volume.size,
                            None, f"{what}: ")

    def describe_file(self, f: IndexedFile, path: str) -> Summary:
        """A file (by the name ``path``) with its extents and clusters lit."""
        info = f.info
        if info.inline:
            none = np.zeros(0, np.int64)
            return Summary(f"{path}: {info.size} bytes inline in the filesystem's metadata "
                           "(no blocks of its own)", none, none)
        return self.summary([(g, n) for _fo, g, n in info.extents], info.size,
                            len(info.extents), f"{path}: ")

    def summary(self, ranges: list[tuple[int, int]], size: int, extents: int | None,
                what: str = "") -> Summary:
        """The one-line summary and highlights of guest byte ``ranges``:
        "12 KiB in 3 extents, 2 host clusters, 1 shared with snapshot s1, 1 from
        backing file base.qcow2"."""
        d = self.document
        gm = d.guest_map
        head = f"{what}{human_size(size)}"
        if extents is not None:
            head += f" in {count(extents, 'extent')}"
        none = np.zeros(0, np.int64)
        first = ranges[0][0] if ranges else None
        if gm is None or not ranges:
            return Summary(head, none, none, first, ranges)
        ucs = gm.cluster_size
        # a mask over the guest map, not an arange per range: a whole partition of a big
        # disk is millions of clusters, held once (and as int32 where that fits)
        entries = len(gm.states)
        mask = np.zeros(entries, bool)
        for g, n in ranges:
            mask[g // ucs:min(entries, (g + max(n, 1) - 1) // ucs + 1)] = True
        guest = np.flatnonzero(mask)
        if entries < 1 << 31:
            guest = guest.astype(np.int32)
        del mask
        states, depth = gm.states[guest], gm.depth[guest]
        parts = [head]
        host = none
        if gm.clusters_per_entry == 1:
            own = (depth == 0) & ((states == GuestKind.DATA)
                                  | (states == GuestKind.COMPRESSED))
            host = np.unique((gm.host_offsets[guest[own]] // np.uint64(ucs)).astype(np.int64))
            parts.append(count(len(host), "host cluster"))
            comp = int(np.count_nonzero((depth == 0) & (states == GuestKind.COMPRESSED)))
            if comp:
                parts.append(f"{comp} compressed")
            parts.extend(self._shared(host))
        backing = int(np.count_nonzero(depth > 0))
        if backing:
            names = [b.filename for b in d.image.backing_chain] if d.image else []
            name = os.path.basename(names[0]) if names else "the backing file"
            parts.append(f"{backing} from backing file {name}")
        zero = int(np.count_nonzero((states == GuestKind.ZERO) & (depth == 0)))
        if zero:
            parts.append(f"{zero} zero")
        unalloc = int(np.count_nonzero((states == GuestKind.UNALLOCATED) & (depth == 0)))
        if unalloc:
            parts.append(f"{unalloc} unallocated")
        return Summary(", ".join(parts), guest, host, first, ranges)

    def _shared(self, host: np.ndarray) -> list[str]:
        hm = self.document.host_map
        if hm is None or not len(host):
            return []
        ok = host[host < len(hm)]
        refs = np.asarray([hm.refcounts[int(c)] for c in ok[:4096]], dtype=np.int64)
        shared = ok[:4096][refs > 1]
        if not len(shared):
            return []
        snaps: list[str] = []
        for c in shared[:16].tolist():
            for o in hm.owners(c):
                if o.snapshot and o.snapshot not in snaps:
                    snaps.append(o.snapshot)
        where = f" with snapshot {', '.join(snaps)}" if snaps else ""
        return [f"{len(shared)} shared{where}"]
