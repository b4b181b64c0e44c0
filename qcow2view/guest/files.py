"""What a filesystem holds, in guest coordinates: files, metadata regions, problems.

:class:`Volume` maps a volume's byte offsets (a partition, an LVM logical volume)
to guest offsets; :class:`FileInfo` is one name of one file; :func:`walk` is the
directory walk every reader shares, guarded against loops, runaway depth and
runaway entry counts, and counting what it could not read.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Callable

from .partitions import Region

MAX_DEPTH = 512
MAX_ENTRIES = 20_000_000          # a walk stops here: guest data is untrusted
MAX_PROBLEMS = 100                # problem lines per filesystem; the rest are counted

#: FileInfo.type values, as find -printf %y would spell them out
TYPES_BY_MODE = {0o100000: "file", 0o040000: "dir", 0o120000: "symlink", 0o020000: "char",
                 0o060000: "block", 0o010000: "fifo", 0o140000: "socket"}


class Cancelled(Exception):
    """The caller's progress callback asked to stop."""


class TopListed(Exception):
    """A first look (:attr:`Filesystem.top_only`) stops the walk here: the root
    directory is listed; the reader's later work (counts, checks) is skipped."""


@dataclass(frozen=True)
class Volume:
    """Where a volume's bytes are on the guest disk: ``pieces`` of
    (volume offset, guest offset, length), sorted, covering ``size`` bytes."""

    size: int
    pieces: tuple[tuple[int, int, int], ...]

    @classmethod
    def linear(cls, start: int, size: int) -> "Volume":
        return cls(size, ((0, start, size),))

    @property
    def start(self) -> int:
        return self.pieces[0][1] if self.pieces else 0

    def to_guest(self, offset: int, length: int) -> list[tuple[int, int]]:
        """(guest offset, length) runs holding volume bytes ``offset..offset+length``."""
        if len(self.pieces) == 1:
            v, g, n = self.pieces[0]
            end = min(offset + length, v + n)
            return [(g + offset - v, end - offset)] if end > offset >= v else []
        out = []
        for v, g, n in self.pieces:
            lo, hi = max(offset, v), min(offset + length, v + n)
            if lo < hi:
                out.append((g + lo - v, hi - lo))
        return out


@dataclass(slots=True)
class FileInfo:
    """One name of a file (hard links: one FileInfo per name, sharing ``inode``)."""

    path: str
    inode: int                    # inode / MFT record / directory-entry identifier
    type: str                     # file, dir, symlink, char, block, fifo, socket
    size: int
    mode: int | None = None
    mtime: float | None = None    # seconds since the epoch, UTC
    atime: float | None = None
    ctime: float | None = None
    links: int = 1
    target: str | None = None     # symlink target
    #: data on the guest disk: (file offset, guest offset, length), clipped to the size;
    #: file offsets not covered are holes (sparse) or inline data
    extents: tuple[tuple[int, int, int], ...] = ()
    inline: bool = False          # the bytes live inside filesystem metadata
    sparse: bool = False
    system: bool = False          # the filesystem's own file ($MFT, ...)
    #: the extents hold the file encoded (NTFS compression): they are its clusters, but
    #: its bytes are read through the library, and file offsets within them are not exact
    encoded: bool = False


@dataclass
class Filesystem:
    type: str                     # blkid TYPE
    label: str | None
    uuid: str | None
    volume: Volume
    block_size: int = 512
    files: list[FileInfo] = field(default_factory=list)
    metadata: list[Region] = field(default_factory=list)   # guest ranges
    problems: list[str] = field(default_factory=list)
    skipped: int = 0              # entries that could not be read
    readable: bool = True
    reason: str | None = None     # why the files are not listed
    used_inodes: int = 0          # estimate for progress
    #: where inodes (MFT records) lie: (guest offset, first number, bytes each, count),
    #: so a byte of an inode table can be named by the file whose inode it holds
    record_tables: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: guest runs the allocation map (block bitmaps, FAT) says are in use
    allocated: list[tuple[int, int]] = field(default_factory=list)
    #: a first look: list the root directory only (``walk`` raises TopListed after it)
    top_only: bool = False
    #: with ``top_only``, the directory listed instead of the root ("/etc/ssh"; one
    #: directory read on demand, found name by name)
    top_dir: str = "/"

    def add_allocated(self, vol_offset: int, length: int) -> None:
        self.allocated.extend(self.volume.to_guest(vol_offset, length))

    def problem(self, text: str, always: bool = False) -> None:
        """List a problem; past MAX_PROBLEMS only those marked ``always`` (summaries)."""
        if always:
            self.problems.append(text)
        elif len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append("more problems not listed")

    def add_metadata(self, vol_offset: int, length: int, label: str) -> None:
        for g, n in self.volume.to_guest(vol_offset, length):
            self.metadata.append(Region(g, n, label))


