"""Compressed writes (convert -c, the demo) over what the clusters held before: the old
host bytes are released, judged by qemu-img check and convert."""

from __future__ import annotations

import pytest

import qemu
from qcow2view.engine import open_image
from qcow2view.engine.compressed_write import write_compressed


@pytest.mark.parametrize("cluster_size", [4096, 65536])
def test_compressed_over_compressed_and_plain_clusters_leaks_nothing(tmp_path, cluster_size):
    p = qemu.create(tmp_path / "c.qcow2", "4M", f"cluster_size={cluster_size}")
    qemu.qemu_io(p, f"write -P 7 {4 * cluster_size} {cluster_size}")     # a plain cluster
    cs = cluster_size
    first = b"first text, compressible " * (4 * cs // 25) + bytes(4 * cs % 25)
    second = b"second!" * (6 * cs // 7) + bytes(6 * cs % 7)
    with open_image(p, writable=True) as im:
        write_compressed(im, 0, first)               # 4 clusters, streams packed together
        write_compressed(im, 0, second)              # over them, and over the plain one
    code, res = qemu.check(p)
    assert code == 0 and not res.get("leaks") and not res.get("corruptions"), res
    raw = qemu.to_raw(p, tmp_path / "c.raw")
    assert raw[:6 * cs] == second
    assert res.get("compressed-clusters") == 6
