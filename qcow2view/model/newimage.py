"""File > New image, below the dialog: the engine's rules for create options and the
create itself, so the view never reaches into the engine."""

from __future__ import annotations

import os

from ..engine import Qcow2Error
from ..engine.create import create_image, validate_create_options
from ..engine.ops.measure import measure
from .units import human_size


def option_problems(size: int, **options) -> list[str]:
    """What is wrong with these ``create_image`` options (empty: nothing)."""
    return list(validate_create_options(size=size, **options))


def create(path: str | os.PathLike, size: int, *, overwrite: bool = False,
           **options) -> str | None:
    """Create the image; None when it worked, else why not (the engine's or the OS's
    words, no traceback)."""
    try:
        create_image(path, size, overwrite=overwrite, **options)
    except (Qcow2Error, OSError) as e:
        return str(e)
    return None


def space_text(size: int | None, **options) -> str:
    """What the new image takes on disk, as ``qemu-img measure`` says: metadata now,
    and the whole disk once every cluster is written ('' when it cannot be told)."""
    if size is None:
        return ""
    try:
        m = measure(size, options=options)
    except (Qcow2Error, ValueError):
        return ""
    return (f"Takes {human_size(m.required)} now, {human_size(m.fully_allocated)} when "
            "every cluster is written")
