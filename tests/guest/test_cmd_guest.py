"""qcow2view ls|owner|changed|cat: the JSON contract, exit codes and bytes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import qemu
from guestdisks import debugfs

from qcow2view.cli import main


def run(capsysbinary, *argv) -> tuple[int, bytes, str]:
    rc = main([str(a) for a in argv])
    out, err = capsysbinary.readouterr()
    return rc, out, err.decode()


def test_ls_json_keys_and_extents_hold_the_files_bytes(gpt_disk, capsysbinary):
    rc, out, err = run(capsysbinary, "ls", gpt_disk.qcow2, "--files", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert set(d) == {"partition_table", "problems", "partitions"}
    assert d["partition_table"] == "gpt" and d["problems"] == []
    raw = gpt_disk.raw.read_bytes()            # the oracle: qemu-img's raw, not our reads
    for p in d["partitions"]:
        assert {"index", "start", "size", "type", "name", "filesystem"} <= set(p)
        fs = p["filesystem"]
        assert {"type", "label", "uuid", "files"} <= set(fs)
        for f in fs["files"]:
            assert {"path", "size", "extents"} <= set(f)
            if f["type"] != "file" or f["inline"]:
                continue
            got = bytearray(f["size"])
            for fo, g, n in f["extents"]:
                got[fo:fo + n] = raw[g:g + n]
            src = (gpt_disk.src if p["index"] == 2 else gpt_disk.extra["fat_src"])
            assert bytes(got) == (src / f["path"].lstrip("/")).read_bytes(), f["path"]
    assert [(p["index"], p["name"], p["filesystem"]["type"]) for p in d["partitions"]] == [
        (1, "EFI", "vfat"), (2, "root", "ext4")]


def test_ls_text_reads_like_lsblk_and_ls(gpt_disk, capsysbinary):
    rc, out, _ = run(capsysbinary, "ls", gpt_disk.qcow2, "--files")
    text = out.decode()
    assert rc == 0 and text.startswith("GPT, 48.0 MiB disk")
    assert re.search(r"^2\s+\d+\s+\S+ MiB\s+Linux filesystem \(root\)\s+ext4\s+rootfs", text,
                     re.M)
    assert re.search(r"^-rw-r--r--\s+2\s+1500000 .* /data/hard$", text, re.M)
    assert "/link -> etc/hostname" in text


def test_owner_json(gpt_disk, capsysbinary):
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    bs = int(re.search(r"Block size:\s+(\d+)", debugfs(part, "stats")).group(1))
    blk = int(debugfs(part, "bmap /etc/fstab 0").split()[0])
    rc, out, _ = run(capsysbinary, "owner", gpt_disk.qcow2, hex(start + blk * bs + 7), "--json")
    assert rc == 0
    assert json.loads(out) == {"offset": start + blk * bs + 7, "what": "file data",
                               "partition": 2, "filesystem": "ext4", "path": "/etc/fstab",
                               "file_offset": 7}
    rc, out, _ = run(capsysbinary, "owner", gpt_disk.qcow2, "LBA 1")
    assert out.decode().strip() == "0x200: partition table, GPT header"


def test_changed_json(gpt_disk, tmp_path, capsysbinary):
    ov = tmp_path / "ov.qcow2"
    qemu.qemu_img("create", "-q", "-f", "qcow2", "-b", gpt_disk.qcow2, "-F", "qcow2", ov)
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    bs = int(re.search(r"Block size:\s+(\d+)", debugfs(part, "stats")).group(1))
    blk = int(debugfs(part, "bmap /bin/tool 1").split()[0])
    qemu.qemu_io(ov, f"write -P 0xaa {start + blk * bs} 1")
    rc, out, _ = run(capsysbinary, "changed", ov, "--json")
    assert rc == 0
    d = json.loads(out)
    assert d == {"against": f"backing file {gpt_disk.qcow2}",
                 "files": [{"path": "/bin/tool", "partition": 2, "bytes_changed": 1}],
                 "other_bytes_changed": 0}


def test_cat_gives_the_bytes_and_follows_symlinks(gpt_disk, mbr_disk, capsysbinary):
    rc, out, _ = run(capsysbinary, "cat", gpt_disk.qcow2, "/data/big.bin", "--partition", "2")
    assert rc == 0 and out == (gpt_disk.src / "data/big.bin").read_bytes()
    rc, out, _ = run(capsysbinary, "cat", gpt_disk.qcow2, "/link", "--partition", "2")
    assert out == b"guest-host\n"
    rc, out, _ = run(capsysbinary, "cat", gpt_disk.qcow2, "/sparse.img", "--partition", "2")
    assert out == (gpt_disk.src / "sparse.img").read_bytes()
    rc, out, _ = run(capsysbinary, "cat", mbr_disk.qcow2, "/hostname", "--partition", "1")
    assert rc == 0 and out == b"guest-host\n"          # NTFS resident data


@pytest.mark.parametrize("argv, reason", [
    (["cat", "{gpt}", "/etc/hostname"], "on several filesystems (partitions 1, 2)"),
    (["cat", "{gpt}", "/nope"], "/nope: no such file in the guest"),
    (["cat", "{gpt}", "/etc", "--partition", "2"], "/etc: is a directory"),
    (["owner", "{gpt}", "1T"], "lies outside the"),
    (["owner", "{gpt}", "twelve"], "not a guest offset"),
    (["changed", "{gpt}"], "has no backing file"),
    (["changed", "{gpt}", "--snapshot", "s9"], "no snapshot named 's9'"),
    (["ls", "/no/such.qcow2"], "no such file"),
    (["ls", "{raw}"], "qcow2view: "),
])
def test_bad_input_exits_2_with_one_line(gpt_disk, capsysbinary, argv, reason):
    argv = [a.format(gpt=gpt_disk.qcow2, raw=gpt_disk.raw) for a in argv]
    rc, out, err = run(capsysbinary, *argv)
    assert rc == 2
    assert err.startswith("qcow2view: ") and err.count("\n") == 1 and reason in err, err


def test_commands_load_no_qt(gpt_disk):
    code = ("import sys; from qcow2view.cli import main; main(['ls', sys.argv[1]]); "
            "assert not [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph'))]")
    subprocess.run([sys.executable, "-c", code, str(gpt_disk.qcow2)], check=True,
                   capture_output=True)


def test_cat_and_changed_with_a_snapshot(gpt_disk, tmp_path, capsysbinary):
    import shutil
    q = tmp_path / "snap.qcow2"
    shutil.copy(gpt_disk.qcow2, q)
    qemu.qemu_img("snapshot", "-c", "s1", q)
    part, start = gpt_disk.parts[2], gpt_disk.starts[2]
    bs = int(re.search(r"Block size:\s+(\d+)", debugfs(part, "stats")).group(1))
    blk = int(debugfs(part, "bmap /etc/hostname 0").split()[0])
    qemu.qemu_io(q, f"write -P 0x21 {start + blk * bs} 5")
    rc, out, _ = run(capsysbinary, "cat", q, "/etc/hostname", "--partition", "2")
    assert out == b"!!!!!-host\n"
    rc, out, _ = run(capsysbinary, "cat", q, "/etc/hostname", "--partition", "2",
                     "--snapshot", "s1")
    assert out == b"guest-host\n"
    rc, out, _ = run(capsysbinary, "changed", q, "--snapshot", "s1", "--json")
    assert json.loads(out) == {"against": "snapshot s1", "files": [
        {"path": "/etc/hostname", "partition": 2, "bytes_changed": 5}],
        "other_bytes_changed": 0}


def test_missing_backing_file_reads_as_unreadable(gpt_disk, tmp_path, capsysbinary):
    import shutil
    base = tmp_path / "base.qcow2"
    shutil.copy(gpt_disk.qcow2, base)
    ov = tmp_path / "ov.qcow2"
    qemu.qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", ov)
    base.unlink()
    rc, out, _ = run(capsysbinary, "ls", ov, "--json")
    d = json.loads(out)
    assert rc == 0 and d["partitions"] == [] and d["problems"][0].startswith("unreadable: ")
    rc, out, err = run(capsysbinary, "owner", ov, "0")
    assert rc == 2 and "unreadable" in err and err.count("\n") == 1
    rc, out, err = run(capsysbinary, "changed", ov)
    assert rc == 2 and "backing file" in err and "not found" in err
