"""The demo image: something real to look at on first launch.

Made by our own engine (no qemu needed) in the user's cache folder: a backing
file with a partition table and some files' worth of data, and an overlay with
an internal snapshot, compressed and zero clusters, and scattered writes made
before and after the snapshot (so some clusters are shared, some copied).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import tempfile
from pathlib import Path

from .engine import create_image, open_image
from .engine.compressed_write import write_compressed
from .engine.snapshot_create import create_snapshot

DEMO_VERSION = "1"
MiB = 1 << 20


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qcow2view"


def demo_image_path(folder: Path | None = None) -> Path:
    """The demo image, made on first use (and again when the recipe changes)."""
    folder = Path(folder) if folder is not None else cache_dir() / "demo"
    image = folder / "demo.qcow2"
    stamp = folder / "VERSION"
    if image.exists() and stamp.exists() and stamp.read_text().strip() == DEMO_VERSION:
        return image
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=folder.parent))
    try:
        make_demo(tmp)
        (tmp / "VERSION").write_text(DEMO_VERSION + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return image


def _mbr() -> bytes:
    """A boot sector with two partitions (Linux at 1 MiB, swap after it)."""
    sector = bytearray(512)
    sector[:len(b"\xeb\x63\x90qcow2view demo boot sector")] = b"\xeb\x63\x90qcow2view demo boot sector"
    parts = [(0x83, 2048, 81920), (0x82, 83968, 40960)]
    for i, (ptype, lba, count) in enumerate(parts):
        entry = struct.pack("<B3sB3sII", 0x80 if i == 0 else 0, b"\xfe\xff\xff", ptype,
                            b"\xfe\xff\xff", lba, count)
        sector[446 + 16 * i:462 + 16 * i] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def _text_block(title: str, n: int) -> bytes:
    line = f"{title}: the quick brown fox jumps over the lazy dog. ".encode()
    return (line * (n // len(line) + 1))[:n]


def make_demo(folder: Path) -> Path:
    rng = random.Random(2026)
    base = folder / "base.qcow2"
    image = folder / "demo.qcow2"
    size = 128 * MiB
    cs = 64 * 1024

    # the backing file: what a freshly installed guest would hold
    create_image(base, size)
    with open_image(base, writable=True) as b:
        b.write(0, _mbr())
        b.write(1 * MiB, _text_block("superblock of the root file system", 64 * 1024))
        b.write(2 * MiB, bytes(rng.getrandbits(8) for _ in range(256 * 1024)))
        b.write(8 * MiB, _text_block("/etc/fstab UUID=demo / ext4 defaults 0 1", 128 * 1024))
        b.write(40 * MiB, bytes(rng.getrandbits(8) for _ in range(512 * 1024)))
        b.write(96 * MiB, _text_block("/var/log/syslog kernel: booted", 192 * 1024))

    # the overlay: the guest ran, was snapshotted, ran on
    create_image(image, size, backing_file="base.qcow2", backing_fmt="qcow2")
    with open_image(image, writable=True) as im:
        write_compressed(im, 16 * MiB, _text_block("compressed: /usr/share/doc", 8 * cs))
        write_compressed(im, 60 * MiB, _text_block("compressed: /usr/lib/firmware", 4 * cs))
        im.write(8 * MiB + 100, b"# edited by the guest before the snapshot\n")
        for _ in range(24):
            off = rng.randrange(0, size - 4096) & ~511
            im.write(off, bytes([rng.randrange(1, 256)]) * rng.choice((512, 4096, 70000)))
        im.write_zeroes(40 * MiB, 256 * 1024)          # zeroed over backing data
        im.write_zeroes(100 * MiB, 2 * MiB)
        create_snapshot(im, "fresh-install")
        im.write(1 * MiB + 1024, b"mounted read-write after the snapshot")
        im.write(16 * MiB + 4096, _text_block("rewrote a compressed cluster", 2048))
        for _ in range(16):
            off = rng.randrange(0, size - 4096) & ~511
            im.write(off, bytes([rng.randrange(1, 256)]) * rng.choice((512, 4096)))
        im.write(120 * MiB, bytes(rng.getrandbits(8) for _ in range(3 * cs)))
    return image
