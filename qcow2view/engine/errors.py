"""Typed errors of the image engine.

Every problem an image or a request can have is a :class:`Qcow2Error`.  Errors
that concern a place in a file carry the structure's name and the file offset,
so the GUI can point at the bytes at fault.
"""

from __future__ import annotations


class Qcow2Error(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, message: str, *, structure: str | None = None,
                 offset: int | None = None, path: str | None = None) -> None:
        self.structure = structure
        self.offset = offset
        self.path = path
        self.reason = message
        super().__init__(self._compose())

    def _compose(self) -> str:
        where = []
        if self.structure:
            where.append(self.structure)
        if self.offset is not None:
            where.append(f"at offset {self.offset:#x}")
        text = self.reason
        if where:
            text = f"{' '.join(where)}: {text}"
        if self.path:
            text = f"{self.path}: {text}"
        return text

    def with_path(self, path: str) -> "Qcow2Error":
        if self.path is None:
            self.path = str(path)
            self.args = (self._compose(),)
        return self


class NotQcow2Error(Qcow2Error):
    """The file is not a QCOW2 image at all (bad magic, or too short)."""


class CorruptImageError(Qcow2Error):
    """A field or table entry is out of range, misaligned or inconsistent."""


class TruncatedImageError(CorruptImageError):
    """A structure extends past the end of the file."""


class UnsupportedFeatureError(Qcow2Error):
    """The image uses something this engine refuses to handle."""


class EncryptedImageError(UnsupportedFeatureError):
    """Guest data of encrypted images cannot be read or written."""


class BackingFileError(Qcow2Error):
    """A backing file is missing, unsupported, or cannot be opened."""


class DataFileError(Qcow2Error):
    """The external data file is missing, not a regular file, or cannot be opened."""


class RequestError(Qcow2Error):
    """The caller asked for something invalid (out of bounds, bad option)."""


class ReadOnlyError(Qcow2Error):
    """A write was attempted on an image that is not open for writing."""


class ImageInUseError(Qcow2Error):
    """Another process (QEMU) holds the image's locks."""


class CancelledError(Qcow2Error):
    """A long operation was cancelled by its caller."""
