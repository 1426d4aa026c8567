"""imagegraph/rootfs.py: paths inside an image never resolve to the host's files."""

from __future__ import annotations

import os
from pathlib import Path

from imagegraph.rootfs import resolve_in_root


def test_absolute_links_stay_inside_the_image(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("/usr/bin")  # absolute: must not escape to the host's /usr/bin
    (root / "usr" / "bin" / "bash").write_text("")
    assert resolve_in_root(root, "/bin/bash") == root / "usr" / "bin" / "bash"
    assert resolve_in_root(root, "/bin/zsh") is None
    assert resolve_in_root(root, "/bin/zsh", must_exist=False) == root / "usr" / "bin" / "zsh"
    assert resolve_in_root(root, "/bin/../../../etc/x", must_exist=False) == root / "etc" / "x"


def test_escapes_and_loops(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/../../../../etc/passwd", root / "escape")
    assert resolve_in_root(root, "escape") is None  # the image's /etc/passwd does not exist
    os.symlink("loop", root / "loop")
    assert resolve_in_root(root, "loop") is None
    assert resolve_in_root(root, "loop", must_exist=False) is None
