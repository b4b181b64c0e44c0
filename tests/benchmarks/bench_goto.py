"""Going to a guest offset in the table tree of images with a huge L1 table.

Run: ``python tests/benchmarks/bench_goto.py [IMAGE OFFSET ...]``.  With no
arguments it makes (in /tmp) the two images of issue 16:

- ``qemu-img create -f qcow2 -o cluster_size=512 l1max.qcow2 128G``: a 4M-entry L1
  table (the most QEMU allows), going to 127G;
- ``qemu-img create -f qcow2 -o cluster_size=4096 2t.qcow2 2T``: a 1M-entry L1,
  going to 2T - 1M.

A probe process opens the window (offscreen), waits for the maps, then asks the
table panel to go to the offset (what ``--goto``, the tables' jump box, Ctrl+G and a
click on the guest map do) and measures the time until the entry is selected and
painted, the memory the jump added and how many tree nodes exist afterwards.  Side
by side: ``qemu-img map --start-offset OFFSET --max-length CLUSTER``, qemu's way to
the same entry.  A script, not a test: no timing is asserted in the test suite.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 1.0
IMAGES = (("/tmp/bench_goto_l1max.qcow2", "512", "128G", 127 << 30),
          ("/tmp/bench_goto_2t.qcow2", "4096", "2T", (2 << 40) - (1 << 20)))


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def probe(image: str, offset: int) -> None:
    """In a fresh process: open the window, wait for the maps, go to ``offset``."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT))
    from qcow2view.app import make_app
    from qcow2view.model import table_tree_model as ttm
    from qcow2view.model.table_tree_model import GuestOffsetRole, KindRole
    from qcow2view.ui.mainwindow import MainWindow

    app = make_app()
    win = MainWindow(remember=False)
    win.resize(1600, 960)
    win.show()
    tab = win.open_path(image)
    while tab.document.analysis is None or tab.document.busy:
        app.processEvents()
        time.sleep(0.005)
    for _ in range(5):
        app.processEvents()
    nodes = [0]
    made = ttm.Node.__init__

    def counting(self, *a, **k):
        nodes[0] += 1
        made(self, *a, **k)
    ttm.Node.__init__ = counting
    rss0 = _rss_mib()
    t = time.perf_counter()
    ok = tab.table_panel.go_to_guest(offset)
    app.processEvents()
    tab.table_panel.view.viewport().repaint()
    jump_s = time.perf_counter() - t
    idx = tab.table_panel.view.currentIndex()
    got = idx.data(GuestOffsetRole)
    model = tab.tree_model
    l1 = idx
    while l1.isValid() and l1.data(KindRole) != "l1":
        l1 = l1.parent()
    out = {"jump_s": jump_s, "found": bool(ok), "entry_guest_offset": got,
           "kind": idx.data(KindRole),
           "rss_added_mib": _rss_mib() - rss0, "nodes_made": nodes[0],
           "rows_under_l1_root": model.rowCount(model.root_index()),
           "rows_beside_the_l1_entry": model.rowCount(l1.parent()) if l1.isValid() else 0,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    win.close_all()
    print(json.dumps(out))


def main(argv: list[str]) -> int:
    if argv:
        cases = [(argv[i], int(argv[i + 1], 0)) for i in range(0, len(argv), 2)]
    else:
        cases = []
        for path, cs, size, off in IMAGES:
            if not os.path.exists(path):     # one cluster written there: an L2 table
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                                f"cluster_size={cs}", path, size], check=True)
                subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {off} {cs}",
                                path], check=True, capture_output=True)
            cases.append((path, off))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT))
    for image, off in cases:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--probe", image, str(off)],
                           capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            print(p.stderr)
            return 1
        got = json.loads(p.stdout.strip().splitlines()[-1])
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image],
                                         capture_output=True, text=True).stdout)
        cs = info["cluster-size"]
        t = time.perf_counter()
        subprocess.run(["qemu-img", "map", "--start-offset", str(off), "--max-length",
                        str(cs), image], capture_output=True, check=True)
        peer = time.perf_counter() - t
        verdict = "ok" if got["jump_s"] <= BUDGET_S and got["found"] else "OVER BUDGET"
        print(f"{os.path.basename(image)} (cluster {cs}, L1 {info['virtual-size'] // cs // (cs // 8):,} "
              f"entries), go to {off:#x}:")
        print(f"  jump to the entry: {got['jump_s']:.3f} s (budget {BUDGET_S} s, {verdict}); "
              f"qemu-img map of that cluster: {peer:.3f} s; ratio "
              f"{got['jump_s'] / peer:.1f}x")
        print(f"  memory added by the jump: {got['rss_added_mib']:.1f} MiB; peak RSS "
              f"{got['peak_rss_mib']:.0f} MiB; tree nodes made: {got['nodes_made']:,}; "
              f"rows under the L1 root: {got['rows_under_l1_root']:,}, beside the L1 entry: "
              f"{got['rows_beside_the_l1_entry']:,}; selected: {got['kind']} entry mapping "
              f"{got['entry_guest_offset']:#x}; probe wall {wall:.1f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
