"""Partition tables: MBR (primary, extended, logical, protective 0xEE) and GPT.

Our own parser, because no library recovers from a damaged primary GPT: the
header and entry-array CRC32s are checked, and a damaged primary falls back to
the backup at the end of the disk, as ``sgdisk`` recovers, with the damage listed
in :attr:`PartitionTable.problems`.  Every count and size read from the disk is
bounded before it sizes a read.  Offsets are guest byte offsets.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field

from ..engine.errors import Qcow2Error
from .parttypes import EXTENDED_IDS, gpt_type_name, mbr_type_name

SECTOR = 512
GPT_SIGNATURE = b"EFI PART"
MAX_GPT_ENTRIES_BYTES = 1 << 20     # sgdisk and the kernel cap the array far below this
MAX_LOGICAL = 128                   # EBR chain length we follow at most


@dataclass(frozen=True)
class Partition:
    """One partition, with where its table entry lies on the guest disk."""

    index: int                  # 1-based as in the table (5.. for logical); 0: whole disk
    start: int                  # guest byte offset
    size: int                   # bytes
    type: str                   # type name as fdisk/sgdisk print it
    type_id: str                # "0x83" (MBR) or the type GUID (GPT)
    name: str | None = None     # GPT partition name
    guid: str | None = None     # GPT unique partition GUID
    entry_offset: int | None = None   # guest offset of the table entry
    kind: str = "primary"       # primary | extended | logical | gpt | whole disk
    bootable: bool = False
    attributes: int = 0         # GPT attribute bits

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Region:
    """A labelled guest byte range (a table, a header, a filesystem structure)."""

    start: int
    length: int
    label: str


@dataclass
class PartitionTable:
    kind: str | None                    # "gpt" | "mbr" | None
    sector_size: int = SECTOR
    partitions: list[Partition] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)   # the table's own bytes
    disk_guid: str | None = None
    hybrid_mbr: bool = False
    used_backup_gpt: bool = False


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)).upper()


# -- GPT ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GptHeader:
    offset: int
    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: str
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc32: int


def parse_gpt_header(sector: bytes, offset: int) -> tuple[GptHeader | None, str | None]:
    """The header in ``sector`` (read at guest ``offset``), or None and why not."""
    if sector[:8] != GPT_SIGNATURE:
        return None, "no GPT signature"
    hsize, hcrc = struct.unpack_from("<II", sector, 12)
    if not 92 <= hsize <= len(sector):
        return None, f"header size {hsize} out of range"
    raw = bytearray(sector[:hsize])
    raw[16:20] = b"\0\0\0\0"
    if zlib.crc32(raw) != hcrc:
        return None, "header CRC32 wrong"
    my, alt, first, last = struct.unpack_from("<QQQQ", sector, 24)
    elba, n, esize, ecrc = struct.unpack_from("<QIII", sector, 72)
    if esize < 128 or esize % 8 or n * esize > MAX_GPT_ENTRIES_BYTES:
        return None, f"entry array of {n} x {esize} bytes out of range"
    return GptHeader(offset, my, alt, first, last, _guid(sector[56:72]), elba, n, esize,
                     ecrc), None


def _gpt_entries(read, h: GptHeader, ss: int, disk_size: int) -> tuple[list[Partition], str | None]:
    start = h.entries_lba * ss
    length = h.num_entries * h.entry_size
    if start + length > disk_size:
        return [], "entry array lies past the end of the disk"
    arr = read(start, length)
    if zlib.crc32(arr) != h.entries_crc32:
        return [], "entry array CRC32 wrong"
    parts = []
    for i in range(h.num_entries):
        e = arr[i * h.entry_size:(i + 1) * h.entry_size]
        if e[:16] == bytes(16):
            continue
        tguid = _guid(e[:16])
        first, last, attrs = struct.unpack_from("<QQQ", e, 32)
        name = e[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        size = (last - first + 1) * ss if last >= first else 0
        parts.append(Partition(i + 1, first * ss, size, gpt_type_name(tguid), tguid,
                               name, _guid(e[16:32]), start + i * h.entry_size, "gpt",
                               False, attrs))
    return parts, None


def _check_extents(parts: list[Partition], disk_size: int, table: PartitionTable) -> None:
    for p in parts:
        if p.size == 0:
            table.problems.append(f"partition {p.index}: last LBA before its first")
        elif p.start + p.size > disk_size:
            table.problems.append(f"partition {p.index} ends past the end of the disk")


def read_gpt(read, disk_size: int, ss: int, table: PartitionTable) -> bool:
    """Fill ``table`` from the primary GPT or, failing that, the backup."""
    last_lba = disk_size // ss - 1
    primary, why = parse_gpt_header(read(ss, ss), ss)
    parts: list[Partition] = []
    if primary is not None:
        parts, why = _gpt_entries(read, primary, ss, disk_size)
        if why is None:
            table.kind, table.partitions, table.disk_guid = "gpt", parts, primary.disk_guid
            _check_extents(parts, disk_size, table)
            table.regions += [Region(ss, ss, "GPT header"),
                              Region(primary.entries_lba * ss,
                                     primary.num_entries * primary.entry_size,
                                     "GPT partition entries")]
            try:
                _check_backup(read, primary, ss, disk_size, table)
            except Qcow2Error as e:          # e.g. the backing file holding it is missing
                table.problems.append(f"backup GPT unreadable: {e.reason}")
            return True
    # the primary is damaged: try the backup, where the primary says or at the end
    where = [last_lba]
    if primary is not None and 0 < primary.alternate_lba <= last_lba:
        where.insert(0, primary.alternate_lba)
    for lba in where:
        backup, bwhy = parse_gpt_header(read(lba * ss, ss), lba * ss)
        if backup is None:
            continue
        parts, bwhy = _gpt_entries(read, backup, ss, disk_size)
        if bwhy is None:
            table.kind, table.partitions, table.disk_guid = "gpt", parts, backup.disk_guid
            _check_extents(parts, disk_size, table)
            table.used_backup_gpt = True
            table.problems.append(f"primary GPT damaged ({why}); using the backup GPT "
                                  f"at LBA {lba}")
            table.regions += [Region(ss, ss, "GPT header (damaged)"),
                              Region(lba * ss, ss, "backup GPT header"),
                              Region(backup.entries_lba * ss,
                                     backup.num_entries * backup.entry_size,
                                     "backup GPT partition entries")]
            return True
    if primary is not None or why != "no GPT signature":
        table.problems.append(f"GPT unreadable: primary {why}, no valid backup")
    return False


def _check_backup(read, primary: GptHeader, ss: int, disk_size: int,
                  table: PartitionTable) -> None:
    lba = primary.alternate_lba
    if not 0 < lba < disk_size // ss:
        table.problems.append(f"backup GPT header LBA {lba} lies past the end of the disk")
        return
    backup, why = parse_gpt_header(read(lba * ss, ss), lba * ss)
    if backup is None:
        table.problems.append(f"backup GPT header at LBA {lba}: {why}")
        return
    table.regions += [Region(lba * ss, ss, "backup GPT header"),
                      Region(backup.entries_lba * ss, backup.num_entries * backup.entry_size,
                             "backup GPT partition entries")]
    if backup.entries_crc32 != primary.entries_crc32:
        table.problems.append("backup GPT partition entries differ from the primary ones")


# -- MBR ------------------------------------------------------------------------------
def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int, int]] | None:
    """(slot, status, type, lba_start, sectors) of non-empty entries, or None if the
    sector is not an MBR (no 0x55AA, or a status byte other than 0x00/0x80)."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return None
    out = []
    for i in range(4):
        e = sector[446 + 16 * i:462 + 16 * i]
        status, ptype = e[0], e[4]
        if status not in (0, 0x80):
            return None
        start, count = struct.unpack_from("<II", e, 8)
        if ptype and count:
            out.append((i, status, ptype, start, count))
    return out


