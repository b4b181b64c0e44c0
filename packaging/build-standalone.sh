#!/usr/bin/env bash
# Build a one-folder standalone bundle with PyInstaller and smoke-test it.
#   bash packaging/build-standalone.sh [OUTDIR]        (default: dist/)
# Makes OUTDIR/qcow2view/ (run OUTDIR/qcow2view/qcow2view) and
# OUTDIR/qcow2view-VERSION-linux-ARCH.tar.gz.  The bundle still needs the system libraries
# of packaging/install-system-deps.sh --gui for a real window.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
quiet() { "$@" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }; }

echo "== venv with qcow2view (not editable) and PyInstaller"
python3 -m venv "$work/venv"
quiet "$work/venv/bin/python" -m pip install -q --upgrade pip
quiet "$work/venv/bin/python" -m pip install -q "$root" pyinstaller
version=$("$work/venv/bin/python" -c 'import qcow2view; print(qcow2view.__version__)')

echo "== pyinstaller"
rm -rf "$out/qcow2view"
quiet "$work/venv/bin/pyinstaller" --noconfirm --clean --log-level WARN \
    --distpath "$out" --workpath "$work/build" packaging/pyinstaller/qcow2view.spec
app="$out/qcow2view/qcow2view"

echo "== smoke test: $app"
cd "$work"                              # nothing from the checkout may leak in
export QT_QPA_PLATFORM=offscreen HOME="$work/home" XDG_DATA_HOME="$work/home/data" \
       XDG_CONFIG_HOME="$work/home/config" XDG_CACHE_HOME="$work/home/cache"
mkdir -p "$HOME"
"$app" --version
if command -v qemu-img >/dev/null; then
    qemu-img create -q -f qcow2 "$work/smoke.qcow2" 64M
    qemu-io -f qcow2 -c "write -P 0x5a 1M 256k" "$work/smoke.qcow2" >/dev/null 2>&1 || true
else
    "$app" create "$work/smoke.qcow2" 64M
fi
timeout 180 "$app" "$work/smoke.qcow2" --screenshot "$work/smoke.png"
"$work/venv/bin/python" - "$work/smoke.png" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG"
w, h = struct.unpack(">II", data[16:24])
assert w >= 200 and h >= 150, (w, h)
print(f"screenshot {w}x{h} OK")
PY
"$app" --install-desktop >/dev/null
grep -qx "Exec=$app %F" "$XDG_DATA_HOME/applications/io.github.qcow2view.desktop"
"$app" --uninstall-desktop >/dev/null
echo "desktop entry from the bundle OK"

tarball="$out/qcow2view-$version-linux-$(uname -m).tar.gz"
tar -C "$out" -czf "$tarball" qcow2view
echo "built: $out/qcow2view/ and $tarball ($(du -sh "$out/qcow2view" | cut -f1))"
