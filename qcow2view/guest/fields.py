"""Named fields of the guest's on-disk structures, for labelling bytes in place.

The MBR (and its four entries), the GPT header and its non-empty entries, and the
first superblock (boot sector) of each filesystem: each field with its guest
offset, size, name (as the format's documentation spells it) and decoded value.
:func:`structure_fields` lists them for a disk; :class:`FieldIndex` answers "which
field holds this byte" by bisection, for a hover.
"""

from __future__ import annotations

import bisect
import struct
import uuid
from dataclasses import dataclass

from .partitions import SECTOR


@dataclass(frozen=True)
class Field:
    offset: int          # guest offset
    size: int
    structure: str       # "MBR", "MBR entry 1", "GPT header", "GPT entry 2", "ext4 superblock"
    name: str
    value: str


# (offset, size, name, kind): kind is a struct code, "guid", "text", "utf16" or "bytes"
MBR_ENTRY = [(0, 1, "status", "B"), (1, 3, "first CHS", "bytes"), (4, 1, "type", "B"),
             (5, 3, "last CHS", "bytes"), (8, 4, "first LBA", "<I"), (12, 4, "sectors", "<I")]
GPT_HEADER = [(0, 8, "signature", "text"), (8, 4, "revision", "<I"), (12, 4, "header_size", "<I"),
              (16, 4, "header_crc32", "<I"), (24, 8, "my_lba", "<Q"),
              (32, 8, "alternate_lba", "<Q"), (40, 8, "first_usable_lba", "<Q"),
              (48, 8, "last_usable_lba", "<Q"), (56, 16, "disk_guid", "guid"),
              (72, 8, "partition_entry_lba", "<Q"), (80, 4, "num_partition_entries", "<I"),
              (84, 4, "sizeof_partition_entry", "<I"),
              (88, 4, "partition_entry_array_crc32", "<I")]
GPT_ENTRY = [(0, 16, "partition_type_guid", "guid"), (16, 16, "unique_partition_guid", "guid"),
             (32, 8, "starting_lba", "<Q"), (40, 8, "ending_lba", "<Q"),
             (48, 8, "attributes", "<Q"), (56, 72, "partition_name", "utf16")]
# ext2/3/4 superblock (e2fsprogs lib/ext2fs/ext2_fs.h), the fields people look at
EXT_SUPERBLOCK = [
    (0x00, 4, "s_inodes_count", "<I"), (0x04, 4, "s_blocks_count_lo", "<I"),
    (0x08, 4, "s_r_blocks_count_lo", "<I"), (0x0C, 4, "s_free_blocks_count_lo", "<I"),
    (0x10, 4, "s_free_inodes_count", "<I"), (0x14, 4, "s_first_data_block", "<I"),
    (0x18, 4, "s_log_block_size", "<I"), (0x20, 4, "s_blocks_per_group", "<I"),
    (0x28, 4, "s_inodes_per_group", "<I"), (0x2C, 4, "s_mtime", "<I"),
    (0x30, 4, "s_wtime", "<I"), (0x34, 2, "s_mnt_count", "<H"),
    (0x38, 2, "s_magic", "<H"), (0x3A, 2, "s_state", "<H"), (0x4C, 4, "s_rev_level", "<I"),
    (0x54, 4, "s_first_ino", "<I"), (0x58, 2, "s_inode_size", "<H"),
    (0x5C, 4, "s_feature_compat", "<I"), (0x60, 4, "s_feature_incompat", "<I"),
    (0x64, 4, "s_feature_ro_compat", "<I"), (0x68, 16, "s_uuid", "uuid"),
    (0x78, 16, "s_volume_name", "text"), (0x88, 64, "s_last_mounted", "text"),
    (0xCE, 2, "s_reserved_gdt_blocks", "<H"), (0xE0, 4, "s_journal_inum", "<I"),
    (0xFE, 2, "s_desc_size", "<H"), (0x3FC, 4, "s_checksum", "<I")]
FAT_BOOT = [(0, 3, "BS_jmpBoot", "bytes"), (3, 8, "BS_OEMName", "text"),
            (11, 2, "BPB_BytsPerSec", "<H"), (13, 1, "BPB_SecPerClus", "B"),
            (14, 2, "BPB_RsvdSecCnt", "<H"), (16, 1, "BPB_NumFATs", "B"),
            (17, 2, "BPB_RootEntCnt", "<H"), (19, 2, "BPB_TotSec16", "<H"),
            (21, 1, "BPB_Media", "B"), (22, 2, "BPB_FATSz16", "<H"),
            (32, 4, "BPB_TotSec32", "<I"), (510, 2, "signature", "<H")]
FAT32_EXT = [(36, 4, "BPB_FATSz32", "<I"), (44, 4, "BPB_RootClus", "<I"),
             (67, 4, "BS_VolID", "<I"), (71, 11, "BS_VolLab", "text"),
             (82, 8, "BS_FilSysType", "text")]
