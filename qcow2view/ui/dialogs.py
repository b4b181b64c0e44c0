"""Error dialogs and the one excepthook.

Dialogs never block: message boxes are shown with ``open()`` (window-modal),
and :func:`set_hook` lets ``--screenshot`` mode and tests take them instead.
Every message also goes to the log file (:func:`log_path`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

log = logging.getLogger("qcow2view")

Hook = Callable[[str, str, "str | None"], None]
_hook: Hook | None = None
shown: list[tuple[str, str]] = []        # (title, text) of every error shown, newest last


def set_hook(hook: Hook | None) -> None:
    """Route error dialogs to ``hook(title, text, details)`` instead of a message box."""
    global _hook
    _hook = hook


def log_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".local", "state")
    return Path(base) / "qcow2view" / "qcow2view.log"


def setup_logging() -> Path | None:
    """Log warnings and errors to the user's state folder; returns the file or None."""
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # file names need not be UTF-8 (their bytes arrive as lone surrogates)
        handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return path


def error(parent: QWidget | None, title: str, text: str,
          details: str | None = None) -> QMessageBox | None:
    """Tell the user about an error without blocking the event loop."""
    shown.append((title, text))
    log.error("%s: %s", title, text)
    if _hook is not None:
        _hook(title, text, details)
        return None
    box = QMessageBox(QMessageBox.Critical, title, text, QMessageBox.Ok, parent)
    box.setObjectName("qcow2view-error")
    box.setTextInteractionFlags(Qt.TextSelectableByMouse)
    if details:
        box.setDetailedText(details)
    box.setAttribute(Qt.WA_DeleteOnClose)
    box.open()
    return box


def open_message_boxes() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets()
            if isinstance(w, QMessageBox) and w.isVisible()]


class ExceptHook(QObject):
    """sys.excepthook + threading.excepthook: a dialog and a log entry, never a crash."""

    caught = Signal(str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.caught.connect(self._show)     # queued when raised in another thread
        self._old_sys = None
        self._old_thread = None

    def install(self) -> None:
        self._old_sys, self._old_thread = sys.excepthook, threading.excepthook
        sys.excepthook = self.handle
        threading.excepthook = lambda a: self.handle(a.exc_type, a.exc_value, a.exc_traceback)

    def uninstall(self) -> None:
        if self._old_sys is not None:
            sys.excepthook = self._old_sys
            threading.excepthook = self._old_thread
            self._old_sys = self._old_thread = None

    def handle(self, etype, value, tb) -> None:
        if issubclass(etype, KeyboardInterrupt):
            app = QApplication.instance()
            if app is not None:
                app.quit()
            return
        details = "".join(traceback.format_exception(etype, value, tb))
        log.error("unexpected error\n%s", details)
        self.caught.emit(f"{etype.__name__}: {value}", details)

    def _show(self, summary: str, details: str) -> None:
        where = log_path()
        error(QApplication.activeWindow(), "Unexpected error",
              f"qcow2view hit an unexpected error and carries on:\n\n{summary}\n\n"
              f"The details are in {where}.", details)
