"""Content digests: canonical JSON, sha256, and the digest of a file or a whole tree.

Key documents hash these; build backends use them for the project files
they contribute to a key (see `build.backends`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any

# json.dumps with arguments builds an encoder per call: one, built once (a plan hashes thousands).
_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def canonical_json(obj: Any) -> str:
    """`json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`."""
    return _CANONICAL.encode(obj)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_file_cache: dict[tuple, str] = {}


def _file_digest(path: Path, st: os.stat_result) -> str:
    # Re-hash only when the file changed; planning a directory twice in one process is cheap.
    ident = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    hit = _file_cache.get(ident)
    if hit is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        hit = h.hexdigest()
        _file_cache[ident] = hit
    return hit


def path_digest(path: Path, exclude: Collection[str] = ()) -> str | None:
    """sha256 over a file's bytes and mode, or a whole tree's names, modes, bytes and links.

    Entries named in `exclude` (e.g. `.git`) are left out wherever they are in the tree.
    None for a missing path: such a layer is planned as blocked (project.unbuildable), never built.
    """
    try:
        top: os.stat_result | None = os.lstat(path)
    except (OSError, ValueError):  # as os.path.lexists answers False
        return None
    entries: list[list] = []

    def add(p: Path, rel: str, st: os.stat_result | None = None) -> None:
        st = st or p.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entries.append([rel, "link", os.readlink(p)])
        elif stat.S_ISDIR(st.st_mode):
            entries.append([rel, "dir", mode])
            for child in sorted(os.listdir(p)):
                if child not in exclude:
                    add(p / child, f"{rel}/{child}" if rel else child)
        elif stat.S_ISREG(st.st_mode):
            entries.append([rel, "file", mode, _file_digest(p, st)])
        else:
            entries.append([rel, "special", mode])

    if top is not None and stat.S_ISLNK(top.st_mode) and path.exists():
        # A symlinked source is copied as what it points to (buildah copy follows it).
        path, top = path.resolve(), None
    add(path, "", top)  # one lstat for a plain file (many layers copy the same one)
    return sha256_hex(canonical_json(entries).encode())
