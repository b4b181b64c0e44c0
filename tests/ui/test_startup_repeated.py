"""The window starts every time: many real launches in a row, none killed by a signal.

Start-up once crashed now and then (SIGSEGV in shiboken, pyqtgraph imported in a
background thread while the main thread built widgets).  One launch rarely shows
such a race, so this launches the real program many times, two at a time to add
the load under which it showed, with faulthandler on so a crash prints its stacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCHES = 18
AT_ONCE = 2


@pytest.mark.slow
def test_window_starts_many_times_without_a_signal(tmp_path, sample_image):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    failures = []
    for first in range(0, LAUNCHES, AT_ONCE):
        runs = []
        for n in range(first, min(first + AT_ONCE, LAUNCHES)):
            shot = tmp_path / f"shot{n}.png"
            runs.append((n, shot, subprocess.Popen(
                [sys.executable, "-X", "faulthandler", "-m", "qcow2view", str(sample_image),
                 "--screenshot", str(shot)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)))
        for n, shot, proc in runs:
            _out, err = proc.communicate(timeout=120)
            if proc.returncode < 0:
                failures.append(f"launch {n}: killed by {signal.Signals(-proc.returncode).name}"
                                f"\n{err}")
            elif proc.returncode != 0 or not shot.exists():
                failures.append(f"launch {n}: exit {proc.returncode}\n{err}")
    assert not failures, "\n\n".join(failures)
