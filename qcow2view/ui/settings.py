"""QSettings in one place (organization and application "qcow2view"), and recent files."""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

MAX_RECENT = 10


def settings() -> QSettings:
    return QSettings(QSettings.IniFormat, QSettings.UserScope, "qcow2view", "qcow2view")


def recent_files() -> list[str]:
    v = settings().value("recentFiles", [])
    if isinstance(v, str):
        v = [v] if v else []
    return [p for p in (v or []) if isinstance(p, str)]


def add_recent(path: str) -> list[str]:
    path = os.path.abspath(path)
    files = [path] + [p for p in recent_files() if p != path]
    files = files[:MAX_RECENT]
    settings().setValue("recentFiles", files)
    return files


def clear_recent() -> None:
    settings().setValue("recentFiles", [])
