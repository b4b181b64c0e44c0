"""File > New image: validation next to the fields, and images qemu-img agrees with."""

from __future__ import annotations

import pytest
from qemu import check, create, info

from qcow2view.ui.newimage import NewImageDialog

pytestmark = pytest.mark.qt_log_ignore("This plugin does not support")


@pytest.fixture
def dialog(qtbot, tmp_path):
    dlg = NewImageDialog(directory=str(tmp_path))
    qtbot.addWidget(dlg)
    yield dlg
    NewImageDialog.confirm_replace = None


def _set(dlg, **opts):
    combos = {"compat": dlg.compat, "compression_type": dlg.compression_type,
              "preallocation": dlg.preallocation, "size_unit": dlg.size_unit,
              "backing_fmt": dlg.backing_fmt}
    for k, v in opts.items():
        if k in combos:
            combos[k].setCurrentText(str(v))
        elif k in ("cluster_size", "refcount_bits"):
            w = getattr(dlg, k)
            w.setCurrentIndex(w.findData(v))
        elif k in ("lazy_refcounts", "extended_l2", "size_from_backing"):
            getattr(dlg, k).setChecked(v)
        else:
            getattr(dlg, k).setText(str(v))


@pytest.mark.parametrize("opts,field,words", [
    (dict(extended_l2=True, cluster_size=4096), "extended_l2", "16384"),
    (dict(compat="0.10", refcount_bits=8), "refcount_bits", "1.1"),
    (dict(compat="0.10", lazy_refcounts=True), "lazy_refcounts", "1.1"),
    (dict(compat="0.10", compression_type="zstd"), "compression_type", "zlib"),
    (dict(size_value="ten"), "size", "number"),
    (dict(size_value="9", size_unit="TiB", cluster_size=512), "size", "too large"),
    (dict(backing_file="nowhere.qcow2"), "backing_file", "does not exist"),
    (dict(path=""), "path", "file name"),
])
def test_invalid_combinations_are_explained_and_block_create(dialog, opts, field, words):
    assert dialog.create_btn.isEnabled()
    _set(dialog, **opts)
    label = dialog.errors[field]
    assert words in label.text(), {k: v.text() for k, v in dialog.errors.items()}
    assert "b00020" in label.styleSheet()         # red
    assert not dialog.create_btn.isEnabled()
    assert not dialog.create()


def test_creates_the_image_qemu_describes(dialog, tmp_path, qtbot):
    path = tmp_path / "made.qcow2"
    _set(dialog, path=str(path), size_value="3", size_unit="GiB", cluster_size=1 << 20,
         refcount_bits=4, lazy_refcounts=True, extended_l2=True, compression_type="zstd",
         preallocation="metadata")
    assert dialog.create_btn.isEnabled(), dialog.problems
    with qtbot.waitSignal(dialog.created) as sig:
        assert dialog.create()
    assert sig.args == [str(path)]
    i = info(path)
    assert i["virtual-size"] == 3 << 30 and i["cluster-size"] == 1 << 20
    spec = i["format-specific"]["data"]
    assert spec["compat"] == "1.1" and spec["refcount-bits"] == 4
    assert spec["lazy-refcounts"] and spec["extended-l2"]
    assert spec["compression-type"] == "zstd"
    assert check(path)[0] == 0


def test_backing_file_gives_the_size_and_v2_images(dialog, tmp_path, qtbot):
    base = create(tmp_path / "base.qcow2", "100M")
    dialog.set_backing(str(base))
    assert dialog.size_from_backing.isChecked() and dialog.backing_fmt.currentText() == "qcow2"
    assert dialog.size_bytes() is None
    _set(dialog, path="child.qcow2", compat="0.10")
    assert dialog.create(), dialog.problems
    i = info(tmp_path / "child.qcow2")
    assert i["virtual-size"] == 100 << 20
    assert i["backing-filename"] == str(base) and i["backing-filename-format"] == "qcow2"
    assert i["format-specific"]["data"]["compat"] == "0.10"


def test_data_file_image(dialog, tmp_path):
    _set(dialog, path="d.qcow2", size_value="64", size_unit="MiB", data_file="d.raw")
    assert dialog.create(), dialog.problems
    i = info(tmp_path / "d.qcow2")
    assert i["format-specific"]["data"]["data-file"] == "d.raw"
    assert (tmp_path / "d.raw").exists()


def test_an_existing_file_is_replaced_only_when_confirmed(dialog, tmp_path):
    path = tmp_path / "old.qcow2"
    path.write_bytes(b"precious")
    _set(dialog, path=str(path), size_value="1", size_unit="MiB")
    asked = []
    NewImageDialog.confirm_replace = lambda d, p: asked.append(p) or False
    assert not dialog.create()
    assert asked == [str(path)] and path.read_bytes() == b"precious"
    NewImageDialog.confirm_replace = lambda d, p: True
    assert dialog.create()
    assert info(path)["virtual-size"] == 1 << 20
