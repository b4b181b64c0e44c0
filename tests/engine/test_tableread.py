"""The L2 table read-ahead (engine/tableread.py): batches arrive in order and equal
to reading them in line, a walk that stops early leaves no reader thread behind,
and a read that fails in the reader thread fails the walk at that batch."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import qemu
from qcow2view.engine import clusters as C
from qcow2view.engine import open_image
from qcow2view.engine.tableread import TableReader

PER_BATCH = 2


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """A 64 KiB-cluster image with 10 L2 tables (some runs, some scattered)."""
    p = qemu.create(tmp_path_factory.mktemp("ra") / "ra.qcow2", "5G")
    cmds = [f"write -P {k + 1} {k * 512}M 1M" for k in range(10)]
    cmds += [f"write -P 9 {k * 512 + 100}M 64k" for k in range(0, 10, 3)]
    qemu.qemu_io(p, *cmds)
    with open_image(p) as im:
        l1 = im.l1_table.entries & np.uint64(C.L1E_OFFSET_MASK)
        offsets = l1[l1 != 0].astype(np.int64)
    assert len(offsets) == 10
    return p, offsets


def _jobs(offsets):
    return [(offsets[k:k + PER_BATCH], k) for k in range(0, len(offsets), PER_BATCH)]


def _readahead_threads() -> int:
    return sum(t.name == "qcow2view-readahead" for t in threading.enumerate())


def test_batches_in_order_and_as_read_in_line(tables):
    p, offsets = tables
    with open_image(p) as im:
        inline = [(k, raw.copy(), runs.copy()) for k, raw, _, runs in
                  TableReader(im.file, im.cluster_size, False, PER_BATCH)
                  .stream(_jobs(offsets)[:1])]
        first = TableReader(im.file, im.cluster_size, False, PER_BATCH)
        got = [(k, raw.copy(), runs.copy()) for k, raw, _, runs in first.stream(_jobs(offsets))]
    assert [k for k, _, _ in got] == list(range(0, 10, PER_BATCH))
    assert np.array_equal(got[0][1], inline[0][1]) and np.array_equal(got[0][2], inline[0][2])
    with open_image(p) as im:
        for k, raw, runs in got:       # every batch against a plain read of its tables
            for row, off in enumerate(offsets[k:k + PER_BATCH].tolist()):
                want = C.be_u64(im.file.pread(off, im.cluster_size))
                assert np.array_equal(raw[row], want)
                assert runs[row] == C.is_contiguous_row(want, im.cluster_size)


def test_a_walk_that_stops_early_leaves_no_reader(tables):
    p, offsets = tables
    before = _readahead_threads()
    with open_image(p) as im:
        stream = TableReader(im.file, im.cluster_size, False, PER_BATCH).stream(_jobs(offsets))
        next(stream)
        stream.close()                     # a cancelled walk
    assert _readahead_threads() == before


def test_a_failed_read_fails_the_walk(tables):
    """The descriptor closed under the reader: the OSError reaches the caller, once
    the batches read before are delivered, and no thread is left."""
    p, offsets = tables
    before = _readahead_threads()
    with open_image(p) as im:
        reader = TableReader(im.file, im.cluster_size, False, PER_BATCH)
        stream = reader.stream(_jobs(offsets))
        next(stream)
        fd = im.file.fd
        os.close(fd)
        with pytest.raises(OSError):
            for _ in stream:
                pass
        im.file.fd = os.open(os.devnull, os.O_RDONLY)    # (for the image's own close)
    assert _readahead_threads() == before


def test_a_cancelled_check_leaves_no_reader(tables, monkeypatch):
    """Cancelled mid-walk, with the exception (and its traceback, which holds the
    walk's frames) still alive: the reader thread has ended all the same."""
    from qcow2view.engine import CancelledError, refscan
    monkeypatch.setattr(refscan, "BATCH_ENTRIES", PER_BATCH * 8192)
    p, _ = tables
    before = _readahead_threads()
    asked = []
    with open_image(p) as im:
        with pytest.raises(CancelledError) as caught:
            im.check(cancel=lambda: asked.append(1) or len(asked) > 2)
        assert caught.value.__traceback__ is not None
        assert _readahead_threads() == before
