"""Entry point of the PyInstaller bundle: the same as the `qcow2view` script pip makes."""

import sys

from qcow2view.cli import main

if __name__ == "__main__":
    sys.exit(main())
