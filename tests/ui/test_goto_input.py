"""A number no disk can reach is the user's mistake, said in one line (issue 16 item 3):
the tables' jump box and the Go to dialog (Ctrl+G) say what they expected."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QDialogButtonBox

import qemu
from qcow2view.engine import open_image
from qcow2view.model.table_tree_model import TableTreeModel
from qcow2view.ui.goto import GotoDialog
from qcow2view.ui.tablepanel import TablePanel

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")
EXPECTED = "expected an offset such as 0x7e00, 1M, LBA 2048"
HUGE = ["9" * 400 + ".5M", "9" * 400, "0x" + "f" * 300, "1" + "0" * 5000 + "T"]


def test_jump_box_with_a_huge_number(qtbot, tmp_path):
    p = qemu.create(tmp_path / "a.qcow2", "1M")
    with open_image(p) as img:
        model = TableTreeModel()
        w = TablePanel(model)
        qtbot.addWidget(w)
        w.show()
        model.set_image(img)
        for text in HUGE:
            w.jump.setText(text)
            w.jump.returnPressed.emit()
            assert w.status.isVisible() and EXPECTED in w.status.text()
        for text in ("LBA 8", "0x1000", "1,024", "4_096"):   # what Ctrl+G and --goto take
            w.jump.setText(text)
            w.jump.returnPressed.emit()
            assert not w.status.isVisible(), text
        w.close()


def test_goto_dialog_with_a_huge_number(qtbot):
    d = GotoDialog(None, current=0, size=1 << 30, sector_size=512)
    qtbot.addWidget(d)
    for text in HUGE:
        d.edit.setText(text)
        assert EXPECTED in d.hint.text()
        assert not d.buttons.button(QDialogButtonBox.Ok).isEnabled()
