"""What the window shows with no image open: Open, New image, demo, recent files."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton,
                               QVBoxLayout, QWidget)


class StartPage(QWidget):
    openRequested = Signal()
    newRequested = Signal()
    demoRequested = Signal()
    recentRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("startPage")
        title = QLabel("<span style='font-size:22pt; font-weight:600'>qcow2view</span>")
        icon = QLabel()
        try:
            from ..desktop import icon_path
            icon.setPixmap(QPixmap(str(icon_path(64))))
        except (ImportError, OSError):
            pass
        head = QHBoxLayout()
        head.addWidget(icon)
        head.addWidget(title)
        head.addStretch(1)
        sub = QLabel("Look inside QCOW2 disk images: header, tables, where every cluster "
                     "lives, and the guest disk byte by byte.")
        sub.setWordWrap(True)
        sub.setStyleSheet("color: #546e7a")
        self.open_button = QPushButton("Open image…")
        self.new_button = QPushButton("New image…")
        self.demo_button = QPushButton("Open demo image")
        for b in (self.open_button, self.new_button, self.demo_button):
            b.setMinimumHeight(34)
        self.open_button.setDefault(True)
        self.open_button.clicked.connect(self.openRequested)
        self.new_button.clicked.connect(self.newRequested)
        self.demo_button.clicked.connect(self.demoRequested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.new_button)
        buttons.addWidget(self.demo_button)
        buttons.addStretch(1)
        self.recent = QListWidget()
        self.recent.setObjectName("recentList")
        self.recent.setStyleSheet("QListWidget#recentList::item { padding: 5px 4px; }")
        self.recent.itemActivated.connect(
            lambda it: self.recentRequested.emit(it.data(Qt.UserRole)))
        hint = QLabel("You can also drop .qcow2 files on this window.")
        hint.setStyleSheet("color: #78909c")

        col = QVBoxLayout()
        col.addLayout(head)
        col.addWidget(sub)
        col.addSpacing(12)
        col.addLayout(buttons)
        col.addSpacing(12)
        col.addWidget(QLabel("<b>Recent files</b>"))
        col.addWidget(self.recent, 1)
        col.addWidget(hint)
        box = QWidget()
        box.setLayout(col)
        box.setMaximumWidth(760)
        outer = QHBoxLayout(self)
        outer.addStretch(1)
        outer.addWidget(box, 4)
        outer.addStretch(1)

    def set_recent(self, files: list[str]) -> None:
        self.recent.clear()
        for p in files:
            it = QListWidgetItem(f"{os.path.basename(p)}    —    {os.path.dirname(p)}")
            it.setData(Qt.UserRole, p)
            it.setToolTip(p)
            if not os.path.exists(p):
                it.setForeground(Qt.gray)
            self.recent.addItem(it)
        if not files:
            it = QListWidgetItem("(none yet)")
            it.setFlags(Qt.NoItemFlags)
            self.recent.addItem(it)