def short_error(e: BaseException) -> str:
    """The useful last clause of a libyal error chain (it nests 'fn: text.' lines)."""
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return text.rsplit(": ", 1)[-1].rstrip(".") or text


def open_volume(volume, src, fs: Filesystem) -> bool:
    """Open a libyal ``volume`` on ``src``; one that will not open marks ``fs``
    unreadable with the reason (an engine error is raised as the engine's own)."""
    try:
        volume.open_file_object(src)
    except (OSError, ValueError) as e:
        src.reraise()
        fs.readable, fs.reason = False, f"unreadable: {short_error(e)}"
        return False
    return True


def map_extents(vol: Volume, raw: list[tuple[int, int, int]], size: int,
                hole_flag: int = 1) -> tuple[tuple[tuple[int, int, int], ...], bool]:
    """Library extents (volume offset, length, flags), in file order, to
    (file offset, guest offset, length) clipped to ``size``; and whether there
    are holes."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    sparse = False
    for off, n, flags in raw:
        if pos >= size:
            break
        n = min(n, size - pos)
        if flags & hole_flag:
            sparse = True
        else:
            fpos = pos
            for g, m in vol.to_guest(off, n):
                if out and out[-1][0] + out[-1][2] == fpos and out[-1][1] + out[-1][2] == g:
                    f0, g0, n0 = out[-1]
                    out[-1] = (f0, g0, n0 + m)
                else:
                    out.append((fpos, g, m))
                fpos += m
        pos += n
    if pos < size and out:
        sparse = True
    return tuple(out), sparse


def utc_seconds(d: _dt.datetime | None) -> float | None:
    if d is None:
        return None
    try:
        return d.replace(tzinfo=_dt.timezone.utc).timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def _why(e: BaseException, src) -> str:
    """The engine's own reason when the library failed on a guest read, else the
    library's."""
    err = getattr(src, "error", None)
    if err is not None:
        src.error = None
        return f"guest bytes unreadable: {err.reason}"
    return short_error(e)


Describe = Callable[[object, str], FileInfo]


MAX_BAD_IN_A_ROW = 1000          # a directory is given up after this many bad entries


#: (inode, name bytes) of every entry of a directory, read from its blocks: the
#: names a library cannot give because they are not UTF-8 (Linux names are bytes)
RawNames = Callable[[object], list[tuple[int, bytes]]]


