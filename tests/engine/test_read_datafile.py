"""External data files (``data_file``, ``data_file_raw``)."""

from __future__ import annotations

import pytest

import qemu
from conftest import guest_data
from qcow2view.engine import ClusterType, Qcow2Error, open_image

KiB, MiB = 1024, 1024 * 1024


def _scribble(path, offset: int, data: bytes) -> None:
    """Change the data file behind QEMU's back."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("data_file_raw", ["off", "on"])
def test_data_file_reads_like_qemu(tmp_path, guest_write, reads_like_qemu, data_file_raw,
                                   monkeypatch):
    monkeypatch.chdir(tmp_path)      # qemu-img create makes a relative data file in cwd
    data = tmp_path / "disk.data"
    path = qemu.create(tmp_path / "df.qcow2", "4M", f"data_file={data.name}",
                       f"data_file_raw={data_file_raw}")
    guest_write(path, 4096, guest_data(100 * KiB, 1))
    qemu.qemu_io(path, f"write -z {256 * KiB} {64 * KiB}",
                 f"write -P 9 {512 * KiB} {128 * KiB}", f"discard {512 * KiB} {64 * KiB}")
    # bytes the qcow2 metadata does not map must not show (data_file_raw=off),
    # or show exactly where QEMU shows them (data_file_raw=on)
    _scribble(data, 1 * MiB, b"X" * 5000)
    _scribble(data, 256 * KiB, b"Y" * 100)
    raw = reads_like_qemu(path)      # QEMU 7.2 looks for a relative name in its cwd
    monkeypatch.chdir("/")           # the engine also finds it from the image's folder
    with open_image(path) as img:
        assert img.header.has_data_file
        assert img.header.data_file_raw == (data_file_raw == "on")
        assert img.data_file_name == data.name
        assert img.data_file is not None and img.data_file.path == str(data)
        m = img.guest_mapping(8192)
        assert (m.type, m.file, m.host_offset) == (ClusterType.NORMAL, str(data), 8192)
    assert (b"X" in raw) == (data_file_raw == "on")


def test_data_file_raw_unallocated_entry_reads_zeros_like_qemu(tmp_path, reads_like_qemu,
                                                               monkeypatch):
    """QEMU 7.2 reads an unallocated L2 entry as zeros even with data_file_raw=on,
    although the raw data file holds bytes there."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.data"
    path = qemu.create(tmp_path / "d.qcow2", "1M", f"data_file={data.name}", "data_file_raw=on")
    qemu.qemu_io(path, "write -P 1 0 1M")
    with open_image(path) as img:
        l2 = img.l1_table.entry(0).l2_offset
    _scribble(path, l2 + 8 * 3, bytes(8))           # forget cluster 3's mapping
    raw = reads_like_qemu(path)
    assert raw[3 * 64 * KiB:4 * 64 * KiB] == bytes(64 * KiB)
    assert raw[:3 * 64 * KiB] == b"\1" * (3 * 64 * KiB)


def test_data_file_shorter_than_mapping_reads_zeros(tmp_path, reads_like_qemu, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.data"
    path = qemu.create(tmp_path / "d.qcow2", "1M", f"data_file={data.name}")
    qemu.qemu_io(path, "write -P 1 0 1M")
    with open(data, "r+b") as f:
        f.truncate(300 * KiB)
    reads_like_qemu(path)


def test_missing_data_file_is_a_typed_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.data"
    path = qemu.create(tmp_path / "d.qcow2", "1M", f"data_file={data.name}")
    data.unlink()
    with pytest.raises(Qcow2Error, match="d.data"):
        open_image(path)
