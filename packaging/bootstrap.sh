#!/usr/bin/env bash
# Set up qcow2view in ./.venv on a Debian/Ubuntu machine.
#   bash packaging/bootstrap.sh          the app and the system libraries Qt needs
#   bash packaging/bootstrap.sh --test   also qemu-utils (the tests' oracle), the desktop
#                                        validators and the test extras
# Idempotent: what is already there is not installed again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test" ]; then
    bash packaging/install-system-deps.sh
    extras=".[test]"
else
    bash packaging/install-system-deps.sh --gui
    extras="."
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e "$extras"
# Bytecode now, not at each start: an editable install leaves it to the first import,
# and with PYTHONDONTWRITEBYTECODE set (some shells, containers) it is never written,
# so every `qcow2view-cli check` compiled the engine again (~35 ms of a 0.25 s check).
# py_compile writes the .pyc files whatever that variable says.
.venv/bin/python -m compileall -q -j 0 qcow2view >/dev/null