def walk(root, describe: Describe, fs: Filesystem, tick: Callable[[int], None],
         dir_key: Callable[[object], int], src=None, raw_names: RawNames | None = None
         ) -> None:
    """Depth-first walk from ``root``; ``describe(entry, path)`` makes a FileInfo.

    A directory seen twice (a loop) is not entered again; unreadable directories and
    entries are problems and counted in ``fs.skipped``; the walk never goes deeper than
    :data:`MAX_DEPTH` nor past :data:`MAX_ENTRIES` entries, and gives a directory up
    after :data:`MAX_BAD_IN_A_ROW` unreadable entries in a row (a damaged count).
    ``tick(n)`` is told of every 1024 entries listed."""
    try:
        if root is None:
            raise OSError("no root directory")
        seen = {dir_key(root)}
    except (OSError, ValueError) as e:
        fs.problem(f"/: root directory unreadable ({short_error(e)})")
        fs.skipped += 1
        return
    start = ""
    if fs.top_only and fs.top_dir.strip("/"):
        start = "/" + fs.top_dir.strip("/")
        root = _descend(root, start, fs, src)
        if root is None:
            raise TopListed
    stack = [(root, start, 0)]
    listed = [0]
    while stack:
        entry, path, depth = stack.pop()
        for sub, info in _entries(entry, path, describe, fs, src, raw_names):
            fs.files.append(info)
            listed[0] += 1
            if not listed[0] & 1023:
                tick(1024)
                if listed[0] >= MAX_ENTRIES:
                    fs.problem(f"more than {MAX_ENTRIES} entries: the rest are not listed",
                               always=True)
                    return
            if info.type != "dir":
                continue
            try:
                k = dir_key(sub)
            except (OSError, ValueError) as e:
                fs.problem(f"{info.path}: directory unreadable ({_why(e, src)})")
                continue
            if k in seen:
                fs.problem(f"{info.path}: directory already seen (a loop), not entered")
            elif depth + 1 >= MAX_DEPTH:
                fs.problem(f"{info.path}: deeper than {MAX_DEPTH} levels, not entered")
            else:
                seen.add(k)
                stack.append((sub, info.path, depth + 1))
        if fs.top_only:
            raise TopListed


def _descend(root, path: str, fs: Filesystem, src):
    """The directory ``path`` ("/etc/ssh") found from ``root`` name by name, no entry
    described on the way (None, and a problem, when it is not there)."""
    entry = root
    for part in path.strip("/").split("/"):
        try:
            n = entry.number_of_sub_file_entries
            found = None
            for i in range(n):
                sub = entry.get_sub_file_entry(i)
                try:
                    if sub.name == part:
                        found = sub
                        break
                except (OSError, ValueError):
                    continue            # a name the library cannot decode: not this one
        except (OSError, ValueError) as e:
            fs.problem(f"{path}: directory unreadable ({_why(e, src)})")
            return None
        if found is None:
            fs.problem(f"{path}: no such directory")
            return None
        entry = found
    return entry


def _entries(entry, path: str, describe: Describe, fs: Filesystem, src,
             raw_names: RawNames | None = None):
    """(library entry, FileInfo) of each readable entry of one directory."""
    try:
        n = entry.number_of_sub_file_entries
    except (OSError, ValueError) as e:
        fs.problem(f"{path or '/'}: directory unreadable ({_why(e, src)}), 0 entries shown")
        fs.skipped += 1
        return
    bad = 0
    undecoded: list[tuple[int, bytes]] | None = None
    for i in range(n):
        try:
            sub = entry.get_sub_file_entry(i)
            try:
                name = sub.name
            except (OSError, ValueError):
                if raw_names is None:
                    raise
                if undecoded is None:
                    undecoded = [(k, b) for k, b in raw_names(entry) if not _is_utf8(b)]
                name = _take_name(undecoded, sub.inode_number)
            if name in (".", "..") or name is None:
                continue
            info = describe(sub, f"{path}/{name}")
        except (OSError, ValueError, OverflowError, TypeError) as e:
            fs.problem(f"{path or '/'}: entry {i} unreadable ({_why(e, src)})")
            fs.skipped += 1
            bad += 1
            if bad >= MAX_BAD_IN_A_ROW:
                fs.problem(f"{path or '/'}: {bad} unreadable entries in a row, "
                           f"the other {n - i - 1} not tried", always=True)
                fs.skipped += n - i - 1
                return
            continue
        bad = 0
        yield sub, info


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _take_name(undecoded: list[tuple[int, bytes]], inode: int) -> str:
    """The next not-UTF-8 name of ``inode`` in the directory, its bytes kept as
    os.fsdecode keeps them (lone surrogates), so it prints and round-trips as bytes."""
    for i, (k, b) in enumerate(undecoded):
        if k == inode:
            del undecoded[i]
            return b.decode("utf-8", "surrogateescape")
    raise ValueError("name is not UTF-8 and was not found in the directory's blocks")
