"""Paths inside an image's root filesystem, seen from the host.

Images often hold absolute symlinks (/bin -> /usr/bin, /lib -> /usr/lib,
/boot/vmlinuz -> /boot/vmlinuz-6.1.0-28-amd64); following them on the host
would read the host's files instead of the image's. Builds (writing repo
files into a mount) and publishing (finding kernels) both resolve through here.
`read_os_release` reads the image's os-release that way.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path, PurePosixPath

MAX_LINKS = 40


def resolve_in_root(root: Path, path: str, *, must_exist: bool = True) -> Path | None:
    """The host path of `path` inside the image at `root`, following symlinks within the image.

    `..` never climbs above the image's root. With `must_exist` (the default),
    None when the path (or a link on the way) does not exist or links loop;
    otherwise the missing rest is appended as written, for paths about to be
    created.
    """
    parts = list(PurePosixPath("/" + path.lstrip("/")).parts[1:])
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = root.joinpath(*resolved, part)
        try:
            st = host.lstat()
        except OSError:
            if must_exist:
                return None
            return root.joinpath(*resolved, part, *[p for p in parts if p not in ("", ".")])
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in PurePosixPath(target).parts if p != "/"] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def read_os_release(rootfs: Path) -> dict[str, str]:
    """`/etc/os-release` (else `/usr/lib/os-release`) of the image, values unquoted."""
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        p = resolve_in_root(Path(rootfs), candidate)
        if p is not None and not p.is_file():
            p = None
        if p is None:
            continue
        out: dict[str, str] = {}
        for line in p.read_text(errors="replace").splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            k, _, v = line.partition("=")
            try:
                words = shlex.split(v)
                v = " ".join(words)
            except ValueError:
                v = v.strip().strip("\"'")
            out[k.strip()] = v
        return out
    return {}
