"""QEMU's image locks: open-file-description byte locks (block/file-posix.c).

QEMU marks every permission it holds on an image by a shared (read) lock on
byte ``100 + perm`` and every permission it refuses to share by a lock on byte
``200 + perm`` (``raw_apply_lock_bytes``).  Permission bits (QEMU 7.2,
``BLK_PERM_*``): consistent read 0, write 1, write-unchanged 2, resize 3.

A running VM or ``qemu-io`` writing an image holds 100, 101, 103 and 201,
203: it reads, writes and resizes, and shares neither writing nor resizing.
While the engine holds an image writable it takes the very same bytes, so
``qemu-img info`` says ``Failed to get shared "write" lock`` and a VM refuses
to start on it; its backing files get what QEMU takes on them (100, 201, 203:
read, and let nobody write or resize them).  Read-only opens take no lock (like ``qemu-img info -U``): a
viewer must never stop a VM from starting; they only report who holds locks.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

# Linux values; Python's fcntl module lacks the OFD constants.
F_OFD_GETLK = 36
F_OFD_SETLK = 37
F_OFD_SETLKW = 38

LOCK_PERM_BASE = 100
LOCK_SHARED_BASE = 200
PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE = 0, 1, 2, 3
PERM_NAMES = {PERM_CONSISTENT_READ: "consistent read", PERM_WRITE: "write",
              PERM_WRITE_UNCHANGED: "write unchanged", PERM_RESIZE: "resize"}
N_PERMS = 4

# what a QEMU writer takes, and so what we take while writable
WRITER_PERMS = (PERM_CONSISTENT_READ, PERM_WRITE, PERM_RESIZE)
WRITER_UNSHARED = (PERM_WRITE, PERM_RESIZE)
# what QEMU takes on the backing files of an image it writes: they must not change
BACKING_PERMS = (PERM_CONSISTENT_READ,)
BACKING_UNSHARED = (PERM_WRITE, PERM_RESIZE)

# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (+ padding to 32 bytes)
_FLOCK = struct.Struct("hhqqi4x")


def _flock(fd: int, cmd: int, ltype: int, start: int) -> tuple[int, int]:
    buf = _FLOCK.pack(ltype, os.SEEK_SET, start, 1, 0)
    out = fcntl.fcntl(fd, cmd, buf)
    ltype, _, _, _, pid = _FLOCK.unpack(out)
    return ltype, pid


def ofd_supported(fd: int) -> bool:
    try:
        _flock(fd, F_OFD_GETLK, fcntl.F_WRLCK, LOCK_PERM_BASE)
        return True
    except OSError:
        return False


def byte_locked(fd: int, offset: int) -> bool:
    """True when another open file description holds a lock on byte ``offset``."""
    ltype, _ = _flock(fd, F_OFD_GETLK, fcntl.F_WRLCK, offset)
    return ltype != fcntl.F_UNLCK


def held_lock_bytes(fd: int) -> list[int]:
    """QEMU lock bytes that others hold on this file."""
    try:
        return [b for base in (LOCK_PERM_BASE, LOCK_SHARED_BASE)
                for b in range(base, base + N_PERMS) if byte_locked(fd, b)]
    except OSError:
        return []


def describe(held: list[int]) -> str | None:
    """A sentence naming what the holder of ``held`` lock bytes does with the image."""
    if not held:
        return None
    perms = [PERM_NAMES[b - LOCK_PERM_BASE] for b in held if b < LOCK_SHARED_BASE]
    unshared = [PERM_NAMES[b - LOCK_SHARED_BASE] for b in held if b >= LOCK_SHARED_BASE]
    who = ("another process (a running VM, qemu-img or qemu-io) is writing to this image"
           if LOCK_PERM_BASE + PERM_WRITE in held else
           "another process (a VM, qemu-img or qemu-io) has this image open")
    parts = []
    if perms:
        parts.append("holds " + ", ".join(perms))
    if unshared:
        parts.append("does not share " + ", ".join(unshared))
    return f"{who}: it {' and '.join(parts)} (QEMU's image locks)"


def writer_conflicts(fd: int, perms=WRITER_PERMS, unshared=WRITER_UNSHARED) -> list[str]:
    """The locks that keep a writer out, in qemu's words ("Failed to get ... lock")."""
    problems = []
    try:
        for p in perms:
            if byte_locked(fd, LOCK_SHARED_BASE + p):
                problems.append(f'Failed to get "{PERM_NAMES[p]}" lock')
        for p in unshared:
            if byte_locked(fd, LOCK_PERM_BASE + p):
                problems.append(f'Failed to get shared "{PERM_NAMES[p]}" lock')
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return []     # no OFD locks on this file system: qemu would not lock either
        raise
    return problems


def take_writer_locks(fd: int, perms=WRITER_PERMS, unshared=WRITER_UNSHARED) -> bool:
    """Take the bytes a QEMU writer takes; False when the file system has no OFD locks.

    Raises BlockingIOError when another process got in between (its locks conflict).
    """
    try:
        for p in perms:
            _flock(fd, F_OFD_SETLK, fcntl.F_RDLCK, LOCK_PERM_BASE + p)
        for p in unshared:
            _flock(fd, F_OFD_SETLK, fcntl.F_RDLCK, LOCK_SHARED_BASE + p)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise
    return True


def release_locks(fd: int) -> None:
    """Drop every QEMU lock byte this open file description holds (closing does too)."""
    try:
        for base in (LOCK_PERM_BASE, LOCK_SHARED_BASE):
            buf = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, base, N_PERMS + 1, 0)
            fcntl.fcntl(fd, F_OFD_SETLK, buf)
    except OSError:
        pass
