"""Partition tables against sgdisk and sfdisk, including a damaged primary GPT."""

from __future__ import annotations

import json
import random
import shutil

import pytest

import qemu
from guestdisks import sh, tool

from qcow2view.engine import open_image
from qcow2view.guest.disk import read_disk
from qcow2view.guest.partitions import read_partition_table


def _sgdisk(raw, n: int) -> dict:
    info = sh(tool("sgdisk"), "-i", str(n), raw)
    first = int(info.split("First sector: ")[1].split()[0])
    last = int(info.split("Last sector: ")[1].split()[0])
    code = info.split("Partition GUID code: ")[1].splitlines()[0]
    guid, name = code.split(" ", 1)
    return {"start": first * 512, "size": (last - first + 1) * 512, "type_id": guid,
            "type": name.strip("()"), "name": info.split("Partition name: '")[1].split("'")[0],
            "guid": info.split("Partition unique GUID: ")[1].split()[0]}


def test_gpt_partitions_as_sgdisk_lists_them(gpt_disk):
    with open_image(gpt_disk.qcow2) as im:
        disk = read_disk(im)
    assert disk.table.kind == "gpt"
    assert disk.problems == []
    got = {v.partition.index: v.partition for v in disk.volumes}
    assert sorted(got) == [1, 2]
    for n in (1, 2):
        want = _sgdisk(gpt_disk.raw, n)
        p = got[n]
        assert (p.start, p.size, p.type_id, p.type, p.name, p.guid) == (
            want["start"], want["size"], want["type_id"], want["type"], want["name"],
            want["guid"])


def test_damaged_primary_gpt_falls_back_to_the_backup(gpt_disk, tmp_path):
    raw = tmp_path / "damaged.raw"
    shutil.copy(gpt_disk.raw, raw)
    with open(raw, "r+b") as f:          # a byte of the primary header: its CRC fails
        f.seek(512 + 40)
        f.write(b"\xff")
    q = tmp_path / "damaged.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    with open_image(q) as im:
        disk = read_disk(im)
    assert disk.table.kind == "gpt" and disk.table.used_backup_gpt
    assert any("primary GPT damaged" in p and "backup" in p for p in disk.problems)
    # sgdisk recovers the same partitions from the backup
    for v in disk.volumes:
        want = _sgdisk(raw, v.partition.index)
        assert (v.partition.start, v.partition.size, v.partition.name) == (
            want["start"], want["size"], want["name"])
    assert {v.filesystem.type for v in disk.volumes} == {"vfat", "ext4"}


def test_damaged_entry_array_falls_back_to_the_backup(gpt_disk, tmp_path):
    data = bytearray(gpt_disk.raw.read_bytes())
    data[1024 + 56] ^= 0xFF               # a name byte of entry 1: the array CRC fails
    size = len(data)
    t = read_partition_table(lambda o, n: bytes(data[o:o + n]), size)
    assert t.kind == "gpt" and t.used_backup_gpt
    assert [p.name for p in t.partitions] == ["EFI", "root"]
    assert "entry array CRC32 wrong" in t.problems[0]


def test_hybrid_mbr_is_noticed(gpt_disk, tmp_path):
    raw = tmp_path / "hybrid.raw"
    shutil.copy(gpt_disk.raw, raw)
    sh(tool("sgdisk"), "-h", "1", raw)
    t = read_partition_table(_reader(raw), raw.stat().st_size)
    assert t.kind == "gpt" and t.hybrid_mbr
    assert any("hybrid MBR" in p for p in t.problems)


def _reader(path):
    data = path.read_bytes()
    return lambda o, n: data[o:o + n]


