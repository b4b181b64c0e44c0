"""Thin wrappers around the real qemu-img and qemu-io, the tests' oracle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")


def run(*args: str | os.PathLike, check: bool = True, input: bytes | None = None
        ) -> subprocess.CompletedProcess:
    argv = [os.fspath(a) for a in args]
    p = subprocess.run(argv, capture_output=True, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {p.returncode}:\n"
                             f"{p.stderr.decode(errors='replace')}{p.stdout.decode(errors='replace')}")
    return p


def qemu_img(*args: str | os.PathLike, check: bool = True) -> subprocess.CompletedProcess:
    return run(QEMU_IMG, *args, check=check)


def qemu_io(path: str | os.PathLike, *commands: str, fmt: str = "qcow2",
            extra: tuple[str, ...] = ()) -> str:
    """Run qemu-io commands on an image; fails the test if any command reports an error."""
    args = [QEMU_IO, "-f", fmt, *extra]
    for c in commands:
        args += ["-c", c]
    args.append(os.fspath(path))
    p = subprocess.run(args, capture_output=True, text=True)
    out = p.stdout + p.stderr
    if p.returncode != 0 or "error" in out.lower() or "failed" in out.lower():
        raise AssertionError(f"qemu-io {commands} on {path} failed:\n{out}")
    return out


def create(path: str | os.PathLike, size: str | int, *opts: str, backing: str | None = None,
           backing_fmt: str | None = None, fmt: str = "qcow2") -> Path:
    args = ["create", "-q", "-f", fmt]
    if opts:
        args += ["-o", ",".join(opts)]
    if backing:
        args += ["-b", backing, "-F", backing_fmt or "qcow2"]
    qemu_img(*args, path, str(size))
    return Path(path)


#: qemu-img's PBKDF benchmark (qcrypto_pbkdf2_count_iters) fails with this when the
#: thread's CPU clock did not move during its first, short round: a known QEMU bug on
#: fast or busy machines (fixed upstream in 2025 by tolerating a few such rounds), not
#: a fault of the image options.  Which round it hits is luck, so another try helps.
PBKDF_CLOCK_FLAKE = b"Unable to get accurate CPU usage"
LUKS_TRIES = 8


def create_luks(path: str | os.PathLike, size: str | int, *opts: str,
                secret: str = "123456", secret_id: str = "sec0") -> Path:
    """A LUKS-encrypted qcow2 (``encrypt.format=luks``, key in secret ``secret_id``).

    Retries the benchmark flake above; skips the test, naming it, if every try hits it
    (any other failure fails the test)."""
    import pytest
    options = ",".join((f"encrypt.format=luks,encrypt.key-secret={secret_id}",
                        "encrypt.iter-time=10", *opts))
    for _ in range(LUKS_TRIES):
        p = qemu_img("create", "-q", "-f", "qcow2", "--object",
                     f"secret,id={secret_id},data={secret}", "-o", options, path, str(size),
                     check=False)
        if PBKDF_CLOCK_FLAKE not in p.stderr:
            break
    else:
        pytest.skip(f"qemu-img create of a LUKS image failed {LUKS_TRIES} times with QEMU's "
                    f"PBKDF benchmark flake ({PBKDF_CLOCK_FLAKE.decode()})")
    if p.returncode != 0:
        raise AssertionError(f"qemu-img create -o {options} exited {p.returncode}:\n"
                             f"{p.stderr.decode(errors='replace')}")
    return Path(path)


def to_raw(path: str | os.PathLike, out: str | os.PathLike, snapshot: str | None = None) -> bytes:
    """The guest disk as qemu sees it (``qemu-img convert -O raw``)."""
    args = ["convert", "-O", "raw"]
    if snapshot is not None:
        args += ["-l", f"snapshot.name={snapshot}"]
    qemu_img(*args, path, out)
    return Path(out).read_bytes()


def info(path: str | os.PathLike, *extra: str) -> dict:
    return json.loads(qemu_img("info", "--output=json", *extra, path).stdout)


def check(path: str | os.PathLike, *extra: str) -> tuple[int, dict]:
    """(exit code, parsed JSON) of ``qemu-img check --output=json``."""
    p = qemu_img("check", "--output=json", *extra, path, check=False)
    try:
        data = json.loads(p.stdout)
    except json.JSONDecodeError:
        data = {"stdout": p.stdout.decode(errors="replace"),
                "stderr": p.stderr.decode(errors="replace")}
    return p.returncode, data


def qemu_map(path: str | os.PathLike) -> list[dict]:
    return json.loads(qemu_img("map", "--output=json", path).stdout)


def map_shape(entries: list[dict]) -> list:
    """``qemu-img map --output=json`` entries without host offsets, adjacent runs of
    the same kind merged (map splits runs where host offsets jump): the allocation
    two images share when their clusters lie at different places."""
    out: list = []
    for e in entries:
        kind = {k: v for k, v in e.items() if k not in ("offset", "start", "length")}
        if out and out[-1][0] == kind and out[-1][1] + out[-1][2] == e["start"]:
            out[-1][2] += e["length"]
        else:
            out.append([kind, e["start"], e["length"]])
    return out


def host_offset(path: str | os.PathLike, guest: int) -> int | None:
    """Where ``qemu-img map`` says this image itself (not a backing file) keeps guest
    byte ``guest``; None when it does not."""
    for e in qemu_map(path):
        if e["start"] <= guest < e["start"] + e["length"]:
            return e["offset"] + guest - e["start"] if "offset" in e and e["depth"] == 0 \
                else None
    return None


def compare(a: str | os.PathLike, b: str | os.PathLike, *extra: str) -> subprocess.CompletedProcess:
    return qemu_img("compare", *extra, a, b, check=False)
