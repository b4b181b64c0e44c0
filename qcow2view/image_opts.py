"""``--image-opts`` and ``--object`` of the reading commands, as qemu-img takes them.

With ``--image-opts`` an image argument is an option string instead of a file name:
``driver=qcow2,file.filename=PATH`` (``file.driver=file``; no driver: the format is
probed).  A key this tool does not know is refused as qemu-img refuses it.  The
only object is ``secret`` (for encrypted images): it is accepted, but the guest
data of an encrypted image is not decrypted here, so a command that reads it
refuses rather than pretending.  Nothing here imports the engine at load time."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .engine.errors import Qcow2Error

FORMATS = ("qcow2", "raw")
#: qcow2 runtime options that only matter for decryption: accepted, used by nothing
QCOW2_SECRET_KEYS = ("encrypt.key-secret",)
NOT_DECRYPTED = "encrypted images are not readable here (guest data is not decrypted)"


@dataclass(frozen=True)
class ImageSpec:
    """An image argument resolved: the file and its format (None: probe it)."""
    path: str
    fmt: str | None


def split_options(text: str) -> list[tuple[str, str | None]]:
    """QemuOpts syntax: ``key=value`` items separated by commas, ``,,`` a comma."""
    items, cur, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            items.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    items.append(cur)
    out: list[tuple[str, str | None]] = []
    for item in items:
        if item:
            key, sep, value = item.partition("=")
            out.append((key, value if sep else None))
    return out


def parse_image_opts(text: str) -> ImageSpec:
    """An ``--image-opts`` argument as an :class:`ImageSpec`; what qemu-img would
    refuse is a :class:`Qcow2Error` in its words ("Could not open 'TEXT': ...")."""
    def refuse(why: str) -> Qcow2Error:
        return Qcow2Error(f"Could not open '{text}': {why}")
    opts: dict[str, str] = {}
    for key, value in split_options(text):
        if value is None:               # qemu-img takes a lone word for a node name
            raise refuse(f"Cannot find device='{key}' nor node-name='{key}'")
        opts[key] = value
    driver = opts.pop("driver", None)
    if driver is not None and driver not in FORMATS:
        raise refuse(f"driver '{driver}' is not supported here (qcow2 or raw)")
    protocol = opts.pop("file.driver", "file")
    if protocol != "file":
        raise refuse(f"protocol driver '{protocol}' is not supported here (only file)")
    path = opts.pop("file.filename", None)
    for key in opts:
        if key.startswith("file."):
            raise refuse(f"Block protocol 'file' doesn't support the option '{key[5:]}'")
    if path is None:
        raise refuse('A block device must be specified for "file"')
    if not os.path.exists(path):
        raise refuse(f"Could not open '{path}': No such file or directory")
    fmt = driver
    for key in opts:
        if fmt is None:
            from .engine.backing import probe_format
            fmt = probe_format(path)
        if not (fmt == "qcow2" and key in QCOW2_SECRET_KEYS):
            raise refuse(f"Block format '{fmt}' does not support the option '{key}'")
    return ImageSpec(path, fmt)


def parse_object(text: str) -> dict[str, str]:
    """``--object secret,id=ID,data=...|file=...``: the only object qemu-img's
    reading commands need (for encrypted images)."""
    items = split_options(text)
    kind = items[0][0] if items and items[0][1] is None else None
    props = {k: v or "" for k, v in items[1:] if kind} if kind else dict(
        (k, v or "") for k, v in items)
    kind = kind or props.pop("qom-type", None)
    if kind != "secret":
        raise Qcow2Error(f"--object {text}: only 'secret' objects are supported here "
                         "(for encrypted images)")
    if not props.get("id"):
        raise Qcow2Error(f"--object {text}: Parameter 'id' is missing")
    return props


def resolve(images: list[str], image_opts: bool, fmt: str | None,
            objects: list[str] | None) -> tuple[list[ImageSpec], bool]:
    """The image arguments of a command as specs, and whether a secret was given.
    ``fmt`` is its -f (qemu-img: not together with --image-opts)."""
    secrets = [parse_object(o) for o in objects or []]
    if not image_opts:
        return [ImageSpec(p, fmt) for p in images], bool(secrets)
    if fmt is not None:
        raise Qcow2Error("--image-opts and --format are mutually exclusive")
    return [parse_image_opts(text) for text in images], bool(secrets)


def refuse_if_encrypted(spec: ImageSpec) -> None:
    """A command about to read guest data, given a secret: an encrypted image is
    refused in plain words (its data would not be decrypted)."""
    from .engine import open_image
    if spec.fmt == "raw":
        return
    try:
        with open_image(spec.path, ignore_backing_errors=True) as image:
            encrypted = image.encryption != "none"
    except Qcow2Error:
        return                              # the command's own open says what is wrong
    if encrypted:
        raise Qcow2Error(f"{spec.path}: {NOT_DECRYPTED}")


def add_arguments(p) -> None:
    """``--image-opts`` and ``--object`` on a command's parser."""
    p.add_argument("--image-opts", action="store_true", dest="image_opts",
                   help="the image argument is an option string: driver=qcow2,"
                   "file.filename=PATH[,file.driver=file]")
    p.add_argument("--object", action="append", dest="objects", metavar="secret,id=ID,...",
                   help="accepted for qemu-img's command lines; the guest data of an "
                   "encrypted image is not decrypted here")


def apply_single(ns, prog: str, attr: str = "image") -> int | None:
    """Resolve ``ns.<attr>`` of a command that reads qcow2 only (info, check, map)
    to its file; an error is printed, its exit code (1) returned (None: go on)."""
    import sys
    fmt = getattr(ns, "fmt", None)
    try:
        if fmt not in (None, "qcow2", "raw"):
            raise Qcow2Error(f"format {fmt!r} is not supported here (qcow2 only)")
        (spec,), _ = resolve([getattr(ns, attr)], ns.image_opts, fmt, ns.objects)
        if spec.fmt == "raw":
            raise Qcow2Error(f"driver 'raw': {prog.split()[-1]} reads qcow2 images only")
    except Qcow2Error as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    setattr(ns, attr, spec.path)
    return None
