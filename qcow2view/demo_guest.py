"""The guest disk of the demo image, shipped as a small resource.

``packaging/make-demo-guest.sh`` makes it with the real tools (sgdisk, mkfs.vfat +
mcopy, mkfs.ext4 -d, mkswap, debugfs); the app only unpacks it, so the demo needs
none of them.  Two states of one disk are stored: *installed* (every 4 KiB block
that is not zero) and *used* (the blocks the running guest changed), zstd-compressed:

    magic "QVDGUEST", u32 block size, u64 disk size, u32 n_installed, u32 n_used,
    n_installed u32 block numbers, n_used u32 block numbers, then the blocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from importlib import resources

import numpy as np
import zstandard

MAGIC = b"QVDGUEST"
BLOCK = 4096
_HEAD = struct.Struct("<8sIQII")
RESOURCE = "demo-guest.bin.zst"


@dataclass(frozen=True)
class DemoGuest:
    size: int
    installed: list[tuple[int, bytes]]     # (guest offset, BLOCK bytes), ascending
    used: list[tuple[int, bytes]]          # blocks the guest changed afterwards


def _blocks(disk: bytes) -> np.ndarray:
    return np.frombuffer(disk, dtype=np.uint8).reshape(-1, BLOCK)


def pack(installed: bytes, used: bytes) -> bytes:
    if len(installed) != len(used) or len(installed) % BLOCK:
        raise ValueError("two states of one disk, in whole blocks")
    a, b = _blocks(installed), _blocks(used)
    nonzero = np.flatnonzero(a.any(axis=1)).astype("<u4")
    changed = np.flatnonzero((a != b).any(axis=1)).astype("<u4")
    body = [_HEAD.pack(MAGIC, BLOCK, len(installed), len(nonzero), len(changed)),
            nonzero.tobytes(), changed.tobytes(), a[nonzero].tobytes(), b[changed].tobytes()]
    return zstandard.ZstdCompressor(level=19).compress(b"".join(body))


def unpack(data: bytes) -> DemoGuest:
    raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=256 << 20)
    magic, block, size, n_a, n_b = _HEAD.unpack_from(raw)
    if magic != MAGIC or block != BLOCK:
        raise ValueError("not a demo guest resource")
    pos = _HEAD.size
    ia = np.frombuffer(raw, "<u4", n_a, pos)
    ib = np.frombuffer(raw, "<u4", n_b, pos + 4 * n_a)
    pos += 4 * (n_a + n_b)

    def blocks(idx: np.ndarray, start: int) -> list[tuple[int, bytes]]:
        return [(int(i) * BLOCK, raw[start + k * BLOCK:start + (k + 1) * BLOCK])
                for k, i in enumerate(idx)]
    return DemoGuest(size, blocks(ia, pos), blocks(ib, pos + n_a * BLOCK))


def load() -> DemoGuest:
    return unpack(resources.files("qcow2view.resources").joinpath(RESOURCE).read_bytes())
