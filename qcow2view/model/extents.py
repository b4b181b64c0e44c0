"""What backs each guest range: the engine's classifier and extent walk
(:mod:`qcow2view.engine.extents`), re-exported for the model and the views, which
never import the engine.  ``ByteKind`` is the engine's :class:`GuestKind`."""

from __future__ import annotations

from ..engine.extents import CONTENT_KINDS, GuestKind, extents, find_content, mapping_kind

ByteKind = GuestKind

__all__ = ["ByteKind", "CONTENT_KINDS", "GuestKind", "extents", "find_content", "mapping_kind"]
