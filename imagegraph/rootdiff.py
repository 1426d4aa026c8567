"""File-level diff of two builds' root filesystems (`imagegraph diff --files`).

`diff_trees(old, new)` walks both roots at once, each directory's entries in
name order, and merges the two streams: nothing is unpacked or listed in
full first, and each file is read at most once per side (contents are
compared only when type, size and mode agree). Symlinks are compared by
target and never followed. A path is `added`, `removed` or `changed` (with
what changed: type, mode, owner, target, content) with both sizes.

`tree_changes(spec, from_key, to_key, runner)` mounts the two keys' local
images (throwaway working containers, removed whatever happens) and diffs them.
"""

from __future__ import annotations

import filecmp
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import UsageError
from .runner import Runner


class FileChangeKind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass(frozen=True)
class FileChange:
    kind: FileChangeKind
    path: str  # absolute path inside the image
    old_size: int | None
    new_size: int | None
    what: str = ""  # for changed: type, mode, owner, target, content (comma-separated)

    def to_json(self) -> dict:
        return {**asdict(self), "kind": str(self.kind)}


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """(path inside the image, lstat) of everything under `root`, depth first, names in order."""
    try:
        entries = sorted(
            os.scandir(root / rel.lstrip("/")) if rel else os.scandir(root), key=lambda e: e.name
        )
    except OSError:
        return
    for e in entries:
        path = f"{rel}/{e.name}"
        st = e.stat(follow_symlinks=False)
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, path)


def _order(path: str) -> tuple[str, ...]:
    # Depth-first order of the walk: a directory's children come right after it, before its next sibling.
    return tuple(path.split("/"))


def _size(st: os.stat_result) -> int | None:
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _changed(old_root: Path, new_root: Path, path: str, a: os.stat_result, b: os.stat_result) -> str:
    what = []
    ka, kb = _kind(a.st_mode), _kind(b.st_mode)
    if ka != kb:
        return "type"
    if stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode):
        what.append("mode")
    if (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid):
        what.append("owner")
    if ka == "symlink":
        if os.readlink(old_root / path.lstrip("/")) != os.readlink(new_root / path.lstrip("/")):
            what.append("target")
    elif ka == "file":
        if a.st_size != b.st_size or not filecmp.cmp(
            old_root / path.lstrip("/"), new_root / path.lstrip("/"), shallow=False
        ):
            what.append("content")
    return ",".join(what)


def diff_trees(old_root: Path, new_root: Path) -> Iterator[FileChange]:
    """Changes from the tree at `old_root` to the one at `new_root`, in path order (module docstring)."""
    old_root, new_root = Path(old_root), Path(new_root)
    olds, news = _walk(old_root), _walk(new_root)
    a, b = next(olds, None), next(news, None)
    while a is not None or b is not None:
        if b is None or (a is not None and _order(a[0]) < _order(b[0])):
            assert a is not None
            yield FileChange(FileChangeKind.REMOVED, a[0], _size(a[1]), None)
            a = next(olds, None)
        elif a is None or _order(b[0]) < _order(a[0]):
            yield FileChange(FileChangeKind.ADDED, b[0], None, _size(b[1]))
            b = next(news, None)
        else:
            what = _changed(old_root, new_root, a[0], a[1], b[1])
            if what:
                yield FileChange(FileChangeKind.CHANGED, a[0], _size(a[1]), _size(b[1]), what)
            a, b = next(olds, None), next(news, None)


def tree_changes(spec: Any, from_key: str, to_key: str, runner: Runner) -> list[FileChange]:
    """The file changes between the local images of two keys of a layer; UsageError if one is missing."""
    from .build import local_image_id, local_ref
    from .publish.artifacts import mounted_image

    images = []
    for k in (from_key, to_key):
        image = local_image_id(local_ref(spec, k), runner)
        if image is None:
            raise UsageError(
                f"{spec.name}: the image of key {k[:12]} is not in local storage ({local_ref(spec, k)}); "
                "--files compares local images: pull its key tag with `buildah pull`, or leave out --files"
            )
        images.append(image)
    with mounted_image(images[0], runner) as old, mounted_image(images[1], runner) as new:
        return list(diff_trees(old, new))
