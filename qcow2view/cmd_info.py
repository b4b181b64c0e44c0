"""``qcow2view info`` and ``qcow2view check``: the terminal twins of qemu-img's.

JSON keys are spelled as ``qemu-img --output=json`` spells them; exit codes of
``check`` are qemu-img's (0 clean, 1 check could not complete, 2 corruptions,
3 leaks only).  Errors print one line to stderr and exit 1.  No Qt here.
"""

from __future__ import annotations

import math
import os
import sys
import time

from .cli import emit
from .engine import open_image
from .engine.errors import Qcow2Error

__all__ = ["info_main", "check_main", "info_dict", "size_to_str"]


def _json(d: dict) -> str:
    """qemu-img's --output=json layout (json loads only for it: ~2 ms of every start)."""
    import json
    return json.dumps(d, indent=4)


def size_to_str(val: int) -> str:
    """qemu's size_to_str: three significant digits, binary units."""
    suffixes = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
    _, e = math.frexp(val / (1000.0 / 1024.0)) if val else (0, 0)
    i = max(0, (e - 1) // 10)
    return f"{val / (1 << (i * 10)):0.3g} {suffixes[i]}B"


def _full_backing(path: str, name: str) -> str:
    """qemu's path_combine(): relative names resolve against the image's folder."""
    if os.path.isabs(name) or ":" in name.split("/", 1)[0]:
        return name
    d = os.path.dirname(path)
    return os.path.join(d, name) if d else name


def _snapshot_dict(s) -> dict:
    d = {}
    if s.icount is not None and s.icount != (1 << 64) - 1:
        d["icount"] = s.icount
    d.update({"vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000, "name": s.name,
              "date-sec": s.date_sec, "date-nsec": s.date_nsec,
              "vm-clock-sec": s.vm_clock_nsec // 1_000_000_000, "id": s.id_str,
              "vm-state-size": s.vm_state_size})
    return d


def info_dict(im, filename: str) -> dict:
    """What ``qemu-img info --output=json`` prints, plus nothing else."""
    h = im.header
    d: dict = {}
    if im.backing_filename and im.backing_format:
        d["backing-filename-format"] = im.backing_format
    if im.snapshots:
        d["snapshots"] = [_snapshot_dict(s) for s in im.snapshots]
    d["virtual-size"] = im.virtual_size
    d["filename"] = filename
    d["cluster-size"] = im.cluster_size
    d["format"] = "qcow2"
    d["actual-size"] = os.stat(im.path).st_blocks * 512
    if h.crypt_method:
        d["encrypted"] = True
    data: dict = {"compat": h.compat, "compression-type": h.compression_type_name}
    if h.version >= 3:
        data["lazy-refcounts"] = bool(h.lazy_refcounts)
        if im.bitmaps:
            data["bitmaps"] = [{"flags": b.flag_names, "name": b.name,
                                "granularity": b.granularity} for b in im.bitmaps]
    data["refcount-bits"] = h.refcount_bits
    if h.version >= 3:
        if im.data_file_name:
            data["data-file"] = im.data_file_name
            data["data-file-raw"] = bool(h.data_file_raw)
        data["corrupt"] = bool(h.corrupt)
        data["extended-l2"] = bool(h.extended_l2)
    d["format-specific"] = {"type": "qcow2", "data": data}
    if im.backing_filename:
        d["full-backing-filename"] = _full_backing(filename, im.backing_filename)
        d["backing-filename"] = im.backing_filename
    d["dirty-flag"] = bool(h.dirty)
    return d


def _fail(e: BaseException, path: str = "") -> int:
    msg = str(e) if isinstance(e, Qcow2Error) else (
        f"{getattr(e, 'filename', '') or path}: {e.strerror or e}" if isinstance(e, OSError)
        else str(e))
    print(f"qcow2view: {msg}".replace("\n", " "), file=sys.stderr)
    return 1


def _open(path: str, **kw):
    try:
        os.stat(path)
    except FileNotFoundError:
        raise Qcow2Error("no such file", path=path) from None
    except OSError as e:    # a symlink loop, a folder we may not enter: say which
        raise Qcow2Error(e.strerror or str(e), path=path) from None
    except ValueError:      # a NUL byte: no file can have that name
        raise Qcow2Error("a file name cannot contain a NUL byte",
                         path=path.replace("\0", "\\0")) from None
    return open_image(path, ignore_backing_errors=True, **kw)


# -- info -----------------------------------------------------------------------------
def info_main(ns) -> int:
    try:
        with _open(ns.image, snapshot=getattr(ns, "snapshot", None)) as im:
            d = info_dict(im, ns.image)
            if im.snapshot is not None:
                d["snapshot"] = {"id": im.snapshot.id_str, "name": im.snapshot.name}
            text = _json(d) if ns.json else _human_info(im, d)
    except (Qcow2Error, OSError) as e:
        return _fail(e, ns.image)
    emit(text)
    return 0


def _yes(b: bool) -> str:
    return "true" if b else "false"


def _human_info(im, d: dict) -> str:
    from .engine.header import (FEATURE_AUTOCLEAR, FEATURE_COMPATIBLE, FEATURE_INCOMPATIBLE,
                                feature_bit_names)
    h = im.header
    out = [f"image: {d['filename']}", "file format: qcow2",
           f"virtual size: {size_to_str(d['virtual-size'])} ({d['virtual-size']} bytes)",
           f"disk size: {size_to_str(d['actual-size'])}",
           f"cluster_size: {d['cluster-size']}"]
    if im.snapshot is not None:
        out.append(f"snapshot view: {im.snapshot.id_str} ({im.snapshot.name})")
    if im.backing_filename:
        line = f"backing file: {im.backing_filename}"
        if d["full-backing-filename"] != im.backing_filename:
            line += f" (actual path: {d['full-backing-filename']})"
        out.append(line)
        if im.backing_format:
            out.append(f"backing file format: {im.backing_format}")
    if h.crypt_method:
        out.append("encrypted: yes")
    if im.snapshots:
        out.append("Snapshot list:")
        out.append(f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}"
                   f"{'ICOUNT':>11}")
        for s in im.snapshots:
            date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.date_sec))
            secs = s.vm_clock_nsec // 1_000_000_000
            clock = (f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}."
                     f"{s.vm_clock_nsec // 1_000_000 % 1000:03d}")
            icount = "" if s.icount is None else str(s.icount)
            out.append(f"{s.id_str:<9} {s.name:<16} {size_to_str(s.vm_state_size):>8}"
                       f"{date:>20}{clock:>13}{icount:>11}")
    out.append("Format specific information:")
    data = d["format-specific"]["data"]
    for k, v in data.items():
        name = k.replace("-", " ")
        if k == "bitmaps":
            out.append("    bitmaps:")
            for i, b in enumerate(v):
                out.append(f"        [{i}]:")
                out.append("            flags:")
                for j, fl in enumerate(b["flags"]):
                    out.append(f"                [{j}]: {fl}")
                out.append(f"            name: {b['name']}")
                out.append(f"            granularity: {b['granularity']}")
        else:
            out.append(f"    {name}: {_yes(v) if isinstance(v, bool) else v}")
    # our extras: what qemu-img info does not show
    names = im.feature_names
    feats = (feature_bit_names(FEATURE_INCOMPATIBLE, h.incompatible_features, names)
             + feature_bit_names(FEATURE_COMPATIBLE, h.compatible_features, names)
             + feature_bit_names(FEATURE_AUTOCLEAR, h.autoclear_features, names))
    out.append(f"Features: {', '.join(feats) if feats else 'none'}")
    if im.extensions:
        out.append("Header extensions:")
        for e in im.extensions:
            out.append(f"    {e.type:#010x} {e.name} ({len(e.data)} bytes at {e.offset:#x})")
    if im.backing_chain:
        out.append("Backing chain:")
        for b in im.backing_chain:
            state = "found" if b.found else f"MISSING ({b.error})"
            out.append(f"    {b.depth}: {b.filename} [{b.format or '?'}] {state}")
    return "\n".join(out)


