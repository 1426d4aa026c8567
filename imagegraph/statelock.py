"""The state directory's lock (one `up`, `gc` or `lock --update` at a time) and atomic file writes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from .errors import LockHeldError
from .state import StateError


class StateLock:
    """An exclusive lock on the state directory: one `up` (or `gc`, `lock --update`) at a time."""

    def __init__(self, state_dir: Path, command: str, wait: bool = False):
        self.path = state_dir / "lock"
        self.command = command
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # A read-only or foreign state directory: say so, with the way out, instead of a traceback.
            raise StateError(
                f"cannot lock the state directory {self.path.parent} ({exc.strerror or exc}): "
                f"{self.command} writes its state there; make it writable, or pass --state PATH on a "
                "writable filesystem"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} ({info.get('command', '?')}), started {info.get('started_at', '?')}"
            except (ValueError, KeyError):
                who = "another process"
            raise LockHeldError(
                f"another imagegraph run holds {self.path}: {who}; wait for it, or pass --wait to queue"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "command": self.command,
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            ).encode(),
        )
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never a part (mode 0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
