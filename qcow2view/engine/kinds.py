"""The two questions every view of an image asks, one enum each.

:class:`GuestKind` says what backs a guest range (the guest map's cells, the hex
view's tints, the search's extents); :class:`HostKind` says what a host cluster
holds (the reference walk, the host map and the allocation picture).  The model
and the views re-export these, never re-declare them; colour tables index them
by member.  The spec-level type of one L2 entry stays
:class:`~.clusters.ClusterType` (QEMU's QCow2SubclusterType).
"""

from __future__ import annotations

import enum

import numpy as np


class GuestKind(enum.IntEnum):
    """What a guest range (cluster, byte) reads from (one uint8 each in arrays)."""

    UNALLOCATED = 0   # nothing backs it: reads as zeros
    ZERO = 1          # zero cluster (or a zero range of the backing file)
    DATA = 2          # data in a standard cluster of this image
    COMPRESSED = 3    # data in a compressed cluster of this image
    BACKING = 4       # data from a backing file
    MIXED = 5         # extended L2 cluster whose sub-clusters differ (or are invalid)
    FILE = 6          # raw bytes of the image file itself (the file hex view)
    ERROR = 7         # the read failed (corrupt table, missing backing file)


class HostKind(enum.IntEnum):
    """What a host cluster holds (one uint8 per host cluster)."""

    FREE = 0
    HEADER = 1
    L1_TABLE = 2
    L2_TABLE = 3
    REFCOUNT_TABLE = 4
    REFCOUNT_BLOCK = 5
    SNAPSHOT_TABLE = 6
    SNAPSHOT_L1_TABLE = 7
    BITMAP_DIRECTORY = 8
    BITMAP_TABLE = 9
    BITMAP_DATA = 10
    DATA = 11
    COMPRESSED = 12
    LEAKED = 13
    CORRUPT = 14
    ENCRYPTION_HEADER = 15
    SNAPSHOT_L2_TABLE = 16   # L2 tables only a snapshot references


#: host kinds that are qcow2 metadata (what an overlap check protects)
METADATA_HOST_KINDS = (HostKind.HEADER, HostKind.L1_TABLE, HostKind.L2_TABLE,
                       HostKind.REFCOUNT_TABLE, HostKind.REFCOUNT_BLOCK,
                       HostKind.SNAPSHOT_TABLE, HostKind.SNAPSHOT_L1_TABLE,
                       HostKind.BITMAP_DIRECTORY, HostKind.BITMAP_TABLE,
                       HostKind.ENCRYPTION_HEADER, HostKind.SNAPSHOT_L2_TABLE)

# severity for binning when zoomed out: CORRUPT > LEAKED > everything else > FREE
HOST_KIND_SEVERITY = np.ones(len(HostKind), dtype=np.uint8)
HOST_KIND_SEVERITY[HostKind.FREE] = 0
HOST_KIND_SEVERITY[HostKind.LEAKED] = 2
HOST_KIND_SEVERITY[HostKind.CORRUPT] = 3

# Which kind a summarised guest map entry (or a zoomed-out cell) shows: the most
# significant of its members
GUEST_KIND_RANK = np.zeros(len(GuestKind), dtype=np.uint8)
for _kind, _rank in ((GuestKind.UNALLOCATED, 0), (GuestKind.ZERO, 1), (GuestKind.BACKING, 2),
                     (GuestKind.MIXED, 3), (GuestKind.COMPRESSED, 4), (GuestKind.DATA, 5)):
    GUEST_KIND_RANK[_kind] = _rank

#: guest kinds whose bytes may be non-zero: the ones a search has to read
CONTENT_KINDS = frozenset({GuestKind.DATA, GuestKind.COMPRESSED, GuestKind.BACKING,
                           GuestKind.MIXED, GuestKind.ERROR, GuestKind.FILE})
