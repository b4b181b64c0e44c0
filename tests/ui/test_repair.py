"""Image > Repair: a leaked cluster found by the check is repaired from the GUI."""

from __future__ import annotations

import pytest

import qemu
from gui_fixtures import wait_ready
from qcow2view.ui import repair

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")




def test_repair_leaks_from_the_gui(window, qtbot, sample_image, make_leak, monkeypatch):
    make_leak(sample_image)
    before = qemu.to_raw(sample_image, sample_image.with_suffix(".before"))
    assert qemu.check(sample_image)[1]["leaks"] == 1
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    assert "1 leaked cluster" in tab.banner.text()

    monkeypatch.setattr(repair, "assume_yes", True)
    job = repair.repair_current(window, tab)
    with qtbot.waitSignal(job.done, timeout=30000) as got:
        pass
    assert got.args[0].leaks_fixed == 1
    wait_ready(qtbot, tab)
    # qemu agrees: clean, and the guest sees the same bytes
    code, res = qemu.check(sample_image)
    assert code == 0 and not res.get("leaks") and not res.get("corruptions"), res
    assert qemu.to_raw(sample_image, sample_image.with_suffix(".after")) == before
    assert tab.document.check_result.leaks == 0
    assert not any("leak" in line for line in tab.document.problems())
    assert tab.banner.isHidden()
    assert not tab.document.writable          # the document stays read-only


def test_repair_is_refused_while_editing(window, qtbot, sample_image, monkeypatch):
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    tab.document.reopen(True)
    monkeypatch.setattr(repair, "assume_yes", True)
    refused = []
    monkeypatch.setattr(repair.dialogs, "error",
                        lambda parent, title, text, *a: refused.append(text))
    job = repair.repair_current(window, tab)
    assert job.worker is None and refused and "Editing is enabled" in refused[0]
    tab.document.reopen(False)


def test_cancelled_confirmation_changes_nothing(window, qtbot, sample_image, make_leak,
                                                monkeypatch):
    make_leak(sample_image)
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    monkeypatch.setattr(repair, "assume_yes", False)
    assert repair.repair_current(window, tab) is None
    assert qemu.check(sample_image)[1]["leaks"] == 1
