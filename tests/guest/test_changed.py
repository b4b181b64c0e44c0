"""Changed files: an overlay written with qemu-io, and the live disk vs a snapshot."""

from __future__ import annotations

import re
import shutil

import pytest

import qemu
from guestdisks import debugfs

from qcow2view.engine import open_image
from qcow2view.guest.changed import changed_vs_backing, changed_vs_snapshot
from qcow2view.guest.index import build_index


def _guest(gpt_disk, path: str, fo: int = 0) -> int:
    """Where debugfs says byte ``fo`` of ``path`` lies on the guest disk."""
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    bs = int(re.search(r"Block size:\s+(\d+)", debugfs(part, "stats")).group(1))
    blk = int(debugfs(part, f"bmap {path} {fo // bs}").split()[0])
    return start + blk * bs + fo % bs


@pytest.fixture(scope="module")
def overlay(gpt_disk, tmp_path_factory):
    d = tmp_path_factory.mktemp("overlay")
    ov = d / "overlay.qcow2"
    qemu.qemu_img("create", "-q", "-f", "qcow2", "-b", gpt_disk.qcow2, "-F", "qcow2", ov)
    host = _guest(gpt_disk, "/etc/hostname")
    tool = _guest(gpt_disk, "/bin/tool", 4096)
    same = gpt_disk.raw.read_bytes()[tool:tool + 4096]
    src = d / "same.bin"
    src.write_bytes(same)
    qemu.qemu_io(ov, f"write -P 0x58 {host} 5",           # 5 bytes of /etc/hostname
                 f"write -s {src} {tool} 4096",           # /bin/tool rewritten, same bytes
                 f"write -P 0x5a {(1 << 20) - 4096} 100")  # unpartitioned bytes
    return ov


def test_overlay_changes_by_file(overlay):
    with open_image(overlay) as im:
        ch = changed_vs_backing(im, build_index(im))
    assert ch.against.endswith("disk.qcow2")
    files = {f.path: f.bytes_changed for f in ch.files}
    assert files == {"/etc/hostname": 5}       # 'guest' -> 'XXXXX': every byte differs
    assert ch.other_bytes_changed == 100
    assert ch.clusters_compared >= 2           # /bin/tool's cluster was compared, unchanged


def test_live_disk_against_a_snapshot(gpt_disk, tmp_path):
    q = tmp_path / "snap.qcow2"
    shutil.copy(gpt_disk.qcow2, q)
    qemu.qemu_img("snapshot", "-c", "before", q)
    at = _guest(gpt_disk, "/data/big.bin", 70000)
    qemu.qemu_io(q, f"write -P 0 {at} 3000")
    old = gpt_disk.raw.read_bytes()[at:at + 3000]
    with open_image(q) as im:
        ch = changed_vs_snapshot(im, "before", build_index(im))
    assert ch.against == "snapshot before"
    [f] = ch.files
    assert f.path in ("/data/big.bin", "/data/hard") and f.partition == 2
    assert set(f.names) == {"/data/big.bin", "/data/hard"}
    assert f.bytes_changed == sum(1 for b in old if b != 0)
    assert ch.other_bytes_changed == 0


def test_no_snapshot_or_backing_is_a_request_error(gpt_disk):
    from qcow2view.engine.errors import Qcow2Error
    with open_image(gpt_disk.qcow2) as im:
        idx = build_index(im)
        with pytest.raises(Qcow2Error):
            changed_vs_backing(im, idx)
        with pytest.raises(Qcow2Error):
            changed_vs_snapshot(im, "nope", idx)
