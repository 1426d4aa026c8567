"""File-level diff of two root filesystems: a merge walk of both trees."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.rootdiff import FileChangeKind, diff_trees


def tree(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_added_removed_changed_with_sizes(tmp_path: Path) -> None:
    old = tree(tmp_path / "a", {"etc/motd": "hi", "usr/share/x/x.txt": "1.0", "usr/bin/gone": "bin"})
    new = tree(tmp_path / "b", {"etc/motd": "hi", "usr/share/x/x.txt": "1.1", "usr/share/y/y.txt": "new!"})
    os.symlink("x.txt", old / "usr/share/x/link")
    os.symlink("other", new / "usr/share/x/link")
    os.chmod(new / "etc/motd", 0o600)
    got = {(c.kind, c.path): c for c in diff_trees(old, new)}
    assert set(got) == {
        (FileChangeKind.CHANGED, "/etc/motd"),
        (FileChangeKind.REMOVED, "/usr/bin"),
        (FileChangeKind.REMOVED, "/usr/bin/gone"),
        (FileChangeKind.CHANGED, "/usr/share/x/link"),
        (FileChangeKind.CHANGED, "/usr/share/x/x.txt"),
        (FileChangeKind.ADDED, "/usr/share/y"),
        (FileChangeKind.ADDED, "/usr/share/y/y.txt"),
    }
    assert got[(FileChangeKind.CHANGED, "/etc/motd")].what == "mode"
    assert got[(FileChangeKind.CHANGED, "/usr/share/x/link")].what == "target"
    same_size = got[(FileChangeKind.CHANGED, "/usr/share/x/x.txt")]
    assert (same_size.what, same_size.old_size, same_size.new_size) == ("content", 3, 3)
    assert got[(FileChangeKind.ADDED, "/usr/share/y/y.txt")].new_size == 4
    assert list(diff_trees(old, old)) == []


_name = st.sampled_from(["a", "a-b", "a.b", "b", "z"])
_paths = st.dictionaries(
    st.lists(_name, min_size=1, max_size=3).map("/".join), st.sampled_from(["1", "22", "x"]), max_size=10
)


def _clean(files: dict[str, str]) -> dict[str, str]:
    """Drop paths that would need a file to be a directory too."""
    keep: dict[str, str] = {}
    for p in sorted(files):
        if not any(p.startswith(k + "/") or k.startswith(p + "/") for k in keep):
            keep[p] = files[p]
    return keep


@settings(max_examples=60, deadline=None)
@given(_paths, _paths)
def test_added_and_removed_are_the_set_differences(tmp_path_factory, a: dict, b: dict) -> None:
    a, b = _clean(a), _clean(b)
    base = tmp_path_factory.mktemp("t")
    old, new = tree(base / "old", a), tree(base / "new", b)

    def every(files: dict[str, str]) -> set[str]:
        out = set()
        for p in files:
            parts = p.split("/")
            out |= {"/" + "/".join(parts[: i + 1]) for i in range(len(parts))}
        return out

    changes = list(diff_trees(old, new))
    assert {c.path for c in changes if c.kind == FileChangeKind.ADDED} == every(b) - every(a)
    assert {c.path for c in changes if c.kind == FileChangeKind.REMOVED} == every(a) - every(b)
    changed = {c.path for c in changes if c.kind == FileChangeKind.CHANGED}
    assert changed <= every(a) & every(b)
    assert {"/" + p for p in a.keys() & b.keys() if a[p] != b[p]} <= changed
