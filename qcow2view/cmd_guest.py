"""``qcow2view ls|owner|changed|cat``: the guest disk's partitions, filesystems and
files from a terminal (virt-ls / virt-cat for an image, tied to guest offsets).

``--json`` keys are the contract of issue 11.  Exit codes: 0 ok, 2 bad input (a
one-line reason on stderr).  No Qt here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import time

from .cli import emit, quiet_stdout
from .engine.errors import Qcow2Error

COMMANDS = ("ls", "owner", "changed", "cat")
MAX_SYMLINKS = 40


class BadInput(Exception):
    """A one-line reason; exit code 2."""


def _parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"qcow2view {cmd}")
    p.add_argument("image")
    if cmd == "ls":
        p.description = ("List the partitions and filesystems of the guest disk "
                         "(like lsblk -f), with --files every file (like ls -l).")
        p.add_argument("--files", action="store_true", help="list every file too")
    elif cmd == "owner":
        p.description = "Name what holds a guest byte: a file, filesystem metadata, ..."
        p.add_argument("offset", metavar="GUEST_OFFSET", help="4096, 0x7e00, 1M, 'LBA 2048'")
    elif cmd == "changed":
        p.description = ("The files whose bytes differ from the backing chain, or "
                         "(--snapshot) from an internal snapshot.")
    elif cmd == "cat":
        p.description = "Write a file's bytes to stdout (as virt-cat does)."
        p.add_argument("path")
        p.add_argument("--partition", type=int, metavar="N",
                       help="the partition whose filesystem holds PATH")
    if cmd != "cat":
        p.add_argument("--json", action="store_true", help="JSON for scripts")
    if cmd in ("ls", "owner", "cat", "changed"):
        p.add_argument("--snapshot", metavar="NAME",
                       help="compare with this internal snapshot" if cmd == "changed"
                       else "read the disk as this internal snapshot saw it")
    return p


def parse_offset(text: str) -> int:
    t = text.strip()
    m = re.fullmatch(r"(?i)lba\s*(\d+)", t)
    if m:
        return int(m.group(1)) * 512
    m = re.fullmatch(r"(?i)(0x[0-9a-f]+|\d+)\s*([kmgt]?)(?:i?b)?", t)
    if not m:
        raise BadInput(f"not a guest offset: {text!r} (expected 4096, 0x7e00, 1M or "
                       "'LBA 2048')")
    return int(m.group(1), 0) << (10 * " kmgt".index(m.group(2).lower() or " "))


def _open(path: str, snapshot: str | None = None):
    from .engine import open_image
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such file")
    return open_image(path, ignore_backing_errors=True, snapshot=snapshot)


def main(cmd: str, argv: list[str]) -> int:
    ns = _parser(cmd).parse_args(argv)
    try:
        return {"ls": ls_main, "owner": owner_main, "changed": changed_main,
                "cat": cat_main}[cmd](ns)
    except (BadInput, Qcow2Error, OSError) as e:
        text = str(e) if not isinstance(e, OSError) or isinstance(e, BrokenPipeError) \
            else f"{getattr(e, 'filename', None) or ns.image}: {e.strerror or e}"
        if isinstance(e, BrokenPipeError):
            quiet_stdout()
            return 0
        print(f"qcow2view: {text}".replace("\n", " "), file=sys.stderr)
        return 2


def _index(im):
    from .guest.index import build_index
    return build_index(im)


# -- ls ---------------------------------------------------------------------------------
def _file_json(f) -> dict:
    return {"path": f.path, "size": f.size, "extents": [list(e) for e in f.extents],
            "type": f.type, "mode": f.mode, "inode": f.inode, "links": f.links,
            "target": f.target, "mtime": f.mtime, "inline": f.inline, "sparse": f.sparse,
            "encoded": f.encoded}


def _fs_json(gv, files: bool) -> dict | None:
    fs = gv.filesystem
    if fs is None:
        p = gv.probe
        return None if p is None else {"type": p.type, "label": p.label, "uuid": p.uuid}
    d = {"type": fs.type, "label": fs.label, "uuid": fs.uuid, "block_size": fs.block_size,
         "readable": fs.readable, "reason": fs.reason, "skipped": fs.skipped}
    if files:
        d["files"] = [_file_json(f) for f in fs.files]
    return d


def _part_json(gv, files: bool) -> dict:
    p = gv.partition
    d = {"index": p.index, "start": p.start, "size": p.size, "type": p.type,
         "name": p.name, "filesystem": _fs_json(gv, files)}
    if gv.logical_volumes:
        d["logical_volumes"] = [dict(_part_json(lv, files), name=lv.lv_name)
                                for lv in gv.logical_volumes]
    return d


def ls_json(disk, files: bool) -> dict:
    problems = list(disk.problems)
    if disk.unreadable:
        problems.insert(0, disk.unreadable)
    return {"partition_table": disk.table.kind, "problems": problems,
            "partitions": [_part_json(gv, files) for gv in disk.volumes]}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ls_text(disk, files: bool) -> list[str]:
    kind = {"gpt": "GPT", "mbr": "MBR", None: "no partition table"}[disk.table.kind]
    out = [f"{kind}, {_size(disk.size)} disk"]
    if disk.unreadable:
        out.append(f"  {disk.unreadable}")
    rows = [("NAME", "START", "SIZE", "TYPE", "FSTYPE", "LABEL", "UUID")]
    vols = [(gv, "") for gv in disk.volumes]
    for gv in disk.volumes:
        vols += [(lv, "  ") for lv in gv.logical_volumes]
    for gv, ind in vols:
        p, pr = gv.partition, gv.probe
        name = ind + (gv.lv_name or (f"{p.index}" if p.index else "disk"))
        rows.append((name, str(p.start), _size(p.size), p.type + (f" ({p.name})" if p.name and
                     not gv.lv_name else ""), pr.type if pr else "", (pr.label or "") if pr
                     else "", (pr.uuid or "") if pr else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for gv in disk.volumes:
        for sub in [gv] + gv.logical_volumes:
            fs = sub.filesystem
            if not files or fs is None:
                continue
            where = sub.lv_name or f"partition {sub.partition.index}"
            out.append(f"\n{where} ({fs.type}{', ' + fs.label if fs.label else ''}):")
            if not fs.readable:
                out.append(f"  {fs.reason}")
            for f in sorted(fs.files, key=lambda f: f.path):
                mode = stat.filemode(f.mode) if f.mode is not None else (
                    "d---------" if f.type == "dir" else "----------")
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(f.mtime)) \
                    if f.mtime is not None else "-"
                tail = f" -> {f.target}" if f.target else ""
                out.append(f"{mode} {f.links:3d} {f.size:12d} {when} {f.path}{tail}")
    for p in disk.problems:
        out.append(f"problem: {p}")
    return out


def ls_main(ns) -> int:
    from .guest.disk import read_disk
    with _open(ns.image, ns.snapshot) as im:
        disk = read_disk(im)
    if ns.json:
        emit(json.dumps(ls_json(disk, ns.files), indent=2))
    else:
        for line in _ls_text(disk, ns.files):
            emit(line)
    return 0


# -- owner ------------------------------------------------------------------------------
def owner_main(ns) -> int:
    off = parse_offset(ns.offset)
    with _open(ns.image, ns.snapshot) as im:
        if not 0 <= off < im.virtual_size:
            raise BadInput(f"guest offset {off:#x} lies outside the {im.virtual_size}-byte disk")
        idx = _index(im)
        if idx.disk.unreadable:
            raise BadInput(f"{ns.image}: guest disk {idx.disk.unreadable}")
        o = idx.owner(off)
    if ns.json:
        emit(json.dumps(o.as_json(), indent=2))
        return 0
    where = []
    if o.partition is not None:
        where.append(f"partition {o.partition}" + (f" ({o.filesystem})" if o.filesystem else ""))
    if o.volume:
        where.append(f"LV {o.volume}")
    if o.path:
        where.append(f"{o.path} +{o.file_offset:#x}")
    if o.label:
        where.append(o.label)
    emit(f"{off:#x}: {o.what}" + (", " + ", ".join(where) if where else ""))
    return 0


# -- changed ----------------------------------------------------------------------------
def changed_main(ns) -> int:
    from .guest.changed import changed_vs_backing, changed_vs_snapshot
    with _open(ns.image) as im:
        if ns.snapshot is not None:
            try:
                im.find_snapshot(ns.snapshot)
            except Qcow2Error:
                raise BadInput(f"{ns.image}: no snapshot named {ns.snapshot!r}") from None
        elif im.backing_filename is None:
            raise BadInput(f"{ns.image}: has no backing file (name a snapshot with "
                           "--snapshot)")
        elif im.backing is None:
            raise BadInput(f"{ns.image}: backing file {im.backing_filename} not found")
        idx = _index(im)
        ch = (changed_vs_snapshot(im, ns.snapshot, idx) if ns.snapshot is not None
              else changed_vs_backing(im, idx))
    if ns.json:
        emit(json.dumps(ch.as_json(), indent=2))
        return 0
    emit(f"against {ch.against}:")
    for f in ch.files:
        emit(f"{f.bytes_changed:12d}  partition {f.partition}  {f.path}")
    emit(f"{ch.other_bytes_changed:12d}  outside any file")
    return 0


# -- cat --------------------------------------------------------------------------------
def _resolve(idx, path: str, partition: int | None):
    """The file at ``path``, resolved one component at a time as the guest kernel would
    (as virt-cat does): symlinks in any component followed (``/lib/os-release`` with
    ``/lib -> usr/lib``), ``.``, ``..`` and repeated or trailing slashes."""
    todo = [c for c in path.split("/") if c not in ("", ".")]
    done: list[str] = []
    volume, hops, f, asked = None, 0, None, partition
    while todo:
        name = todo.pop(0)
        if name == "..":
            done = done[:-1]
            f = None
            continue
        here = "/" + "/".join(done + [name])
        got = [g for g in idx.find(here, partition) if volume is None or g.volume is volume]
        if not got:         # FAT, exFAT and NTFS names are found whatever their case
            got = [g for g in _find_any_case(idx, here, partition)
                   if volume is None or g.volume is volume]
        if got and got[0].path != here:
            done = got[0].path.split("/")[1:-1]
            name = got[0].path.rsplit("/", 1)[1]
        if not got:
            raise BadInput(f"{path}: no such file in the guest"
                           + (f" (partition {asked})" if asked is not None else ""))
        parts = {g.volume.partition.index for g in got}
        if len({id(g.volume) for g in got}) > 1:
            raise BadInput(f"{path}: on several filesystems (partitions "
                           f"{', '.join(map(str, sorted(parts)))}); choose one with --partition")
        f = got[0]
        volume, partition = f.volume, f.volume.partition.index
        if f.info.type == "symlink":
            hops += 1
            if hops > MAX_SYMLINKS:
                raise BadInput(f"{path}: too many levels of symbolic links")
            target = f.info.target or ""
            if target.startswith("/"):
                done = []
            todo = [c for c in target.split("/") if c not in ("", ".")] + todo
            f = None
            continue
        if todo and f.info.type != "dir":
            raise BadInput(f"{path}: not a directory")
        done.append(name)
    if f is None:       # the root directory, or a path that ends in ".."
        raise BadInput(f"{path}: is a directory")
    if path.endswith("/") and f.info.type != "dir":
        raise BadInput(f"{path}: not a directory")
    return f


CASE_BLIND = ("vfat", "exfat", "ntfs")


def _find_any_case(idx, path: str, partition: int | None) -> list:
    folded = getattr(idx, "_casefolded", None)
    if folded is None:
        folded = {}
        for p, files in idx.by_path():
            for f in files:
                fs = f.volume.filesystem
                if fs is not None and fs.type in CASE_BLIND:
                    folded.setdefault(p.casefold(), []).append(f)
        idx._casefolded = folded
    return [f for f in folded.get(path.casefold(), [])
            if partition is None or f.volume.partition.index == partition]


def cat_main(ns) -> int:
    from .guest.disk import read_through_library
    from .guest.source import GuestSource
    with _open(ns.image, ns.snapshot) as im:
        idx = _index(im)
        if idx.disk.unreadable:
            raise BadInput(f"{ns.image}: guest disk {idx.disk.unreadable}")
        if ns.partition is not None:
            have = sorted({gv.partition.index for gv in idx.disk.volumes})
            if ns.partition not in have:
                raise BadInput(f"no partition {ns.partition} on this disk (partitions: "
                               f"{', '.join(map(str, have)) or 'none'})")
        f = _resolve(idx, ns.path, ns.partition)
        info = f.info
        if info.type == "dir":
            raise BadInput(f"{ns.path}: is a directory")
        out = sys.stdout.buffer
        if info.inline or info.encoded:
            src = GuestSource.of_image(im)
            out.write(read_through_library(src, f.volume, info.path, info.size))
        else:
            _write_extents(im, info, out)
        out.flush()
    return 0


def _write_extents(im, info, out, chunk: int = 4 << 20) -> None:
    pos = 0
    for fo, g, n in info.extents:
        if fo > pos:
            _zeros(out, fo - pos)
        for o in range(0, n, chunk):
            out.write(im.read(g + o, min(chunk, n - o)))
        pos = fo + n
    if pos < info.size:
        _zeros(out, info.size - pos)


def _zeros(out, n: int, chunk: int = 4 << 20) -> None:
    while n > 0:
        out.write(bytes(min(n, chunk)))
        n -= chunk
