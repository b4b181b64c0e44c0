"""``qcow2view snapshot|resize|commit|rebase|convert|amend|measure``: image operations
taking qemu-img's arguments, each a thin shell around ``engine/ops``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .cli import emit
from .engine import open_image
from .engine.errors import Qcow2Error


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1, as qemu-img's do (argparse exits 2), in one line."""

    def error(self, message: str):
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(1)


def _parser(cmd: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"qcow2view {cmd}")
    p.add_argument("-q", action="store_true", dest="quiet", help="quiet")
    p.add_argument("-f", dest="fmt", help="image format (qcow2; raw where qemu-img allows it)")
    p.add_argument("-p", action="store_true", dest="progress", help="show progress")
    # qemu-img options that change nothing here, accepted so scripts written for
    # qemu-img run unchanged: cache modes (the engine flushes as QEMU orders it)
    if cmd in ("commit", "rebase", "convert"):
        p.add_argument("-t", dest="cache", metavar="CACHE", help="(accepted, no effect)")
    if cmd == "amend":
        p.add_argument("-t", dest="cache", metavar="CACHE", help="(accepted, no effect)")
    if cmd in ("rebase", "convert"):
        p.add_argument("-T", dest="src_cache", metavar="CACHE", help="(accepted, no effect)")
    if cmd in ("commit", "convert"):
        p.add_argument("-r", dest="rate_limit", metavar="RATE", help="(accepted, no limit)")
    if cmd in ("snapshot", "measure"):
        p.add_argument("-U", "--force-share", action="store_true", dest="force_share",
                       help="open an image in use (reading never takes a lock here)")
    if cmd == "snapshot":
        p.description = "List, create, apply or delete internal snapshots (qemu-img snapshot)."
        g = p.add_mutually_exclusive_group()
        g.add_argument("-l", action="store_true", dest="list", help="list snapshots")
        g.add_argument("-c", dest="create", metavar="NAME", help="create a snapshot")
        g.add_argument("-a", dest="apply", metavar="NAME", help="revert the disk to a snapshot")
        g.add_argument("-d", dest="delete", metavar="NAME", help="delete a snapshot")
        p.add_argument("image")
    elif cmd == "resize":
        p.description = "Change the virtual size (qemu-img resize)."
        p.add_argument("--shrink", action="store_true", help="allow shrinking (data past "
                       "the new end is lost)")
        p.add_argument("--preallocation", default="off",
                       help="off, metadata (qcow2: the new area's tables and clusters "
                       "allocated, not written), falloc or full (its clusters written)")
        p.add_argument("image")
        p.add_argument("size", help="[+|-]SIZE")
    elif cmd == "commit":
        p.description = "Write an overlay's data into its backing file (qemu-img commit)."
        p.add_argument("-b", dest="base", help="commit down to this image of the chain")
        p.add_argument("-d", action="store_true", dest="keep", help="do not empty the overlay")
        p.add_argument("image")
    elif cmd == "rebase":
        p.description = "Change the backing file (qemu-img rebase)."
        p.add_argument("-u", action="store_true", dest="unsafe",
                       help="unsafe: only rewrite the name")
        p.add_argument("-b", dest="backing", required=True, help='new backing file ("" for none)')
        p.add_argument("-F", dest="backing_fmt", help="new backing file's format")
        p.add_argument("image")
    elif cmd == "convert":
        _convert_arguments(p)
    elif cmd == "amend":
        p.description = "Change image options in place (qemu-img amend)."
        p.add_argument("-o", dest="options", action="append", required=True)
        p.add_argument("--force", action="store_true")
        p.add_argument("image")
    elif cmd == "compare":
        p.description = ("Compare the guest contents of two images (qemu-img compare). Exit "
                         "codes: 0 identical, 1 different, 2 error.")
        p.add_argument("-F", dest="fmt2", help="the second image's format")
        p.add_argument("-T", dest="src_cache", metavar="CACHE", help="(accepted, no effect)")
        p.add_argument("-s", action="store_true", dest="strict",
                       help="strict: images of different sizes, or a range allocated "
                       "differently (block status), differ")
        p.add_argument("-U", "--force-share", action="store_true", dest="force_share",
                       help="(accepted: reading never takes a lock here)")
        p.add_argument("file1")
        p.add_argument("file2")
    elif cmd == "measure":
        p.description = "Space a new image needs (qemu-img measure)."
        p.add_argument("--output", choices=("human", "json"), default="human")
        p.add_argument("-O", dest="out_fmt", default="raw", help="qcow2 or raw")
        p.add_argument("-o", dest="options", action="append", default=[])
        p.add_argument("--size")
        p.add_argument("-l", dest="snapshot")
        p.add_argument("image", nargs="?")
    if cmd in ("snapshot", "convert", "measure", "compare"):
        from .image_opts import add_arguments
        add_arguments(p)
    return p


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Copy the guest disk into a new image (qemu-img convert)."
    p.add_argument("-c", action="store_true", dest="compress", help="compress (qcow2)")
    p.add_argument("-O", dest="out_fmt", default="raw", help="qcow2 or raw")
    p.add_argument("-o", dest="options", action="append", default=[])
    p.add_argument("-l", dest="snapshot", help="snapshot.name=NAME or snapshot.id=ID")
    p.add_argument("-m", dest="threads", type=int, default=2, help="compression threads")
    p.add_argument("-W", action="store_true", dest="unordered", help="(accepted)")
    p.add_argument("-C", action="store_true", dest="copy_offload",
                   help="(accepted: the copy is made by reading and writing)")
    p.add_argument("--salvage", action="store_true", help="(accepted)")
    p.add_argument("--target-is-zero", action="store_true", dest="target_is_zero",
                   help="with -n: the target reads zeros, zero ranges are not written")
    p.add_argument("-U", "--force-share", action="store_true", dest="force_share",
                   help="copy a source that is in use")
    p.add_argument("-n", action="store_false", dest="create",
                   help="write into an existing image (no image is created)")
    p.add_argument("-B", dest="backing", metavar="BACKING",
                   help="the output's backing file (only what the source's top "
                   "image holds is copied)")
    p.add_argument("-F", dest="backing_fmt", help="the backing file's format")
    p.add_argument("-S", dest="sparse_size", metavar="SIZE",
                   help="(accepted; zero clusters are always left unallocated)")
    p.add_argument("src", nargs="+", help="one source, or several read one after "
                   "the other")
    p.add_argument("dst")