def read_mbr(read, disk_size: int, table: PartitionTable) -> bool:
    entries = _mbr_entries(read(0, SECTOR))
    if not entries:
        return False
    table.kind = "mbr"
    table.regions.append(Region(0, SECTOR, "MBR"))
    for slot, status, ptype, lba, count in entries:
        start, size = lba * SECTOR, count * SECTOR
        kind = "extended" if ptype in EXTENDED_IDS else "primary"
        if start + size > disk_size:
            table.problems.append(f"partition {slot + 1} ends past the end of the disk")
        table.partitions.append(Partition(slot + 1, start, size, mbr_type_name(ptype),
                                          f"0x{ptype:02x}", None, None, 446 + 16 * slot,
                                          kind, status == 0x80))
        if kind == "extended":
            _read_logical(read, disk_size, lba, table)
    return True


def _read_logical(read, disk_size: int, ext_lba: int, table: PartitionTable) -> None:
    """Follow the EBR chain of the extended partition at ``ext_lba``."""
    seen: set[int] = set()
    ebr = ext_lba
    number = 5
    while number < 5 + MAX_LOGICAL:
        if ebr in seen:
            table.problems.append(f"extended partition: EBR chain loops at LBA {ebr}")
            return
        seen.add(ebr)
        if (ebr + 1) * SECTOR > disk_size:
            table.problems.append(f"extended partition: EBR at LBA {ebr} past the end of the disk")
            return
        entries = _mbr_entries(read(ebr * SECTOR, SECTOR))
        if entries is None:
            table.problems.append(f"extended partition: EBR at LBA {ebr} has no signature")
            return
        table.regions.append(Region(ebr * SECTOR, SECTOR, "EBR"))
        nxt = None
        for slot, status, ptype, lba, count in entries:
            if ptype in EXTENDED_IDS:
                nxt = ext_lba + lba
            else:
                start = (ebr + lba) * SECTOR
                table.partitions.append(Partition(
                    number, start, count * SECTOR, mbr_type_name(ptype), f"0x{ptype:02x}",
                    None, None, ebr * SECTOR + 446 + 16 * slot, "logical", status == 0x80))
                number += 1
        if nxt is None:
            return
        ebr = nxt
    table.problems.append(f"extended partition: more than {MAX_LOGICAL} logical partitions")


