"""What the reference walk tells about host clusters: which of the host kinds
(:class:`~.kinds.HostKind`) are metadata, a finding, and how many findings it
lists."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .kinds import METADATA_HOST_KINDS

MAX_FINDINGS = 10_000          # individual findings kept; the counts stay exact
MAX_OVERLAPS = 100_000         # clusters remembered as metadata overlaps

METADATA_KINDS = METADATA_HOST_KINDS
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
    # what ``message`` says, as numbers, for the logs that word it qemu-img's way
    # (check_log) so they never parse the message: "l1_index"/"l1_entry",
    # "l2_entry", "reftable_index"/"reftable_entry" (a table entry as the walk read
    # it), "offset"/"size"/"host_kind" (a region past the end of the file),
    # "refcount" (what the COPIED test saw)
    facts: dict[str, int] = field(default_factory=dict)
