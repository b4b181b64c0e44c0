"""LVM: logical volumes listed and read as volumes, their extents mapped back to
guest offsets.  The PV and its metadata are written by pvcreate/vgcfgrestore on a
loop device (lvcreate would need device-mapper); the LVs' ext4s by mkfs.ext4 -d."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import qemu
from guestdisks import make_tree, sh, source_files, tool

from qcow2view.engine import open_image
from qcow2view.guest.disk import read_disk
from qcow2view.guest.index import GuestIndex

MiB = 1 << 20
EXT = 4 * MiB                     # extent_size 8192 sectors
LVM_CONFIG = ('backup{backup=0 archive=0} '
              'devices{filter=["a|^/dev/loop|","r|.*|"] obtain_device_list_from_udev=0}')

BACKUP = """contents = "Text Format Volume Group"
version = 1
vgt {{
\tid = "58zcAx-lmV9-VS4j-5jTL-n7Oa-hlNP-tn8234"
\tseqno = 3
\tformat = "lvm2"
\tstatus = ["RESIZEABLE", "READ", "WRITE"]
\tflags = []
\textent_size = 8192
\tmax_lv = 0
\tmax_pv = 0
\tmetadata_copies = 0
\tphysical_volumes {{
\t\tpv0 {{
\t\t\tid = "{pv}"
\t\t\tdevice = "{dev}"
\t\t\tstatus = ["ALLOCATABLE"]
\t\t\tflags = []
\t\t\tdev_size = {sectors}
\t\t\tpe_start = 2048
\t\t\tpe_count = 15
\t\t}}
\t}}
\tlogical_volumes {{
\t\tlv1 {{
\t\t\tid = "aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]
\t\t\tflags = []
\t\t\tsegment_count = 1
\t\t\tsegment1 {{
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = 2
\t\t\t\ttype = "striped"
\t\t\t\tstripe_count = 1
\t\t\t\tstripes = [
\t\t\t\t\t"pv0", 0
\t\t\t\t]
\t\t\t}}
\t\t}}
\t\tlv2 {{
\t\t\tid = "bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb"
\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]
\t\t\tflags = []
\t\t\tsegment_count = 2
\t\t\tsegment1 {{
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = 1
\t\t\t\ttype = "striped"
\t\t\t\tstripe_count = 1
\t\t\t\tstripes = [
\t\t\t\t\t"pv0", 5
\t\t\t\t]
\t\t\t}}
\t\t\tsegment2 {{
\t\t\t\tstart_extent = 1
\t\t\t\textent_count = 2
\t\t\t\ttype = "striped"
\t\t\t\tstripe_count = 1
\t\t\t\tstripes = [
\t\t\t\t\t"pv0", 2
\t\t\t\t]
\t\t\t}}
\t\t}}
\t}}
}}
"""


def _lvm(*args) -> str:
    return sh(tool(args[0]), "--config", LVM_CONFIG, *args[1:])


@pytest.fixture(scope="module")
def lvm_disk(tmp_path_factory):
    if shutil.which("losetup") is None or shutil.which("pvcreate") is None and \
            not os.path.exists("/usr/sbin/pvcreate"):
        pytest.skip("losetup and lvm2 are needed to write an LVM PV")
    d = tmp_path_factory.mktemp("lvm")
    pv = d / "pv.img"
    with open(pv, "wb") as f:
        f.truncate(64 * MiB)
    p = subprocess.run(["losetup", "-f", "--show", pv], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"no loop device here: {p.stderr.strip()}")
    dev = p.stdout.strip()
    try:
        _lvm("pvcreate", "-q", dev)
        uuid = _lvm("pvs", "--noheadings", "-o", "pv_uuid", dev).strip()
        backup = d / "vgt.vg"
        backup.write_text(BACKUP.format(pv=uuid, dev=dev, sectors=64 * MiB // 512))
        _lvm("vgcfgrestore", "-q", "-f", backup, "vgt")
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    src = make_tree(d / "src", links=False)
    lv1, lv2 = d / "lv1.img", d / "lv2.img"
    for img, size in ((lv1, 2 * EXT), (lv2, 3 * EXT)):
        with open(img, "wb") as f:
            f.truncate(size)
    sh(tool("mkfs.ext4"), "-q", "-L", "one", "-d", src / "etc", lv1)
    sh(tool("mkfs.ext4"), "-q", "-L", "two", "-d", src, lv2)
    pe_start = 2048 * 512
    with open(pv, "r+b") as f:
        f.seek(pe_start)
        f.write(lv1.read_bytes())
        data = lv2.read_bytes()
        f.seek(pe_start + 5 * EXT)           # LV extent 0 on PV extent 5
        f.write(data[:EXT])
        f.seek(pe_start + 2 * EXT)           # LV extents 1-2 on PV extents 2-3
        f.write(data[EXT:])
    raw = d / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(72 * MiB)
    sh(tool("sgdisk"), "-n", "1:2048:+64M", "-t", "1:8e00", raw)
    with open(raw, "r+b") as f:
        f.seek(MiB)
        f.write(pv.read_bytes())
    q = d / "disk.qcow2"
    qemu.qemu_img("convert", "-O", "qcow2", raw, q)
    return q, src, raw, lv1, lv2


def test_logical_volumes_are_listed_and_read(lvm_disk):
    q, src, raw, lv1, lv2 = lvm_disk
    with open_image(q) as im:
        disk = read_disk(im)
    [pv] = disk.volumes
    assert pv.probe.type == "LVM2_member"
    lvs = {lv.lv_name: lv for lv in pv.logical_volumes}
    assert set(lvs) == {"vgt/lv1", "vgt/lv2"}
    assert lvs["vgt/lv1"].volume.size == 2 * EXT and lvs["vgt/lv2"].volume.size == 3 * EXT
    assert (lvs["vgt/lv1"].filesystem.label, lvs["vgt/lv2"].filesystem.label) == ("one", "two")
    # the files of the LV that lies in two pieces, read through their guest extents
    data = raw.read_bytes()
    got = {f.path: f for f in lvs["vgt/lv2"].filesystem.files}
    for path, p in source_files(src).items():
        f = got[path]
        out = bytearray(f.size)
        for fo, g, n in f.extents:
            out[fo:fo + n] = data[g:g + n]
        assert bytes(out) == p.read_bytes(), path
    idx = GuestIndex(disk)
    f = got["/data/big.bin"]
    o = idx.owner(f.extents[-1][1])
    assert (o.path, o.volume, o.partition) == ("/data/big.bin", "vgt/lv2", 1)
    # the PV's own label (sector 1, as pvcreate writes it) and metadata area
    assert idx.owner(MiB + 512 + 3).label == "LVM label"
    text = data.find(b"vgt {", MiB)
    assert idx.owner(text).label == "LVM metadata area"
    assert idx.owner(text).what == "filesystem metadata"


def test_libvslvm_agrees_on_the_logical_volumes(lvm_disk):
    """A second opinion from libvslvm: two LVs, and lv1's name and size.  (It cannot
    open lv2, whose two segments lie on the same PV: 'invalid physical volume value
    already set' — one more reason the segments are read here.)"""
    pyvslvm = pytest.importorskip("pyvslvm")
    q, _src, raw, _lv1, _lv2 = lvm_disk
    data = raw.read_bytes()[MiB:MiB + 64 * MiB]
    import io
    h = pyvslvm.handle()
    h.open_file_object(io.BytesIO(data))
    h.open_physical_volume_files_as_file_objects([io.BytesIO(data)])
    vg = h.get_volume_group()
    assert vg.number_of_logical_volumes == 2
    lv = vg.get_logical_volume(0)
    assert (lv.name, lv.size) == ("lv1", 2 * EXT)


@pytest.mark.parametrize("seed", range(10))
def test_damaged_lvm_metadata_is_a_problem(lvm_disk, seed):
    """Random bytes in the label, PV header and text metadata: problems, no exception."""
    import random
    from qcow2view.guest.disk import read_source
    from qcow2view.guest.source import BlockCache, GuestSource
    _q, _src, raw, _lv1, _lv2 = lvm_disk
    data = bytearray(raw.read_bytes()[:8 * MiB])
    r = random.Random(seed)
    text = data.find(b"vgt {", MiB)
    for _ in range(5 * (seed + 1)):
        o = r.choice([r.randrange(MiB, MiB + 1024), r.randrange(text, text + 1500)])
        data[o] = r.randrange(256)
    data = bytes(data)
    disk = read_source(GuestSource(BlockCache(lambda o, n: data[o:o + n], len(data))))
    assert isinstance(disk.problems, list)
