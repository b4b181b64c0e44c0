#!/usr/bin/env bash
# Regenerate the README's screenshots (packaging/screenshots/*.png) with the app itself:
#   map.png    the demo image on the Map tab
#   hex.png    the demo image's boot sector in the guest hex view (--goto its partition table)
#   leaks.png  a fragmented image with leaked clusters (made with qemu-img and qemu-io), on the
#              Problems tab
#   files.png  the demo image's Files pane, a file selected (--goto-file) and where it lives lit
# Needs qemu-img and qemu-io (Debian: qemu-utils).  Usage: bash packaging/make-screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=packaging/screenshots
mkdir -p "$OUT"
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"' EXIT
# a scratch cache (the demo image is made afresh), settings and state: nothing of the user's
export QT_QPA_PLATFORM=offscreen XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config" \
       XDG_STATE_HOME="$work/state"

shot() {    # shot NAME ARGS...: a PNG of the 1600x960 window, in 256 colours (see below)
    local name=$1; shift
    "$PY" -m qcow2view "$@" --screenshot "$work/$name.png"
    "$PY" - "$work/$name.png" "$OUT/$name.png" <<'PY'
# The window has a few hundred colours, nearly all of them anti-aliased text: keep the 256
# most frequent exactly (every flat colour: map cells, legend, tints, backgrounds) and give
# each of the others its nearest; PNG then stores one byte a pixel (about 1/5 the size).
import sys
import numpy as np
from PySide6.QtGui import QGuiApplication, QImage
app = QGuiApplication([])
img = QImage(sys.argv[1]).convertToFormat(QImage.Format_RGB32)
w, h = img.width(), img.height()
px = np.frombuffer(img.constBits(), dtype=np.uint32, count=w * h).copy()
colours, inverse, counts = np.unique(px, return_inverse=True, return_counts=True)
keep = colours[np.argsort(-counts, kind="stable")[:256]]
rgb = lambda c: np.stack([(c >> s) & 255 for s in (16, 8, 0)], axis=-1).astype(np.int32)
nearest = np.argmin(((rgb(colours)[:, None, :] - rgb(keep)[None, :, :]) ** 2).sum(-1), axis=1)
index = nearest[inverse].astype(np.uint8).reshape(h, w)
out = QImage(index.tobytes(), w, h, w, QImage.Format_Indexed8)
out.setColorTable([int(c) for c in keep])
assert out.save(sys.argv[2], "PNG", 0), sys.argv[2]
PY
    echo "$OUT/$name.png: $(stat -c %s "$OUT/$name.png") bytes"
}

shot map --demo --view map
shot hex --demo --view hex --goto 0x1be
shot files --demo --view files --goto-file /usr/share/doc/qcow2view/README

# leaks.png: 256 MiB, 64 KiB clusters; 48 clusters written in a shuffled guest order (host
# order is then not guest order: fragmentation), two of them compressed; then six of them
# discarded (their host clusters are freed) and those six given refcount 1 again: allocated
# with nothing pointing at them, i.e. leaked, as after a crash between raising a refcount
# and writing the L2 entry.
img="$work/leaky.qcow2"
qemu-img create -q -f qcow2 "$img" 256M
"$PY" - "$img" <<'PY'
import json, random, struct, subprocess, sys
img = sys.argv[1]
def io(*cmds):
    args = [a for c in cmds for a in ("-c", c)]
    subprocess.run(["qemu-io", "-f", "qcow2", *args, img], check=True, stdout=subprocess.DEVNULL)
order = list(range(48))
random.Random(7).shuffle(order)
guest = {i: (i * 5 + i % 3) << 20 for i in order}
io(*(f"write {'-c ' if i in (5, 29) else ''}-P {i + 1} {guest[i]} 64k" for i in order))
leak = [guest[i] for i in (3, 7, 14, 21, 28, 40)]
out = subprocess.run(["qemu-img", "map", "--output=json", img], check=True,
                     capture_output=True, text=True).stdout
hosts = [e["offset"] for e in json.loads(out) if e["data"] and e["start"] in leak]
assert len(hosts) == len(leak), hosts
io(*(f"discard {g} 64k" for g in leak))
with open(img, "r+b") as f:
    h = f.read(104)
    cluster_bits, = struct.unpack_from(">I", h, 20)
    rt, = struct.unpack_from(">Q", h, 48)
    assert struct.unpack_from(">I", h, 96)[0] == 4            # 16-bit refcounts
    f.seek(rt)
    block, = struct.unpack(">Q", f.read(8))
    for host in hosts:
        f.seek(block + 2 * (host >> cluster_bits))
        f.write(struct.pack(">H", 1))
PY
check=$(qemu-img check "$img" 2>/dev/null || true)     # exit code 3: leaks
grep -q "^6 leaked clusters were found" <<<"$check" && ! grep -q "errors were found" <<<"$check" \
    || { echo "make-screenshots: the leaky image did not come out as planned:" >&2
         echo "$check" >&2; exit 1; }
shot leaks "$img" --view problems