def _fix_negative(cmd: str, argv: list[str]) -> list[str]:
    # "resize IMG -1G": argparse would take -1G for an option
    if (cmd == "resize" and argv and "--" not in argv and argv[-1][:1] == "-"
            and argv[-1][1:2].isdigit()):
        return argv[:-1] + ["--", argv[-1]]
    return argv


def _progress(ns):
    if not getattr(ns, "progress", False) or ns.quiet:
        return None

    def show(done: int, total: int) -> None:
        pct = 100.0 * done / total if total else 100.0
        sys.stdout.write(f"    ({pct:.2f}/100%)\r")
        sys.stdout.flush()
    return show


#: options taking a value, for reading a command line that asks ``-o help``
_VALUED = {"convert": {"-O", "-o", "-l", "-m", "-t", "-T", "-r", "-B", "-F", "-S", "-f",
                       "--object"},
           "amend": {"-o", "-f", "-t", "--object"}}


def _option_help(cmd: str, argv: list[str]) -> int | None:
    """``convert|amend -o help``: qemu-img's option list, file names optional
    (None: no help asked).  amend without -f reads the format from the image."""
    from . import option_help as H
    values, positional = H.scan(argv, _VALUED[cmd])
    if not H.is_help(values.get("-o", [])):
        return None
    if cmd == "convert":
        fmt = (values.get("-O") or ["raw"])[-1]
        if fmt not in ("qcow2", "raw"):
            return H.refuse(cmd, f"output format {fmt!r} is not supported here (qcow2 or raw)")
        return H.emit_lines(H.create_help(fmt, positional[-1] if len(positional) > 1 else None))
    fmt = (values.get("-f") or [None])[-1]
    if fmt is None:
        if len(positional) != 1:
            return H.refuse(cmd, "Expecting one image file name")
        if not os.path.exists(positional[0]):
            return H.refuse(cmd, f"Could not open '{positional[0]}': No such file or directory")
        from .engine.image import probe_format
        fmt = probe_format(positional[0])
    if fmt != "qcow2":
        return H.refuse(cmd, f"Format driver '{fmt}' does not support option amendment")
    return H.emit_lines(H.amend_help(fmt))


