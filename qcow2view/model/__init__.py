"""Model layer: Qt models and documents over the engine (QtCore/QtGui only, no widgets).

Views talk to these classes and never to the engine directly.
"""

from . import qtfix  # noqa: F401 - PySide6 6.12 refcount guards; before any signal is emitted
from .document import ImageDocument, open_error_text
from .workers import running_workers

__all__ = ["ImageDocument", "open_error_text", "running_workers"]
