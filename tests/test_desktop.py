"""Desktop integration: icons, the packaged freedesktop files, --install-desktop.

The oracles are the freedesktop tools themselves: desktop-file-validate,
appstreamcli, xdg-mime, update-mime-database/gio (shared-mime-info as GLib reads
it) and gio launch (GLib's Exec parser).  Every test runs in scratch XDG
folders; nothing touches the real home.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qemu
from qcow2view import desktop

HAVE = {tool: shutil.which(tool) for tool in (
    "desktop-file-validate", "appstreamcli", "xdg-mime", "update-mime-database",
    "update-desktop-database", "gio")}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def need(tool: str) -> str:
    if HAVE[tool] is None:
        pytest.skip(f"{tool} is not installed (bash packaging/install-system-deps.sh)")
    return HAVE[tool]


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([os.fspath(a) for a in args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 60), **kw)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC, "not a PNG"
    return struct.unpack(">II", data[16:24])


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) below root."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    """Scratch XDG folders, with no system data or desktop session to consult."""
    homes = {name: tmp_path / name for name in ("home", "data", "config", "sysdata", "sysconfig")}
    for p in homes.values():
        p.mkdir()
    monkeypatch.setenv("HOME", str(homes["home"]))
    monkeypatch.setenv("XDG_DATA_HOME", str(homes["data"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(homes["config"]))
    monkeypatch.setenv("XDG_DATA_DIRS", str(homes["sysdata"]))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(homes["sysconfig"]))
    for var in ("XDG_CURRENT_DESKTOP", "XDG_SESSION_DESKTOP", "DESKTOP_SESSION", "XDG_MENU_PREFIX",
                "KDE_FULL_SESSION", "KDE_SESSION_VERSION", "GNOME_DESKTOP_SESSION_ID",
                "MATE_DESKTOP_SESSION_ID"):
        monkeypatch.delenv(var, raising=False)
    return homes


def default_app() -> str:
    return run(need("xdg-mime"), "query", "default", desktop.MIME_TYPE).stdout.strip()


def content_type(path: Path) -> str:
    out = run(need("gio"), "info", "-a", "standard::content-type", path).stdout
    return out.rsplit("standard::content-type:", 1)[1].strip()


# --- icons ------------------------------------------------------------------

@pytest.mark.parametrize("size", desktop.ICON_SIZES)
def test_png_icons_have_their_size(size):
    assert png_size(desktop.app_icon_bytes(size)) == (size, size)
    assert desktop.icon_path(size).name == f"qcow2view-{size}.png"


def test_svg_icon_is_a_square_svg():
    root = ET.fromstring(desktop.app_icon_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 256 256"


def test_unknown_icon_size_is_refused():
    with pytest.raises(ValueError, match="sizes are"):
        desktop.icon_path(20)


@pytest.mark.gui
@pytest.mark.parametrize("size", desktop.ICON_SIZES)
def test_pngs_are_rendered_from_the_current_svg(qapp, size):
    """The committed PNGs match the SVG (re-run packaging/render_icons.py after editing it)."""
    from PySide6.QtCore import QRectF, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(desktop.icon_path()))
    assert renderer.isValid()
    fresh = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    fresh.fill(Qt.GlobalColor.transparent)
    painter = QPainter(fresh)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    committed = QImage(str(desktop.icon_path(size))).convertToFormat(fresh.format())
    a = bytes(fresh.constBits())
    b = bytes(committed.constBits())
    assert len(a) == len(b)
    mean_diff = sum(abs(x - y) for x, y in zip(a, b)) / len(a)
    assert mean_diff < 2.0, f"{size} px PNG differs from the SVG (mean {mean_diff:.1f}/255)"


@pytest.mark.gui
def test_app_icon_offers_every_size(qapp):
    from PySide6.QtCore import QSize

    icon = desktop.app_icon()
    assert not icon.isNull()
    assert set(icon.availableSizes()) == {QSize(n, n) for n in desktop.ICON_SIZES}


# --- the packaged freedesktop files -------------------------------------------

def test_packaged_desktop_entry_validates():
    out = run(need("desktop-file-validate"), desktop.freedesktop_dir() / desktop.DESKTOP_FILE)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


def test_desktop_entry_keys():
    text = (desktop.freedesktop_dir() / desktop.DESKTOP_FILE).read_text()
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert keys["Exec"] == "qcow2view %F"
    assert keys["MimeType"] == f"{desktop.MIME_TYPE};"
    assert keys["Icon"] == desktop.ICON_NAME
    assert keys["StartupWMClass"] == "qcow2view"
    assert keys["Terminal"] == "false"


def test_metainfo_validates_and_names_the_entry():
    path = desktop.freedesktop_dir() / desktop.METAINFO_FILE
    out = run(need("appstreamcli"), "validate", "--no-net", "--pedantic", path)
    assert out.returncode == 0, out.stdout + out.stderr
    root = ET.parse(path).getroot()
    assert root.findtext("id") == desktop.APP_ID
    assert root.findtext("launchable") == desktop.DESKTOP_FILE
    assert root.findtext("provides/mediatype") == desktop.MIME_TYPE


# --- install / uninstall --------------------------------------------------------

def test_install_makes_qcow2view_the_default(xdg):
    written = desktop.install_desktop()
    data = xdg["data"]
    entry = data / "applications" / desktop.DESKTOP_FILE
    assert entry in written and entry.is_file()
    for n in desktop.ICON_SIZES:
        icon = data / f"icons/hicolor/{n}x{n}/apps/{desktop.ICON_NAME}.png"
        assert png_size(icon.read_bytes()) == (n, n)
    assert (data / f"icons/hicolor/scalable/apps/{desktop.ICON_NAME}.svg").is_file()
    assert (data / "mime/packages" / desktop.MIME_FILE).is_file()
    assert default_app() == desktop.DESKTOP_FILE
    if HAVE["gio"]:   # GLib, which GNOME and most GTK file managers ask
        out = run(HAVE["gio"], "mime", desktop.MIME_TYPE).stdout
        assert f"“{desktop.MIME_TYPE}”: {desktop.DESKTOP_FILE}" in out


def test_installed_entry_validates_with_absolute_exec(xdg):
    desktop.install_desktop()
    entry = xdg["data"] / "applications" / desktop.DESKTOP_FILE
    out = run(need("desktop-file-validate"), entry)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr
    exec_value = next(line[5:] for line in entry.read_text().splitlines()
                      if line.startswith("Exec="))
    argv = desktop.exec_argv(exec_value, ["x.qcow2"])
    assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)
    assert argv == desktop.launch_command() + ["x.qcow2"]


def test_update_desktop_database_lists_the_entry(xdg):
    need("update-desktop-database")
    desktop.install_desktop()
    cache = (xdg["data"] / "applications" / "mimeinfo.cache").read_text()
    assert f"{desktop.MIME_TYPE}={desktop.DESKTOP_FILE};" in cache


def test_mime_package_alone_recognises_qcow2(xdg, tmp_path):
    """With no system MIME data at all, our package names qcow2 by magic and by glob."""
    need("update-mime-database")
    need("gio")
    desktop.install_desktop()
    by_magic = qemu.create(tmp_path / "disk.img", "64M")
    by_glob = tmp_path / "junk.qcow2"
    by_glob.write_bytes(bytes(range(256)))
    assert content_type(by_magic) == desktop.MIME_TYPE
    assert content_type(by_glob) == desktop.MIME_TYPE


def test_uninstall_leaves_an_empty_home_empty(xdg):
    written = desktop.install_desktop()
    removed = desktop.uninstall_desktop()
    assert set(written) <= set(removed)
    assert tree(xdg["data"]) == {} and tree(xdg["config"]) == {}
    if HAVE["xdg-mime"]:
        assert default_app() == ""
    assert desktop.uninstall_desktop() == []        # twice is harmless


def test_uninstall_restores_a_lived_in_home(xdg):
    """Other apps' entries, icons, MIME packages and defaults come back byte for byte."""
    data, config = xdg["data"], xdg["config"]
    apps = data / "applications"
    apps.mkdir()
    (apps / "other.desktop").write_text(
        "[Desktop Entry]\nType=Application\nName=Other\nExec=true %F\n"
        "MimeType=application/x-qemu-disk;text/plain;\n")
    icon = data / "icons/hicolor/16x16/apps/other.png"
    icon.parent.mkdir(parents=True)
    icon.write_bytes(desktop.app_icon_bytes(16))
    (data / "mime/packages").mkdir(parents=True)
    (data / "mime/packages/other.xml").write_text(
        '<?xml version="1.0"?>\n<mime-info xmlns="http://www.freedesktop.org/standards/'
        'shared-mime-info">\n  <mime-type type="application/x-other">\n'
        '    <glob pattern="*.other"/>\n  </mime-type>\n</mime-info>\n')
    if HAVE["update-desktop-database"]:
        run(HAVE["update-desktop-database"], apps)
    if HAVE["update-mime-database"]:
        run(HAVE["update-mime-database"], data / "mime")
    (config / "mimeapps.list").write_text(
        "# my defaults\n[Added Associations]\ntext/plain=other.desktop;\n\n"
        "[Default Applications]\ntext/plain=other.desktop;\n"
        "application/x-qemu-disk=other.desktop;\n\n[Removed Associations]\n")
    os.chmod(config / "mimeapps.list", 0o600)
    before_data, before_config = tree(data), tree(config)
    if HAVE["xdg-mime"]:
        assert default_app() == "other.desktop"

    desktop.install_desktop()
    if HAVE["xdg-mime"]:
        assert default_app() == desktop.DESKTOP_FILE
    mimeapps = (config / "mimeapps.list").read_text()
    assert "application/x-qemu-disk=io.github.qcow2view.desktop;other.desktop;" in mimeapps
    assert (config / "mimeapps.list").stat().st_mode & 0o777 == 0o600

    desktop.uninstall_desktop()
    if HAVE["xdg-mime"]:
        assert default_app() == "other.desktop"
    assert tree(config) == before_config
    assert tree(data) == before_data


