"""What ships: the wheel carries the icons and freedesktop files, and finds them.

One wheel is built per session (pip, isolated build, a few seconds) from a copy of
the checkout.  The PyInstaller bundle is not built here: packaging/build-standalone.sh.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

import qcow2view
from qcow2view import desktop

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"

# Where each file of the checkout lands in the wheel.
SHIPPED_DATA = {
    **{f"resources/{p.name}": f"qcow2view/resources/{p.name}"
       for p in sorted((ROOT / "resources").iterdir()) if p.suffix in (".png", ".svg")},
    **{f"packaging/freedesktop/{name}": f"qcow2view/resources/freedesktop/{name}"
       for name in (desktop.DESKTOP_FILE, desktop.METAINFO_FILE, desktop.MIME_FILE)},
}


TOP_LEVEL = {"pyproject.toml", "README.md", "setup.cfg", "setup.py", "MANIFEST.in"}


def _checkout_files() -> list[str]:
    """The files of the working tree that git would see (tracked or not ignored)."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]
    skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
            and not any(part.endswith(".egg-info") for part in p.parts)]


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Path:
    """A copy of what the build reads (no stale build/ folder; others may edit meanwhile)."""
    src = tmp_path_factory.mktemp("src")
    for rel in _checkout_files():
        if rel.startswith(("qcow2view/", "resources/", "packaging/freedesktop/")) \
                or rel in TOP_LEVEL or rel.startswith(("LICENSE", "COPYING")):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(ROOT / rel, src / rel)
            except FileNotFoundError:      # deleted since git listed it
                pass
    return src


@pytest.fixture(scope="session")
def wheel(source, tmp_path_factory) -> Path:
    """A wheel built by pip (isolated build, as users get it) from the copy."""
    src = source
    out = tmp_path_factory.mktemp("wheelhouse")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (whl,) = out.glob("qcow2view-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_carries_the_data_files_unchanged(wheel, source):
    with zipfile.ZipFile(wheel) as z:
        for src, member in SHIPPED_DATA.items():
            assert z.read(member) == (source / src).read_bytes(), member


@pytest.mark.slow
def test_wheel_carries_every_module(wheel, source):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    modules = {str(p.relative_to(source)) for p in (source / "qcow2view").rglob("*.py")}
    assert modules <= names, sorted(modules - names)


@pytest.mark.slow
def test_wheel_declares_the_launchers(wheel):
    with zipfile.ZipFile(wheel) as z:
        ep_name = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read(ep_name).decode())
    assert entry_points["gui_scripts"]["qcow2view"] == "qcow2view.cli:run"


@pytest.mark.slow
def test_unpacked_wheel_finds_its_own_resources(wheel, tmp_path):
    """importlib.resources answers from the wheel, not from this checkout."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import qcow2view.desktop as d; "
        "print(json.dumps([str(d.icon_path()), *(str(d.icon_path(n)) for n in d.ICON_SIZES), "
        "str(d.freedesktop_dir() / d.DESKTOP_FILE), str(d.freedesktop_dir() / d.MIME_FILE)]))"
    )
    # -S: no site-packages, so no editable install of this checkout can answer instead.
    done = subprocess.run([sys.executable, "-S", "-c", probe, site], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for path in map(Path, json.loads(done.stdout)):
        assert path.is_file() and site in path.parents, path


def test_installed_qcow2view_maps_the_resource_packages():
    """The pip install of this checkout (editable or not) serves qcow2view.resources."""
    # Not the egg-info a build leaves in the checkout: an installer's record.
    dist = next((d for d in importlib.metadata.distributions(name="qcow2view")
                 if d.read_text("INSTALLER") is not None), None)
    if dist is None:
        pytest.skip("qcow2view is not pip-installed here (pip install -e .)")
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable") \
            and Path(json.loads(direct)["url"].removeprefix("file://")) != ROOT:
        pytest.skip("the editable install belongs to another checkout")
    resources = importlib.resources.files("qcow2view.resources")
    freedesktop = importlib.resources.files("qcow2view.resources.freedesktop")
    assert (resources / "qcow2view.svg").is_file()
    assert (freedesktop / desktop.DESKTOP_FILE).is_file()
    assert Path(str(resources)) == desktop.resources_dir()


def test_metainfo_release_is_the_package_version():
    root = ET.parse(PACKAGING / "freedesktop" / desktop.METAINFO_FILE).getroot()
    assert root.find("releases/release").get("version") == qcow2view.__version__


@pytest.mark.parametrize("script", sorted(p.name for p in PACKAGING.glob("*.sh")))
def test_shell_scripts_parse(script):
    done = subprocess.run(["bash", "-n", PACKAGING / script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(PACKAGING / script, os.X_OK), f"{script} is not executable"


def test_pyinstaller_spec_and_launcher_compile():
    for name in ("qcow2view.spec", "launcher.py"):
        path = PACKAGING / "pyinstaller" / name
        compile(path.read_text(), str(path), "exec")
