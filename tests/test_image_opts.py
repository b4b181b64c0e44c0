"""--image-opts and --object on the reading commands, against qemu-img 7.2 given the
same command line: the same output (or, where ours is our own format, the same as
ours for the plain file name), the same refusals with the same words, exit 1."""

from __future__ import annotations

import pytest

import qemu
from qcow2view import cli


def _ours(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _theirs(*args) -> tuple[int, str, str]:
    p = qemu.qemu_img(*map(str, args), check=False)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("imageopts")
    img = qemu.create(d / "a.qcow2", "4M", "cluster_size=4k")
    qemu.qemu_io(img, "write -P 1 0 1M", "write -P 2 3M 64k")
    qemu.qemu_img("snapshot", "-c", "s1", img)
    return d


def _opts(d, extra: str = "") -> str:
    return f"driver=qcow2,file.driver=file,file.filename={d / 'a.qcow2'}{extra}"


@pytest.mark.parametrize("cmd", [("info",), ("info", "--json"), ("check",),
                                 ("check", "--json")])
def test_info_and_check_read_the_named_file(d, capsys, cmd):
    """Our output for the option string is our output for the file (qemu-img's own
    info/check, in its own format, accepts the same string)."""
    rc, out, err = _ours(capsys, *cmd, "--image-opts", _opts(d))
    assert (rc, out) == _ours(capsys, *cmd, d / "a.qcow2")[:2], err
    assert _theirs(cmd[0], "--image-opts", _opts(d))[0] == 0


@pytest.mark.parametrize("args", [
    ("snapshot", "-l", "--image-opts", "{o}"),
    ("snapshot", "-l", "--image-opts", "driver=raw,file.filename={d}/a.qcow2"),
    ("measure", "-O", "qcow2", "--image-opts", "{o}"),
    ("measure", "--output=json", "-O", "qcow2", "--image-opts",
     "driver=raw,file.filename={d}/a.qcow2"),
], ids=lambda a: " ".join(a[:2]) + (" raw" if "raw" in a[-1] else ""))
def test_same_output_as_qemu_img(d, capsys, args):
    args = [a.format(d=d, o=_opts(d)) for a in args]
    rc, out, err = _ours(capsys, *args)
    assert (rc, out) == _theirs(*args)[:2], err


def test_convert_source(d, capsys, tmp_path):
    rc, _, err = _ours(capsys, "convert", "-O", "raw", "--image-opts", _opts(d),
                       tmp_path / "ours.raw")
    assert rc == 0, err
    qemu.qemu_img("convert", "-O", "raw", "--image-opts", _opts(d), tmp_path / "qemu.raw")
    assert (tmp_path / "ours.raw").read_bytes() == (tmp_path / "qemu.raw").read_bytes()


@pytest.mark.parametrize("cmd", [("info",), ("check",), ("snapshot", "-l"),
                                 ("measure", "-O", "qcow2")])
@pytest.mark.parametrize("spec", [
    "{o},foo=bar",                                  # unknown key of the format
    "{o},file.foo=1",                               # unknown key of the protocol
    "driver=raw,file.filename={d}/a.qcow2,bar=1",
    "{d}/a.qcow2",                                  # a file name, not options
    "driver=qcow2",                                 # no file
    "driver=qcow2,file.filename={d}/missing.qcow2",
])
def test_refusals_as_qemu_img(d, capsys, cmd, spec):
    spec = spec.format(d=d, o=_opts(d))
    rc, out, err = _ours(capsys, *cmd, "--image-opts", spec)
    want_rc, _, want_err = _theirs(*cmd, "--image-opts", spec)
    assert rc == want_rc == 1 and out == ""
    want = want_err.strip().splitlines()[-1].removeprefix("qemu-img: ")
    assert err.strip().split(": ", 1)[1] == want


def test_format_and_image_opts_exclusive(d, capsys, tmp_path):
    args = ("convert", "-f", "qcow2", "-O", "raw", "--image-opts", _opts(d), tmp_path / "o")
    rc, _, err = _ours(capsys, *args)
    want_rc, _, want_err = _theirs(*args)
    assert rc == want_rc == 1
    assert err.strip().endswith(want_err.strip().removeprefix("qemu-img: "))


def test_a_secret_is_accepted_but_encrypted_data_is_not_read(tmp_path, capsys):
    img = qemu.create_luks(tmp_path / "enc.qcow2", "1M")
    secret = ("--object", "secret,id=sec0,data=123456")
    spec = f"driver=qcow2,file.filename={img},encrypt.key-secret=sec0"
    rc, out, err = _ours(capsys, "info", *secret, "--image-opts", spec)
    assert rc == 0 and "encrypt" in out, err                # info needs no guest data
    assert _theirs("info", *secret, "--image-opts", spec)[0] == 0
    for args in (("convert", "-O", "raw", *secret, "--image-opts", spec, tmp_path / "o.raw"),
                 ("convert", "-O", "raw", *secret, img, tmp_path / "o.raw")):
        rc, _, err = _ours(capsys, *args)
        assert rc == 1 and "encrypted images are not readable here" in err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "o.raw").exists()
    rc, _, err = _ours(capsys, "info", "--object", "iothread,id=io0", img)
    assert rc == 1 and "only 'secret' objects" in err
