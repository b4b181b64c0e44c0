"""The QCOW2 header (``docs/interop/qcow2.rst``, "Header").

Field names are the spec's.  :data:`HEADER_FIELDS` gives each field's byte
offset and width so views can link a field to the bytes that hold it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields, replace

from .errors import CorruptImageError, NotQcow2Error, UnsupportedFeatureError

QCOW_MAGIC = b"QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104       # without compression_type
V3_HEADER_LENGTH_CT = 112    # with compression_type and its padding
MAX_BACKING_FILE_NAME = 1023

# Limits QEMU enforces on open (block/qcow2.h); used so that an untrusted
# field never sizes an allocation.
QCOW_MAX_L1_SIZE = 32 * 1024 * 1024          # bytes of active L1 table
QCOW_MAX_REFTABLE_SIZE = 8 * 1024 * 1024     # bytes of refcount table
QCOW_MAX_SNAPSHOTS = 65536
QCOW_MAX_SNAPSHOTS_SIZE = 64 * 1024 * 1024   # bytes of snapshot table
QCOW_MAX_BITMAPS = 65535

# Feature bits, named as the spec and qemu-img name them.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE
                  | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
AUTOCLEAR_KNOWN = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW

# (type, bit) -> name, as in QEMU's feature name table
FEATURE_NAMES: dict[tuple[int, int], str] = {
    (0, 0): "dirty bit",
    (0, 1): "corrupt bit",
    (0, 2): "external data file",
    (0, 3): "compression type",
    (0, 4): "extended L2 entries",
    (1, 0): "lazy refcounts",
    (2, 0): "bitmaps",
    (2, 1): "raw external data",
}
FEATURE_INCOMPATIBLE, FEATURE_COMPATIBLE, FEATURE_AUTOCLEAR = 0, 1, 2

CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2
CRYPT_METHODS = {CRYPT_NONE: "none", CRYPT_AES: "aes", CRYPT_LUKS: "luks"}
COMPRESSION_ZLIB, COMPRESSION_ZSTD = 0, 1
COMPRESSION_TYPES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}


@dataclass(frozen=True)
class HeaderField:
    name: str
    offset: int
    size: int
    fmt: str
    min_version: int = 2


HEADER_FIELDS: tuple[HeaderField, ...] = (
    HeaderField("magic", 0, 4, "4s"),
    HeaderField("version", 4, 4, ">I"),
    HeaderField("backing_file_offset", 8, 8, ">Q"),
    HeaderField("backing_file_size", 16, 4, ">I"),
    HeaderField("cluster_bits", 20, 4, ">I"),
    HeaderField("size", 24, 8, ">Q"),
    HeaderField("crypt_method", 32, 4, ">I"),
    HeaderField("l1_size", 36, 4, ">I"),
    HeaderField("l1_table_offset", 40, 8, ">Q"),
    HeaderField("refcount_table_offset", 48, 8, ">Q"),
    HeaderField("refcount_table_clusters", 56, 4, ">I"),
    HeaderField("nb_snapshots", 60, 4, ">I"),
    HeaderField("snapshots_offset", 64, 8, ">Q"),
    HeaderField("incompatible_features", 72, 8, ">Q", 3),
    HeaderField("compatible_features", 80, 8, ">Q", 3),
    HeaderField("autoclear_features", 88, 8, ">Q", 3),
    HeaderField("refcount_order", 96, 4, ">I", 3),
    HeaderField("header_length", 100, 4, ">I", 3),
    HeaderField("compression_type", 104, 1, ">B", 3),
)
FIELD_BY_NAME = {f.name: f for f in HEADER_FIELDS}


def _field(name: str) -> dict:
    """``structure`` and ``offset`` of an error about header field ``name``."""
    return {"structure": name, "offset": FIELD_BY_NAME[name].offset}


@dataclass(frozen=True)
class Header:
    """The decoded header.  ``offset`` is always 0: the header starts the file."""

    magic: bytes
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LENGTH
    compression_type: int = COMPRESSION_ZLIB
    # bytes between the known fields and header_length, kept verbatim
    unknown_header_bytes: bytes = b""
    offset: int = 0

    # -- derived ------------------------------------------------------------------
    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    @property
    def l2_entry_size(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_bits(self) -> int:
        return self.cluster_bits - (4 if self.extended_l2 else 3)

    @property
    def l2_size(self) -> int:
        """Entries per L2 table."""
        return 1 << self.l2_bits

    @property
    def dirty(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_CORRUPT)

    @property
    def lazy_refcounts(self) -> bool:
        return bool(self.compatible_features & COMPAT_LAZY_REFCOUNTS)

    @property
    def has_data_file(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_DATA_FILE)

    @property
    def data_file_raw(self) -> bool:
        return bool(self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW)

    @property
    def compat(self) -> str:
        """The ``compat`` option value as ``qemu-img info`` prints it."""
        return "0.10" if self.version == 2 else "1.1"

    @property
    def compression_type_name(self) -> str:
        return COMPRESSION_TYPES.get(self.compression_type, f"unknown ({self.compression_type})")

    @property
    def extensions_offset(self) -> int:
        """Where header extensions start (v2 images have none of their own length field)."""
        return self.header_length if self.version >= 3 else V2_HEADER_LENGTH

    def field_value(self, name: str) -> int | bytes:
        return getattr(self, name)

    # -- (de)serialisation ----------------------------------------------------------
    @classmethod
    def parse(cls, buf: bytes, *, file_size: int) -> "Header":
        """Decode and validate a header from the start of a file."""
        if len(buf) < 4 or buf[:4] != QCOW_MAGIC:
            raise NotQcow2Error("not a QCOW2 image (magic is not QFI\\xfb)",
                                structure="header magic", offset=0)
        if len(buf) < V2_HEADER_LENGTH:
            raise NotQcow2Error(f"file too short for a QCOW2 header ({len(buf)} bytes)",
                                structure="header", offset=0)
        vals = {}
        for f in HEADER_FIELDS[:13]:
            vals[f.name] = struct.unpack_from(f.fmt, buf, f.offset)[0]
        version = vals["version"]
        if version not in (2, 3):
            raise UnsupportedFeatureError(f"unsupported QCOW version {version}",
                                          structure="header version",
                                          offset=FIELD_BY_NAME["version"].offset)
        unknown = b""
        if version == 3:
            if len(buf) < V3_HEADER_LENGTH:
                raise CorruptImageError("file too short for a version 3 header",
                                        structure="header", offset=0)
            for f in HEADER_FIELDS[13:18]:
                vals[f.name] = struct.unpack_from(f.fmt, buf, f.offset)[0]
            hl = vals["header_length"]
            if hl < V3_HEADER_LENGTH:
                raise CorruptImageError(f"header_length {hl} is less than 104",
                                        **_field("header_length"))
            cluster_size = 1 << vals["cluster_bits"] if 9 <= vals["cluster_bits"] <= 21 else 0
            if cluster_size and hl > cluster_size:
                raise CorruptImageError(f"header_length {hl} exceeds the cluster size",
                                        **_field("header_length"))
            if hl > len(buf):
                raise CorruptImageError(f"header_length {hl} reaches past the end of the file",
                                        **_field("header_length"))
            if hl > V3_HEADER_LENGTH:
                vals["compression_type"] = buf[104]
                unknown = bytes(buf[105:hl])
            else:
                vals["compression_type"] = COMPRESSION_ZLIB
        else:
            vals.update(incompatible_features=0, compatible_features=0, autoclear_features=0,
                        refcount_order=4, header_length=V2_HEADER_LENGTH,
                        compression_type=COMPRESSION_ZLIB)
        h = cls(**vals, unknown_header_bytes=unknown)
        h.validate(file_size)
        return h

    def validate(self, file_size: int) -> None:
        """Refuse fields that are out of range, as QEMU's qcow2_do_open does."""
        if not MIN_CLUSTER_BITS <= self.cluster_bits <= MAX_CLUSTER_BITS:
            raise CorruptImageError(
                f"cluster_bits {self.cluster_bits} is outside 9..21",
                **_field("cluster_bits"))
        cs = self.cluster_size
        if self.refcount_order > 6:
            raise CorruptImageError(f"refcount_order {self.refcount_order} exceeds 6",
                                    **_field("refcount_order"))
        if self.crypt_method not in CRYPT_METHODS:
            raise CorruptImageError(f"invalid crypt_method {self.crypt_method}",
                                    **_field("crypt_method"))
        if self.version == 3:
            if self.compression_type not in COMPRESSION_TYPES:
                raise UnsupportedFeatureError(
                    f"unknown compression_type {self.compression_type}",
                    **_field("compression_type"))
            has_bit = bool(self.incompatible_features & INCOMPAT_COMPRESSION)
            if self.compression_type != COMPRESSION_ZLIB and not has_bit:
                raise CorruptImageError(
                    "compression_type is not zlib but the compression type "
                    "incompatible bit is clear", **_field("incompatible_features"))
            if self.compression_type == COMPRESSION_ZLIB and has_bit:
                raise CorruptImageError(
                    "compression type bit is set but compression_type is zlib",
                    **_field("incompatible_features"))
            if self.extended_l2 and self.cluster_bits < 14:
                raise CorruptImageError(
                    "extended L2 entries need clusters of at least 16 KiB",
                    **_field("incompatible_features"))
        if self.backing_file_offset:
            if self.backing_file_offset > cs or self.backing_file_size > MAX_BACKING_FILE_NAME \
                    or self.backing_file_offset + self.backing_file_size > min(cs, file_size):
                raise CorruptImageError(
                    f"backing file name ({self.backing_file_size} bytes at "
                    f"{self.backing_file_offset:#x}) lies outside the first cluster",
                    **_field("backing_file_offset"))
        if self.size > (1 << 63) - 1:
            raise CorruptImageError("virtual size does not fit in 63 bits",
                                    **_field("size"))
        # active L1 table
        if self.l1_size > QCOW_MAX_L1_SIZE // 8:
            raise CorruptImageError(
                f"l1_size {self.l1_size} exceeds QEMU's limit of {QCOW_MAX_L1_SIZE // 8}",
                **_field("l1_size"))
        needed = -(-self.size // (cs * self.l2_size)) if self.size else 0
        if self.l1_size < needed:
            raise CorruptImageError(
                f"L1 table too small: {self.l1_size} entries for a {self.size}-byte disk "
                f"needs {needed}", **_field("l1_size"))
        if self.l1_size:
            self._check_table("l1_table_offset", self.l1_table_offset, self.l1_size * 8,
                              file_size)
        if self.refcount_table_clusters > QCOW_MAX_REFTABLE_SIZE // cs:
            raise CorruptImageError(
                f"refcount_table_clusters {self.refcount_table_clusters} exceeds QEMU's limit",
                **_field("refcount_table_clusters"))
        if self.refcount_table_clusters == 0:
            raise CorruptImageError("the refcount table has no clusters",
                                    **_field("refcount_table_clusters"))
        self._check_table("refcount_table_offset", self.refcount_table_offset,
                          self.refcount_table_clusters * cs, file_size)
        if self.nb_snapshots > QCOW_MAX_SNAPSHOTS:
            raise CorruptImageError(
                f"nb_snapshots {self.nb_snapshots} exceeds QEMU's limit of {QCOW_MAX_SNAPSHOTS}",
                **_field("nb_snapshots"))
        if self.nb_snapshots:
            # each entry is at least 40 bytes
            self._check_table("snapshots_offset", self.snapshots_offset,
                              self.nb_snapshots * 40, file_size)

    def _check_table(self, name: str, offset: int, nbytes: int, file_size: int) -> None:
        if offset & (self.cluster_size - 1):
            raise CorruptImageError(f"{name} {offset:#x} is not cluster aligned",
                                    **_field(name))
        if offset == 0 or offset + nbytes > file_size:
            raise CorruptImageError(
                f"{name} {offset:#x} (+{nbytes} bytes) lies outside the file "
                f"({file_size:#x} bytes)", **_field(name))

    def pack(self) -> bytes:
        """Encode to ``header_length`` bytes (72 for v2)."""
        out = bytearray()
        for f in HEADER_FIELDS:
            if f.min_version > self.version:
                break
            if f.name == "compression_type" and self.header_length <= V3_HEADER_LENGTH:
                break
            out += struct.pack(f.fmt, getattr(self, f.name))
        if self.version >= 3 and self.header_length > V3_HEADER_LENGTH:
            out += self.unknown_header_bytes
            out += bytes(max(0, self.header_length - len(out)))
        return bytes(out)

    def replace(self, **changes) -> "Header":
        return replace(self, **changes)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("unknown_header_bytes", "offset", "magic")}


def header_bytes_needed(probe: bytes) -> int:
    """How many bytes from offset 0 :meth:`Header.parse` needs, judged from a probe:
    a version 3 header_length (at most the largest cluster; parse checks the rest)."""
    if len(probe) >= V3_HEADER_LENGTH and probe[:4] == QCOW_MAGIC \
            and struct.unpack_from(">I", probe, 4)[0] == 3:
        return max(len(probe), min(struct.unpack_from(">I", probe, 100)[0],
                                   1 << MAX_CLUSTER_BITS))
    return len(probe)


def feature_bit_names(kind: int, bits: int, table: dict[tuple[int, int], str] | None = None
                      ) -> list[str]:
    """Names of the set bits, from the image's feature name table or the spec's."""
    names = []
    for bit in range(64):
        if bits >> bit & 1:
            name = (table or {}).get((kind, bit)) or FEATURE_NAMES.get((kind, bit))
            names.append(name or f"unknown bit {bit}")
    return names
