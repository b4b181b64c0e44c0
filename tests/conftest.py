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
def _cwd_outside_the_checkout(tmp_path_factory):
    """Tests run from a scratch folder, so output named by a relative path (qemu-img
    makes a relative data_file in the current folder) never lands in the checkout."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture(scope="session", autouse=True)
def _need_qemu():
    if qemu.QEMU_IMG is None or qemu.QEMU_IO is None:
        pytest.exit("qemu-img and qemu-io are needed (apt-get install qemu-utils)", returncode=4)


# -- read-engine oracle helpers (engine tests) ---------------------------------------
def guest_data(n: int, seed: int) -> bytes:
    """Deterministic bytes that compress well yet differ everywhere (so a misplaced
    cluster shows), unlike qemu-io's one-byte -P patterns."""
    import random
    r = random.Random(seed)
    return bytes(r.choices(b"qcow2view\0\0\0\0", k=n))


@pytest.fixture
def guest_write(tmp_path):
    """guest_write(image, offset, data, *flags): write ``data`` with qemu-io (flags: -c ...)."""
    src = tmp_path / "guest-write.src"

    def write(path, offset: int, data: bytes, *flags: str, extra: tuple[str, ...] = ()):
        src.write_bytes(data)
        qemu.qemu_io(path, f"write {' '.join(flags)} -s {src} {offset} {len(data)}", extra=extra)
    return write


@pytest.fixture
def reads_like_qemu(tmp_path):
    """reads_like_qemu(image, snapshot=None): the engine's whole-disk read and random
    odd-length reads equal ``qemu-img convert -O raw``; returns the raw bytes."""
    import random
    import shutil
    from pathlib import Path

    from qcow2view.engine import open_image
    counter = iter(range(1 << 30))

    def check(path, *, snapshot: str | None = None, slices: int = 60, seed: int = 0) -> bytes:
        out = tmp_path / f"oracle-{next(counter)}.raw"
        raw = qemu.to_raw(path, out, snapshot=snapshot)
        out.unlink()
        if snapshot is not None:
            # `convert -l` keeps the current disk size; reverting a copy to the
            # snapshot (`snapshot -a`) gives the disk with the snapshot's own size:
            # past that size the view reads zeros
            copy = Path(path).with_name(f"oracle-{next(counter)}.qcow2")
            shutil.copyfile(path, copy)
            qemu.qemu_img("snapshot", "-a", snapshot, copy)
            reverted = qemu.to_raw(copy, out)
            copy.unlink()
            out.unlink()
            assert raw[:len(reverted)] == reverted and not raw[len(reverted):].strip(b"\0")
        with open_image(path, snapshot=snapshot) as img:
            assert img.virtual_size == len(raw)
            got = img.read(0, len(raw))
            if got != raw:
                bad = next(i for i, (a, b) in enumerate(zip(got, raw)) if a != b)
                pytest.fail(f"{path}: guest byte {bad:#x} reads {got[bad]:#x}, qemu says "
                            f"{raw[bad]:#x}; mapping {img.guest_mapping(bad)}")
            rng = random.Random(seed)
            span = 3 * img.cluster_size + 1000
            for _ in range(slices):
                off = rng.randrange(len(raw) + 1)
                n = rng.randrange(min(len(raw) - off, span) + 1)
                assert img.read(off, n) == raw[off:off + n], f"read({off:#x}, {n})"
        return raw
    return check
