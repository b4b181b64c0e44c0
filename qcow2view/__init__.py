"""qcow2view: look inside QCOW2 disk images and edit them safely."""

__version__ = "0.1.0"
