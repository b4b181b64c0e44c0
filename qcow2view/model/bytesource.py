"""What a hex document shows: a byte source over an engine Image.

As QHexView keeps its buffer apart from its document, the hex document
(:mod:`.hexdocument`: block cache, edit overlay, undo) reads through one of these
and never asks which one it has.  :class:`GuestDiskSource` is the guest disk (bytes
tinted by what backs them, writable when the image is); :class:`ImageFileSource` is
the image file's own bytes, read-only, for metadata structures.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..engine import Image, Qcow2Error
from .extents import GuestKind, extents, find_content, mapping_kind

DEFAULT_CLUSTER = 65536         # what an empty source reports (no image yet)


class ByteSource:
    """The bytes of one view of an Image (None: an empty source)."""

    #: the kinds a legend for this source lists
    kinds_shown: tuple[GuestKind, ...] = ()
    #: whether :meth:`write` can ever work (the file view never writes)
    writes = False

    def __init__(self, image: Image | None) -> None:
        self.image = image

    def follow(self, image: Image | None) -> ByteSource:
        """The same view of another Image (after a reopen)."""
        return type(self)(image)

    @property
    def size(self) -> int:
        raise NotImplementedError

    @property
    def cluster_size(self) -> int:
        return DEFAULT_CLUSTER if self.image is None else self.image.cluster_size

    @property
    def editable(self) -> bool:
        return False

    def read(self, offset: int, length: int) -> bytes:
        """Stored bytes (raises the engine's Qcow2Error where they cannot be read)."""
        raise NotImplementedError

    def kinds(self, start: int, length: int) -> np.ndarray:
        """A uint8 :class:`GuestKind` per byte."""
        raise NotImplementedError

    def mapping_at(self, offset: int):
        """The engine's GuestMapping of ``offset`` (None where there is none)."""
        return None

    def next_content(self, offset: int, forward: bool) -> int | None:
        raise NotImplementedError

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, GuestKind]]:
        raise NotImplementedError

    def refusal(self) -> str | None:
        """Why these bytes cannot be edited at all (None: ask the engine)."""
        return "this view is read-only"


class GuestDiskSource(ByteSource):
    """The guest disk, through ``Image.read`` / ``Image.write``."""

    kinds_shown = (GuestKind.DATA, GuestKind.COMPRESSED, GuestKind.BACKING, GuestKind.ZERO,
                   GuestKind.UNALLOCATED)
    writes = True

    @property
    def size(self) -> int:
        return 0 if self.image is None else self.image.virtual_size

    @property
    def editable(self) -> bool:
        return self.image is not None and self.image.writable

    def read(self, offset: int, length: int) -> bytes:
        return self.image.read(offset, length)

    def kinds(self, start: int, length: int) -> np.ndarray:
        img = self.image
        granule = img.cluster_size // 32 if img.extended_l2 else img.cluster_size
        out = np.empty(length, dtype=np.uint8)
        pos, end = start, start + length
        while pos < end:
            nxt = min(end, (pos // granule + 1) * granule)
            out[pos - start:nxt - start] = mapping_kind(img.guest_mapping(pos))
            pos = nxt
        return out

    def mapping_at(self, offset: int):
        try:
            return self.image.guest_mapping(offset)
        except Qcow2Error:
            return None

    def next_content(self, offset: int, forward: bool) -> int | None:
        try:
            return find_content(self.image, offset, forward, self.cluster_size)
        except Qcow2Error:
            return None

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, GuestKind]]:
        return extents(self.image, start, end)

    def refusal(self) -> str | None:
        img = self.image
        if img is None:
            return "no image"
        if img.snapshot is not None:
            return f"this is a read-only view of snapshot {img.snapshot.name!r}"
        if img.encrypted:
            return "encrypted images cannot be edited (guest data cannot be decrypted)"
        if img.corrupt:
            return ("the image is marked corrupt; QEMU refuses to write to it "
                    "(run 'qcow2view check --repair' first)")
        return None


class ImageFileSource(ByteSource):
    """The image file's own bytes, read-only (through the engine's HostFile)."""

    kinds_shown = (GuestKind.FILE,)

    @property
    def size(self) -> int:
        return 0 if self.image is None else self.image.file.size

    def read(self, offset: int, length: int) -> bytes:
        return self.image.file.pread_zero_fill(offset, length)

    def kinds(self, start: int, length: int) -> np.ndarray:
        return np.full(length, GuestKind.FILE, np.uint8)

    def next_content(self, offset: int, forward: bool) -> int | None:
        cs = self.cluster_size
        nxt = (offset // cs + 1) * cs if forward else (offset // cs - 1) * cs
        return nxt if 0 <= nxt < self.size else None

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, GuestKind]]:
        yield start, min(end, self.size), GuestKind.FILE

    def refusal(self) -> str | None:
        return "the image file view is read-only"
