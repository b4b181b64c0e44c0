"""Command line: the GUI launcher and its headless twins.

``qcow2view [IMAGE...]`` opens the GUI; ``qcow2view info|check|map|create ...``
work in a terminal.  Each handler lives in its own module and is imported only
when used, so ``qcow2view info`` never loads Qt.
"""

from __future__ import annotations

import argparse
import codecs
import gc
import os
import sys

from . import __version__

# numpy's OpenBLAS starts a thread per core at import, and they spin: ~80 ms of CPU
# taken from a check that needs none of BLAS (a user's own setting is kept)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Start-up makes tens of thousands of long-lived objects (numpy, dataclasses' generated
# methods, Qt bindings); at the default threshold of 700 the cycle collector runs ~60
# times over them before the first image is read (~8% of a 1 TiB check's CPU)
gc.set_threshold(10_000, 10, 10)

SUBCOMMANDS = ("info", "check", "map", "create")
#: image operations with qemu-img's arguments (their parsers live in cmd_ops)
OPERATIONS = ("snapshot", "resize", "commit", "rebase", "convert", "amend", "measure",
              "compare")
#: the guest disk's contents (their parsers live in cmd_guest)
GUEST = ("ls", "owner", "changed", "cat")
#: --view: the tabs of an image's picture area (ImageTab.PANES has the same keys)
VIEWS = ("map", "mapping", "problems", "hex", "hex-file", "files")


def _gui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qcow2view",
        description="Look inside QCOW2 disk images and edit them safely. "
                    f"Terminal commands: {', '.join(SUBCOMMANDS + OPERATIONS + GUEST)} "
                    "(see 'qcow2view CMD --help').")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="images to open (with none: a start page; see --demo)")
    p.add_argument("--demo", action="store_true",
                   help="open the demo image (made on first use in the cache folder)")
    p.add_argument("--screenshot", metavar="OUT.png",
                   help="open the image, wait until every view is populated, save a PNG "
                        "of the window and exit")
    p.add_argument("--view", choices=VIEWS,
                   help="show this tab of the image in front (the last one opened): the "
                        "cluster map, the guest-to-host mapping plot, the problems list, the "
                        "guest disk in hex, the image file in hex or the guest's files (with "
                        "--screenshot: the view in the PNG)")
    p.add_argument("--goto", metavar="GUEST_OFFSET",
                   help="go to this guest offset (4096, 0x7e00, 1M, 'LBA 2048'): its table "
                        "entry, its bytes in the guest hex view (shown unless --view says "
                        "otherwise) and the host cluster that holds it on the map")
    p.add_argument("--goto-file", metavar="PATH",
                   help="go to this file of the guest (/etc/fstab, or 2:/etc/fstab when two "
                        "filesystems have it): the guest hex view with the caret on its first "
                        "byte (unless --view says otherwise), the file selected in Files; a "
                        "path that does not exist exits 2 naming it")
    p.add_argument("--edit", action="store_true", help="open the images for editing")
    p.add_argument("--install-desktop", action="store_true",
                   help="install the desktop entry, icons and MIME data for this user")
    p.add_argument("--uninstall-desktop", action="store_true",
                   help="remove what --install-desktop installed")
    p.add_argument("--version", action="version", version=f"qcow2view {__version__}")
    return p


def _qemu_img_flags(p: argparse.ArgumentParser) -> None:
    """info's and check's output options, with qemu-img's spellings beside ours, so a
    qemu-img command line works with the name changed."""
    p.add_argument("--json", action="store_true", help="JSON, keys as qemu-img spells them")
    p.add_argument("--output", choices=("human", "json"), help="as qemu-img: json is --json")
    p.add_argument("-f", dest="fmt", metavar="FMT", help="image format (qcow2)")
    p.add_argument("-U", "--force-share", action="store_true",
                   help="(accepted: reading here never locks the image)")


def _sub_parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"qcow2view {cmd}")
    if cmd == "info":
        p.description = "Print what an image holds (like qemu-img info)."
        p.add_argument("image")
        _qemu_img_flags(p)
        p.add_argument("--snapshot", help="describe the view of this internal snapshot")
    elif cmd == "check":
        p.description = ("Check refcounts and tables (like qemu-img check). Exit codes: "
                         "0 clean, 1 check failed, 2 corruptions, 3 leaks only.")
        p.add_argument("image")
        _qemu_img_flags(p)
        p.add_argument("-q", "--quiet", action="store_true",
                       help="print nothing on standard output (the exit code tells)")
        p.add_argument("-r", "--repair", choices=("leaks", "all"),
                       help="repair (opens for writing), as qemu-img check -r")
    elif cmd == "map":
        p.description = "Render the cluster-allocation heatmap of an image to a PNG."
        p.add_argument("image")
        p.add_argument("--png", required=True, metavar="OUT.png")
        p.add_argument("--mode", choices=("kind", "refcount", "guest"), default="kind")
        p.add_argument("--width", type=int, default=1024,
                       help="picture width in pixels, 16 to 4096 (default 1024)")
    elif cmd == "create":
        p.description = "Create a QCOW2 image (options as qemu-img create -o names them)."
        p.add_argument("path")
        p.add_argument("size", nargs="?", help="size with an optional unit: 10G, 512M, 1T, "
                       "65536 (omit to take the backing file's size)")
        p.add_argument("-o", dest="options", action="append", default=[],
                       metavar="key=value[,key=value...]",
                       help="cluster_size, compat, refcount_bits, lazy_refcounts, extended_l2, "
                            "compression_type, preallocation, backing_file, backing_fmt, data_file")
        p.add_argument("-b", dest="backing_file", help="backing file")
        p.add_argument("-F", dest="backing_fmt", help="backing file format")
        p.add_argument("-u", dest="unsafe", action="store_true",
                       help="do not open the backing file (it may be missing); needs SIZE")
        p.add_argument("--force", action="store_true", help="replace an existing file")
    if cmd in ("info", "check", "map"):
        from .image_opts import add_arguments
        add_arguments(p)
    return p


