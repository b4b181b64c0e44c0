"""Guest disks made by the real tools, without mounts: sgdisk/sfdisk for the tables,
mkfs.vfat + mcopy, mkfs.ext4 -d, mkfs.ntfs + ntfscp, mkfs.xfs, mkswap; qemu-img
convert to qcow2 (plain and -c), overlays written with qemu-io, internal snapshots.
Built once per session; a few tens of MiB, mostly sparse."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import qemu

MiB = 1 << 20


def sh(*args, input: bytes | None = None) -> str:
    p = subprocess.run([os.fspath(a) for a in args], capture_output=True, input=input)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {p.returncode}:\n"
                             f"{p.stderr.decode(errors='replace')}")
    return p.stdout.decode(errors="replace")


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None
               and not os.path.exists(f"/usr/sbin/{t}") and not os.path.exists(f"/sbin/{t}")]
    if missing:
        pytest.fail(f"tools missing (bash packaging/install-system-deps.sh): {missing}")


def tool(name: str) -> str:
    for d in ("", "/usr/sbin/", "/sbin/"):
        p = shutil.which(name) if not d else (d + name if os.path.exists(d + name) else None)
        if p:
            return p
    raise AssertionError(f"{name} not installed")


def make_tree(root: Path, links: bool = True) -> Path:
    r = random.Random(11)
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("guest-host\n")
    (root / "etc/fstab").write_text("UUID=x / ext4 defaults 0 1\n" * 40)
    (root / "etc/motd").write_text("m" * 99 + "\n")   # inline_data beyond the i_block's 60
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(r.randbytes(200_000))
    (root / "data").mkdir()
    (root / "data/big.bin").write_bytes(r.randbytes(1_500_000))
    (root / "deep/a/b/c").mkdir(parents=True)
    (root / "deep/a/b/c/leaf.txt").write_text("leaf\n")
    (root / "empty").write_bytes(b"")
    if links:
        os.link(root / "data/big.bin", root / "data/hard")
        os.symlink("etc/hostname", root / "link")
        with open(root / "sparse.img", "wb") as f:
            f.truncate(2 * MiB)
            f.seek(MiB)
            f.write(b"X" * 100)
    return root


def source_files(root: Path) -> dict[str, Path]:
    """'/path' -> file for every regular file and symlink under ``root``."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            out["/" + str(p.relative_to(root))] = p
    return out


@dataclass
class Disk:
    raw: Path                           # the guest disk as raw bytes
    qcow2: Path
    src: Path | None = None             # the tree the filesystems were made from
    parts: dict[int, Path] = field(default_factory=dict)    # partition images
    starts: dict[int, int] = field(default_factory=dict)    # partition starts (bytes)
    extra: dict[str, Path] = field(default_factory=dict)


def _place(disk: Path, part: Path, start: int) -> None:
    with open(disk, "r+b") as d, open(part, "rb") as p:
        d.seek(start)
        shutil.copyfileobj(p, d)


@pytest.fixture(scope="session")
def gpt_disk(tmp_path_factory) -> Disk:
    """GPT: 1 'EFI' (EFI system, vfat, label EFI), 2 'root' (Linux filesystem, ext4,
    label rootfs, made from a tree with hard links, a symlink and a sparse file)."""
    need("sgdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs")
    d = tmp_path_factory.mktemp("gpt")
    src = make_tree(d / "src")
    fat_src = make_tree(d / "fatsrc", links=False)
    raw = d / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(48 * MiB)
    sh(tool("sgdisk"), "-n", "1:2048:+16M", "-t", "1:ef00", "-c", "1:EFI",
       "-n", "2:0:0", "-t", "2:8300", "-c", "2:root", raw)
    starts, sizes = {}, {}
    for n in (1, 2):
        info = sh(tool("sgdisk"), "-i", str(n), raw)
        first = int(info.split("First sector: ")[1].split()[0])
        last = int(info.split("Last sector: ")[1].split()[0])
        starts[n], sizes[n] = first * 512, (last - first + 1) * 512
    efi, root = d / "p1.img", d / "p2.img"
    for p, n in ((efi, 1), (root, 2)):
        with open(p, "wb") as f:
            f.truncate(sizes[n])
    sh(tool("mkfs.vfat"), "-n", "EFI", efi)
    sh("mcopy", "-s", "-i", efi, *[fat_src / x for x in os.listdir(fat_src)], "::/")
    sh(tool("mkfs.ext4"), "-q", "-L", "rootfs", "-d", src, root)
    _place(raw, efi, starts[1])
    _place(raw, root, starts[2])
    q = d / "disk.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    return Disk(raw, q, src, {1: efi, 2: root}, starts, {"fat_src": fat_src})