# -- check ----------------------------------------------------------------------------
def check_main(ns) -> int:
    repair = getattr(ns, "repair", None)
    try:
        if repair:
            r, lines = _repair_logged(ns.image, repair == "all")
        else:
            from .check_log import check_lines
            with _open(ns.image) as im:
                r = im.check()
                lines = check_lines(im, r)
    except (Qcow2Error, OSError) as e:
        return _fail(e, ns.image)
    r.filename = ns.image
    for line in lines:              # qemu-img's lines, as it prints them while checking
        print(line, file=sys.stderr)
    if getattr(ns, "quiet", False):
        pass                        # (qemu-img check -q: the exit code alone)
    elif ns.json:
        emit(_json(r.to_json()))
    else:
        if repair and (r.leaks_fixed or r.corruptions_fixed):
            emit("The following inconsistencies were found and repaired:\n\n"
                  f"    {r.leaks_fixed} leaked clusters\n"
                  f"    {r.corruptions_fixed} corruptions\n\n"
                  "Double checking the fixed image now...")
        emit(_human_check(r))
    if r.check_errors:
        print("qcow2view: Check failed", file=sys.stderr)
    return r.exit_code


def _repair_logged(path: str, fix_all: bool):
    """check -r: the repaired image's check and qemu-img's stderr lines for it
    (check_log); the image is looked at read-only first, as the repair will find it.
    A repair that refuses prints what came before its refusal, then fails."""
    from .check_log import RepairLog
    log = RepairLog(fix_all)
    _look_before(log, path)
    try:
        with _open(path, writable=True, repair=True) as im:
            r = im.repair(leaks=True, fix_all=fix_all)
            return r, log.after(im, r)
    except Qcow2Error:
        if log.rebuild and not fix_all:     # the refusal qemu-img words as it checks
            for line in log.refused():
                print(line, file=sys.stderr)
        raise


def _look_before(log, path: str) -> None:
    """The read-only look of a repair's log; its walk's arrays go before the repair
    makes its own (one walk's memory at a time)."""
    import gc
    with _open(path, repair=True) as ro:
        log.before(ro, ro.check())
    del ro
    gc.collect()


def _human_check(r) -> str:
    """dump_human_image_check of qemu-img.c."""
    out = []
    if r.clean:
        out.append("No errors were found on the image.")
    else:
        if r.corruptions:
            out.append(f"\n{r.corruptions} errors were found on the image.\n"
                       "Data may be corrupted, or further writes to the image may "
                       "corrupt it.")
        if r.leaks:
            out.append(f"\n{r.leaks} leaked clusters were found on the image.\n"
                       "This means waste of disk space, but no harm to data.")
        if r.check_errors:
            out.append(f"\n{r.check_errors} internal errors have occurred during the check.")
    if r.total_clusters and r.allocated_clusters:
        out.append(f"{r.allocated_clusters}/{r.total_clusters} = "
                   f"{r.allocated_clusters * 100.0 / r.total_clusters:0.2f}% allocated, "
                   f"{r.fragmented_clusters * 100.0 / r.allocated_clusters:0.2f}% fragmented, "
                   f"{r.compressed_clusters * 100.0 / r.allocated_clusters:0.2f}% compressed "
                   "clusters")
    if r.image_end_offset:
        out.append(f"Image end offset: {r.image_end_offset}")
    return "\n".join(out)
