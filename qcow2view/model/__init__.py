"""Model layer: Qt models and documents over the engine (QtCore/QtGui only, no widgets).

Views talk to these classes and never to the engine directly.
"""

from . import _pyside_fix  # noqa: F401 - must come before any signal is emitted
from . import qtfix  # noqa: F401 - the same bug drops references to None (void calls)
from .document import ImageDocument, open_error_text
from .workers import running_workers

__all__ = ["ImageDocument", "open_error_text", "running_workers"]