def _file_name_bytes(exc: UnicodeError):
    """Encoding error handler for stdout: a file name that is not UTF-8 (its bytes kept as
    lone surrogates by os.fsdecode) is printed as those bytes, as qemu-img prints it;
    anything else the terminal cannot show is escaped, never an error after the work."""
    if isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start:exc.end]
        if all(0xDC80 <= ord(c) <= 0xDCFF for c in bad):
            return bytes(ord(c) - 0xDC00 for c in bad), exc.end
        return codecs.backslashreplace_errors(exc)
    raise exc


codecs.register_error("qcow2view-names", _file_name_bytes)


def quiet_stdout() -> None:
    """The reader of stdout went away (``| head -1``): send the rest to /dev/null, as
    qemu-img's buffered stdio loses it, so the command ends with its own exit code."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


def emit(text: str = "") -> None:
    """Print a line of a command's output; a closed pipe (``| head -1``) is no error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        quiet_stdout()


def _in_a_terminal(run) -> int:
    """Run a terminal command: names that are not UTF-8 print as their bytes, and a
    reader that goes away (``| head -1``) ends it quietly, as qemu-img ends."""
    try:
        sys.stdout.reconfigure(errors="qcow2view-names")    # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    try:
        rc = run()
    except BrokenPipeError:     # a print not through emit(): the work is done anyway
        quiet_stdout()
        return 0
    except MemoryError:         # a damaged image asking for more than the machine has
        print("qcow2view: out of memory", file=sys.stderr)
        return 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()
    return rc


def _terminal_command(cmd: str, argv: list[str]) -> int:
    if cmd == "create":         # -o help needs no file name
        from . import cmd_create
        rc = cmd_create.option_help(argv)
        if rc is not None:
            return rc
    ns = _sub_parser(cmd).parse_args(argv)
    if getattr(ns, "output", None):
        ns.json = ns.output == "json"
    if cmd == "check" and ns.fmt == "raw":
        print("qcow2view check: This image format does not support checks", file=sys.stderr)
        return 63                           # (qemu-img's code for it)
    if cmd in ("info", "check", "map"):
        from .image_opts import apply_single
        rc = apply_single(ns, f"qcow2view {cmd}")
        if rc is not None:
            return rc
    if cmd in ("info", "check"):
        from . import cmd_info
        return cmd_info.info_main(ns) if cmd == "info" else cmd_info.check_main(ns)
    if cmd == "create":
        from . import cmd_create
        return cmd_create.create_main(ns)
    from . import app
    return app.map_main(ns)


def _keep_freed_memory() -> None:
    """glibc: keep freed buffers for reuse.  An operation streams gigabytes through
    buffers of a few MiB; by default each is a fresh mmap (or heap growth trimmed
    again), so every chunk is page-faulted and zeroed anew: a 4 GiB convert spent
    ~2 s of kernel time on that alone (qemu-img reuses its buffers)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)      # M_MMAP_THRESHOLD: buffers up to 64 MiB on the heap
        libc.mallopt(-1, 512 << 20)     # M_TRIM_THRESHOLD: the heap top is kept, not trimmed
    except (OSError, AttributeError):   # not glibc: its own allocator's defaults
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in OPERATIONS + GUEST + SUBCOMMANDS:
        # a command's walks make tens of MiB of temporaries per batch of tables: on
        # glibc's defaults each is fresh memory, faulted in and zeroed again (a 1 TiB
        # image with one snapshot: 1.05 s of check, 0.52 s with the heap kept)
        _keep_freed_memory()
    if argv and argv[0] in OPERATIONS:
        from . import cmd_ops
        return _in_a_terminal(lambda: cmd_ops.main(argv[0], argv[1:]))
    if argv and argv[0] in GUEST:
        from . import cmd_guest
        return _in_a_terminal(lambda: cmd_guest.main(argv[0], argv[1:]))
    if argv and argv[0] in SUBCOMMANDS:
        # one look at one image: the cycle collector would only walk the modules just
        # imported, over and over (~3% of a 1 TiB check), and find nothing to free
        was = gc.isenabled()
        gc.disable()
        try:
            return _in_a_terminal(lambda: _terminal_command(argv[0], argv[1:]))
        finally:
            if was:
                gc.enable()
    ns = _gui_parser().parse_args(argv)
    if ns.install_desktop or ns.uninstall_desktop:
        from . import desktop
        done = (desktop.install_desktop() if ns.install_desktop
                else desktop.uninstall_desktop())
        for path in done:
            print(path)
        return 0
    from . import app
    return app.run_gui(ns)


def run() -> None:
    """The installed commands' entry point: :func:`main`, and after a terminal command
    a prompt exit.  Its work is done by then (images closed, writes synced, output
    flushed here); tearing the interpreter down would free every array and module one
    by one, ~40 ms, a sixth of checking a 1 TiB image.  The GUI ends normally."""
    argv = sys.argv[1:]
    rc = main(argv)
    if argv and argv[0] in OPERATIONS + GUEST + SUBCOMMANDS:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(rc if isinstance(rc, int) else 1)
    sys.exit(rc)


if __name__ == "__main__":
    run()
