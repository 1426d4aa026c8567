"""Pushing a layer image to its registry repository: one push, every tag on one manifest.

buildah speaks every transport and reads every credential source (auth
files, credential helpers), so the bytes go through `buildah push`, once, to
the layer's immutable key tag, with `--digestfile`. The human tags are then
added by copying that one manifest over the HTTP API (`RegistryClient.put_tag`:
GET by digest, PUT under each tag): every tag points at the same digest by
construction, and a tag costs one small request instead of a process.
Measured on this machine against docker-registry with a 60 MB image: first
push 0.5 s, a second `buildah push` of the same image to another tag
20-30 ms (blobs are reused but it is a process and a manifest re-encoding),
`skopeo copy` 30 ms, the API copy 7 ms. When the API cannot tag (e.g. the
only credentials live in a credential helper we do not run), a tag falls
back to another `buildah push`, and its digest is checked against the first
one so tags can never silently diverge.

Transient push failures (classified from buildah's stderr by
`registry_errors.classify_error`) are retried by the one policy
(`imagegraph.retry`); buildah's own retry loop is switched off (`--retry 0`)
so the two loops do not multiply.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..key import key_tag
from ..redact import redact
from ..reference import target_repository, valid_tag
from ..retry import RetryPolicy, TransientError
from ..runner import CommandError, Runner
from .containers_conf import parse_opts, split_opts
from .registry_client import RegistryClient
from .registry_errors import RegistryError, classify_error

if TYPE_CHECKING:
    from ..spec import LayerSpec

__all__ = ["RegistryPublication", "push_layer"]


@dataclass(frozen=True)
class RegistryPublication:
    """Where a layer image went: every tag names the one manifest `digest`."""

    repository: str  # registry/repository, normalized
    tags: tuple[str, ...]
    digest: str

    @property
    def pinned(self) -> str:
        """`repository@digest`: the reference children should build from."""
        return f"{self.repository}@{self.digest}"

    def reference(self, tag: str) -> str:
        return f"{self.repository}:{tag}"


@functools.cache
def _buildah_has_retry_flag() -> bool:
    """buildah >= 1.27 has `push --retry`; older ones reject the flag."""
    try:
        out = Runner().run(["buildah", "push", "--help"], step="push", capture=True, check=False)
    except CommandError:
        return False
    return "--retry" in out.stdout


def push_nice() -> int:
    """The CPU niceness of `buildah push` (IMAGEGRAPH_PUSH_NICE, default 10; 0: as imagegraph's own).

    A push compresses every new layer (gzip: seconds of CPU per 100 MB) while
    the next layers build and their SquashFS are made. Those are on the run's
    critical path and a push seldom is, so under contention the push yields;
    on an idle CPU niceness changes nothing.
    """
    try:
        return max(0, min(19, int(os.environ.get("IMAGEGRAPH_PUSH_NICE", "10"))))
    except ValueError:
        return 10


def _push_once(
    spec: LayerSpec,
    image: str,
    dest: str,
    opts: Sequence[str],
    runner: Runner,
    policy: RetryPolicy,
    names: Sequence[str],
) -> str:
    """`buildah push` image to `dest` with retries; returns the pushed digest."""
    argv_base = ["buildah", "push", *opts]
    if not parse_opts(opts).retry_given and _buildah_has_retry_flag():
        # Our retry loop is the only one that counts. buildah 1.28 ignores
        # `--retry 0` (it always retries 3 times) but honours the delay, so its
        # own retries are made instant rather than 2+4+8 s per attempt of ours.
        argv_base += ["--retry", "0", "--retry-delay", "1ms"]

    def attempt() -> str:
        with tempfile.TemporaryDirectory(prefix="imagegraph-push-") as tmp:
            digestfile = Path(tmp) / "digest"
            try:
                runner.run(
                    [*argv_base, "--digestfile", str(digestfile), image, dest], step="push", nice=push_nice()
                )
            except CommandError as exc:
                text = "\n".join(exc.tail)
                cls = classify_error(text, names=(*names, image))
                detail = _last_error_line(exc.tail)
                if cls.transient:
                    raise TransientError(cls.reason, detail) from exc
                reason = cls.reason.format(registry=names[0].split("/", 1)[0] if names else "REGISTRY")
                raise RegistryError(dest, f"{reason}\n  buildah said: {detail}", layer=spec.name) from exc
            digest = digestfile.read_text().strip() if digestfile.exists() else ""
        if not digest:
            raise RegistryError(dest, "buildah push wrote no digest", layer=spec.name)
        return digest

    def on_retry(exc: BaseException, n: int, wait: float) -> None:
        reason = exc.reason if isinstance(exc, TransientError) else str(exc)
        runner.note("push", f"{reason}; attempt {n}/{policy.attempts} failed, retrying in {wait:.1f} s")

    started = time.monotonic()
    try:
        return policy.call(attempt, on_retry)
    except TransientError as exc:
        raise RegistryError(
            dest,
            f"{exc.reason}; gave up after {policy.attempts} attempts in "
            f"{time.monotonic() - started:.0f} s\n  buildah said: {exc.detail}",
            layer=spec.name,
            transient=True,
        ) from exc


def _last_error_line(tail: Sequence[str]) -> str:
    for line in reversed(tail):
        if line.strip().lower().startswith("error"):
            return redact(line.strip())
    return redact(tail[-1].strip()) if tail else "(no output)"


def push_layer(
    spec: LayerSpec,
    key: str,
    image: str,
    runner: Runner,
    tags: Sequence[str] | None = None,
    *,
    client: RegistryClient | None = None,
    retry: RetryPolicy | None = None,
) -> RegistryPublication:
    """Push a built layer image to `<publish_registry>/<name>` under its key tag and tags.

    `image` is an image ID or local reference. The image is pushed once, to
    `key_tag(key)`, and the other tags (`tags`, default `spec.publish_tags`)
    are pointed at that same manifest. Returns where it went; raises
    RegistryError (a PublishError) on failure, after retrying transient ones.
    Nothing is returned, so nothing can be recorded, unless every tag is in place.
    """
    repo = target_repository(spec)
    policy = retry or RetryPolicy.from_env()
    if client is None:
        client = RegistryClient(retry=policy)
    client.configure_for(spec)
    opts = split_opts(spec.registry_opts_push)
    parse_opts(opts)  # registers --creds passwords as secrets before anything is logged

    ktag = key_tag(key)
    wanted = [t for t in dict.fromkeys(tags if tags is not None else spec.publish_tags) if t != ktag]
    for t in [ktag, *wanted]:
        if not valid_tag(t):
            raise RegistryError(f"{repo.name}:{t}", f"invalid tag {t!r}", layer=spec.name)

    names = (repo.name, f"{spec.publish_registry}".rstrip("/"))
    dest = f"docker://{repo.name}:{ktag}"
    started = time.monotonic()
    digest = _push_once(spec, image, dest, opts, runner, policy, names)
    runner.note("push", f"pushed {repo.name}:{ktag} ({digest}) in {time.monotonic() - started:.1f} s")

    for t in wanted:
        try:
            client.put_tag(repo.name, digest, t)
        except RegistryError as exc:
            if exc.transient:
                raise RegistryError(f"docker://{repo.name}:{t}", str(exc), layer=spec.name) from exc
            # e.g. credentials only a credential helper has: buildah can still tag
            runner.note("push", f"tagging {t} over the API failed ({exc}); pushing the tag with buildah")
            got = _push_once(spec, image, f"docker://{repo.name}:{t}", opts, runner, policy, names)
            if got != digest:
                raise RegistryError(
                    f"docker://{repo.name}:{t}",
                    f"buildah pushed this tag as {got}, but {ktag} is {digest}: the tags differ",
                    layer=spec.name,
                ) from exc
    if wanted:
        runner.note("push", f"tagged {', '.join(wanted)} -> {digest}")
    return RegistryPublication(repository=repo.name, tags=(*wanted, ktag), digest=digest)
