"""Many signal emits must not crash the interpreter (PySide6 6.12 steals a ref to True)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import qcow2view.model
from PySide6.QtCore import QCoreApplication, QObject, Signal
app = QCoreApplication([])
class A(QObject):
    ping = Signal(bool)
a = A()
for _ in range(50000):
    a.ping.emit(True)
print("done")
"""


def test_many_emits_do_not_abort():
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       timeout=120, env={"QT_QPA_PLATFORM": "offscreen",
                                         "PYTHONPATH": __file__.rsplit("/tests/", 1)[0]})
    assert p.returncode == 0, p.stderr
    assert "done" in p.stdout
