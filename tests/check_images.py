"""Images for the check, map and cmd_info tests: clean ones of every kind, made
by qemu-img/qemu-io, and damage done to them byte by byte (the oracle is then
``qemu-img check`` on the same file)."""

from __future__ import annotations

import os
import struct

import numpy as np

import qemu
from qcow2view.engine import open_image
from qcow2view.engine import clusters as C

MiB = 1024 * 1024


def rnd(n: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# -- clean images of every kind ---------------------------------------------------------
def _snapshots(d):
    p = qemu.create(d / "s.qcow2", "8M")
    qemu.qemu_io(p, "write -P 1 0 1M")
    qemu.qemu_img("snapshot", "-c", "s1", p)
    qemu.qemu_io(p, "write -P 2 256k 512k", "write -c -P 3 2M 128k")
    qemu.qemu_img("snapshot", "-c", "s2", p)
    qemu.qemu_io(p, "write -P 4 0 64k", "discard 512k 64k")
    return p


def _compressed(d):
    raw = d / "c.raw"
    data = bytearray(rnd(4 * MiB, 7))
    for i in range(0, len(data), 4096):          # half compressible, so descriptors
        data[i:i + 2048] = bytes(2048)            # cross host cluster boundaries
    raw.write_bytes(bytes(data))
    p = d / "c.qcow2"
    qemu.qemu_img("convert", "-q", "-c", "-O", "qcow2", "-o", "cluster_size=4096", raw, p)
    return p


def _extended(d):
    p = qemu.create(d / "x.qcow2", "4M", "extended_l2=on", "cluster_size=64k")
    qemu.qemu_io(p, "write -P 1 0 2k", "write -z 64k 6k", "write -P 2 130k 64k")
    return p


def _bitmaps(d):
    p = qemu.create(d / "bm.qcow2", "16M")
    qemu.qemu_img("bitmap", "--add", "-g", "65536", p, "b0")
    qemu.qemu_io(p, "write -P 1 0 3M")
    return p


def _backing(d):
    b = qemu.create(d / "base.qcow2", "4M")
    qemu.qemu_io(b, "write -P 1 0 1M")
    p = qemu.create(d / "top.qcow2", "4M", backing=str(b))
    qemu.qemu_io(p, "write -P 2 512k 64k")
    return p


def _data_file(d):
    p = qemu.create(d / "df.qcow2", "4M", f"data_file={d / 'df.raw'}")
    qemu.qemu_io(p, "write -P 1 0 128k", "write -P 2 1M 64k")
    return p


def _v2(d):
    p = qemu.create(d / "v2.qcow2", "4M", "compat=0.10")
    qemu.qemu_io(p, "write -P 1 0 200k")
    return p


def _small(d):
    p = qemu.create(d / "512.qcow2", "1M", "cluster_size=512")
    qemu.qemu_io(p, "write -P 1 0 40k", "write -P 2 100k 1k", "write -c -P 3 200k 512")
    return p


def _big(d):
    p = qemu.create(d / "2m.qcow2", "64M", "cluster_size=2M")
    qemu.qemu_io(p, "write -P 1 0 1M", "write -P 2 20M 3M")
    return p


def _prealloc(d):
    return qemu.create(d / "pre.qcow2", "32M", "preallocation=metadata")


BUILDERS = [_snapshots, _compressed, _extended, _bitmaps, _backing, _data_file, _v2, _small,
            _big, _prealloc]


# -- damaged images ---------------------------------------------------------------------
def _img(d, *ops, opts=("cluster_size=4k",), size="4M"):
    p = qemu.create(d / "d.qcow2", size, *opts)
    qemu.qemu_io(p, *(ops or ("write -P 1 0 64k", "write -P 2 1M 16k")))
    return p


def _l2_entry_offsets(p, n=None):
    """File offsets of the active L1's first L2 table's entries, and the raw entries."""
    with open_image(p) as im:
        l2 = int(im.l1_table.entries[0]) & C.L1E_OFFSET_MASK
        t = im.l2_table(l2, 0)
        return l2, t.raw.copy(), im.header.l2_entry_size, im


def _poke(p, offset, value):
    with open(p, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(">Q", value))


def _peek(p, offset):
    with open(p, "rb") as f:
        f.seek(offset)
        return struct.unpack(">Q", f.read(8))[0]


def _refcount_entry_offset(p, cluster):
    with open_image(p) as im:
        per = im.refcount_block_entries
        blk = int(im.refcount_table[cluster // per]) & C.REFT_OFFSET_MASK
        width = im.header.refcount_bits // 8
        return blk + (cluster % per) * width, width


def _set_refcount(p, cluster, value):
    off, width = _refcount_entry_offset(p, cluster)
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(value.to_bytes(width, "big"))


def dmg_leak(p):
    l2, raw, es, _ = _l2_entry_offsets(p)
    _poke(p, l2 + 3 * es, 0)


def dmg_refcount_zero(p):
    l2, raw, es, _ = _l2_entry_offsets(p)
    _set_refcount(p, (int(raw[2]) & C.L2E_OFFSET_MASK) // 4096, 0)


def dmg_refcount_high(p):
    l2, raw, es, _ = _l2_entry_offsets(p)
    _set_refcount(p, (int(raw[2]) & C.L2E_OFFSET_MASK) // 4096, 3)


def dmg_double_reference(p):
    l2, raw, es, _ = _l2_entry_offsets(p)
    _poke(p, l2 + 5 * es, int(raw[4]))


def dmg_past_eof(p):
    l2, raw, es, _ = _l2_entry_offsets(p)
    _poke(p, l2 + 6 * es, C.QCOW_OFLAG_COPIED | (os.path.getsize(p) + 10 * 4096))


def dmg_misaligned(p):
    l2, raw, es, _ = _l2_entry_offsets(p)
    _poke(p, l2 + 7 * es, int(raw[7]) + 512)


def dmg_copied_l2(p):
    l2, raw, es, _ = _l2_entry_offsets(p)
    _poke(p, l2 + 1 * es, int(raw[1]) & ~C.QCOW_OFLAG_COPIED)


def dmg_copied_l1(p):
    with open_image(p) as im:
        off = im.l1_table.offset
    _poke(p, off, _peek(p, off) & ~C.QCOW_OFLAG_COPIED)


def dmg_reserved_bits(p):
    l2, raw, es, _ = _l2_entry_offsets(p)
    _poke(p, l2 + 8 * es, int(raw[8]) | 0x2)


def dmg_refblock_on_l2(p):
    l2, raw, es, _ = _l2_entry_offsets(p)
    with open_image(p) as im:
        rt = im.header.refcount_table_offset
    _poke(p, rt, l2)


def dmg_refblock_missing(p):
    with open_image(p) as im:
        rt = im.header.refcount_table_offset
    _poke(p, rt, 0)


def dmg_l2_misaligned(p):
    with open_image(p) as im:
        off = im.l1_table.offset
    _poke(p, off, _peek(p, off) + 1024)


def dmg_compressed_past_eof(p):
    with open_image(p) as im:
        l2 = int(im.l1_table.entries[0]) & C.L1E_OFFSET_MASK
        t = im.l2_table(l2, 0)
        i = int(np.nonzero(t.types() == C.ClusterType.COMPRESSED)[0][0])
        coff = (os.path.getsize(p) + 5 * 4096)
        _poke(p, l2 + 8 * i, im.layout.encode(coff, 700))


def dmg_compressed_copied(p):
    with open_image(p) as im:
        l2 = int(im.l1_table.entries[0]) & C.L1E_OFFSET_MASK
        t = im.l2_table(l2, 0)
        i = int(np.nonzero(t.types() == C.ClusterType.COMPRESSED)[0][0])
    _poke(p, l2 + 8 * i, _peek(p, l2 + 8 * i) | C.QCOW_OFLAG_COPIED)


def dmg_refblock_outside(p):
    with open_image(p) as im:
        rt = im.header.refcount_table_offset
    _poke(p, rt + 8, 1 << 30)                # refcount block 1 far past the end


def dmg_reftable_reserved(p):
    with open_image(p) as im:
        rt = im.header.refcount_table_offset
    _poke(p, rt, _peek(p, rt) | 0x100)


def dmg_l1_reserved(p):
    with open_image(p) as im:
        off = im.l1_table.offset
    _poke(p, off, _peek(p, off) | (1 << 60))


def dmg_refblock_misaligned(p):
    with open_image(p) as im:
        rt = im.header.refcount_table_offset
    _poke(p, rt, _peek(p, rt) + 1024)


DAMAGE = [dmg_leak, dmg_refcount_zero, dmg_refcount_high, dmg_double_reference, dmg_past_eof,
          dmg_misaligned, dmg_copied_l2, dmg_copied_l1, dmg_reserved_bits, dmg_refblock_on_l2,
          dmg_refblock_missing, dmg_l2_misaligned, dmg_refblock_outside, dmg_reftable_reserved,
          dmg_l1_reserved, dmg_refblock_misaligned]


def build_damaged(d, damage=None):
    p = _img(d)
    if damage is not None:
        damage(p)
    return p