@pytest.fixture(scope="session")
def gpt_compressed(gpt_disk) -> Path:
    q = gpt_disk.qcow2.with_name("disk-c.qcow2")
    qemu.qemu_img("convert", "-c", "-O", "qcow2", gpt_disk.raw, q)
    return q


@pytest.fixture(scope="session")
def mbr_disk(tmp_path_factory) -> Disk:
    """MBR: 1 NTFS (ntfscp'd files), 2 swap, 3 extended with logical 5 (ext2) and
    6 (ext4 with inline_data)."""
    need("sfdisk", "mkfs.ntfs", "ntfscp", "mkswap", "mkfs.ext2", "mkfs.ext4")
    d = tmp_path_factory.mktemp("mbr")
    src = make_tree(d / "src")
    raw = d / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    sh(tool("sfdisk"), "-q", raw, input=b"label: dos\n"
       b"start=2048, size=20480, type=7\n"
       b"start=22528, size=8192, type=82\n"
       b"start=30720, type=5\n"
       b"size=24576, type=83\n"
       b"type=83\n")
    import json
    table = json.loads(sh(tool("sfdisk"), "--json", raw))["partitiontable"]["partitions"]
    starts = {int(p["node"].rsplit("raw", 1)[1]): p["start"] * 512 for p in table}
    sizes = {int(p["node"].rsplit("raw", 1)[1]): p["size"] * 512 for p in table}
    parts = {}
    for n in (1, 2, 5, 6):
        parts[n] = d / f"p{n}.img"
        with open(parts[n], "wb") as f:
            f.truncate(sizes[n])
    sh(tool("mkfs.ntfs"), "-q", "-F", "-f", "-L", "win", parts[1])
    sh(tool("ntfscp"), "-f", parts[1], src / "data/big.bin", "big.bin")
    sh(tool("ntfscp"), "-f", parts[1], src / "etc/hostname", "hostname")
    sh(tool("mkswap"), "-L", "swp", parts[2])
    sh(tool("mkfs.ext2"), "-q", "-L", "old", "-d", src / "etc", parts[5])
    sh(tool("mkfs.ext4"), "-q", "-O", "inline_data", "-L", "inl", "-d", src / "etc", parts[6])
    for n in (1, 2, 5, 6):
        _place(raw, parts[n], starts[n])
    q = d / "disk.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    return Disk(raw, q, src, parts, starts)


def xfs_protofile(root: Path) -> str:
    """mkfs.xfs -p: the tree as a prototype file (regular files, directories,
    symlinks), so mkfs fills the filesystem without mounting it."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(d: Path) -> None:
        for p in sorted(d.iterdir()):
            if p.is_symlink():
                lines.append(f"{p.name} l--777 0 0 {os.readlink(p)}")
            elif p.is_dir():
                lines.append(f"{p.name} d--755 0 0")
                walk(p)
                lines.append("$")
            else:
                lines.append(f"{p.name} ---644 0 0 {p}")
    walk(root)
    return "\n".join(lines + ["$", ""])


@pytest.fixture(scope="session")
def xfs_disk(tmp_path_factory) -> Disk:
    """A whole-disk (no table) XFS, label xl, filled by mkfs.xfs -p from a tree."""
    need("mkfs.xfs")
    d = tmp_path_factory.mktemp("xfs")
    src = make_tree(d / "src", links=False)
    os.symlink("etc/hostname", src / "link")
    proto = d / "proto.txt"
    proto.write_text(xfs_protofile(src))
    raw = d / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(300 * MiB)
    sh(tool("mkfs.xfs"), "-q", "-L", "xl", "-p", proto, raw)
    q = d / "disk.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    return Disk(raw, q, src)


def debugfs(image: Path, cmd: str) -> str:
    return sh(tool("debugfs"), "-R", cmd, image)