# -- the disk -------------------------------------------------------------------------
def read_partition_table(read, disk_size: int, fs_at_zero=None) -> PartitionTable:
    """The partition table of a disk read through ``read(offset, length)``.

    ``fs_at_zero()`` tells whether a filesystem starts at byte 0 (a FAT boot sector
    also ends in 0x55AA and must not be taken for an MBR).  With no table the result
    has ``kind=None`` and no partitions; the caller adds the whole-disk entry.
    """
    table = PartitionTable(None)
    if disk_size < 2 * SECTOR:
        return table
    mbr = read(0, SECTOR)
    entries = _mbr_entries(mbr) or []
    protective = [e for e in entries if e[2] == 0xEE]
    failed: list[str] = []            # why the GPT tried first (512-byte sectors) failed
    for ss in (SECTOR, 4096):
        if ss != SECTOR and disk_size < 2 * ss:
            break
        if read(ss, 8) == GPT_SIGNATURE or (protective and ss == SECTOR):
            attempt = PartitionTable(None)
            if not read_gpt(read, disk_size, ss, attempt):
                failed = failed or attempt.problems
                continue
            attempt.sector_size = ss
            attempt.regions.insert(0, Region(0, SECTOR, "protective MBR"))
            others = [e for e in entries if e[2] != 0xEE]
            if others:
                attempt.hybrid_mbr = True
                attempt.problems.append(
                    "hybrid MBR: the MBR also lists partitions "
                    + ", ".join(f"{e[0] + 1} (0x{e[2]:02x})" for e in others))
            elif not protective:
                attempt.problems.append("GPT without a protective MBR entry")
            return attempt
    table.problems.extend(failed)
    if protective:
        table.problems.append("protective MBR (0xEE) but no readable GPT")
        table.kind = "mbr"
        table.regions.append(Region(0, SECTOR, "MBR"))
        return table
    if entries and fs_at_zero is not None and fs_at_zero():
        return table
    read_mbr(read, disk_size, table)
    return table
