"""View tests share the model tests' fixtures (tests/gui_fixtures.py)."""

from gui_fixtures import *  # noqa: F401,F403
from gui_fixtures import _no_dangling_threads, _no_dialogs_left, _scratch_settings  # noqa: F401
