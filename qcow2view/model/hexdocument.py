"""The hex editor's document: a byte source in cached blocks, plus pending edits.

Reads go through a :class:`~.bytesource.ByteSource` (the guest disk, or the image
file itself) in fixed blocks kept in a bounded LRU cache, each block carrying what
backs its bytes (so the view can tint them).  Edits are an overlay (per block:
values and a mask) until :meth:`HexDocument.save` writes them through
``Image.write`` in coalesced runs; a ``QUndoStack`` of byte-range replace commands
undoes them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from . import qtfix  # noqa: F401 - PySide6 6.12 refcount guards (see qtfix)
from ..engine import Image, Qcow2Error, open_image
from .bytesource import ByteSource, GuestDiskSource
from .extents import GuestKind

BLOCK_SIZE = 64 * 1024
CACHE_BLOCKS = 64                 # 4 MiB of guest data at most
TYPING_ID = 0x4845                # QUndoCommand.id() of merged typing
MAX_EDIT = 64 * 1024 * 1024       # bytes one paste or fill may change


class _Block:
    __slots__ = ("data", "kinds", "error")

    def __init__(self, data: bytes, kinds: np.ndarray, error: str | None = None) -> None:
        self.data = data          # bytes as stored (no edits)
        self.kinds = kinds        # uint8 GuestKind per byte
        self.error = error


class ReplaceCommand(QUndoCommand):
    """Overwrite ``offset..offset+len(new)``; remembers the overlay it replaced."""

    def __init__(self, doc: "HexDocument", offset: int, new: bytes, text: str,
                 typing: bool = False) -> None:
        super().__init__(text)
        self.doc = doc
        self.offset = offset
        self.new = bytearray(new)
        self.old_vals, self.old_mask = doc._overlay(offset, len(new))
        self.typing = typing

    @property
    def end(self) -> int:
        return self.offset + len(self.new)

    def redo(self) -> None:
        self.doc._apply(self.offset, bytes(self.new), b"\x01" * len(self.new))

    def undo(self) -> None:
        self.doc._apply(self.offset, bytes(self.old_vals), bytes(self.old_mask))

    def id(self) -> int:  # noqa: A003 - Qt API
        return TYPING_ID if self.typing else -1

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt API
        if not isinstance(other, ReplaceCommand) or not other.typing \
                or other.offset < self.offset or other.offset > self.end:
            return False
        rel = other.offset - self.offset
        grow = other.end - self.end
        if grow > 0:   # the new bytes' old state comes from the other command
            self.old_vals += other.old_vals[len(other.new) - grow:]
            self.old_mask += other.old_mask[len(other.new) - grow:]
            self.new += bytes(grow)
        self.new[rel:rel + len(other.new)] = other.new
        self.setText(f"Type {len(self.new)} byte(s) at {self.offset:#x}")
        return True


class HexDocument(QObject):
    """The bytes of a :class:`ByteSource` with an edit overlay and undo stack.

    ``HexDocument(image)`` shows the guest disk of an engine Image;
    ``source=ImageFileSource`` the image file.  ``reopen(writable)`` (returning the new
    Image) and ``after_save()`` let an owner such as ImageDocument reopen the file
    and re-read it; without them the document reopens through the engine itself.
    """

    contentChanged = Signal(object, object)       # offset, length (edits, undo)
    reloaded = Signal()                      # everything may have changed
    modifiedChanged = Signal(bool)
    editableChanged = Signal(bool)
    editingRefused = Signal(str)             # the engine's reason
    saved = Signal()
    saveFailed = Signal(str)

    block_size = BLOCK_SIZE

    def __init__(self, image: Image | None = None, parent: QObject | None = None, *,
                 source: type[ByteSource] = GuestDiskSource,
                 cache_blocks: int = CACHE_BLOCKS,
                 reopen: Callable[[bool], Image | None] | None = None,
                 after_save: Callable[[], None] | None = None) -> None:
        super().__init__(parent)
        self.source: ByteSource = source(image)
        self.lock = threading.RLock()        # engine access (the find worker shares it)
        self._cache: OrderedDict[int, _Block] = OrderedDict()
        self._cache_max = cache_blocks
        self._pend: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._npending = 0
        self._modified = False
        self.undo_stack = QUndoStack(self)
        self.undo_stack.setUndoLimit(1000)
        self._reopen = reopen
        self._after_save = after_save
        self._edit_guard: Callable[[int, int], str | None] | None = None

    # -- the image ---------------------------------------------------------------------
    @property
    def image(self) -> Image | None:
        return self.source.image

    @property
    def size(self) -> int:
        return self.source.size

    @property
    def cluster_size(self) -> int:
        return self.source.cluster_size

    @property
    def editable(self) -> bool:
        return self.source.editable

    @property
    def path(self) -> str | None:
        return None if self.image is None else self.image.path

    def set_image(self, image: Image | None) -> None:
        """Follow a reopened image; pending edits stay (they are guest offsets)."""
        was = self.editable
        with self.lock:
            self.source = self.source.follow(image)
            self._cache.clear()
        self.reloaded.emit()
        if self.editable != was:
            self.editableChanged.emit(self.editable)

    def invalidate(self) -> None:
        with self.lock:
            self._cache.clear()
        self.reloaded.emit()

    # -- reading -----------------------------------------------------------------------
    def _block(self, index: int) -> _Block:
        b = self._cache.get(index)
        if b is not None:
            self._cache.move_to_end(index)
            return b
        with self.lock:
            b = self._load(index)
            self._cache[index] = b
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return b

    def _load(self, index: int) -> _Block:
        start = index * BLOCK_SIZE
        n = min(BLOCK_SIZE, self.size - start)
        src = self.source
        try:
            return _Block(src.read(start, n), src.kinds(start, n))
        except Qcow2Error as e:
            first_error = str(e)
        # something in the block cannot be read: read it cluster by cluster so
        # only the clusters at fault show as unreadable
        data = bytearray(n)
        kinds = np.full(n, GuestKind.ERROR, dtype=np.uint8)
        g = min(self.cluster_size, n)
        for pos in range(0, n, g):
            k = min(g, n - pos)
            try:
                data[pos:pos + k] = src.read(start + pos, k)
                kinds[pos:pos + k] = src.kinds(start + pos, k)
            except Qcow2Error:
                continue        # this cluster stays unreadable (ERROR, zeros)
        return _Block(bytes(data), kinds, first_error)

    def read_source(self, offset: int, length: int) -> bytes:
        """Uncached bytes from the source, no edits (hold :attr:`lock`)."""
        return self.source.read(offset, length)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes as the user sees them (pending edits applied)."""
        return bytes(self._span(offset, length)[0])

    def _span(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        end = min(offset + length, self.size)
        n = max(0, end - offset)
        data = np.empty(n, dtype=np.uint8)
        kinds = np.empty(n, dtype=np.uint8)
        pend = np.zeros(n, dtype=bool)
        pos = offset
        while pos < end:
            bi, o = divmod(pos, BLOCK_SIZE)
            b = self._block(bi)
            k = min(end - pos, len(b.data) - o)
            d = pos - offset
            data[d:d + k] = np.frombuffer(b.data, dtype=np.uint8, count=k, offset=o)
            kinds[d:d + k] = b.kinds[o:o + k]
            p = self._pend.get(bi)
            if p is not None:
                m = p[1][o:o + k]
                data[d:d + k] = np.where(m, p[0][o:o + k], data[d:d + k])
                pend[d:d + k] = m
            pos += k
        return data, kinds, pend

    def span(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bytes, GuestKind per byte, pending mask) for painting."""
        return self._span(offset, length)

    def block_error(self, offset: int) -> str | None:
        return self._block(offset // BLOCK_SIZE).error

    def mapping_at(self, offset: int):
        """The engine's GuestMapping of ``offset`` (None if it cannot be had)."""
        with self.lock:
            return self.source.mapping_at(offset)

    def next_content(self, offset: int, forward: bool = True) -> int | None:
        """First byte of the next/previous cluster that may hold data (skips
        unallocated and zero clusters by L2 table, never byte by byte)."""
        with self.lock:
            return self.source.next_content(offset, forward)

    def extents(self, start: int, end: int):
        """(start, end, GuestKind) runs, for the find worker (hold :attr:`lock`)."""
        return self.source.extents(start, end)

    # -- the overlay -------------------------------------------------------------------
    def _overlay(self, offset: int, length: int) -> tuple[bytearray, bytearray]:
        vals, mask = bytearray(length), bytearray(length)
        pos, end = offset, offset + length
        while pos < end:
            bi, o = divmod(pos, BLOCK_SIZE)
            k = min(end - pos, BLOCK_SIZE - o)
            p = self._pend.get(bi)
            if p is not None:
                d = pos - offset
                vals[d:d + k] = p[0][o:o + k].tobytes()
                mask[d:d + k] = p[1][o:o + k].astype(np.uint8).tobytes()
            pos += k
        return vals, mask

    def _apply(self, offset: int, vals: bytes, mask: bytes) -> None:
        pos, end = offset, offset + len(vals)
        while pos < end:
            bi, o = divmod(pos, BLOCK_SIZE)
            k = min(end - pos, BLOCK_SIZE - o)
            d = pos - offset
            m = np.frombuffer(mask, dtype=np.uint8, count=k, offset=d).astype(bool)
            p = self._pend.get(bi)
            if p is None:
                if not m.any():
                    pos += k
                    continue
                p = self._pend[bi] = (np.zeros(BLOCK_SIZE, np.uint8),
                                      np.zeros(BLOCK_SIZE, bool))
            self._npending += int(m.sum()) - int(p[1][o:o + k].sum())
            p[0][o:o + k] = np.frombuffer(vals, dtype=np.uint8, count=k, offset=d)
            p[1][o:o + k] = m
            if not p[1].any():
                del self._pend[bi]
            pos += k
        self.contentChanged.emit(offset, len(vals))
        self._set_modified(bool(self._pend))

    def _set_modified(self, m: bool) -> None:
        if m != self._modified:
            self._modified = m
            self.modifiedChanged.emit(m)

    @property
    def modified(self) -> bool:
        return self._modified

    def pending_runs(self) -> list[tuple[int, bytes]]:
        """Pending edits as (offset, bytes) runs, adjacent bytes coalesced."""
        runs: list[tuple[int, bytes]] = []
        for bi in sorted(self._pend):
            vals, mask = self._pend[bi]
            m = np.concatenate(([False], mask, [False])).astype(np.int8)
            edges = np.flatnonzero(np.diff(m))
            base = bi * BLOCK_SIZE
            for s, e in zip(edges[0::2].tolist(), edges[1::2].tolist()):
                data = vals[s:e].tobytes()
                if runs and runs[-1][0] + len(runs[-1][1]) == base + s:
                    runs[-1] = (runs[-1][0], runs[-1][1] + data)
                else:
                    runs.append((base + s, data))
        return runs

    def pending_bytes(self) -> int:
        return self._npending

    # -- editing -----------------------------------------------------------------------
    def set_edit_guard(self, guard: Callable[[int, int], str | None] | None) -> None:
        """``guard(offset, length)``: why an edit there must not be made (bytes inside
        checksummed filesystem metadata, such as a file's inline data), or None."""
        self._edit_guard = guard

    def _check_edit(self, offset: int, length: int) -> int:
        if not self.editable:
            raise PermissionError("the image is open read-only (Enable editing first)")
        if offset < 0 or offset >= self.size:
            return 0
        n = min(length, self.size - offset)   # the disk never grows
        if n > MAX_EDIT:
            # the overlay and the undo step hold every byte in memory
            raise ValueError(f"an edit of {n:,} bytes is too large for the hex editor "
                             f"(at most {MAX_EDIT >> 20} MiB at once)")
        why = self._edit_guard(offset, n) if self._edit_guard is not None else None
        if why is not None:
            raise ValueError(why)
        return n

    def replace(self, offset: int, data: bytes, *, typing: bool = False,
                text: str | None = None) -> int:
        """Overwrite bytes from ``offset`` (clipped at the end of the disk) as one
        undo step; returns how many bytes were replaced."""
        n = self._check_edit(offset, len(data))
        if n <= 0:
            return 0
        self.undo_stack.push(ReplaceCommand(
            self, offset, bytes(data[:n]),
            text or (f"Type at {offset:#x}" if typing else f"Replace {n} byte(s) at {offset:#x}"),
            typing))
        return n

    def fill(self, offset: int, length: int, value: int) -> int:
        n = self._check_edit(offset, length)
        if n <= 0:
            return 0
        self.undo_stack.push(ReplaceCommand(self, offset, bytes([value & 0xFF]) * n,
                                            f"Fill {n} byte(s) with {value & 0xFF:#04x}"))
        return n

    def revert(self) -> None:
        """Discard every pending edit."""
        self.undo_stack.clear()
        self._pend.clear()
        self._npending = 0
        self._set_modified(False)
        self.reloaded.emit()

    def save(self) -> bool:
        """Write every pending edit through the engine and flush.

        On failure the edits stay pending (and are still shown as pending) and
        :attr:`saveFailed` carries the reason; returns whether it worked.
        """
        if not self._pend:
            return True
        img = self.image
        try:
            if not self.editable:
                raise PermissionError("the image is open read-only")
            with self.lock:
                for off, data in self.pending_runs():
                    img.write(off, data)
                img.flush()
        except (Qcow2Error, OSError) as e:
            reason = str(e) if isinstance(e, Qcow2Error) else (e.strerror or str(e))
            with self.lock:
                self._cache.clear()          # the file may hold part of it now
                img.invalidate_caches()
            self.reloaded.emit()
            self.saveFailed.emit(f"Saving failed, the edits are still pending: {reason}")
            return False
        self.undo_stack.clear()
        self._pend.clear()
        self._npending = 0
        with self.lock:
            self._cache.clear()
        self._set_modified(False)
        self.saved.emit()
        if self._after_save is not None:
            self._after_save()
        self.reloaded.emit()
        return True

    # -- read-only / writable ------------------------------------------------------------
    def refusal(self) -> str | None:
        """Why these bytes cannot be edited at all (before asking the engine)."""
        return self.source.refusal()

    def set_editable(self, on: bool) -> bool:
        """Reopen the image writable (or read-only).  A refusal emits
        :attr:`editingRefused` with the reason and changes nothing."""
        if on == self.editable:
            return True
        if on:
            why = self.refusal()
            if why is not None:
                self.editingRefused.emit(f"Cannot enable editing: {why}")
                return False
        elif self._pend:
            self.revert()
        try:
            with self.lock:
                if self._reopen is not None:
                    new = self._reopen(on)
                else:
                    old = self.image
                    new = open_image(old.path, writable=on, ignore_backing_errors=True)
                    old.close()
        except (Qcow2Error, OSError) as e:
            reason = str(e) if isinstance(e, Qcow2Error) else (e.strerror or str(e))
            self.editingRefused.emit(f"Cannot enable editing: {reason}")
            return False
        if new is not None and new is not self.image:
            self.set_image(new)
        elif self.editable == on:
            self.editableChanged.emit(on)
        return self.editable == on
