"""Desktop integration: the application icon, and installing the desktop entry.

The icon files live in the top-level ``resources/`` folder and the freedesktop
files in ``packaging/freedesktop/``; pyproject.toml ships them inside the
package as ``qcow2view.resources`` and ``qcow2view.resources.freedesktop``, so
they are found with :mod:`importlib.resources` from a wheel, an editable install
or a PyInstaller bundle.

A wheel cannot put a ``.desktop`` file where desktops look for it, so
``qcow2view --install-desktop`` does it for the current user
(:func:`install_desktop`), following the XDG base directory, desktop entry,
icon theme and shared-mime-info specifications; ``--uninstall-desktop``
(:func:`uninstall_desktop`) removes exactly that again.

Nothing here imports Qt except :func:`app_icon`.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

APP_ID = "io.github.qcow2view"
DESKTOP_FILE = f"{APP_ID}.desktop"
METAINFO_FILE = f"{APP_ID}.metainfo.xml"
MIME_FILE = f"{APP_ID}.mime.xml"
MIME_TYPE = "application/x-qemu-disk"
ICON_NAME = APP_ID
ICON_SIZES = (16, 32, 48, 64, 128, 256)

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


# --- packaged files ---------------------------------------------------------

def _package_dir(package: str, source_fallback: Path) -> Path:
    """The folder of a data package; the source tree's folder when run uninstalled."""
    try:
        where = importlib.resources.files(package)
    except ModuleNotFoundError:
        # Running from a checkout without `pip install` (python -m from the repo root):
        # the package-dir mapping of pyproject.toml is not in effect.
        return source_fallback
    if not isinstance(where, Path):      # a zip import: Qt cannot run from one anyway
        raise RuntimeError(f"{package} is not on the file system: {where}")
    return where


def resources_dir() -> Path:
    """The folder holding the icons (``qcow2view.resources``)."""
    return _package_dir("qcow2view.resources", _SOURCE_ROOT / "resources")


def freedesktop_dir() -> Path:
    """The folder holding the .desktop entry, AppStream metainfo and MIME XML."""
    return _package_dir("qcow2view.resources.freedesktop",
                        _SOURCE_ROOT / "packaging" / "freedesktop")


def icon_path(size: int | None = None) -> Path:
    """The application icon: the SVG for ``None``, else the PNG of ``size`` pixels."""
    if size is None:
        return resources_dir() / "qcow2view.svg"
    if size not in ICON_SIZES:
        raise ValueError(f"no {size} px icon; sizes are {ICON_SIZES}")
    return resources_dir() / f"qcow2view-{size}.png"


def app_icon_bytes(size: int | None = None) -> bytes:
    """The icon file's bytes (SVG for ``None``, else PNG), e.g. for QImage.fromData."""
    return icon_path(size).read_bytes()


def app_icon():
    """A QIcon with every PNG size, for ``QApplication.setWindowIcon``."""
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QIcon

    icon = QIcon()
    for n in ICON_SIZES:
        icon.addFile(str(icon_path(n)), QSize(n, n))
    return icon


def setup_application(app) -> None:
    """Give a QGuiApplication the identity the desktop entry promises.

    The window icon, the name X11 window managers match against
    ``StartupWMClass`` and the desktop file name Wayland compositors use as
    the app id.  Call it right after creating the QApplication.
    """
    app.setApplicationName("qcow2view")
    app.setDesktopFileName(APP_ID)
    app.setWindowIcon(app_icon())


# --- the launch command -----------------------------------------------------

def launch_command() -> list[str]:
    """The absolute command that starts this installation of qcow2view.

    A PyInstaller bundle is its own executable.  Otherwise the ``qcow2view``
    script that pip installed next to this interpreter (so a venv's own copy
    wins over another one on PATH), then the one on PATH, and failing both
    ``python -m qcow2view`` with this interpreter.  Paths are made absolute
    but symlinks are kept: a venv's ``bin/python`` must not be resolved to the
    base interpreter.
    """
    if getattr(sys, "frozen", False):
        return [os.path.abspath(sys.executable)]
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    candidates = []
    if argv0 is not None and argv0.name == "qcow2view":
        candidates.append(argv0)
    candidates.append(Path(sys.executable).parent / "qcow2view")
    for scheme in (sysconfig.get_default_scheme(), f"{os.name}_user"):
        try:
            candidates.append(Path(sysconfig.get_path("scripts", scheme)) / "qcow2view")
        except KeyError:
            pass
    found = shutil.which("qcow2view")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return [os.path.abspath(c)]
    return [os.path.abspath(sys.executable), "-m", "qcow2view"]


