"""Image operations from the window: the Image menu entries and the header panel's
snapshot buttons say what they will do, ask, run in a worker and refresh the
document; qemu-img judges the result."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QAction

import qemu
from gui_fixtures import wait_ready
from qcow2view.model.header_model import NameRole
from qcow2view.ui import operations

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")


@pytest.fixture
def answers():
    """Dialog answers by kind; every question asked is recorded."""
    asked = []
    given = {"confirm": True}

    def answer(kind, title, text, default):
        asked.append((kind, title, text))
        return given.get(kind, default)
    operations.answer = answer
    yield given, asked
    operations.answer = None


def _action(window, name) -> QAction:
    act = window.image_menu.findChild(QAction, "op:" + name)
    assert act is not None and act in window.image_menu.actions(), name
    return act


def _run(qtbot, window, tab, name):
    """Trigger an operation and wait until the document has read the image again."""
    old = tab.document.image
    _action(window, name).trigger()
    qtbot.waitUntil(lambda: tab.document.image is not old, timeout=30000)
    wait_ready(qtbot, tab)


def test_menu_entries(window, qtbot, sample_image):
    names = ["Create snapshot", "Apply snapshot", "Delete snapshot", "Resize",
             "Commit into backing file", "Rebase", "Convert", "Amend options"]
    for n in names:
        _action(window, n)
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    window.image_menu.aboutToShow.emit()
    assert all(_action(window, n).isEnabled() for n in names)
    window.act_edit.trigger()              # editing: operations use their own handle
    window.image_menu.aboutToShow.emit()
    assert not any(_action(window, n).isEnabled() for n in names)
    window.act_edit.trigger()


def test_snapshot_delete_says_what_it_frees(window, qtbot, sample_image, answers, tmp_path):
    given, asked = answers
    before = qemu.to_raw(sample_image, tmp_path / "b.raw")
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    given["item"] = "snap1"
    _run(qtbot, window, tab, "Delete snapshot")
    text = [t for k, _, t in asked if k == "confirm"][0]
    # snap1 alone holds the first data cluster, the L2 table the disk copied when that
    # cluster was rewritten, its L1 table and (the last snapshot) the snapshot table
    assert "Deletes snapshot 'snap1'" in text and "frees 256 KiB (4 clusters)" in text
    assert qemu.info(sample_image).get("snapshots") is None
    assert qemu.check(sample_image)[0] == 0
    assert qemu.to_raw(sample_image, tmp_path / "a.raw") == before
    assert tab.document.image.snapshots == []          # the document re-read it


def test_snapshot_buttons_in_the_header_panel(window, qtbot, sample_image, answers, tmp_path):
    given, asked = answers
    snap = qemu.to_raw(sample_image, tmp_path / "s.raw", snapshot="snap1")
    tab = window.open_path(str(sample_image))
    wait_ready(qtbot, tab)
    bar = tab.header_panel.findChild(operations.SnapshotButtons)
    assert set(bar.buttons) == {"create", "apply", "delete"}
    given["text"] = "fresh"
    old = tab.document.image
    bar.buttons["create"].click()
    qtbot.waitUntil(lambda: tab.document.image is not old, timeout=30000)
    wait_ready(qtbot, tab)
    assert [s.name for s in tab.document.image.snapshots] == ["snap1", "fresh"]
    # select the row of snap1, apply it: the apply asks first and reverts the disk
    view = tab.header_panel.view
    model = view.model()
    row = next(r for r in range(model.rowCount())
               if model.index(r, 0).data(NameRole) == "snapshot:1")
    view.setCurrentIndex(model.index(row, 0))
    assert bar.selected() == "snap1"
    given.pop("item", None)
    old = tab.document.image
    bar.buttons["apply"].click()
    qtbot.waitUntil(lambda: tab.document.image is not old, timeout=30000)
    wait_ready(qtbot, tab)
    assert qemu.to_raw(sample_image, tmp_path / "n.raw") == snap
    assert any(k == "confirm" and "Reverts the disk" in t for k, _, t in asked)
    assert qemu.check(sample_image)[0] == 0


def test_commit_says_where_and_how_much(window, qtbot, tmp_path, answers):
    given, asked = answers
    base = qemu.create(tmp_path / "base.qcow2", "8M")
    qemu.qemu_io(base, "write -P 1 0 8M")
    top = qemu.create(tmp_path / "top.qcow2", "8M", backing="base.qcow2", backing_fmt="qcow2")
    qemu.create(tmp_path / "other.qcow2", "8M", backing="base.qcow2", backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 2 1M 2M")
    view = qemu.to_raw(top, tmp_path / "t.raw")
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    _run(qtbot, window, tab, "Commit into backing file")
    text = [t for k, _, t in asked if k == "confirm"][0]
    assert text == ("Writes 2 MiB into base.qcow2 (shared by 1 other overlay), "
                    "then empties top.qcow2.")
    assert qemu.to_raw(base, tmp_path / "b.raw") == view
    assert qemu.to_raw(top, tmp_path / "t2.raw") == view
    assert qemu.check(top)[0] == 0 and qemu.check(base)[0] == 0


def test_cancel_leaves_a_valid_image(window, qtbot, tmp_path, answers, monkeypatch):
    given, _ = answers
    img = qemu.create(tmp_path / "a.qcow2", "16M", "cluster_size=4k")
    qemu.qemu_io(img, "write -P 1 0 16M")
    tab = window.open_path(str(img))
    wait_ready(qtbot, tab)
    given["amend"] = {"refcount_bits": 64}
    jobs = []
    real = operations.run_job

    def run_job(w, job, text):
        jobs.append(job)
        job.progressed.connect(lambda d, t: job.cancel())     # Cancel at the first report
        return real(w, job, text)
    monkeypatch.setattr(operations, "run_job", run_job)
    _run(qtbot, window, tab, "Amend options")
    assert jobs
    assert qemu.check(img)[0] == 0
    assert qemu.info(img)["format-specific"]["data"]["refcount-bits"] in (16, 64)


def test_resize_rebase_and_convert_from_the_menu(window, qtbot, tmp_path, answers):
    given, asked = answers
    base = qemu.create(tmp_path / "base.qcow2", "8M")
    qemu.qemu_io(base, "write -P 1 0 8M")
    top = qemu.create(tmp_path / "top.qcow2", "8M", backing="base.qcow2", backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 2 1M 1M")
    view = qemu.to_raw(top, tmp_path / "v.raw")
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    given["rebase"] = ("", False, None)                 # rebase -b "": flatten
    _run(qtbot, window, tab, "Rebase")
    assert qemu.info(top).get("backing-filename") is None
    assert qemu.to_raw(top, tmp_path / "f.raw") == view and qemu.check(top)[0] == 0
    given["text"] = "+8M"
    _run(qtbot, window, tab, "Resize")
    assert any("Grows the disk of top.qcow2 from 8 MiB to 16 MiB" in t for _, _, t in asked)
    assert qemu.info(top)["virtual-size"] == 16 << 20
    out = tmp_path / "copy.qcow2"
    given["convert"] = (str(out), "qcow2", True, {"compression_type": "zstd"})
    old = tab.document.image
    _action(window, "Convert").trigger()
    qtbot.waitUntil(lambda: tab.document.image is not old, timeout=30000)
    wait_ready(qtbot, tab)
    assert any("into a new qcow2 image of" in t for _, _, t in asked)
    assert qemu.compare(top, out).returncode == 0
    assert qemu.info(out)["format-specific"]["data"]["compression-type"] == "zstd"


def test_new_image_dialog_says_the_space_it_takes(qtbot, tmp_path):
    import json

    from qcow2view.model.units import human_size
    from qcow2view.ui.newimage import NewImageDialog
    dlg = NewImageDialog(directory=str(tmp_path))
    qtbot.addWidget(dlg)
    dlg.size_value.setText("10")
    dlg.size_unit.setCurrentText("GiB")
    want = json.loads(qemu.qemu_img("measure", "--output=json", "--size", "10G",
                                    "-O", "qcow2").stdout)
    assert dlg.space.text() == (f"Takes {human_size(want['required'])} now, "
                                f"{human_size(want['fully-allocated'])} when every "
                                "cluster is written")
    dlg.size_value.setText("ten")
    assert dlg.space.text() == ""


def test_apply_and_delete_need_a_snapshot(window, qtbot, tmp_path, answers):
    given, _ = answers
    img = qemu.create(tmp_path / "plain.qcow2", "4M")
    tab = window.open_path(str(img))
    wait_ready(qtbot, tab)
    bar = tab.header_panel.findChild(operations.SnapshotButtons)
    assert bar.buttons["create"].isEnabled()
    assert not bar.buttons["apply"].isEnabled() and not bar.buttons["delete"].isEnabled()
    given["text"] = "first"
    old = tab.document.image
    bar.buttons["create"].click()
    qtbot.waitUntil(lambda: tab.document.image is not old, timeout=30000)
    wait_ready(qtbot, tab)
    assert [s["name"] for s in qemu.info(img)["snapshots"]] == ["first"]
    assert bar.buttons["apply"].isEnabled() and bar.buttons["delete"].isEnabled()
    given["item"] = "first"
    old = tab.document.image
    bar.buttons["delete"].click()
    qtbot.waitUntil(lambda: tab.document.image is not old, timeout=30000)
    wait_ready(qtbot, tab)
    assert qemu.info(img).get("snapshots") is None
    assert not bar.buttons["apply"].isEnabled() and not bar.buttons["delete"].isEnabled()


def _chain(folder):
    """base <- mid <- top, each writing its own MiB (made by qemu-img/qemu-io)."""
    folder.mkdir()
    base = qemu.create(folder / "base.qcow2", "8M")
    qemu.qemu_io(base, "write -P 1 0 8M")
    mid = qemu.create(folder / "mid.qcow2", "8M", backing="base.qcow2", backing_fmt="qcow2")
    qemu.qemu_io(mid, "write -P 2 4M 1M")
    top = qemu.create(folder / "top.qcow2", "8M", backing="mid.qcow2", backing_fmt="qcow2")
    qemu.qemu_io(top, "write -P 3 1M 1M")
    return base, mid, top


def _layout(path):
    """qemu-img map without host offsets: which image decides each guest range."""
    return [{k: e[k] for k in ("start", "length", "depth", "zero", "data")}
            for e in qemu.qemu_map(path)]


def test_commit_down_the_chain_and_keep_the_overlay(window, qtbot, tmp_path, answers):
    given, asked = answers
    base, mid, top = _chain(tmp_path / "ours")
    qbase, qmid, qtop = _chain(tmp_path / "qemu")
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    dlg = operations.CommitDialog(window, [str(mid), str(base)])
    assert dlg.values() == (None, False)                # qemu-img commit: into mid, emptied
    dlg.base.setCurrentIndex(1)                         # -b base implies -d, as qemu-img
    assert dlg.values() == (str(base), True) and not dlg.keep.isEnabled()
    dlg.deleteLater()
    # -b base: both overlays' data go into base.qcow2, top (and mid) stay as they are
    given["commit"] = (str(base), False)
    _run(qtbot, window, tab, "Commit into backing file")
    qemu.qemu_img("commit", "-q", "-b", "base.qcow2", qtop)
    text = [t for k, _, t in asked if k == "confirm"][-1]
    assert text == "Writes 2 MiB into base.qcow2, and keeps top.qcow2 as it is."
    assert qemu.compare(base, qbase).returncode == 0
    assert _layout(top) == _layout(qtop) and _layout(mid) == _layout(qmid)
    # -d into the direct backing file: mid gets top's MiB, top keeps it
    given["commit"] = (None, True)
    _run(qtbot, window, tab, "Commit into backing file")
    qemu.qemu_img("commit", "-q", "-d", qtop)
    text = [t for k, _, t in asked if k == "confirm"][-1]
    assert text == "Writes 1 MiB into mid.qcow2, and keeps top.qcow2 as it is."
    assert qemu.compare(mid, qmid).returncode == 0
    assert _layout(top) == _layout(qtop) and _layout(mid) == _layout(qmid)
    assert all(qemu.check(p)[0] == 0 for p in (base, mid, top))


def test_rebase_unsafe_only_rewrites_the_name(window, qtbot, tmp_path, answers):
    given, asked = answers
    base, mid, top = _chain(tmp_path / "ours")
    qbase, qmid, qtop = _chain(tmp_path / "qemu")
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    given["rebase"] = ("base.qcow2", True, None)
    _run(qtbot, window, tab, "Rebase")
    qemu.qemu_img("rebase", "-q", "-u", "-b", "base.qcow2", "-F", "qcow2", qtop)
    assert any(t == "Only rewrites the backing file name of top.qcow2 to 'base.qcow2'."
               for k, _, t in asked if k == "confirm")
    assert qemu.info(top)["backing-filename"] == qemu.info(qtop)["backing-filename"]
    assert _layout(top) == _layout(qtop)                 # nothing copied
    assert qemu.compare(top, qtop).returncode == 0 and qemu.check(top)[0] == 0


def test_no_snapshot_of_a_data_file_image(window, qtbot, tmp_path):
    img = qemu.create(tmp_path / "d.qcow2", "4M", f"data_file={tmp_path / 'd.raw'}")
    p = qemu.qemu_img("snapshot", "-c", "s", img, check=False)
    assert p.returncode == 1 and b"Operation not supported" in p.stderr     # the oracle
    tab = window.open_path(str(img))
    wait_ready(qtbot, tab)
    bar = tab.header_panel.findChild(operations.SnapshotButtons)
    assert not bar.buttons["create"].isEnabled()
    assert "external data file" in bar.buttons["create"].toolTip()


def test_resize_grows_the_data_file_as_qemu(window, qtbot, tmp_path, answers):
    given, asked = answers
    made = []
    for side in ("ours", "qemu"):
        (tmp_path / side).mkdir()
        img = qemu.create(tmp_path / side / "d.qcow2", "4M",
                          f"data_file={tmp_path / side / 'd.raw'}")
        qemu.qemu_io(img, "write -P 4 1M 1M")
        made.append(img)
    mine, theirs = made
    tab = window.open_path(str(mine))
    wait_ready(qtbot, tab)
    given["text"] = "+4M"
    _run(qtbot, window, tab, "Resize")
    qemu.qemu_img("resize", "-q", theirs, "+4M")
    assert any(t == "Grows the disk of d.qcow2 from 4 MiB to 8 MiB (its data file d.raw "
               "grows with it)." for k, _, t in asked if k == "confirm")
    assert qemu.info(mine)["virtual-size"] == qemu.info(theirs)["virtual-size"]
    assert (tmp_path / "ours/d.raw").read_bytes() == (tmp_path / "qemu/d.raw").read_bytes()
    assert qemu.compare(mine, theirs).returncode == 0 and qemu.check(mine)[0] == 0
    # a shrink is refused before anything is asked, saying why
    from qcow2view.ui import dialogs
    errors = []
    dialogs.set_hook(lambda title, text, details: errors.append(text))
    given["text"] = "2M"
    confirms = len([k for k, _, _ in asked if k == "confirm"])
    _action(window, "Resize").trigger()
    assert errors and "external data file" in errors[0] and "d.raw" in errors[0]
    assert len([k for k, _, _ in asked if k == "confirm"]) == confirms
    assert qemu.info(mine)["virtual-size"] == 8 << 20


@pytest.mark.parametrize("mode", ["metadata", "full"])
def test_resize_with_preallocation_as_qemu(window, qtbot, tmp_path, answers, mode):
    """Growing asks how the new area is allocated; the result is qemu-img resize
    --preallocation's: same allocation map (host offsets aside), same guest bytes."""
    given, asked = answers
    made = []
    for side in ("ours", "qemu"):
        img = qemu.create(tmp_path / f"{side}.qcow2", "4M")
        qemu.qemu_io(img, "write -P 7 1M 64k")
        made.append(img)
    mine, theirs = made
    tab = window.open_path(str(mine))
    wait_ready(qtbot, tab)
    given["text"], given["item"] = "+4M", mode
    _run(qtbot, window, tab, "Resize")
    qemu.qemu_img("resize", "-q", f"--preallocation={mode}", theirs, "+4M")
    assert ("item", "Resize", "Preallocation of the new area:") in asked
    said = {"metadata": "tables and clusters are allocated, no data written",
            "full": "written with zeros"}[mode]
    assert any(k == "confirm" and t.startswith("Grows the disk of ours.qcow2 from 4 MiB to "
                                               "8 MiB") and said in t for k, _, t in asked)
    assert qemu.check(mine)[0] == 0 and qemu.compare(mine, theirs).returncode == 0

    assert qemu.map_shape(qemu.qemu_map(mine)) == qemu.map_shape(qemu.qemu_map(theirs))


