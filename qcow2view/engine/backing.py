"""Backing files: the raw backing file, what the chain shows of each file, and
the format probe (a qcow2 backing file is an :class:`~qcow2view.engine.image.Image`)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from .fileio import HostFile
from .header import QCOW_MAGIC

MAX_BACKING_DEPTH = 64
SEEK_DATA = getattr(os, "SEEK_DATA", 3)


@dataclass(frozen=True)
class BackingInfo:
    """One file of the backing chain (depth 1 is the image's direct backing file)."""

    depth: int
    filename: str            # as stored in the image that names it
    path: str | None         # resolved absolute path
    format: str | None       # as named (backing_fmt) or probed
    found: bool
    virtual_size: int | None
    error: str | None = None


class RawImage:
    """A raw backing file: guest offset == file offset."""

    format = "raw"

    def __init__(self, path: str) -> None:
        self.file = HostFile(path)
        self.path = path
        self.virtual_size = self.file.size
        self.backing_chain: list[BackingInfo] = []

    def read(self, offset: int, length: int) -> bytes:
        return self.file.pread_zero_fill(offset, length)

    def is_hole(self, start: int, end: int) -> bool:
        """Is start..end a hole of the host file (no data until end)?  QEMU's file
        driver asks the same (SEEK_DATA) when it looks for zeros."""
        try:
            return os.lseek(self.file.fd, start, SEEK_DATA) >= end
        except OSError as e:            # ENXIO: no data from start to the end of the file
            return e.errno == errno.ENXIO

    def close(self) -> None:
        self.file.close()


def is_protocol_name(name: str) -> bool:
    if name.startswith("json:"):
        return True
    head = name.split("/", 1)[0]
    return ":" in head and not os.path.exists(name)


def probe_format(path: str) -> str:
    # HostFile refuses what QEMU's file driver refuses (directories, FIFOs)
    host_file = HostFile(path)
    try:
        return "qcow2" if host_file.pread(0, 4) == QCOW_MAGIC else "raw"
    finally:
        host_file.close()