def main(cmd: str, argv: list[str]) -> int:
    if cmd in _VALUED:
        rc = _option_help(cmd, argv)
        if rc is not None:
            return rc
    ns = _parser(cmd).parse_args(_fix_negative(cmd, argv))
    failed = 2 if cmd == "compare" else 1       # qemu-img compare's error code
    try:
        if ns.fmt not in (None, "qcow2") and cmd not in ("convert", "measure", "compare") and \
                not (cmd == "resize" and ns.fmt == "raw"):
            raise Qcow2Error(f"format {ns.fmt!r} is not supported here (qcow2 only)")
        if cmd in ("snapshot", "convert", "measure"):
            _resolve_images(cmd, ns)
        return globals()[f"_{cmd}"](ns)
    except Qcow2Error as e:
        print(f"qcow2view {cmd}: {e}".replace("\n", " "), file=sys.stderr)
        return failed
    except OSError as e:
        print(f"qcow2view {cmd}: {getattr(e, 'filename', '') or ''}: {e.strerror}",
              file=sys.stderr)
        return failed


def _resolve_images(cmd: str, ns) -> None:
    """--image-opts: the image arguments become their files and -f their format;
    given a secret (--object), a command that reads guest data refuses an
    encrypted image in plain words rather than pretending to decrypt it."""
    from .image_opts import refuse_if_encrypted, resolve
    attr = "src" if cmd == "convert" else "image"
    value = getattr(ns, attr)
    images = value if isinstance(value, list) else [] if value is None else [value]
    specs, secret = resolve(images, ns.image_opts, ns.fmt, ns.objects)
    if not specs:
        return
    fmts = {spec.fmt for spec in specs}
    if len(fmts) > 1:
        raise Qcow2Error("sources of different formats are not supported here")
    ns.fmt = fmts.pop()
    if cmd == "snapshot" and ns.fmt == "raw" and not ns.list:
        raise Qcow2Error("driver 'raw' has no internal snapshots")
    paths = [spec.path for spec in specs]
    setattr(ns, attr, paths if isinstance(value, list) else paths[0])
    if secret and cmd != "snapshot":
        for spec in specs:
            refuse_if_encrypted(spec)


def _open_rw(path: str):
    if not os.path.exists(path):
        raise Qcow2Error("no such file", path=path)
    from .engine.metadata_ops import opened_writable
    return opened_writable(path)


# -- snapshot -----------------------------------------------------------------------------
def _snapshot(ns) -> int:
    from .engine.ops import snapshot as S
    if ns.create is None and ns.apply is None and ns.delete is None:   # "" is a name
        if not os.path.exists(ns.image):
            raise Qcow2Error("no such file", path=ns.image)
        from .engine.image import probe_format
        if (ns.fmt or probe_format(ns.image)) == "raw":
            return 0                    # qemu-img: a probed raw file lists none
        with open_image(ns.image, ignore_backing_errors=True) as im:
            _print_snapshots(S.list_snapshots(im))
        return 0
    with _open_rw(ns.image) as im:
        if ns.create is not None:
            S.create_snapshot(im, ns.create)
        elif ns.apply is not None:
            S.apply_snapshot(im, ns.apply, _progress(ns))
        else:
            S.delete_snapshot(im, ns.delete, _progress(ns))
    return 0


