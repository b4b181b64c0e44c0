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


def _partition(raw, tmp_path, number: int, name: str):
    """Partition ``number`` of a raw disk as a file (offsets from sgdisk -i)."""
    import re
    import subprocess
    info = subprocess.run(["sgdisk", "-i", str(number), str(raw)], capture_output=True,
                          text=True, check=True).stdout
    first = int(re.search(r"First sector: (\d+)", info).group(1))
    last = int(re.search(r"Last sector: (\d+)", info).group(1))
    out = tmp_path / name
    with open(raw, "rb") as f:
        f.seek(first * 512)
        out.write_bytes(f.read((last - first + 1) * 512))
    return out, info


def test_demo_guest_is_a_real_disk_the_tools_agree_on(tmp_path):
    """The guest inside the demo, judged by the tools that made it: a GPT with an EFI
    System partition (FAT32), an ext4 root that e2fsck finds clean, and swap; the
    running guest changed /etc/hostname after the snapshot 'fresh-install'."""
    import subprocess
    path = demo_image_path(tmp_path / "demo")
    now, then = tmp_path / "now.raw", tmp_path / "then.raw"
    qemu.to_raw(path, now)
    qemu.to_raw(path, then, snapshot="fresh-install")
    esp, info = _partition(now, tmp_path, 1, "esp.img")
    assert "EFI system partition" in info and "'EFI System'" in info
    grub = subprocess.run(["mtype", "-i", str(esp), "::/EFI/debian/grub.cfg"],
                          capture_output=True, text=True, check=True).stdout
    assert "search --label rootfs" in grub
    for raw, hostname in ((now, "demo-vm-prod\n"), (then, "demo-vm\n")):
        root, info = _partition(raw, tmp_path, 2, "root.img")
        assert "Linux x86-64 root (/)" in info
        fsck = subprocess.run(["e2fsck", "-fn", str(root)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        cat = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(root)],
                             capture_output=True, text=True, check=True).stdout
        assert cat == hostname
    swap, _ = _partition(now, tmp_path, 3, "swap.img")
    blkid = subprocess.run(["blkid", "-p", "-o", "export", str(swap)], capture_output=True,
                           text=True, check=True).stdout
    assert "TYPE=swap" in blkid and "LABEL=swap" in blkid