def test_install_twice_then_uninstall_once(xdg):
    desktop.install_desktop()
    desktop.install_desktop()
    text = (xdg["config"] / "mimeapps.list").read_text()
    assert text.count(desktop.DESKTOP_FILE) == 1
    desktop.uninstall_desktop()
    assert tree(xdg["data"]) == {} and tree(xdg["config"]) == {}


def test_mimeapps_list_symlink_is_followed(xdg, tmp_path):
    """A dotfile manager's symlinked mimeapps.list is edited, not replaced."""
    real = tmp_path / "dotfiles" / "mimeapps.list"
    real.parent.mkdir()
    real.write_text("[Default Applications]\ntext/plain=other.desktop;\n")
    link = xdg["config"] / "mimeapps.list"
    link.symlink_to(real)
    desktop.install_desktop()
    assert link.is_symlink() and desktop.DESKTOP_FILE in real.read_text()
    desktop.uninstall_desktop()
    assert link.is_symlink()
    assert real.read_text() == "[Default Applications]\ntext/plain=other.desktop;\n"


def test_relative_xdg_variables_are_ignored(xdg, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/config")
    written = desktop.install_desktop()
    home = xdg["home"]
    assert all(p.is_relative_to(home) for p in written), written
    assert (home / ".local/share/applications" / desktop.DESKTOP_FILE).is_file()
    assert (home / ".config/mimeapps.list").is_file()
    desktop.uninstall_desktop()
    assert tree(home) == {".config": None, ".local": None, ".local/share": None}


# --- Exec lines -----------------------------------------------------------------

# Every character the spec reserves.  Not "%": GLib looks for the program before it
# expands "%%" (a GLib quirk), so a literal % is left to test_exec_line_round_trips.
AWKWARD = "we ird $HOME `q` \"x\" \\y <>|&~*? #(1);'"


def test_awkward_command_path_survives_validation_and_gio_launch(xdg, tmp_path):
    """GLib's Exec parser, not ours, decides that the quoting is right."""
    folder = tmp_path / AWKWARD
    folder.mkdir()
    probe = folder / "qcow2view"          # records the argv it was started with
    record = tmp_path / "argv.txt"
    probe.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > '{record}.tmp'\n"
                     f"mv '{record}.tmp' '{record}'\n")
    probe.chmod(0o755)
    desktop.install_desktop(command=[str(probe)])
    entry = xdg["data"] / "applications" / desktop.DESKTOP_FILE
    if HAVE["desktop-file-validate"]:
        out = run(HAVE["desktop-file-validate"], entry)
        assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr
    image = tmp_path / "my disk $1.qcow2"
    image.write_bytes(b"QFI\xfb")
    run(need("gio"), "launch", entry, image, check=True)
    deadline = time.monotonic() + 20
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert record.read_text().splitlines() == [str(probe), str(image)]


