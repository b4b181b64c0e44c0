"""The demo image: something real to look at on first launch.

Made by our own engine (no qemu needed) in the user's cache folder from a small
resource holding a real guest disk (GPT, a FAT32 EFI System partition, an ext4
root with files, swap; see qcow2view/demo_guest.py): a backing file with the
installed guest, and an overlay with an internal snapshot, compressed and zero
clusters, scattered writes made before and after the snapshot (so some clusters
are shared, some copied) and the files the running guest changed.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from . import demo_guest
from .engine import create_image, open_image
from .engine.compressed_write import write_compressed
from .engine.snapshot_create import create_snapshot

DEMO_VERSION = "3"
MiB = 1 << 20
SWAP_START = 113 * MiB          # partition 3 of the demo guest (packaging/make-demo-guest.sh)
DOC_TEXT = b"qcow2view shows where every byte of a guest file lives"


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


def _runs(blocks: list[tuple[int, bytes]]):
    """Consecutive blocks merged into (offset, bytes) runs: fewer, larger writes."""
    run_off, parts = None, []
    for off, data in blocks:
        if run_off is not None and run_off + sum(map(len, parts)) == off:
            parts.append(data)
            continue
        if parts:
            yield run_off, b"".join(parts)
        run_off, parts = off, [data]
    if parts:
        yield run_off, b"".join(parts)


def _pages(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def make_demo(folder: Path) -> Path:
    """base.qcow2: the installed guest (GPT: EFI System FAT32, ext4 root, swap) with
    swapped-out pages; demo.qcow2 over it: compressed clusters, zeroed and scattered
    swap pages, the snapshot 'fresh-install', then what the running guest changed
    (/etc/hostname, /var/log/syslog, /home/demo/notes.txt) and more swap traffic."""
    rng = random.Random(2026)
    guest = demo_guest.load()
    base = folder / "base.qcow2"
    image = folder / "demo.qcow2"
    size = guest.size
    cs = 64 * 1024
    swap_lo, swap_hi = SWAP_START + cs, size - 2 * MiB   # past the swap header

    def swap_offset(n: int) -> int:
        return rng.randrange(swap_lo, swap_hi - n) & ~511

    create_image(base, size)
    with open_image(base, writable=True) as b:
        for off, data in _runs(guest.installed):
            b.write(off, data)
        b.write(SWAP_START + 4 * MiB, _pages(rng, 512 * 1024))     # swapped-out pages

    create_image(image, size, backing_file="base.qcow2", backing_fmt="qcow2")
    with open_image(image, writable=True) as im:
        # the documentation's clusters, compressed (the same bytes, fewer of them)
        doc = sorted({off // cs * cs for off, data in guest.installed if DOC_TEXT in data})
        for c in doc:
            write_compressed(im, c, im.read(c, cs))
        for _ in range(24):
            n = rng.choice((512, 4096, 70000))
            im.write(swap_offset(n), bytes([rng.randrange(1, 256)]) * n)
        im.write_zeroes(SWAP_START + 4 * MiB, 256 * 1024)          # over backing data
        im.write_zeroes(SWAP_START + 8 * MiB, 2 * MiB)
        create_snapshot(im, "fresh-install")
        for off, data in _runs(guest.used):                         # the guest ran on
            im.write(off, data)
        for _ in range(16):
            n = rng.choice((512, 4096))
            im.write(swap_offset(n), bytes([rng.randrange(1, 256)]) * n)
        im.write(SWAP_START + 12 * MiB, _pages(rng, 3 * cs))
    return image
