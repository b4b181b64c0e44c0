"""Partition type names, as fdisk (MBR ids) and sgdisk (GPT type GUIDs) print them."""

from __future__ import annotations

#: MBR system ids, named as util-linux fdisk names them
MBR_TYPES: dict[int, str] = {
    0x00: "Empty", 0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16",
    0x07: "HPFS/NTFS/exFAT", 0x0b: "W95 FAT32", 0x0c: "W95 FAT32 (LBA)",
    0x0e: "W95 FAT16 (LBA)", 0x0f: "W95 Ext'd (LBA)", 0x11: "Hidden FAT12",
    0x12: "Compaq diagnostics", 0x14: "Hidden FAT16 <3", 0x16: "Hidden FAT16",
    0x17: "Hidden HPFS/NTF", 0x1b: "Hidden W95 FAT3", 0x1c: "Hidden W95 FAT3",
    0x1e: "Hidden W95 FAT1", 0x27: "Hidden NTFS Win", 0x42: "SFS", 0x82: "Linux swap / Solaris",
    0x83: "Linux", 0x85: "Linux extended", 0x86: "NTFS volume set", 0x87: "NTFS volume set",
    0x88: "Linux plaintext", 0x8e: "Linux LVM", 0xa5: "FreeBSD", 0xa6: "OpenBSD",
    0xa8: "Darwin UFS", 0xa9: "NetBSD", 0xab: "Darwin boot", 0xaf: "HFS / HFS+",
    0xbe: "Solaris boot", 0xbf: "Solaris", 0xda: "Non-FS data", 0xdf: "BootIt",
    0xee: "GPT", 0xef: "EFI (FAT-12/16/32)", 0xfb: "VMware VMFS", 0xfc: "VMware VMKCORE",
    0xfd: "Linux raid autodetect",
}

EXTENDED_IDS = frozenset({0x05, 0x0f, 0x85})

#: GPT partition type GUIDs (upper case, as sgdisk prints them), named as sgdisk names them
GPT_TYPES: dict[str, str] = {
    "00000000-0000-0000-0000-000000000000": "Unused entry",
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI system partition",
    "21686148-6449-6E6F-744E-656564454649": "BIOS boot partition",
    "024DEE41-33E7-11D3-9D69-0008C781F39F": "MBR partition scheme",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
    "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux /home",
    "3B8F8425-20E0-4F3B-907F-1A25A76F98E8": "Linux /srv",
    "BC13C2FF-59E6-4262-A352-B275FD6F7172": "Freedesktop $BOOT",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux x86-64 root (/)",
    "44479540-F297-41B2-9AF7-D131D5F0458A": "Linux x86 root (/)",
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux ARM64 root (/)",
    "4D21B016-B534-45C2-A9FB-5C16E091FD2D": "Linux /var",
    "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1": "Linux /var/tmp",
    "CA7D7CCB-63ED-4C53-861C-1742536059CC": "Linux LUKS",
    "8DA63339-0007-60C0-C436-083AC8230908": "Linux reserved",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows RE",
    "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3": "Windows LDM metadata",
    "AF9B60A0-1431-4F62-BC68-3311714A69AD": "Windows LDM data",
    "48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS/HFS+",
    "7C3457EF-0000-11AA-AA11-00306543ECAC": "Apple APFS",
    "516E7CB4-6ECF-11D6-8FF8-00022D09712B": "FreeBSD disklabel",
    "83BD6B9D-7F41-11DC-BE0B-001560B84F0F": "FreeBSD boot",
    "516E7CB6-6ECF-11D6-8FF8-00022D09712B": "FreeBSD UFS",
    "6A898CC3-1DD2-11B2-99A6-080020736631": "Solaris /usr & Mac ZFS",
}


def mbr_type_name(type_id: int) -> str:
    return MBR_TYPES.get(type_id, "unknown")


def gpt_type_name(guid: str) -> str:
    return GPT_TYPES.get(guid.upper(), "Unknown")