@settings(max_examples=200, deadline=None)
@given(command=st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                              blacklist_characters="\0"), min_size=1),
                        min_size=1, max_size=4),
       files=st.lists(st.text(min_size=1), max_size=3))
def test_exec_line_round_trips(command, files):
    assert desktop.exec_argv(desktop.exec_line(command), files) == command + files


def test_exec_field_codes():
    argv = desktop.exec_argv('app --name %c %i -f %f %% "a b" %k', ["one", "two"],
                             icon="ic", name="Nm", desktop_file="/x.desktop")
    assert argv == ["app", "--name", "Nm", "--icon", "ic", "-f", "one", "%", "a b", "/x.desktop"]


# --- launching the real thing -----------------------------------------------------

def test_desktop_entry_opens_an_image(xdg, tmp_path):
    """Run the installed entry's Exec line on a real image, as a file manager would."""
    desktop.install_desktop()
    entry = xdg["data"] / "applications" / desktop.DESKTOP_FILE
    exec_value = next(line[5:] for line in entry.read_text().splitlines()
                      if line.startswith("Exec="))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    helped = run(*desktop.exec_argv(exec_value), "--help", cwd=xdg["home"], env=env)
    assert helped.returncode == 0, \
        f"the entry's Exec={exec_value} does not start (is qcow2view pip-installed?):\n" \
        + helped.stdout + helped.stderr
    if "--screenshot" not in helped.stdout:
        pytest.skip("needs --screenshot")
    image = qemu.create(tmp_path / "x.qcow2", "64M")
    shot = tmp_path / "out.png"
    done = run(*desktop.exec_argv(exec_value, [image]), "--screenshot", shot,
               cwd=xdg["home"], env=env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    width, height = png_size(shot.read_bytes())
    assert width >= 200 and height >= 150


def test_launch_command_is_absolute():
    cmd = desktop.launch_command()
    assert os.path.isabs(cmd[0]) and os.access(cmd[0], os.X_OK)
    assert cmd[1:] in ([], ["-m", "qcow2view"])
    if cmd[1:]:     # no qcow2view script: this interpreter must find the package anywhere
        out = run(*cmd, "--version", cwd="/")
        assert out.returncode == 0, \
            f"a desktop entry could not start qcow2view (is it pip-installed?):\n{out.stderr}"