def test_mbr_primary_extended_logical_as_sfdisk_and_fdisk(mbr_disk):
    with open_image(mbr_disk.qcow2) as im:
        disk = read_disk(im)
    assert disk.table.kind == "mbr"
    sf = json.loads(sh(tool("sfdisk"), "--json", mbr_disk.raw))["partitiontable"]["partitions"]
    want = {int(p["node"].rsplit("raw", 1)[1]): p for p in sf}
    got = {p.index: p for p in disk.table.partitions}
    assert sorted(got) == sorted(want) == [1, 2, 3, 5, 6]
    for n, p in want.items():
        assert got[n].start == p["start"] * 512
        assert got[n].size == p["size"] * 512
        assert got[n].type_id == f"0x{int(p['type'], 16):02x}"
    # type names as fdisk prints them
    listing = sh(tool("fdisk"), "-l", mbr_disk.raw)
    for n, p in got.items():
        line = next(x for x in listing.splitlines() if x.startswith(f"{mbr_disk.raw}{n} "))
        assert line.endswith(p.type), (line, p.type)
    assert got[3].kind == "extended" and got[5].kind == got[6].kind == "logical"


def test_whole_disk_filesystem_is_entry_zero(xfs_disk):
    with open_image(xfs_disk.qcow2) as im:
        disk = read_disk(im)
    assert disk.table.kind is None
    [v] = disk.volumes
    assert (v.partition.index, v.partition.start, v.partition.size) == (0, 0, 300 << 20)
    assert v.filesystem.type == "xfs"


@pytest.mark.parametrize("seed", range(30))
def test_garbage_tables_never_raise(gpt_disk, seed):
    """Random damage to the first and last sectors: a table or problems, no exception."""
    r = random.Random(seed)
    data = bytearray(gpt_disk.raw.read_bytes()[:2 << 20])
    for _ in range(r.randrange(1, 40)):
        o = r.choice([r.randrange(0, 34 * 512), r.randrange(len(data))])
        data[o] = r.randrange(256)
    if seed % 3 == 0:                        # huge counts and offsets
        data[512 + 80:512 + 88] = r.randbytes(8)
    t = read_partition_table(lambda o, n: bytes(data[o:o + n]), len(data))
    assert t.kind in ("gpt", "mbr", None)
    for p in t.partitions:
        assert p.size >= 0


def test_gpt_with_4096_byte_sectors(gpt_disk):
    """The same table laid out for 4 KiB sectors (header at byte 4096, LBAs in 4 KiB
    units; written here, as this sfdisk has no --sector-size): read as such, with no
    complaint about the 512-byte attempt."""
    import struct
    import zlib
    data = bytearray(gpt_disk.raw.read_bytes()[:2 << 20])
    size = 48 << 20
    ss = 4096
    hdr = bytearray(data[512:512 + 92])
    entries = bytearray(data[1024:1024 + 128 * 128])
    for i in range(128):                       # LBAs in 4 KiB units
        first, last = struct.unpack_from("<QQ", entries, i * 128 + 32)
        if first:
            struct.pack_into("<QQ", entries, i * 128 + 32, first // 8, (last + 1) // 8 - 1)
    struct.pack_into("<QQQQ", hdr, 24, 1, size // ss - 1, 6, size // ss - 6)
    struct.pack_into("<Q", hdr, 72, 2)
    struct.pack_into("<I", hdr, 88, zlib.crc32(entries))
    struct.pack_into("<I", hdr, 16, 0)
    struct.pack_into("<I", hdr, 16, zlib.crc32(hdr))
    disk = bytearray(size)
    disk[:512] = data[:512]
    disk[512:1024] = bytes(512)
    disk[ss:ss + 92] = hdr
    disk[2 * ss:2 * ss + len(entries)] = entries
    t = read_partition_table(lambda o, n: bytes(disk[o:o + n]), size)
    assert (t.kind, t.sector_size) == ("gpt", 4096)
    assert [p.name for p in t.partitions] == ["EFI", "root"]
    with open_image(gpt_disk.qcow2) as im:
        want = {v.partition.index: v.partition.start for v in read_disk(im).volumes}
    assert {p.index: p.start for p in t.partitions} == want
    assert t.problems == ["backup GPT header at LBA 12287: no GPT signature"]   # not written
