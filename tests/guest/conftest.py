"""Fixtures of tests/guest: the guest disks of guestdisks.py (a module of its own
name, so that test modules import its helpers without clashing with tests/conftest)."""

from guestdisks import gpt_compressed, gpt_disk, mbr_disk, xfs_disk  # noqa: F401
