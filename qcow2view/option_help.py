"""``-o help`` (or ``-o ?``) of create, convert and amend: the option list as
qemu-img 7.2 prints it (qemu_opts_print_help: sorted by name, ``name=<type>``
padded to 22 columns).  Names, types and descriptions are qemu-img's; an option
this tool refuses says so at the end of its line.  Nothing here imports the engine."""

from __future__ import annotations

import re
import sys

#: (name, type, description) of the qcow2 driver's create options (qcow2_create_opts)
QCOW2_CREATE = (
    ("backing_file", "str", "File name of a base image"),
    ("backing_fmt", "str", "Image format of the base image"),
    ("cluster_size", "size", "qcow2 cluster size"),
    ("compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"),
    ("compression_type", "str", "Compression method used for image cluster compression"),
    ("data_file", "str", "File name of an external data file"),
    ("data_file_raw", "bool (on/off)", "The external data file must stay valid as a raw image"),
    ("encrypt.cipher-alg", "str", "Name of encryption cipher algorithm"),
    ("encrypt.cipher-mode", "str", "Name of encryption cipher mode"),
    ("encrypt.format", "str", "Encrypt the image, format choices: 'aes', 'luks'"),
    ("encrypt.hash-alg", "str", "Name of encryption hash algorithm"),
    ("encrypt.iter-time", "num", "Time to spend in PBKDF in milliseconds"),
    ("encrypt.ivgen-alg", "str", "Name of IV generator algorithm"),
    ("encrypt.ivgen-hash-alg", "str", "Name of IV generator hash algorithm"),
    ("encrypt.key-secret", "str", "ID of secret providing qcow AES key or LUKS passphrase"),
    ("encryption", "bool (on/off)", "Encrypt the image with format 'aes'. (Deprecated in "
     "favor of encrypt.format=aes)"),
    ("extended_l2", "bool (on/off)", "Extended L2 tables"),
    ("lazy_refcounts", "bool (on/off)", "Postpone refcount updates"),
    ("preallocation", "str", "Preallocation mode (allowed values: off, metadata, falloc, full)"),
    ("refcount_bits", "num", "Width of a reference count entry in bits"),
    ("size", "size", "Virtual disk size"),
)

#: the raw driver's (raw_create_opts)
RAW_CREATE = (("size", "size", "Virtual disk size"),)

#: the file protocol's (file_create_opts), merged in when a target file is named
FILE_CREATE = (
    ("extent_size_hint", "size", "Extent size hint for the image file, 0 to disable"),
    ("nocow", "bool (on/off)", "Turn off copy-on-write (valid only on btrfs)"),
    ("preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)"),
    ("size", "size", "Virtual disk size"),
)

#: the qcow2 driver's amend options (qcow2_amend_opts)
QCOW2_AMEND = (
    ("backing_file", "str", "File name of a base image"),
    ("backing_fmt", "str", "Image format of the base image"),
    ("compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"),
    ("data_file", "str", "File name of an external data file"),
    ("data_file_raw", "bool (on/off)", "The external data file must stay valid as a raw image"),
    ("encrypt.iter-time", "num", "Time to spend in PBKDF in milliseconds"),
    ("encrypt.keyslot", "num", "Select a single keyslot to modify explicitly"),
    ("encrypt.new-secret", "str", "New secret to set in the matching keyslots. Empty string "
     "to erase"),
    ("encrypt.old-secret", "str", "Select all keyslots that match this password"),
    ("encrypt.state", "str", "Select new state of affected keyslots (active/inactive)"),
    ("lazy_refcounts", "bool (on/off)", "Postpone refcount updates"),
    ("refcount_bits", "num", "Width of a reference count entry in bits"),
    ("size", "size", "Virtual disk size"),
)

FOOTER = ("", "The protocol level may support further options.",
          "Specify the target filename to include those options.")
NOT_HERE = " (not supported here)"


def _unsupported(name: str) -> bool:
    """Options qemu-img knows and this tool refuses: it writes no encrypted image
    and sets no host file attributes."""
    return name.startswith("encrypt") or name in ("extent_size_hint", "nocow")


def _lines(options) -> list[str]:
    out = []
    for name, kind, text in sorted(options):
        out.append(f"  {name + '=<' + kind + '>':<22} - {text}"
                   + (NOT_HERE if _unsupported(name) else ""))
    return out


def is_help(groups: list[str]) -> bool:
    """Whether ``-o`` values ask for help (qemu's has_help_option: an item ``help``
    or ``?`` anywhere in the comma-separated lists)."""
    return any(item.strip() in ("help", "?") for g in groups for item in g.split(","))