FAT16_EXT = [(39, 4, "BS_VolID", "<I"), (43, 11, "BS_VolLab", "text"),
             (54, 8, "BS_FilSysType", "text")]
NTFS_BOOT = [(3, 8, "OEM ID", "text"), (11, 2, "bytes per sector", "<H"),
             (13, 1, "sectors per cluster", "B"), (40, 8, "total sectors", "<Q"),
             (48, 8, "MFT cluster", "<Q"), (56, 8, "MFT mirror cluster", "<Q"),
             (64, 1, "clusters per MFT record", "b"), (72, 8, "volume serial number", "<Q"),
             (510, 2, "signature", "<H")]
XFS_SUPERBLOCK = [(0, 4, "sb_magicnum", "text"), (4, 4, "sb_blocksize", ">I"),
                  (8, 8, "sb_dblocks", ">Q"), (32, 16, "sb_uuid", "uuid"),
                  (48, 8, "sb_logstart", ">Q"), (56, 8, "sb_rootino", ">Q"),
                  (84, 4, "sb_agblocks", ">I"), (88, 4, "sb_agcount", ">I"),
                  (96, 4, "sb_logblocks", ">I"), (102, 2, "sb_sectsize", ">H"),
                  (104, 2, "sb_inodesize", ">H"), (108, 12, "sb_fname", "text"),
                  (128, 8, "sb_icount", ">Q"), (136, 8, "sb_ifree", ">Q")]


def _value(raw: bytes, kind: str) -> str:
    if kind == "guid":
        return str(uuid.UUID(bytes_le=raw)).upper()
    if kind == "uuid":
        return str(uuid.UUID(bytes=raw))
    if kind == "text":
        return raw.split(b"\0", 1)[0].decode("latin-1").rstrip()
    if kind == "utf16":
        return raw.decode("utf-16-le", "replace").split("\0", 1)[0]
    if kind == "bytes":
        return raw.hex(" ")
    v = struct.unpack(kind, raw)[0]
    return f"{v} ({v:#x})" if v > 9 else str(v)


def layout(data: bytes, base: int, structure: str, table) -> list[Field]:
    """Fields of ``table`` in ``data`` (read at guest offset ``base``)."""
    return [Field(base + o, n, structure, name, _value(data[o:o + n], kind))
            for o, n, name, kind in table if o + n <= len(data)]


def structure_fields(disk, read) -> list[Field]:
    """Every labelled field of ``disk`` (a GuestDisk) read through ``read``, sorted."""
    out: list[Field] = []
    t = disk.table
    for r in t.regions:
        data = read(r.start, min(r.length, 1 << 20))
        if r.label in ("MBR", "protective MBR", "EBR"):
            out += layout(data[:446], r.start, r.label, [(440, 4, "disk signature", "<I")])
            for i in range(4):
                out += layout(data[446 + 16 * i:462 + 16 * i], r.start + 446 + 16 * i,
                              f"{r.label} entry {i + 1}", MBR_ENTRY)
            out += layout(data[510:512], r.start + 510, r.label, [(0, 2, "signature", "<H")])
        elif r.label.endswith("GPT header"):
            out += layout(data, r.start, r.label, GPT_HEADER)
    for p in t.partitions:
        if t.kind == "gpt" and p.entry_offset is not None:
            out += layout(read(p.entry_offset, 128), p.entry_offset,
                          f"GPT entry {p.index}", GPT_ENTRY)
    for gv, fs in disk.filesystems():
        out += _fs_fields(fs, read, gv.volume.start)
    out.sort(key=lambda f: f.offset)
    return out


def _fs_fields(fs, read, start: int) -> list[Field]:
    name = f"{fs.type} superblock"
    if fs.type in ("ext2", "ext3", "ext4"):
        return layout(read(start + 1024, 1024), start + 1024, name, EXT_SUPERBLOCK)
    if fs.type == "vfat":
        bs = read(start, SECTOR)
        ext = FAT32_EXT if bs[22:24] == b"\0\0" else FAT16_EXT
        return layout(bs, start, "FAT boot sector", FAT_BOOT + ext)
    if fs.type == "ntfs":
        return layout(read(start, SECTOR), start, "NTFS boot sector", NTFS_BOOT)
    if fs.type == "xfs":
        return layout(read(start, SECTOR), start, name, XFS_SUPERBLOCK)
    return []


class FieldIndex:
    """Which field holds a guest byte (fields do not overlap)."""

    def __init__(self, fields: list[Field]) -> None:
        self.fields = sorted(fields, key=lambda f: f.offset)
        self._starts = [f.offset for f in self.fields]

    def at(self, offset: int) -> Field | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and offset < self.fields[i].offset + self.fields[i].size:
            return self.fields[i]
        return None
