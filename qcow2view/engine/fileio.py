"""The one place where the engine touches file descriptors.

All reads, writes, flushes and size changes go through :class:`HostFile`, so a
test can inject a fault after N operations (see :attr:`HostFile.fault_after`).
"""

from __future__ import annotations

import os
import stat
from typing import Callable

from .errors import Qcow2Error, TruncatedImageError


class HostFile:
    """A file opened by the engine: an image, a data file or a raw backing file."""

    # Test hook: when set to an int, every write-side operation decrements it and
    # an OSError(EIO) is raised once it goes negative.  Class-wide so a test can
    # arm it before the image opens its files.
    fault_after: int | None = None
    fault_hook: Callable[[str], None] | None = None

    def __init__(self, path: str, *, writable: bool = False) -> None:
        self.path = os.fspath(path)
        self.writable = writable
        flags = os.O_RDWR if writable else os.O_RDONLY
        # non-blocking only while we look at what it is: opening a FIFO must not hang
        flags |= getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK
        self.fd = -1
        try:
            self.fd = os.open(self.path, flags)
            mode = os.fstat(self.fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                # QEMU's 'file' driver: "requires '...' to be a regular file"
                # (block devices go to its host_device driver)
                raise Qcow2Error(f"not a regular file or block device ({_kind(mode)})",
                                 path=self.path)
            os.set_blocking(self.fd, True)
        except OSError as e:
            self.close()
            raise Qcow2Error(f"cannot open: {e.strerror or e}", path=self.path) from e
        except BaseException:
            self.close()
            raise
        self._size: int | None = None

    # -- reading -----------------------------------------------------------------
    @property
    def size(self) -> int:
        if self._size is None:
            # st_size is 0 for block devices; the end of the file is right for both
            self._size = os.lseek(self.fd, 0, os.SEEK_END)
        return self._size

    def refresh_size(self) -> int:
        self._size = None
        return self.size

    def pread(self, offset: int, length: int) -> bytes:
        """Read up to ``length`` bytes; short only at end of file."""
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as e:
            raise Qcow2Error(f"read of {length} bytes failed: {e.strerror}",
                             offset=offset, path=self.path) from e
        if len(data) < length and len(data) > 0 and offset + len(data) < self.size:
            # a short read in the middle of a file: finish it
            parts = [data]
            got = len(data)
            while got < length:
                more = os.pread(self.fd, length - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def pread_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` (bytes) from ``offset`` without a copy; bytes past the end
        of the file read as zeros, as in QEMU."""
        pread_into(self.fd, offset, buf, self.size, self.path)

    def pread_exact(self, offset: int, length: int, structure: str) -> bytes:
        """Read metadata that must lie wholly inside the file."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedImageError(
                f"{length} bytes needed but the file ends at {self.size:#x}",
                structure=structure, offset=offset, path=self.path)
        data = self.pread(offset, length)
        if len(data) != length:
            raise TruncatedImageError(
                f"short read ({len(data)} of {length} bytes)",
                structure=structure, offset=offset, path=self.path)
        return data

    def pread_zero_fill(self, offset: int, length: int) -> bytes:
        """Read guest data; bytes past the end of the file read as zeros (as QEMU)."""
        data = self.pread(offset, length)
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    # -- writing -----------------------------------------------------------------
    def _tick(self, what: str) -> None:
        if HostFile.fault_hook is not None:
            HostFile.fault_hook(what)
        if HostFile.fault_after is not None:
            HostFile.fault_after -= 1
            if HostFile.fault_after < 0:
                raise OSError(5, f"injected I/O error on {what}")

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._tick("pwrite")
        view = memoryview(data)
        done = 0
        while done < len(view):
            n = os.pwrite(self.fd, view[done:], offset + done)
            if n <= 0:
                raise OSError(5, "short write")
            done += n
        end = offset + len(view)
        if self._size is not None and end > self._size:
            self._size = end

    def truncate(self, length: int) -> None:
        self._tick("truncate")
        os.ftruncate(self.fd, length)
        self._size = length

    def fsync(self) -> None:
        self._tick("fsync")
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"HostFile({self.path!r}, writable={self.writable})"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return f"file type {stat.S_IFMT(mode):#o}"


def pread_into(fd: int, offset: int, buf: memoryview, size: int, path: str = "") -> None:
    """:meth:`HostFile.pread_into` on a bare descriptor of a file ``size`` bytes long
    (a duplicate kept by a map that outlives its image)."""
    n = len(buf)
    got = 0
    if offset >= size:      # (an offset from a damaged table may not even fit an off_t)
        buf[:] = bytes(n)
        return
    try:
        while got < n:
            k = os.preadv(fd, [buf[got:]], offset + got)
            if k <= 0:
                break
            got += k
    except OSError as e:
        raise Qcow2Error(f"read of {n} bytes failed: {e.strerror}", offset=offset,
                         path=path) from e
    if got < n:
        buf[got:] = bytes(n - got)
