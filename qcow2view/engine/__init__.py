"""The qcow2view image engine: pure Python and numpy, no Qt.

Public API: :func:`open_image`, :class:`Image`, the ``Qcow2Error`` family.
"""

from .errors import (BackingFileError, CancelledError, CorruptImageError, DataFileError,
                     EncryptedImageError, ImageInUseError, NotQcow2Error, Qcow2Error,
                     ReadOnlyError, RequestError, TruncatedImageError,
                     UnsupportedFeatureError)
from .clusters import ClusterType
from .header import Header
from .image import BackingInfo, GuestMapping, Image, L1Table, L2Table, open_image
from .check import CheckResult, Finding
from .kinds import HOST_KIND_SEVERITY, GuestKind, HostKind
from .maps import GuestMap, HostMap, Owner
from .create import create_image, validate_create_options

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
