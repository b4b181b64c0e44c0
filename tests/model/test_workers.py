"""A worker deleted while its thread still runs (its owner stopped waiting for it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import threading, time
    from PySide6.QtCore import QCoreApplication, QEvent, QObject
    from qcow2view.model.workers import Worker
    app = QCoreApplication([])

    def spin(seconds):       # the event loop, deferred deletes included
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            app.sendPostedEvents(None, QEvent.DeferredDelete)
    owner = QObject()
    gate = threading.Event()
    w = Worker("stuck", lambda _p, _c: gate.wait(30), owner)    # never looks at cancel
    w.start()
    w.stop(timeout_ms=50)           # the owner gives up waiting...
    w.deleteLater()                 # ...and lets it go, then goes itself
    owner.deleteLater()
    spin(0.3)
    gate.set()
    spin(0.5)
    import shiboken6
    print("ended", "deleted" if not shiboken6.isValid(w) else "kept")
""")


def test_a_worker_deleted_while_running_ends_before_it_is_destroyed():
    """The process carries on (Qt aborts it when a QThread is destroyed while running)
    and the worker's thread ends in its own time."""
    got = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip() == "ended deleted"
    assert "Destroyed while thread is still running" not in got.stderr
