"""The state of one layer build in progress, shared by the step modules.

`Work` carries the working container, its mount point, a private temporary
directory (removed after the build) and the step bookkeeping: `with
work.step("packages"):` names the step for logs, errors and timings, so a
failure anywhere can be reported as "step packages failed".
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..rootfs import resolve_in_root
from ..runner import CommandError, Completed, Runner
from ..spec import LayerSpec, packages_for_arch

# Before a `buildah run` command starts, containers/storage re-executes buildah from a sealed memfd
# copy of itself (pkg/unshare); the kernel can refuse the seal for a moment (EBUSY: pages still held).
# The command never ran, so running it again is safe. Seen once in ~1,000 tests on this VM.
REEXEC_FAILURE = "sealing memfd copy: Device or resource busy"
REEXEC_ATTEMPTS = 3
REEXEC_WAIT = 0.2  # seconds, times the attempt number


def reexec_failed(exc: CommandError) -> bool:
    """Whether `buildah run` failed in buildah's own re-exec, before the command started."""
    return exc.returncode != 0 and any(REEXEC_FAILURE in line for line in exc.tail)


@dataclass
class Work:
    spec: LayerSpec
    key: str
    runner: Runner
    container: str
    tmp: Path
    scratch: bool
    mount: Path | None = None
    locked: tuple[str, ...] | None = None  # the lock's exact packages for the package step (build/layer.py)
    current: str = "start"
    steps: list[tuple[str, float]] = field(default_factory=list)
    arch: Arch | None = None  # a multi-arch layer's node arch (None: the host's, today's argv)

    @property
    def packages(self) -> tuple[str, ...]:
        """The packages this node installs: `packages` plus its arch's `packages_by_arch` entry."""
        return packages_for_arch(self.spec, self.arch)

    @contextlib.contextmanager
    def step(self, name: str, message: str | None = None) -> Iterator[None]:
        self.current = name
        self.runner.note(name, message or name)
        start = time.monotonic()
        try:
            yield
        finally:
            self.steps.append((name, round(time.monotonic() - start, 3)))

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, **kw: Any) -> Completed:
        """runner.run at the current step, with buildah's environment."""
        from .container import buildah_env  # buildah's side loads when a build runs, not when planning

        return self.runner.run(argv, step=self.current, env={**buildah_env(), **(env or {})}, **kw)

    def buildah_run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, **kw: Any) -> Completed:
        """Run a command inside the working container (again, when buildah failed to start it)."""
        env_args = [f"--env={k}={v}" for k, v in (env or {}).items()]
        full = ["buildah", "run", *env_args, self.container, "--", *argv]
        for attempt in range(1, REEXEC_ATTEMPTS + 1):
            try:
                return self.run(full, **kw)
            except CommandError as exc:
                if attempt == REEXEC_ATTEMPTS or not reexec_failed(exc):
                    raise
                self.runner.log.warning(
                    "buildah could not start the command (the kernel refused to seal its memfd copy); "
                    "running it again",
                    step=self.current,
                    attempt=attempt,
                )
                time.sleep(REEXEC_WAIT * attempt)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def image_path(self, path: str) -> Path:
        """Host path of `path` inside the image, following symlinks as the image would."""
        assert self.mount is not None
        # None only for a symlink loop: then the path as written, which fails where it is used.
        return resolve_in_root(self.mount, path, must_exist=False) or self.mount / path.lstrip("/")

    def has(self, *paths: str) -> bool:
        """True if any of `paths` exists inside the image (e.g. the image ships dnf)."""
        return any(os.path.lexists(self.image_path(p)) for p in paths)

    def proxy_env(self) -> dict[str, str]:
        p = self.spec.proxy
        return {"http_proxy": p, "https_proxy": p, "HTTP_PROXY": p, "HTTPS_PROXY": p} if p else {}

    def download(self, url: str, dest: Path) -> Path:
        """Fetch a URL (a .repo file, a signing key) through the spec's proxy, if any."""
        import urllib.request

        handlers = []
        if self.spec.proxy:
            handlers.append(urllib.request.ProxyHandler({"http": self.spec.proxy, "https": self.spec.proxy}))
        opener = urllib.request.build_opener(*handlers)
        self.runner.note(self.current, f"downloading {url}")
        with opener.open(url, timeout=60) as resp:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(resp.read())
        return dest
