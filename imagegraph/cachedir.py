"""Where the parsed-spec cache lives, and whether a cache file may be read.

The cache is a pickle, and unpickling runs code: it is kept only in
directories that belong to the user running imagegraph. With a state
directory (DIR/.imagegraph, or the one `--state` names) it lives there;
without one, in the user's cache directory (`$XDG_CACHE_HOME/imagegraph`,
default `~/.cache/imagegraph`), one file per project directory, so the very
first `plan` of a directory fills it. A directory or file owned by someone
else, or writable by group or others, is never used.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

STATE_DIR = ".imagegraph"  # project.STATE_DIR (not imported: project imports the spec loader)


def _ours(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def safe_to_use(path: Path) -> bool:
    """`path` (a directory or the cache file) is the user's own and nobody else can write it.

    A missing path is safe when its nearest existing ancestor is the user's
    (it will be created with mode 0700).
    """
    p = path
    while True:
        try:
            st = p.lstat()
        except FileNotFoundError:
            if p.parent == p:
                return False
            p = p.parent
            continue
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            try:
                st = p.stat()
            except OSError:
                return False
        return _ours(st)


def user_cache_dir() -> Path | None:
    """`$XDG_CACHE_HOME/imagegraph` (or `~/.cache/imagegraph`) when it is safe, else None."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not base or not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        home = os.environ.get("HOME", "")
        if not home or not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    path = Path(base) / "imagegraph"
    return path if safe_to_use(path) else None


def spec_cache_dir(root: Path, state_dir: Path | None = None) -> Path | None:
    """The directory of `root`'s parsed-spec cache, or None (no safe place: no cache)."""
    state = state_dir if state_dir is not None else root / STATE_DIR
    if state.is_dir():
        cache = state / "cache"
        return cache if safe_to_use(cache) else None
    user = user_cache_dir()
    if user is None:
        return None
    project = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return user / "projects" / project


def ensure_dir(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700 (a umask of 002 leaves them private)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
