"""Named fields of the on-disk structures, against sgdisk -p, dumpe2fs -h and
the FAT boot sector as mkfs.vfat wrote it (blkid's UUID)."""

from __future__ import annotations

import re

import pytest

from guestdisks import sh, tool

from qcow2view.engine import open_image
from qcow2view.guest.disk import read_disk
from qcow2view.guest.fields import FieldIndex, structure_fields


@pytest.fixture(scope="module")
def fields(gpt_disk):
    with open_image(gpt_disk.qcow2) as im:
        fl = structure_fields(read_disk(im), im.read)
    return {(f.structure, f.name): f for f in fl}, fl


def _num(v: str) -> int:
    return int(v.split()[0])


def test_gpt_header_and_entries_as_sgdisk(gpt_disk, fields):
    by, _ = fields
    p = sh(tool("sgdisk"), "-p", gpt_disk.raw)
    first, last = re.search(r"First usable sector is (\d+), last usable sector is (\d+)",
                            p).groups()
    assert _num(by["GPT header", "first_usable_lba"].value) == int(first)
    assert _num(by["GPT header", "last_usable_lba"].value) == int(last)
    assert by["GPT header", "disk_guid"].value == re.search(
        r"Disk identifier \(GUID\): (\S+)", p).group(1)
    assert by["GPT header", "disk_guid"].offset == 512 + 56
    assert by["GPT entry 2", "partition_name"].value == "root"
    assert _num(by["GPT entry 2", "starting_lba"].value) * 512 == gpt_disk.starts[2]
    assert _num(by["protective MBR entry 1", "type"].value) == 0xEE


def test_ext_superblock_as_dumpe2fs(gpt_disk, fields):
    by, _ = fields
    d = dict(re.findall(r"^([^:\n]+):\s+(.*)$", sh(tool("dumpe2fs"), "-h", gpt_disk.parts[2]),
                        re.M))
    sb = "ext4 superblock"
    assert _num(by[sb, "s_inodes_count"].value) == int(d["Inode count"])
    assert _num(by[sb, "s_blocks_count_lo"].value) == int(d["Block count"])
    assert by[sb, "s_volume_name"].value == d["Filesystem volume name"]
    assert by[sb, "s_uuid"].value == d["Filesystem UUID"]
    assert by[sb, "s_inodes_count"].offset == gpt_disk.starts[2] + 1024


def test_fat_boot_sector(gpt_disk, fields):
    by, _ = fields
    uuid = sh(tool("blkid"), "-p", "-s", "UUID", "-o", "value", gpt_disk.parts[1]).strip()
    vol = _num(by["FAT boot sector", "BS_VolID"].value)
    assert f"{vol >> 16:04X}-{vol & 0xFFFF:04X}" == uuid
    assert by["FAT boot sector", "BS_VolLab"].value == "EFI"


def test_fields_do_not_overlap_and_are_found_by_offset(fields):
    _, fl = fields
    for a, b in zip(fl, fl[1:]):
        assert a.offset + a.size <= b.offset, (a, b)
    fi = FieldIndex(fl)
    f = fl[len(fl) // 2]
    assert fi.at(f.offset + f.size - 1) == f
    assert fi.at(0) is None                      # boot code: no field
