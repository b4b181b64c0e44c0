"""Image > Repair Leaks… / Repair All… from the main window's menu, judged by qemu-img:
asked first, nothing written unless confirmed, the document stays read-only, the
image comes out clean and the guest (and its snapshot) reads the same bytes."""

from __future__ import annotations

import shutil

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

import qemu
from gui_fixtures import set_refcount, wait_ready
from qcow2view.model.units import count
from qcow2view.ui import repair

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")

KiB, MiB = 1 << 10, 1 << 20
CS = 64 * KiB


@pytest.fixture
def damaged(tmp_path):
    """32 MiB, written out of guest order, a snapshot sharing the cluster at 8 MiB;
    then two leaked clusters (refcount 1, nothing points at them) and, with ``all``
    to fix, the shared cluster's refcount lowered from 2 to 1 (qemu-img counts two
    corruptions: the refcount too low, and an entry without COPIED at refcount 1)."""
    p = qemu.create(tmp_path / "damaged.qcow2", "32M")
    assert qemu.info(p)["cluster-size"] == CS
    qemu.qemu_io(p, *(f"write -P {0x30 + i} {off}M 64k"
                      for i, off in enumerate((24, 8, 16, 0, 30))))
    qemu.qemu_img("snapshot", "-c", "before", p)
    qemu.qemu_io(p, "write -P 0x77 0 64k", "write -P 0x78 12M 128k")
    end = -(-p.stat().st_size // CS)
    for c in (end, end + 3):
        assert set_refcount(p, c, 1) == 0
    shared = qemu.host_offset(p, 8 * MiB) // CS
    assert set_refcount(p, shared, 1) == 2
    code, res = qemu.check(p)
    assert (code, res.get("leaks"), res.get("corruptions")) == (2, 2, 2), res
    return p


def _guest(path, tmp_path, name, snapshot=None) -> bytes:
    return qemu.to_raw(path, tmp_path / f"{name}.raw", snapshot=snapshot)


def test_the_actions_are_in_the_image_menu_and_need_a_read_only_tab(window, qtbot, damaged):
    acts = (window.act_repair_leaks, window.act_repair_all)
    assert [a.text() for a in acts] == ["Repair &Leaks…", "Repair &All…"]
    assert all(a in window.image_menu.actions() for a in acts)
    assert not any(a.isEnabled() for a in acts)               # the start page
    tab = window.open_path(str(damaged))
    wait_ready(qtbot, tab)
    assert all(a.isEnabled() for a in acts)
    window.act_edit.trigger()                                 # editing: its own writer
    assert tab.document.writable and not any(a.isEnabled() for a in acts)
    window.act_edit.trigger()
    assert not tab.document.writable and all(a.isEnabled() for a in acts)
    window.close_all()
    assert not any(a.isEnabled() for a in acts)


def test_repair_leaks_then_all_from_the_menu(window, qtbot, damaged, tmp_path, monkeypatch):
    guest = _guest(damaged, tmp_path, "before")
    snap = _guest(damaged, tmp_path, "snap-before", "before")
    tab = window.open_path(str(damaged))
    wait_ready(qtbot, tab)
    assert "2 leaked cluster" in tab.banner.text() and "2 corruption" in tab.banner.text()
    monkeypatch.setattr(repair, "assume_yes", True)

    window.act_repair_leaks.trigger()
    assert tab.repair_job is not None
    assert not window.act_repair_leaks.isEnabled() and not window.act_repair_all.isEnabled()
    wait_ready(qtbot, tab)
    code, res = qemu.check(damaged)        # -r leaks: the leaks go, the refcount stays wrong
    assert (code, res.get("leaks", 0), res.get("corruptions")) == (2, 0, 2), res
    assert "2 leaks and 0 corruptions fixed" in window.statusBar().currentMessage()
    assert tab.document.check_result.leaks == 0 and tab.document.check_result.corruptions == 2

    # what qemu-img check -r all fixes in the same state, on a copy
    copy = tmp_path / "copy.qcow2"
    shutil.copyfile(damaged, copy)
    fixed = qemu.check(copy, "-r", "all")[1]["corruptions-fixed"]
    window.act_repair_all.trigger()
    wait_ready(qtbot, tab)
    code, res = qemu.check(damaged)
    assert code == 0 and not res.get("leaks") and not res.get("corruptions"), res
    assert f"0 leaks and {count(fixed, 'corruption')} fixed" in window.statusBar().currentMessage()
    assert _guest(damaged, tmp_path, "after") == guest
    assert _guest(damaged, tmp_path, "snap-after", "before") == snap
    assert tab.banner.isHidden() and tab.document.check_result.corruptions == 0
    assert not tab.document.writable                    # the document stays read-only
    assert window.act_repair_all.isEnabled()


def test_the_question_is_asked_before_anything_is_written(window, qtbot, damaged, tmp_path):
    """The real dialog: it names the image and what will be written; the file is
    untouched while it is open; Yes repairs."""
    before = damaged.read_bytes()
    tab = window.open_path(str(damaged))
    wait_ready(qtbot, tab)
    seen = {}

    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, answer)
            return
        seen["text"] = box.text()
        seen["untouched"] = damaged.read_bytes() == before
        box.button(QMessageBox.Yes).click()

    QTimer.singleShot(0, answer)
    window.act_repair_all.trigger()        # returns once the question is answered
    assert "damaged.qcow2" in seen["text"] and "qemu-img check -r all" in seen["text"]
    assert seen["untouched"]
    wait_ready(qtbot, tab)
    assert qemu.check(damaged)[0] == 0


@pytest.mark.parametrize("which", ["leaks", "all"])
def test_declining_writes_nothing(window, qtbot, damaged, monkeypatch, which):
    before = damaged.read_bytes()
    tab = window.open_path(str(damaged))
    wait_ready(qtbot, tab)
    monkeypatch.setattr(repair, "assume_yes", False)
    (window.act_repair_leaks if which == "leaks" else window.act_repair_all).trigger()
    assert tab.repair_job is None
    assert damaged.read_bytes() == before
    assert qemu.check(damaged)[1]["leaks"] == 2


def test_closing_the_tab_during_a_repair_lets_it_finish(window, qtbot, damaged, monkeypatch):
    tab = window.open_path(str(damaged))
    wait_ready(qtbot, tab)
    monkeypatch.setattr(repair, "assume_yes", True)
    window.act_repair_all.trigger()
    window.close_all()                     # joins the repair (the fixture checks no worker is left)
    assert window.tabs.count() == 0
    assert "repaired" in window.statusBar().currentMessage()
    assert qemu.check(damaged)[0] == 0


def test_the_banner_says_which_repair_fixes_what_it_found(window, qtbot, damaged, tmp_path):
    tab = window.open_path(str(damaged))
    wait_ready(qtbot, tab)
    assert "Repair All…" in tab.banner.text()              # corruptions: -r all
    leaky = qemu.create(tmp_path / "leaky.qcow2", "4M")
    qemu.qemu_io(leaky, "write -P 1 0 64k")
    set_refcount(leaky, -(-leaky.stat().st_size // CS), 1)
    assert qemu.check(leaky)[1]["leaks"] == 1
    other = window.open_path(str(leaky))
    wait_ready(qtbot, other)
    assert "Repair Leaks…" in other.banner.text() and "Repair All" not in other.banner.text()
