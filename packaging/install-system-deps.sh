#!/usr/bin/env bash
# Debian/Ubuntu packages qcow2view needs on a bare machine.
#   bash packaging/install-system-deps.sh           GUI libraries + the tools the tests use
#   bash packaging/install-system-deps.sh --gui     only what a real X11/Wayland window needs
# Idempotent and quiet: installs only what is missing (one line saying what), uses sudo only
# when not root, and does nothing (exit 0, a note on stderr) on systems without apt.
set -euo pipefail

gui=(
    libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
    libxcb-shape0 libxcb-xkb1 libxcb-randr0 libxcb-xinerama0 libxkbcommon0 libxkbcommon-x11-0
    libegl1 libgl1 libfontconfig1 libdbus-1-3
)
# desktop-file-validate, appstreamcli, xdg-mime, update-mime-database and gio (GLib's launcher),
# the oracles of tests/test_desktop.py; qemu-img/qemu-io, the oracle of everything else.
# sgdisk, sfdisk/fdisk, mkfs.* (+ mcopy, ntfscp, debugfs, blkid) and fls: the oracles of tests/guest/.
tests=(desktop-file-utils appstream xdg-utils shared-mime-info libglib2.0-bin qemu-utils
       gdisk fdisk util-linux dosfstools mtools e2fsprogs ntfs-3g xfsprogs exfatprogs lvm2
       cryptsetup-bin genisoimage sleuthkit btrfs-progs)

case "${1:-}" in
    --gui) pkgs=("${gui[@]}") ;;
    "")    pkgs=("${gui[@]}" "${tests[@]}") ;;
    *)     echo "usage: $0 [--gui]" >&2; exit 2 ;;
esac
python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    echo "install-system-deps: not a Debian-like system; install the equivalents of: ${pkgs[*]}" >&2
    exit 0
fi

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null; then
    as_root=(sudo)
else
    echo "install-system-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt=(apt-get -qq -o DPkg::Lock::Timeout=300)
if ! { "${as_root[@]}" "${apt[@]}" update &&
       "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y \
           --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2              # quiet unless it fails
    exit 1
fi
