"""Encryption headers, shown but never used: guest data of encrypted images is
not readable here (spec: "Full disk encryption header pointer"; the LUKS1
on-disk format that QEMU's crypto/block-luks.c writes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import CorruptImageError

LUKS_MAGIC = b"LUKS\xba\xbe"
LUKS_HEADER_SIZE = 592
LUKS_KEY_SLOTS = 8
LUKS_SLOT_ENABLED = 0x00AC71F3
LUKS_SECTOR = 512
_FIXED = struct.Struct(">6sH32s32s32sII20s32sI40s")
_SLOT = struct.Struct(">II32sII")


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


@dataclass(frozen=True)
class LuksKeySlot:
    index: int
    offset: int              # file offset of this slot's header bytes
    active: bool
    iterations: int
    key_offset: int          # bytes from the start of the LUKS header
    stripes: int


@dataclass(frozen=True)
class LuksHeader:
    """A LUKS1 header, named as ``qemu-img info`` reports it."""

    offset: int              # file offset of the header (the FDE extension's offset)
    version: int
    cipher_name: str
    cipher_mode_spec: str    # e.g. "xts-plain64", "cbc-essiv:sha256"
    hash_alg: str
    payload_offset: int      # bytes from the start of the LUKS header
    key_bytes: int
    master_key_iters: int
    uuid: str
    slots: tuple[LuksKeySlot, ...]

    @property
    def cipher_mode(self) -> str:
        return self.cipher_mode_spec.split("-", 1)[0]

    @property
    def ivgen_alg(self) -> str:
        rest = self.cipher_mode_spec.split("-", 1)[1] if "-" in self.cipher_mode_spec else ""
        return rest.split(":", 1)[0]

    @property
    def ivgen_hash_alg(self) -> str | None:
        rest = self.cipher_mode_spec.split("-", 1)[1] if "-" in self.cipher_mode_spec else ""
        return rest.split(":", 1)[1] if ":" in rest else None

    @property
    def cipher_alg(self) -> str:
        # XTS keys hold two cipher keys; QEMU names the cipher by one of them
        bits = self.key_bytes * 8 // (2 if self.cipher_mode == "xts" else 1)
        return f"{self.cipher_name}-{bits}"


def parse_luks_header(buf: bytes, offset: int) -> LuksHeader:
    """Decode the LUKS1 header in ``buf``, read at file offset ``offset``."""
    if len(buf) < LUKS_HEADER_SIZE or buf[:6] != LUKS_MAGIC:
        raise CorruptImageError("no LUKS header where the encryption extension points",
                                structure="LUKS header", offset=offset)
    (_magic, version, cipher, mode, hash_spec, payload, key_bytes, _digest, _salt,
     mk_iters, uuid) = _FIXED.unpack_from(buf, 0)
    slots = []
    for i in range(LUKS_KEY_SLOTS):
        at = _FIXED.size + i * _SLOT.size
        active, iters, _ksalt, key_off, stripes = _SLOT.unpack_from(buf, at)
        slots.append(LuksKeySlot(i, offset + at, active == LUKS_SLOT_ENABLED, iters,
                                 key_off * LUKS_SECTOR, stripes))
    return LuksHeader(offset, version, _text(cipher), _text(mode), _text(hash_spec),
                      payload * LUKS_SECTOR, key_bytes, mk_iters, _text(uuid), tuple(slots))
