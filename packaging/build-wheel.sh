#!/usr/bin/env bash
# Build the sdist and wheel (the wheel from the sdist, so both are proven complete), then
# install the wheel into a throwaway venv and check from there that the icons and the
# freedesktop files came along: qcow2view.desktop finds them and --install-desktop works.
#   bash packaging/build-wheel.sh [OUTDIR]        (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/build-venv"
"$work/build-venv/bin/python" -m pip install -q build
"$work/build-venv/bin/python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 ||
    { cat "$work/build.log" >&2; exit 1; }
wheel=$(echo "$work"/dist/qcow2view-*.whl)
sdist=$(echo "$work"/dist/qcow2view-*.tar.gz)
[ -f "$wheel" ] && [ -f "$sdist" ]

# Only qcow2view.desktop and the cli's --version/--install-desktop are exercised, and neither
# imports Qt, so the (large) dependencies are not needed for this check.
python3 -m venv "$work/try"
"$work/try/bin/python" -m pip install -q --no-deps "$wheel"
cd "$work"                      # away from the checkout: only the installed wheel can answer
"$work/try/bin/python" - "$work/try" <<'PY'
import sys
from pathlib import Path
import qcow2view.desktop as d

venv = Path(sys.argv[1])
for path in [d.icon_path(None), *map(d.icon_path, d.ICON_SIZES),
             *(d.freedesktop_dir() / f for f in (d.DESKTOP_FILE, d.METAINFO_FILE, d.MIME_FILE))]:
    assert path.is_file(), f"missing from the wheel: {path}"
    assert venv in path.parents, f"{path} does not come from the installed wheel"
    print("  in wheel:", path.relative_to(venv))
assert d.launch_command() == [str(venv / "bin" / "qcow2view")], d.launch_command()
PY
export XDG_DATA_HOME="$work/xdg/data" XDG_CONFIG_HOME="$work/xdg/config"
"$work/try/bin/qcow2view" --version
"$work/try/bin/qcow2view" --install-desktop >/dev/null
entry="$XDG_DATA_HOME/applications/io.github.qcow2view.desktop"
grep -qx "Exec=$work/try/bin/qcow2view %F" "$entry"
if command -v desktop-file-validate >/dev/null; then desktop-file-validate "$entry"; fi
"$work/try/bin/qcow2view" --uninstall-desktop >/dev/null
[ ! -e "$entry" ]

cd "$OLDPWD"
mkdir -p "$out"
cp "$wheel" "$sdist" "$out"/
echo "built and checked: $out/$(basename "$wheel") $out/$(basename "$sdist")"
