"""``qcow2view create PATH SIZE [-o k=v,...] [-b FILE -F FMT] [--force]``: like qemu-img create."""

from __future__ import annotations

import sys

from . import option_help as H
from .engine.create import create_image, parse_size
from .engine.errors import Qcow2Error

_OPTION_NAMES = ("cluster_size", "compat", "refcount_bits", "lazy_refcounts", "extended_l2",
                 "compression_type", "preallocation", "backing_file", "backing_fmt",
                 "data_file", "data_file_raw")


def parse_options(groups: list[str]) -> dict[str, str]:
    """``-o`` values (each ``key=value[,key=value...]``) as a dict; unknown keys are errors."""
    opts: dict[str, str] = {}
    for group in groups:
        for item in filter(None, group.split(",")):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise Qcow2Error(f"option {item!r} needs a value (key=value)")
            if key not in _OPTION_NAMES:
                raise Qcow2Error(f"unknown option {key!r} (known: {', '.join(_OPTION_NAMES)})")
            opts[key] = value
    return opts


def option_help(argv: list[str]) -> int | None:
    """``create -o help [PATH]``: qemu-img's option list (None: no help asked)."""
    values, positional = H.scan(argv, {"-o", "-b", "-F", "-f"})
    if not H.is_help(values.get("-o", [])):
        return None
    fmt = (values.get("-f") or ["qcow2"])[-1]
    if fmt != "qcow2":
        return H.refuse("create", f"format {fmt!r} is not supported here (qcow2 only)")
    return H.emit_lines(H.create_help(fmt, positional[0] if positional else None))


def create_main(ns) -> int:
    try:
        opts: dict = parse_options(ns.options)
        if ns.backing_file:
            opts["backing_file"] = ns.backing_file
        if ns.backing_fmt:
            opts["backing_fmt"] = ns.backing_fmt
        if "cluster_size" in opts:
            opts["cluster_size"] = parse_size(opts["cluster_size"])
        if "refcount_bits" in opts:
            opts["refcount_bits"] = int(opts["refcount_bits"]) \
                if opts["refcount_bits"].isdigit() else opts["refcount_bits"]
        size = None if ns.size in (None, "") else parse_size(ns.size)
        create_image(ns.path, size, overwrite=ns.force, unsafe=ns.unsafe, **opts)
    except Qcow2Error as e:
        print(f"qcow2view create: {e}", file=sys.stderr)
        return 1
    shown = " ".join(f"{k}={v}" for k, v in opts.items())
    print(f"Formatting '{ns.path}', fmt=qcow2 size={size if size is not None else 'backing'}"
          + (f" {shown}" if shown else ""))
    return 0