def _print_snapshots(snaps) -> None:
    """As qemu's bdrv_snapshot_dump."""
    from .cmd_info import size_to_str
    if not snaps:
        return
    emit("Snapshot list:")
    emit(f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}{'ICOUNT':>11}")
    for s in snaps:
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.date_sec))
        secs, ms = divmod(s.vm_clock_nsec // 1_000_000, 1000)
        clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{ms:03d}"
        icount = "" if s.icount in (None, 0xFFFFFFFFFFFFFFFF) else str(s.icount)
        pad = " " * max(0, 16 - len(s.name.encode()))     # printf pads bytes, not letters
        emit(f"{s.id_str:<9} {s.name}{pad} {size_to_str(s.vm_state_size):>8}{date:>20}"
             f"{clock:>13}{icount:>11}")


# -- resize -------------------------------------------------------------------------------
def _resize(ns) -> int:
    from .engine.image import probe_format
    from .engine.ops.resize import parse_resize, resize_image, resize_raw
    if not os.path.exists(ns.image):
        raise Qcow2Error("no such file", path=ns.image)
    if (ns.fmt or probe_format(ns.image)) == "raw":
        resize_raw(ns.image, ns.size, shrink=ns.shrink, preallocation=ns.preallocation)
        if not ns.quiet:
            emit("Image resized.")
        return 0
    with _open_rw(ns.image) as im:
        resize_image(im, parse_resize(im.virtual_size, ns.size), shrink=ns.shrink,
                     progress=_progress(ns), preallocation=ns.preallocation)
    if not ns.quiet:
        emit("Image resized.")
    return 0


# -- convert ------------------------------------------------------------------------------
def _create_options(groups: list[str]) -> dict:
    """``-o`` as create_image keywords (sizes and widths as numbers)."""
    from .cmd_create import parse_options
    from .engine.create import parse_size
    for group in groups:
        if not group.strip(","):
            raise Qcow2Error(f"Invalid option list: {group}")
    # size= is taken from the source by qemu-img convert: accepted, not used
    groups = [",".join(i for i in g.split(",") if i.partition("=")[0].strip() != "size")
              for g in groups]
    opts: dict = parse_options(groups)
    if "cluster_size" in opts:
        opts["cluster_size"] = parse_size(opts["cluster_size"])
    if str(opts.get("refcount_bits", "x")).isdigit():
        opts["refcount_bits"] = int(opts["refcount_bits"])
    return opts


def _convert(ns) -> int:
    from .engine.ops.convert import SnapshotParam, convert_image
    if ns.target_is_zero and ns.create:
        raise Qcow2Error("--target-is-zero requires use of -n flag")
    if ns.copy_offload and (ns.compress or ns.sparse_size is not None):
        raise Qcow2Error("Cannot enable copy offloading when "
                         f"{'-c' if ns.compress else '-S'} is used")
    if ns.copy_offload and ns.salvage:
        raise Qcow2Error("Cannot use copy offloading in salvaging mode")
    sp = SnapshotParam.parse(ns.snapshot)
    convert_image(ns.src[0] if len(ns.src) == 1 else ns.src, ns.dst, out_fmt=ns.out_fmt,
                  compress=ns.compress,
                  options=_create_options(ns.options), snapshot=sp and sp.key,
                  src_fmt=ns.fmt, force_share=ns.force_share, threads=max(1, ns.threads),
                  backing=ns.backing, backing_fmt=ns.backing_fmt, create=ns.create,
                  target_is_zero=ns.target_is_zero, progress=_progress(ns))
    return 0


# -- compare ------------------------------------------------------------------------------
def _compare(ns) -> int:
    from .engine.ops.compare import compare_sources, compare_strict
    from .engine.ops.convert import open_source
    from .image_opts import refuse_if_encrypted, resolve
    if ns.image_opts and ns.fmt2:
        raise Qcow2Error("--image-opts and --format are mutually exclusive")
    (one,), secret = resolve([ns.file1], ns.image_opts, ns.fmt, ns.objects)
    (two,), _ = resolve([ns.file2], ns.image_opts, ns.fmt2, None)
    if secret:
        refuse_if_encrypted(one)
        refuse_if_encrypted(two)
    a = open_source(one.path, one.fmt)
    try:
        b = open_source(two.path, two.fmt)
        try:
            if ns.strict and a.virtual_size != b.virtual_size:
                return _say(ns, "Strict mode: Image size mismatch!", 1)
            result = (compare_strict if ns.strict else compare_sources)(a, b, _progress(ns))
            common = min(a.virtual_size, b.virtual_size)
        finally:
            b.close()
    finally:
        a.close()
    if result.size_mismatch and (result.identical or result.mismatch_at >= common):
        _say(ns, "Warning: Image size mismatch!", 0)
    if result.identical:
        return _say(ns, "Images are identical.", 0)
    if result.by_status:
        return _say(ns, f"Strict mode: Offset {result.mismatch_at} block status mismatch!", 1)
    return _say(ns, f"Content mismatch at offset {result.mismatch_at}!", 1)


def _say(ns, line: str, rc: int) -> int:
    if not ns.quiet:
        emit(line)
    return rc


# -- commit / rebase ----------------------------------------------------------------------
def _commit(ns) -> int:
    from .engine.ops.commit import commit_image
    commit_image(ns.image, ns.base, keep=ns.keep, progress=_progress(ns))
    if not ns.quiet:
        emit("Image committed.")
    return 0


def _rebase(ns) -> int:
    from .engine.ops.rebase import rebase_image
    if ns.backing and ns.backing_fmt is None:
        # qemu-img 7.2 (bdrv_change_backing_file with require_format), safe mode too
        # -- where it refuses only after copying; the window's rebase still probes
        raise Qcow2Error(f"Could not change the backing file to '{ns.backing}': "
                         "backing format must be specified (-F)")
    rebase_image(ns.image, ns.backing, ns.backing_fmt, unsafe=ns.unsafe,
                 progress=_progress(ns))
    return 0


# -- amend / measure ----------------------------------------------------------------------
def _plain_options(groups: list[str]) -> dict[str, str]:
    """``-o`` for amend and measure, every key passed on (the engine names the ones
    it refuses, as qemu-img: 'only supported for image creation', unknown ones)."""
    opts: dict[str, str] = {}
    for group in groups:
        if not group.strip(","):
            raise Qcow2Error(f"Invalid option list: {group}")
        for item in filter(None, group.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise Qcow2Error(f"Invalid parameter '{key}' (options are key=value)")
            opts[key.strip().replace("-", "_")] = value
    return opts


def _amend(ns) -> int:
    from .engine.ops.amend import amend_image
    opts = _plain_options(ns.options)
    with _open_rw(ns.image) as im:
        amend_image(im, opts, progress=_progress(ns))
    return 0


def _measure(ns) -> int:
    from .engine.create import parse_size
    from .engine.ops.convert import SnapshotParam, open_source
    from .engine.ops.measure import measure
    from .option_help import measure_refusal, option_items, valid_option_list
    # qemu-img's order: each -o list, the size or file, the image opened, -o parsed
    for group in ns.options:
        if not valid_option_list(group):
            raise Qcow2Error(f"Invalid option list: {group}")
    if ns.size is not None and ns.image:
        raise Qcow2Error("--size N cannot be used together with a filename.")
    if ns.size is None and not ns.image:
        raise Qcow2Error("Either --size N or one filename must be specified.")
    src = None
    if ns.image:
        sp = SnapshotParam.parse(ns.snapshot)
        src = open_source(ns.image, ns.fmt, sp and sp.key)
    try:
        refusal = measure_refusal(ns.out_fmt, ns.options)   # -o help included
        if refusal:
            for message in refusal:     # continuation lines unprefixed, as qemu's
                print(f"qcow2view measure: {message}", file=sys.stderr)
            return 1
        # as qemu reads -o: a bare name is name=on, ",," a comma in a value
        opts = {name.replace("-", "_"): value
                for name, value in option_items(",".join(ns.options))}
        m = (measure(parse_size(ns.size), out_fmt=ns.out_fmt, options=opts) if src is None
             else measure(source=src, out_fmt=ns.out_fmt, options=opts))
    finally:
        if src is not None:
            src.close()
    if ns.output == "json":
        d = {} if m.bitmaps is None else {"bitmaps": m.bitmaps}
        d.update({"required": m.required, "fully-allocated": m.fully_allocated})
        emit(json.dumps(d, indent=4))
    else:
        emit(f"required size: {m.required}")
        emit(f"fully allocated size: {m.fully_allocated}")
        if m.bitmaps is not None:
            emit(f"bitmaps size: {m.bitmaps}")
    return 0
