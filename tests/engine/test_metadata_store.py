"""One metadata store (issue 13): every writer goes through ``Image.meta``.

The rules are checked over every engine module, never a hand-kept list: nothing
but the store keeps or changes an image's metadata state, no header field is
written at a number, and no import hides in a function.  The behaviour behind
them is checked with qemu as the oracle: writes still pending in the store are
what every reader sees, and what the store commits is what ``qemu-img`` reads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qemu
from qcow2view.engine import CorruptImageError, open_image
from qcow2view.engine.ops.snapshot import delete_snapshot
from qcow2view.engine.snapshot_create import create_snapshot

ENGINE = Path(__file__).resolve().parents[2] / "qcow2view" / "engine"
# the image's metadata state, owned by the store alone (engine/metadata.py)
STORE_STATE = {"l1", "l1_table", "l2_cache", "pinned", "reftable", "snapshots", "bitmaps",
               "header", "maps_cache", "compressed_cache", "refcounts"}
OLD_PRIVATES = {"_l1", "_l2", "_l2_cache", "_reftable", "_maps_cache", "_zcache", "_writer"}
# The only imports allowed inside functions (never to hide an import cycle): what a
# command may not need, deferred so that start-up stays small -- the image facade
# loads the writer, the check and the maps on first use, the check loads the
# refcount rebuild only to repair, the maps load the check's comparison.
LAZY_IMPORTS = {("image.py", "write"), ("image.py", "check"), ("image.py", "maps"),
                ("check.py", "rebuild"), ("maps.py", "check"),
                # loaded when first needed: every command would pay for them at start-up
                ("image.py", "encryption"), ("compression.py", "zstandard")}


def _modules():
    return sorted(p for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts)


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ENGINE)}:{node.lineno}"


def test_only_the_store_changes_metadata_state():
    bad = []
    for path in _modules():
        if path.name in ("metadata.py", "allocator.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr in STORE_STATE \
                        and not (isinstance(t.value, ast.Name) and t.value.id == "self"):
                    bad.append(f"{_where(path, node)} sets .{t.attr}")
            if isinstance(node, ast.Attribute) and node.attr in OLD_PRIVATES \
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                bad.append(f"{_where(path, node)} reaches into .{node.attr}")
    assert not bad, bad


def test_no_write_at_a_literal_offset():
    bad = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "pwrite" and node.args:
                first = node.args[0]
                # the whole header cluster starts the file: offset 0 is the only number
                if isinstance(first, ast.Constant) and first.value != 0:
                    bad.append(_where(path, node))
    assert not bad, bad


def test_no_import_hidden_in_a_function():
    bad = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                bad += [_where(path, n) for n in ast.walk(node)
                        if isinstance(n, (ast.Import, ast.ImportFrom))
                        and (path.name, getattr(n, "module", None) or n.names[0].name)
                        not in LAZY_IMPORTS]
    assert not bad, bad


@pytest.fixture
def image_path(tmp_path):
    # 512-byte clusters: a 64-entry refcount table covers only 8 MiB of file
    return qemu.create(tmp_path / "store.qcow2", "64M", "cluster_size=512")


def test_pending_tables_are_what_readers_see(image_path, tmp_path):
    """Before a flush the new L2 table exists only in the store: the image's reads,
    table views and refcounts see it; after the close qemu reads the same."""
    with open_image(image_path, writable=True) as im:
        im.write(5 << 20, b"\xab" * 4096)
        m = im.guest_mapping(5 << 20)
        table = im.l2_table(m.l2_entry_offset - 8 * m.l2_index, m.l1_index)
        assert table.entry(m.l2_index).host_offset == m.host_offset
        assert im.read(5 << 20, 4096) == b"\xab" * 4096
        assert im.refcount(m.host_offset // 512) == 1
    code, out = qemu.check(image_path)
    assert code == 0, out
    raw = qemu.to_raw(image_path, tmp_path / "out.raw")
    assert raw[5 << 20:(5 << 20) + 4096] == b"\xab" * 4096


def test_table_growth_snapshot_and_delete_stay_consistent(image_path, tmp_path):
    """Enough allocation to move the refcount table, then a snapshot taken, written
    over and deleted through the store: qemu-img check finds nothing and qemu reads
    our bytes."""
    data = bytes(range(256)) * 4096                 # 1 MiB
    with open_image(image_path, writable=True) as im:
        first_table = im.header.refcount_table_offset
        for k in range(0, 12 << 20, 1 << 20):       # 12 MiB of file, more than 8
            im.write(k, data)
        im.flush()
        assert im.header.refcount_table_offset != first_table   # the table moved
        create_snapshot(im, "s1")
        im.write(0, b"\x01" * 512)                  # copy-on-write of a shared cluster
        im.flush()
        delete_snapshot(im, "s1")
        assert im.snapshots == []
    code, out = qemu.check(image_path)
    assert code == 0, out
    raw = qemu.to_raw(image_path, tmp_path / "out.raw")
    assert raw[:512] == b"\x01" * 512
    assert raw[512:12 << 20] == (data * 12)[512:]


def test_a_write_through_an_entry_into_metadata_is_refused(tmp_path):
    """An L2 entry that points at the L1 table (COPIED, refcount 1) must not be
    written through, as QEMU's overlap check refuses it: the L1 table survives."""
    path = qemu.create(tmp_path / "overlap.qcow2", "1M")
    qemu.qemu_io(path, "write -P 0x5a 0 64k")
    with open_image(path) as im:
        entry_at = im.guest_mapping(0).l2_entry_offset
        l1_at = im.header.l1_table_offset
    with open(path, "r+b") as f:
        f.seek(entry_at)
        f.write((l1_at | 1 << 63).to_bytes(8, "big"))      # COPIED, into the L1 table
    l1_before = path.read_bytes()[l1_at:l1_at + 65536]
    with open_image(path, writable=True) as im:
        with pytest.raises(CorruptImageError, match="metadata"):
            im.write(0, b"\xff" * 512)
    assert path.read_bytes()[l1_at:l1_at + 65536] == l1_before
    code, _ = qemu.check(path)
    assert code == 2                     # the damage we made, nothing more written over
