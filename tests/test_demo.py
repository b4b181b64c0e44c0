"""The demo image is made by our engine and holds everything it promises."""

from __future__ import annotations

import qemu
from qcow2view.demo import demo_image_path


def test_demo_image_is_valid_and_rich(tmp_path):
    path = demo_image_path(tmp_path / "demo")
    code, res = qemu.check(path)
    assert code == 0 and res.get("corruptions", 0) == 0 and res.get("leaks", 0) == 0, res
    info = qemu.info(path)
    assert info["backing-filename"] == "base.qcow2"
    assert [s["name"] for s in info["snapshots"]] == ["fresh-install"]
    mapping = qemu.qemu_map(path)
    assert any(e["zero"] and e["depth"] == 0 for e in mapping)   # zero clusters over backing
    assert any(e["data"] and e["depth"] == 1 for e in mapping)   # data from the backing file
    assert res["compressed-clusters"] > 0 and res["fragmented-clusters"] > 0
    # made once: a second call returns the same file untouched
    mtime = path.stat().st_mtime_ns
    assert demo_image_path(tmp_path / "demo") == path and path.stat().st_mtime_ns == mtime