def create_help(fmt: str, target: str | None) -> list[str]:
    """``qemu-img create|convert -f|-O FMT -o help [TARGET]``: the format's list;
    with a target file named, merged with the file protocol's (the format's
    description kept where both have a name) under one heading, as qemu-img."""
    own = QCOW2_CREATE if fmt == "qcow2" else RAW_CREATE
    if target is None:
        return [f"Supported {fmt} options:", *_lines(own), *FOOTER]
    names = {o[0] for o in own}
    merged = list(own) + [o for o in FILE_CREATE if o[0] not in names]
    return ["Supported options:", *_lines(merged)]


def amend_help(fmt: str) -> list[str]:
    return [f"Amend options for '{fmt}':", *_lines(QCOW2_AMEND)]


_SIZE_ERROR = ("Parameter '{}' expects a non-negative number below 2^64\n"
               "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
               "and exabytes, respectively.")
_BOOLS = ("on", "off", "yes", "no", "true", "false", "y", "n")


def _value_error(name: str, kind: str, value: str) -> str | None:
    """qemu_opt_parse's refusal of ``value`` for an option of type ``kind``; None
    when qemu takes it, or may (a doubtful spelling is left to the command)."""
    v = value.lstrip()
    if kind == "size":
        if re.fullmatch(r"(0[xX][0-9a-fA-F]+|\d+)[bBkKmMgGtTpPeE]?", v) or \
                re.fullmatch(r"\d*\.\d+[bBkKmMgGtTpPeE]?", v):
            return None
        return _SIZE_ERROR.format(name)
    if kind == "num":
        if re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|\d+)", v):
            return None
        return f"Parameter '{name}' expects a number"
    if kind.startswith("bool"):
        return None if value in _BOOLS else f"Parameter '{name}' expects 'on' or 'off'"
    return None


def option_items(text: str):
    """``name=value`` items as qemu_opts_do_parse reads them: a name ends at ``,``
    or ``=`` (a bare name is name=on), a value takes ``,,`` for a comma."""
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in ",=":
            j += 1
        name, value = text[i:j], "on"
        if j < n and text[j] == "=":
            j += 1
            chars = []
            while j < n and not (text[j] == "," and text[j + 1:j + 2] != ","):
                chars.append(text[j])
                j += 2 if text[j] == "," else 1
            value = "".join(chars)
        yield name, value
        i = j + 1


def valid_option_list(text: str) -> bool:
    """qemu-img's is_valid_option_list: not empty, no leading comma, no unpaired
    trailing comma."""
    return bool(text) and text[0] != "," and (len(text) - len(text.rstrip(","))) % 2 == 0


def measure_refusal(fmt: str, groups: list[str]) -> list[str] | None:
    """qemu-img 7.2 measure prints no option list: its ``-o`` is parsed without
    help detection (qemu_opts_do_parse over the format's and the file protocol's
    create options), so ``help`` or ``?`` is an unknown option, refused like any
    other.  The messages qemu-img prints for the first item it refuses (a message
    may hold continuation lines), then "Invalid options for file format"; None
    when the parse passes (or a doubtful value is left to the command)."""
    own = QCOW2_CREATE if fmt == "qcow2" else RAW_CREATE if fmt == "raw" else None
    if own is None or not all(map(valid_option_list, groups)):
        return None
    kinds = {name: kind for name, kind, _ in FILE_CREATE + own}
    for name, value in option_items(",".join(groups)):
        error = (f"Invalid parameter '{name}'" if name not in kinds
                 else _value_error(name, kinds[name], value))
        if error:
            return [error, f"Invalid options for file format '{fmt}'"]
    return None


def scan(argv: list[str], valued: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Options (those in ``valued`` take a value, ``-oX`` or ``-o X``) and the
    positional arguments of a command line, without argparse's requirements: a
    help request needs no file names."""
    values: dict[str, list[str]] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            positional += argv[i + 1:]
            break
        if a.startswith("--") and "=" in a:
            key, _, v = a.partition("=")
            values.setdefault(key, []).append(v)
        elif a in valued and i + 1 < len(argv):
            values.setdefault(a, []).append(argv[i + 1])
            i += 1
        elif a[:2] in valued and len(a) > 2 and not a.startswith("--"):
            values.setdefault(a[:2], []).append(a[2:])
        elif a.startswith("-") and len(a) > 1:
            values.setdefault(a, [])
        else:
            positional.append(a)
        i += 1
    return values, positional


def emit_lines(lines: list[str]) -> int:
    from .cli import emit
    for line in lines:
        emit(line)
    return 0


def refuse(cmd: str, message: str) -> int:
    print(f"qcow2view {cmd}: {message}", file=sys.stderr)
    return 1
