"""The qcow2view image engine: pure Python and numpy, no Qt.

Public API: :func:`open_image`, :class:`Image`, the ``Qcow2Error`` family.
"""

import importlib

from .errors import (BackingFileError, CancelledError, CorruptImageError, DataFileError,
                     EncryptedImageError, ImageInUseError, NotQcow2Error, Qcow2Error,
                     ReadOnlyError, RequestError, TruncatedImageError,
                     UnsupportedFeatureError)
from .clusters import ClusterType
from .header import Header
from .image import BackingInfo, GuestMapping, Image, L1Table, L2Table, open_image
from .kinds import HOST_KIND_SEVERITY, GuestKind, HostKind

# loaded on first use (PEP 562): a terminal command pays only for what it runs
_LAZY = {"CheckResult": "check", "Finding": "refscan", "GuestMap": "guestmap",
         "HostMap": "maps", "Owner": "maps", "create_image": "create",
         "validate_create_options": "create"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "open_image", "Image", "create_image", "validate_create_options",
    "Header", "ClusterType", "BackingInfo", "GuestMapping",
    "L1Table", "L2Table",
    "CheckResult", "Finding", "HostKind", "HOST_KIND_SEVERITY", "Owner", "HostMap",
    "GuestKind", "GuestMap",
    "Qcow2Error", "NotQcow2Error", "CorruptImageError", "TruncatedImageError",
    "UnsupportedFeatureError", "EncryptedImageError", "BackingFileError", "DataFileError",
    "RequestError", "ReadOnlyError", "ImageInUseError", "CancelledError",
]
