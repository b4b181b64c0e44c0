"""What the reference walk tells about host clusters: the kinds of cluster it
tells apart (values shared with maps.HostKind, kept here so the walk does not
import the map module), a finding, and how many findings it lists."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_FINDINGS = 10_000          # individual findings kept; the counts stay exact
MAX_OVERLAPS = 100_000         # clusters remembered as metadata overlaps

# Host cluster kinds (values shared with maps.HostKind; kept here so the
# scanner does not import the map module).
K_FREE, K_HEADER, K_L1, K_L2, K_REFT, K_REFB = 0, 1, 2, 3, 4, 5
K_SNAPT, K_SNAPL1, K_BMDIR, K_BMTABLE, K_BMDATA = 6, 7, 8, 9, 10
K_DATA, K_COMPRESSED, K_LEAKED, K_CORRUPT, K_CRYPT, K_SNAPL2 = 11, 12, 13, 14, 15, 16
METADATA_KINDS = (K_HEADER, K_L1, K_L2, K_REFT, K_REFB, K_SNAPT, K_SNAPL1, K_BMDIR,
                  K_BMTABLE, K_CRYPT, K_SNAPL2)
_META = np.zeros(32, dtype=bool)
_META[list(METADATA_KINDS)] = True


@dataclass
class Finding:
    """One problem the check found, at one host cluster."""

    kind: str                    # "leak", "refcount_too_low", "refcount_zero", ...
    cluster: int                 # host cluster index
    refcount: int                # on disk
    references: int              # found
    message: str                 # names the structure and the offset
    entry_offset: int | None     # file offset of the table entry at fault, if any
    severity: str                # "corruption" | "leak" | "check_error"
