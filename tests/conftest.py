"""Shared fixtures: images are made by the real qemu-img/qemu-io."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, os.path.dirname(__file__))

import qemu  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "qtbot" in getattr(item, "fixturenames", ()) or "/ui/" in str(item.fspath) \
                or "/model/" in str(item.fspath):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(scope="session", autouse=True)
def _need_qemu():
    if qemu.QEMU_IMG is None or qemu.QEMU_IO is None:
        pytest.exit("qemu-img and qemu-io are needed (apt-get install qemu-utils)", returncode=4)
