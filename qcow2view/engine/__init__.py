"""The qcow2view image engine: pure Python and numpy, no Qt.

Public API: :func:`open_image`, :class:`Image`, the ``Qcow2Error`` family.
"""

from .errors import (BackingFileError, CancelledError, CorruptImageError,
                     EncryptedImageError, ImageInUseError, NotQcow2Error, Qcow2Error,
                     ReadOnlyError, RequestError, TruncatedImageError,
                     UnsupportedFeatureError)
from .clusters import ClusterType
from .header import Header
from .image import BackingInfo, GuestMapping, Image, L1Table, L2Table, open_image

__all__ = [
    "open_image", "Image", "Header", "ClusterType", "BackingInfo", "GuestMapping",
    "L1Table", "L2Table",
    "Qcow2Error", "NotQcow2Error", "CorruptImageError", "TruncatedImageError",
    "UnsupportedFeatureError", "EncryptedImageError", "BackingFileError", "RequestError",
    "ReadOnlyError", "ImageInUseError", "CancelledError",
]