def test_progress_dialog_outlives_nested_reports(window, qtbot, monkeypatch):
    """A modal progress dialog's setValue runs the event loop: the next report and the
    job's end can arrive inside it; the dialog must not be deleted before the outer
    setValue returns (it was, after a nested report: a rare segfault)."""
    import shiboken6
    from PySide6.QtCore import QCoreApplication, QEvent, QObject, Signal
    from PySide6.QtWidgets import QProgressDialog

    class Job(QObject):
        progressed = Signal(int, int)
        done = Signal(object)
        failed = Signal(str)
        cancelled = Signal()
        title = "Nested"

        def start(self):
            self.progressed.emit(1, 3)

        def cancel(self):
            pass

    job = Job()
    alive = []

    class Dialog(QProgressDialog):
        def setValue(self, v):
            if v == 1:                      # the outer report: more arrives inside it
                job.progressed.emit(2, 3)
                job.done.emit(None)
                QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
                alive.append(shiboken6.isValid(self))
                if not alive[-1]:
                    return                  # deleted under us: do not touch it
            super().setValue(v)
    monkeypatch.setattr(operations, "QProgressDialog", Dialog)
    operations.run_job(window, job, "nested: done")
    assert alive == [True]
    assert window.statusBar().currentMessage() == "nested: done"


def test_rebase_unsafe_onto_a_file_not_there_yet(window, qtbot, tmp_path, answers):
    """-u -F qcow2 names a backing file that is not there (yet): the way to fix an overlay
    before its base moves, as qemu-img allows it."""
    given, _ = answers
    base, mid, top = _chain(tmp_path / "ours")
    qbase, qmid, qtop = _chain(tmp_path / "qemu")
    dlg = operations.RebaseDialog(window, "mid.qcow2")
    assert dlg.values() == ("mid.qcow2", False, None)
    dlg.fmt.setCurrentText("qcow2")
    dlg.unsafe.setChecked(True)
    assert dlg.values() == ("mid.qcow2", True, "qcow2")
    dlg.deleteLater()
    tab = window.open_path(str(top))
    wait_ready(qtbot, tab)
    given["rebase"] = ("moved.qcow2", True, "qcow2")
    _run(qtbot, window, tab, "Rebase")
    qemu.qemu_img("rebase", "-q", "-u", "-b", "moved.qcow2", "-F", "qcow2", qtop)
    assert top.read_bytes() == qtop.read_bytes()
