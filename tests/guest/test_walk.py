"""The directory walk's guards, on made-up directories a damaged disk could show
(the real-tool cases are in test_bad_input.py)."""

from __future__ import annotations

from qcow2view.guest.files import (MAX_BAD_IN_A_ROW, MAX_DEPTH, FileInfo, Filesystem,
                                   Volume, walk)


class Dir:
    """A directory entry: ``children`` (Dir or None for unreadable), or a count only."""

    def __init__(self, name, key, children=(), count=None):
        self.name, self.key, self.children, self.count = name, key, list(children), count

    @property
    def number_of_sub_file_entries(self):
        return len(self.children) if self.count is None else self.count

    def get_sub_file_entry(self, i):
        if i >= len(self.children) or self.children[i] is None:
            raise OSError("libfs_x: unable to read entry.")
        return self.children[i]


def _walk(root):
    fs = Filesystem("ext4", None, None, Volume.linear(0, 1 << 20))
    describe = lambda e, path: FileInfo(path, e.key, "dir", 0)   # noqa: E731
    walk(root, describe, fs, lambda n: None, lambda d: d.key)
    return fs


def test_a_directory_that_contains_itself_is_entered_once():
    root = Dir("", 2)
    a = Dir("a", 3)
    a.children = [a, root]
    root.children = [a]
    fs = _walk(root)
    assert [f.path for f in fs.files] == ["/a", "/a/a", "/a/"]
    assert "/a/a: directory already seen (a loop), not entered" in fs.problems


def test_a_huge_damaged_count_is_given_up():
    fs = _walk(Dir("", 2, count=10 ** 9))
    assert fs.skipped == 10 ** 9
    assert any(f"{MAX_BAD_IN_A_ROW} unreadable entries in a row" in p for p in fs.problems)


def test_depth_is_bounded():
    root = d = Dir("", 0)
    for k in range(1, MAX_DEPTH + 10):
        child = Dir(f"d{k}", k)
        d.children = [child]
        d = child
    fs = _walk(root)
    assert len(fs.files) == MAX_DEPTH
    assert any("levels, not entered" in p for p in fs.problems)


def test_a_missing_root_is_a_problem():
    fs = _walk(None)
    assert fs.files == [] and fs.skipped == 1 and "root directory unreadable" in fs.problems[0]
