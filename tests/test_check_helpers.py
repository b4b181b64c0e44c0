"""Small image builders shared by the check and cmd_info tests."""

from __future__ import annotations

import qemu


def build_damaged(d, damage=None):
    p = qemu.create(d / "d.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(p, "write -P 1 0 64k", "write -P 2 1M 16k")
    if damage is not None:
        damage(p)
    return p
