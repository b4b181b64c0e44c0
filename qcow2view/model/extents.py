"""What backs each guest range: the engine's one enum for it (:class:`GuestKind`,
the hex view's tints included) and its extent walk
(:mod:`qcow2view.engine.extents`), re-exported for the model and the views, which
never import the engine."""

from __future__ import annotations

from ..engine.extents import CONTENT_KINDS, GuestKind, extents, find_content, mapping_kind

__all__ = ["CONTENT_KINDS", "GuestKind", "extents", "find_content", "mapping_kind"]
