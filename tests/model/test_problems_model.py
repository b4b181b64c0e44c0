"""The Problems list carries what qemu-img check finds."""

from __future__ import annotations

import qemu
from qcow2view.model.document import ImageDocument
from qcow2view.model.problems_model import ClusterRole, ProblemsModel


def test_leak_listed(sample_image, qtbot, qtmodeltester, make_leak):
    leak = make_leak(sample_image)
    assert qemu.check(sample_image)[1]["leaks"] == 1
    d = ImageDocument(sample_image)
    with qtbot.waitSignal(d.mapsReady, timeout=30000):
        d.load()
    m = ProblemsModel()
    m.set_document(d)
    qtmodeltester.check(m)
    rows = [m.problem(r) for r in range(m.rowCount())]
    leaks = [p for p in rows if p.severity == "leak"]
    assert len(leaks) == 1 and leaks[0].cluster == leak
    assert m.index(rows.index(leaks[0]), 0).data(ClusterRole) == leak
    assert any("leak" in line for line in d.problems())
    d.close()


def test_columns_read_as_words(sample_image, make_leak, qtbot):
    """Severity and kind are words a user reads, not identifiers; counts agree in number."""
    make_leak(sample_image)
    d = ImageDocument(sample_image)
    with qtbot.waitSignal(d.mapsReady, timeout=30000):
        d.load()
    m = ProblemsModel()
    m.set_document(d)
    cells = [(m.index(r, 0).data(), m.index(r, 1).data()) for r in range(m.rowCount())]
    assert cells == [("leak", "unreferenced cluster")]
    assert "check: 1 leaked cluster" in d.problems()
    d.close()