# Exec quoting, Desktop Entry Specification 1.4, "The Exec key".
_EXEC_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")
_EXEC_ESCAPED_IN_QUOTES = set('"`$\\')


def _exec_quote(arg: str) -> str:
    arg = arg.replace("%", "%%")
    if arg and not (set(arg) & _EXEC_RESERVED):
        return arg
    return '"' + "".join("\\" + c if c in _EXEC_ESCAPED_IN_QUOTES else c for c in arg) + '"'


def _escape_string(value: str) -> str:
    """The desktop-entry string escapes (applied on top of the Exec quoting)."""
    return (value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
            .replace("\r", "\\r"))


def _unescape_string(value: str) -> str:
    out, i = [], 0
    table = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] in table:
            out.append(table[value[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def exec_line(command: list[str] | None = None) -> str:
    """The value of ``Exec=`` for ``command`` (default: :func:`launch_command`)."""
    command = launch_command() if command is None else command
    return _escape_string(" ".join(_exec_quote(a) for a in command) + " %F")


def exec_argv(exec_value: str, files: list[str | os.PathLike] = (), *,
              icon: str = "", name: str = "", desktop_file: str = "") -> list[str]:
    """The argv a launcher runs for an entry's ``Exec=`` value on ``files``.

    The reverse of :func:`exec_line`, for any valid Exec value: string
    escapes, then quoting, then the field codes (``%f %F %u %U %i %c %k %%``).
    """
    value = _unescape_string(exec_value)
    words: list[str] = []
    cur: list[str] = []
    quoted = in_word = False
    i = 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\" and i + 1 < len(value) and value[i + 1] in _EXEC_ESCAPED_IN_QUOTES:
                cur.append(value[i + 1])
                i += 1
            elif c == '"':
                quoted = False
            else:
                cur.append(c)
        elif c == '"':
            quoted = in_word = True
        elif c in " \t\n":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(c)
            in_word = True
        i += 1
    if quoted:
        raise ValueError(f"unterminated quote in Exec value {exec_value!r}")
    if in_word:
        words.append("".join(cur))

    paths = [os.fspath(f) for f in files]
    argv: list[str] = []
    for word in words:
        if word in ("%F", "%U"):
            argv.extend(paths)
        elif word == "%i":
            argv.extend(["--icon", icon] if icon else [])
        else:
            def field(m: re.Match) -> str:
                code = m.group(1)
                return {"%": "%", "f": paths[0] if paths else "", "u": paths[0] if paths else "",
                        "c": name, "k": desktop_file}.get(code, "")
            argv.append(re.sub(r"%(.)", field, word))
    return argv


def desktop_entry_text(command: list[str] | None = None) -> str:
    """The packaged desktop entry with ``Exec`` (and ``TryExec``) made absolute."""
    cmd = launch_command() if command is None else command
    lines = []
    for line in (freedesktop_dir() / DESKTOP_FILE).read_text(encoding="utf-8").splitlines():
        if line.startswith("Exec="):
            lines.append(f"TryExec={_escape_string(cmd[0])}")
            lines.append(f"Exec={exec_line(cmd)}")
        elif not line.startswith("TryExec="):
            lines.append(line)
    return "\n".join(lines) + "\n"


# --- install / uninstall ----------------------------------------------------

def _xdg_dir(variable: str, default: str) -> Path:
    value = os.environ.get(variable, "")
    # The XDG base directory spec: relative paths are invalid and must be ignored.
    return Path(value) if os.path.isabs(value) else Path.home() / default


def _data_home(data_home: str | os.PathLike | None) -> Path:
    return Path(data_home) if data_home is not None else _xdg_dir("XDG_DATA_HOME", ".local/share")


def _config_home(config_home: str | os.PathLike | None) -> Path:
    return Path(config_home) if config_home is not None else _xdg_dir("XDG_CONFIG_HOME", ".config")


def _icon_targets(data_home: Path) -> list[tuple[Path, Path]]:
    hicolor = data_home / "icons" / "hicolor"
    pairs = [(icon_path(n), hicolor / f"{n}x{n}" / "apps" / f"{ICON_NAME}.png") for n in ICON_SIZES]
    pairs.append((icon_path(None), hicolor / "scalable" / "apps" / f"{ICON_NAME}.svg"))
    return pairs


def _write_atomic(path: Path, data: bytes) -> None:
    path = path.resolve() if path.is_symlink() else path   # keep a dotfile manager's link
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777                  # keep a private mimeapps.list private
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _run_if_present(tool: str, *args: str | os.PathLike) -> None:
    """Refresh a desktop cache with ``tool`` if it is installed; never fail for it."""
    exe = shutil.which(tool)
    if exe is None:
        return
    try:
        subprocess.run([exe, *map(os.fspath, args)], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pass


def _refresh_icon_cache(data_home: Path) -> None:
    # Only refresh a cache that someone already made: without one, GTK scans the folder.
    hicolor = data_home / "icons" / "hicolor"
    if (hicolor / "icon-theme.cache").exists():
        _run_if_present("gtk-update-icon-cache", "-q", "-t", "-f", hicolor)


def install_desktop(data_home: str | os.PathLike | None = None,
                    config_home: str | os.PathLike | None = None, *,
                    command: list[str] | None = None, set_default: bool = True) -> list[Path]:
    """Install the desktop entry, icons and MIME type for the current user.

    ``data_home``/``config_home`` default to ``$XDG_DATA_HOME``/``$XDG_CONFIG_HOME``.
    ``command`` is the argv that starts qcow2view (default :func:`launch_command`).
    With ``set_default``, qcow2view becomes the default application for
    application/x-qemu-disk in ``mimeapps.list``.  Returns the files written.
    """
    data, config = _data_home(data_home), _config_home(config_home)
    written: list[Path] = []

    entry = data / "applications" / DESKTOP_FILE
    _write_atomic(entry, desktop_entry_text(command).encode("utf-8"))
    written.append(entry)

    for src, dst in _icon_targets(data):
        _write_atomic(dst, src.read_bytes())
        written.append(dst)

    mime_xml = data / "mime" / "packages" / MIME_FILE
    _write_atomic(mime_xml, (freedesktop_dir() / MIME_FILE).read_bytes())
    written.append(mime_xml)

    if set_default:
        mimeapps = config / "mimeapps.list"
        _write_atomic(mimeapps, _mimeapps_add(_read_text(mimeapps)).encode("utf-8"))
        written.append(mimeapps)

    _run_if_present("update-mime-database", data / "mime")
    _run_if_present("update-desktop-database", "-q", data / "applications")
    _refresh_icon_cache(data)
    return written


def uninstall_desktop(data_home: str | os.PathLike | None = None,
                      config_home: str | os.PathLike | None = None) -> list[Path]:
    """Remove what :func:`install_desktop` installed. Returns the files removed or edited.

    Other applications' entries, icons, MIME packages and defaults are left as
    they were; the caches (``mimeinfo.cache``, the MIME database) are rebuilt,
    and deleted only when nothing but ours had been feeding them.
    """
    data, config = _data_home(data_home), _config_home(config_home)
    touched: list[Path] = []

    apps = data / "applications"
    entry = apps / DESKTOP_FILE
    if _unlink(entry):
        touched.append(entry)
        if any(apps.rglob("*.desktop")):
            _run_if_present("update-desktop-database", "-q", apps)
        elif _unlink(apps / "mimeinfo.cache"):
            touched.append(apps / "mimeinfo.cache")
        _prune(apps, stop=data)

    icons_removed = False
    for _, dst in _icon_targets(data):
        if _unlink(dst):
            touched.append(dst)
            icons_removed = True
            _prune(dst.parent, stop=data)        # the folders install made, once empty
    if icons_removed:
        _refresh_icon_cache(data)

    mime = data / "mime"
    mime_xml = mime / "packages" / MIME_FILE
    if _unlink(mime_xml):
        touched.append(mime_xml)
        if any((mime / "packages").glob("*.xml")):
            _run_if_present("update-mime-database", mime)
        else:
            touched.extend(_remove_mime_database(mime))
        _prune(mime / "packages", stop=data)

    mimeapps = config / "mimeapps.list"
    old = _read_text(mimeapps)
    if old is not None:
        new = _mimeapps_remove(old)
        if new != old:
            if new.strip():
                _write_atomic(mimeapps, new.encode("utf-8"))
            else:
                mimeapps.unlink()
            touched.append(mimeapps)
    return touched


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _prune(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents while they are empty, up to (not including) ``stop``."""
    folder, stop = folder.absolute(), stop.absolute()
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:              # not empty (or not there): leave it and what is above
            return
        folder = folder.parent


# Files update-mime-database generates from <mime>/packages (shared-mime-info 2.x).
_MIME_DB_FILES = ("XMLnamespaces", "aliases", "generic-icons", "globs", "globs2", "icons",
                  "magic", "mime.cache", "subclasses", "treemagic", "types", "version")


def _remove_mime_database(mime: Path) -> list[Path]:
    """Delete a user MIME database that no package feeds any more."""
    removed = [mime / name for name in _MIME_DB_FILES if _unlink(mime / name)]
    media, sub = MIME_TYPE.split("/")
    if _unlink(mime / media / f"{sub}.xml"):
        removed.append(mime / media / f"{sub}.xml")
        _prune(mime / media, stop=mime.parent)
    return removed


# --- mimeapps.list ----------------------------------------------------------
# A line editor rather than configparser: comments, order, case and the other
# groups of the user's file stay exactly as they were.

_DEFAULTS = "[Default Applications]"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _group_bounds(lines: list[str], header: str) -> tuple[int, int] | None:
    """(index of the header line, index after the group's last line) or None."""
    start = None
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            if start is not None:
                return start, i
            if s == header:
                start = i
    return None if start is None else (start, len(lines))


def _key_line(line: str) -> tuple[str, list[str]] | None:
    if "=" not in line or line.lstrip().startswith("#"):
        return None
    key, value = line.split("=", 1)
    return key.strip(), [v.strip() for v in value.split(";") if v.strip()]


def _mimeapps_add(text: str | None) -> str:
    lines = (text or "").splitlines()
    bounds = _group_bounds(lines, _DEFAULTS)
    if bounds is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ([""] if lines else []) + [_DEFAULTS, f"{MIME_TYPE}={DESKTOP_FILE};"]
        return "\n".join(lines) + "\n"
    start, end = bounds
    for i in range(start + 1, end):
        parsed = _key_line(lines[i])
        if parsed and parsed[0] == MIME_TYPE:
            apps = [DESKTOP_FILE] + [a for a in parsed[1] if a != DESKTOP_FILE]
            lines[i] = f"{MIME_TYPE}={';'.join(apps)};"
            return "\n".join(lines) + "\n"
    insert = end
    while insert > start + 1 and not lines[insert - 1].strip():
        insert -= 1                       # before the blank lines that separate groups
    lines.insert(insert, f"{MIME_TYPE}={DESKTOP_FILE};")
    return "\n".join(lines) + "\n"


def _mimeapps_remove(text: str) -> str:
    lines = text.splitlines()
    bounds = _group_bounds(lines, _DEFAULTS)
    if bounds is None:
        return text
    start, end = bounds
    for i in range(start + 1, end):
        parsed = _key_line(lines[i])
        if parsed and parsed[0] == MIME_TYPE and DESKTOP_FILE in parsed[1]:
            rest = [a for a in parsed[1] if a != DESKTOP_FILE]
            if rest:
                lines[i] = f"{MIME_TYPE}={';'.join(rest)};"
            else:
                del lines[i]
                end -= 1
                if not any(line.strip() for line in lines[start + 1:end]):
                    # the group is empty now: drop it with the blank line before it
                    del lines[start:end]
                    if start > 0 and not lines[start - 1].strip():
                        del lines[start - 1]
            break
    else:
        return text
    return "\n".join(lines) + "\n" if any(line.strip() for line in lines) else ""
