"""File > New image: the options of ``create_image`` with live validation.

Rules are not repeated here: every change asks the engine's
``validate_create_options`` (through :mod:`qcow2view.model.newimage`) and shows each problem in red next to the field it
concerns; Create stays disabled while there is any.
"""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QLabel, QLineEdit, QMessageBox,
                               QPushButton, QVBoxLayout, QWidget)

from ..model import newimage as new_image

SIZE_UNITS = (("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30),
              ("TiB", 1 << 40))
CLUSTER_SIZES = [1 << b for b in range(9, 22)]
REFCOUNT_BITS = [1, 2, 4, 8, 16, 32, 64]
ERROR_STYLE = "color: #b00020"

# which field a validation message belongs to (first match wins)
_FIELD_WORDS = (
    ("extended_l2", ("extended l2",)),
    ("cluster_size", ("cluster size",)),
    ("refcount_bits", ("refcount width",)),
    ("lazy_refcounts", ("lazy refcounts",)),
    ("compression_type", ("compression type",)),
    ("preallocation", ("preallocation",)),
    ("backing_fmt", ("backing format",)),
    ("backing_file", ("backing file",)),
    ("data_file", ("data file", "data-file")),
    ("compat", ("compat",)),
    ("size", ("size",)),
)


def _human(n: int) -> str:
    for name, mult in reversed(SIZE_UNITS):
        if n >= mult and n % mult == 0:
            return f"{n // mult} {name}"
    return f"{n} B"


def field_of(message: str) -> str:
    low = message.lower()
    if low.startswith(("image size", "the image size", "size ")):
        return "size"
    for field, words in _FIELD_WORDS:
        if any(w in low for w in words):
            return field
    return "general"


class NewImageDialog(QDialog):
    """Emits :attr:`created` with the new image's path (the window opens it)."""

    created = Signal(str)

    #: tests replace this: (dialog, path) -> bool, "may the existing file be replaced?"
    confirm_replace = None

    def __init__(self, parent: QWidget | None = None, *, directory: str | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New QCOW2 image")
        self._dir = directory or os.getcwd()
        self.errors: dict[str, QLabel] = {}
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)

        self.path = QLineEdit(os.path.join(self._dir, "new.qcow2"), self)
        browse = QPushButton("Browse\u2026", self)
        browse.clicked.connect(self._browse_path)
        form.addRow("File:", self._row("path", self.path, browse))

        self.size_value = QLineEdit("10", self)
        self.size_value.setMaximumWidth(160)
        self.size_unit = QComboBox(self)
        self.size_unit.addItems([u for u, _ in SIZE_UNITS])
        self.size_unit.setCurrentText("GiB")
        self.size_from_backing = QCheckBox("same as the backing file", self)
        form.addRow("Size:", self._row("size", self.size_value, self.size_unit,
                                       self.size_from_backing))

        self._add_format_rows(form)

        self.general = QLabel(self)
        self.general.setStyleSheet(ERROR_STYLE)
        self.general.setWordWrap(True)
        self.errors["general"] = self.general
        self.buttons = QDialogButtonBox(QDialogButtonBox.Cancel, self)
        self.create_btn = self.buttons.addButton("Create", QDialogButtonBox.AcceptRole)
        self.buttons.accepted.connect(self.create)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.general)
        self.space = QLabel(self)        # qemu-img measure's two sizes
        self.space.setObjectName("space")
        lay.addWidget(self.space)
        lay.addWidget(self.buttons)

        for w in (self.path, self.size_value, self.backing_file, self.data_file):
            w.textChanged.connect(self.validate)
        for w in (self.size_unit, self.compat, self.cluster_size, self.refcount_bits,
                  self.compression_type, self.preallocation, self.backing_fmt):
            w.currentIndexChanged.connect(self.validate)
        for w in (self.lazy_refcounts, self.extended_l2, self.size_from_backing):
            w.toggled.connect(self.validate)
        self.problems: list[str] = []
        self.validate()

    def _add_format_rows(self, form: QFormLayout) -> None:
        """The qcow2 options, named as ``qemu-img create -o`` names them."""
        self.compat = QComboBox(self)
        self.compat.addItems(["1.1", "0.10"])
        form.addRow("Compatibility:", self._row("compat", self.compat))

        self.cluster_size = QComboBox(self)
        for cs in CLUSTER_SIZES:
            self.cluster_size.addItem(_human(cs), cs)
        self.cluster_size.setCurrentIndex(CLUSTER_SIZES.index(65536))
        form.addRow("Cluster size:", self._row("cluster_size", self.cluster_size))

        self.refcount_bits = QComboBox(self)
        for b in REFCOUNT_BITS:
            self.refcount_bits.addItem(f"{b} bit{'s' if b > 1 else ''}", b)
        self.refcount_bits.setCurrentIndex(REFCOUNT_BITS.index(16))
        form.addRow("Refcount width:", self._row("refcount_bits", self.refcount_bits))

        self.lazy_refcounts = QCheckBox("lazy refcounts", self)
        form.addRow("", self._row("lazy_refcounts", self.lazy_refcounts))
        self.extended_l2 = QCheckBox("extended L2 entries (sub-clusters)", self)
        form.addRow("", self._row("extended_l2", self.extended_l2))

        self.compression_type = QComboBox(self)
        self.compression_type.addItems(["zlib", "zstd"])
        form.addRow("Compression:", self._row("compression_type", self.compression_type))

        self.preallocation = QComboBox(self)
        self.preallocation.addItems(["off", "metadata"])
        form.addRow("Preallocation:", self._row("preallocation", self.preallocation))

        self.backing_file = QLineEdit(self)
        self.backing_file.setPlaceholderText("none")
        bbrowse = QPushButton("Browse\u2026", self)
        bbrowse.clicked.connect(self._browse_backing)
        form.addRow("Backing file:", self._row("backing_file", self.backing_file, bbrowse))
        self.backing_fmt = QComboBox(self)
        self.backing_fmt.addItems(["qcow2", "raw"])
        form.addRow("Backing format:", self._row("backing_fmt", self.backing_fmt))

        self.data_file = QLineEdit(self)
        self.data_file.setPlaceholderText("none (data in the image file)")
        form.addRow("External data file:", self._row("data_file", self.data_file))

    def _row(self, field: str, *widgets: QWidget) -> QWidget:
        """The field's widgets on a line, its problems in red underneath."""
        box = QWidget(self)
        outer = QVBoxLayout(box)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(1)
        line = QHBoxLayout()
        for w in widgets:
            line.addWidget(w, 1 if isinstance(w, QLineEdit) else 0)
        if not any(isinstance(w, QLineEdit) and w.maximumWidth() > 1000 for w in widgets):
            line.addStretch(1)
        outer.addLayout(line)
        err = QLabel(box)
        err.setStyleSheet(ERROR_STYLE)
        err.setWordWrap(True)
        err.hide()
        outer.addWidget(err)
        self.errors[field] = err
        return box

    # -- values --------------------------------------------------------------------------
    def size_bytes(self) -> int | None:
        """The size asked for (None: the backing file's); ValueError if unreadable."""
        if self.size_from_backing.isChecked() and self.backing_file.text().strip():
            return None
        text = self.size_value.text().strip()
        try:
            value = float(text) if "." in text else int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if value < 0:
            raise ValueError("the size cannot be negative")
        return int(value * dict(SIZE_UNITS)[self.size_unit.currentText()])

    def options(self) -> dict:
        """The ``create_image`` keyword options the form holds (without size)."""
        backing = self.backing_file.text().strip() or None
        return dict(
            compat=self.compat.currentText(),
            cluster_size=self.cluster_size.currentData(),
            refcount_bits=self.refcount_bits.currentData(),
            lazy_refcounts=self.lazy_refcounts.isChecked(),
            extended_l2=self.extended_l2.isChecked(),
            compression_type=self.compression_type.currentText(),
            preallocation=self.preallocation.currentText(),
            backing_file=backing,
            backing_fmt=self.backing_fmt.currentText() if backing else None,
            data_file=self.data_file.text().strip() or None,
        )

    def set_size(self, n: int) -> None:
        for name, mult in reversed(SIZE_UNITS):
            if n >= mult and n % mult == 0:
                self.size_value.setText(str(n // mult))
                self.size_unit.setCurrentText(name)
                return
        self.size_value.setText(str(n))
        self.size_unit.setCurrentText("B")

    # -- validation ----------------------------------------------------------------------
    def validate(self, *_) -> list[str]:
        problems: list[tuple[str, str]] = []
        self.size_from_backing.setEnabled(bool(self.backing_file.text().strip()))
        self.size_value.setEnabled(not (self.size_from_backing.isChecked()
                                        and self.size_from_backing.isEnabled()))
        try:
            size = self.size_bytes()
        except ValueError as e:
            size = 0
            problems.append(("size", str(e)))
        if not self.path.text().strip():
            problems.append(("path", "a file name is needed"))
        elif not os.path.isdir(os.path.dirname(self._abs(self.path.text())) or "."):
            problems.append(("path", "the folder does not exist"))
        opts = self.options()
        for msg in new_image.option_problems(size, **opts):
            problems.append((field_of(msg), msg))
        backing = opts["backing_file"]
        if backing and not os.path.exists(self._backing_abs(backing)):
            problems.append(("backing_file", "the backing file does not exist"))
        for label in self.errors.values():
            label.clear()
        for field, msg in problems:
            label = self.errors.get(field, self.general)
            label.setText("\n".join(filter(None, [label.text(), msg])))
        for label in self.errors.values():
            label.setVisible(bool(label.text()))
        self.problems = [m for _, m in problems]
        self.create_btn.setEnabled(not problems)
        self.space.setText("" if problems else new_image.space_text(size, **opts))
        return self.problems

    def _abs(self, p: str) -> str:
        p = os.path.expanduser(p.strip())
        return p if os.path.isabs(p) else os.path.join(self._dir, p)

    def _backing_abs(self, name: str) -> str:
        if os.path.isabs(name):
            return name
        return os.path.join(os.path.dirname(self._abs(self.path.text())), name)

    # -- browsing ------------------------------------------------------------------------
    def _browse_path(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "New image", self.path.text(),
                                              "QCOW2 images (*.qcow2);;All files (*)",
                                              options=QFileDialog.DontConfirmOverwrite)
        if path:
            self.path.setText(path)

    def _browse_backing(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Backing file", self._dir,
                                              "Disk images (*.qcow2 *.img *.raw);;All files (*)")
        if path:
            self.set_backing(path)

    def set_backing(self, path: str) -> None:
        """Name a backing file; its format is probed and its size offered."""
        self.backing_file.setText(path)
        try:
            with open(self._backing_abs(path), "rb") as f:
                qcow = f.read(4) == b"QFI\xfb"
        except OSError:
            return
        self.backing_fmt.setCurrentText("qcow2" if qcow else "raw")
        self.size_from_backing.setChecked(True)

    # -- creating -----------------------------------------------------------------------
    def create(self) -> bool:
        if self.validate():
            return False
        path = self._abs(self.path.text())
        overwrite = False
        if os.path.exists(path):
            ask = NewImageDialog.confirm_replace
            if ask is not None:
                overwrite = bool(ask(self, path))
            else:
                overwrite = QMessageBox.question(
                    self, "Replace file?", f"{path} exists. Replace it?",
                    QMessageBox.Yes | QMessageBox.No, QMessageBox.No) == QMessageBox.Yes
            if not overwrite:
                self.general.setText("Not replaced: choose another file name")
                self.general.show()
                return False
        why = new_image.create(path, self.size_bytes(), overwrite=overwrite, **self.options())
        if why is not None:
            self.general.setText(f"Could not create the image: {why}")
            self.general.show()
            return False
        self.created.emit(path)
        self.accept()
        return True

    def keyPressEvent(self, e) -> None:  # noqa: N802
        if e.key() in (Qt.Key_Return, Qt.Key_Enter) and not self.create_btn.isEnabled():
            return
        super().keyPressEvent(e)
