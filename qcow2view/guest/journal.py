"""Whether an ext3/ext4 journal needs recovery (the guest was not shut down cleanly).

An edit made in place under such a filesystem may be overwritten when the guest
replays its journal, so the window warns first.  The flag is
``EXT4_FEATURE_INCOMPAT_RECOVER`` in the superblock (as ``dumpe2fs`` prints
"needs_recovery").
"""

from __future__ import annotations

import struct
from typing import Callable

SUPERBLOCK = 1024            # bytes into the volume
INCOMPAT_OFFSET = 0x60       # s_feature_incompat
INCOMPAT_RECOVER = 0x0004
MAGIC = b"\x53\xef"          # s_magic at 0x38


def needs_recovery(read: Callable[[int, int], bytes], volume_start: int) -> bool:
    """True when the ext superblock at ``volume_start`` says its journal needs
    recovery (False for anything unreadable or not ext)."""
    try:
        sb = read(volume_start + SUPERBLOCK, 0x64)
    except Exception:       # noqa: BLE001 - a hint, never an error of its own
        return False
    if len(sb) < 0x64 or sb[0x38:0x3A] != MAGIC:
        return False
    return bool(struct.unpack_from("<I", sb, INCOMPAT_OFFSET)[0] & INCOMPAT_RECOVER)
