"""Image references: what people write in specs, in one canonical spelling.

`parse_reference` / `normalize_reference` turn `ubuntu`, `localhost/x:y`,
`reg:5000//ns/`, `x@sha256:...` into one spelling with Docker's defaults
(`docker.io`, `library/`, tag `latest`), so graph resolution, the inventory
and the registry client compare references as strings. They are pure and
cached: the planner calls them per layer. `target_repository` is where a
layer publishes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import PublishError

if TYPE_CHECKING:
    from .spec import LayerSpec

__all__ = [
    "DEFAULT_REGISTRY",
    "DOCKER_HUB_ALIASES",
    "ImageRef",
    "canonical_host",
    "normalize_reference",
    "parse_reference",
    "target_repository",
    "valid_tag",
]

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)

# The grammar of github.com/distribution/reference.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}")


@dataclass(frozen=True)
class ImageRef:
    """A parsed, normalized image reference.

    `tag` is None only when the reference is pinned by digest without a tag.
    """

    registry: str
    repository: str
    tag: str | None = "latest"
    digest: str | None = None

    @property
    def name(self) -> str:
        """`registry/repository`, the repository as a whole."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after `/manifests/` in the API: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> ImageRef:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> ImageRef:
        return replace(self, tag=None, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@functools.lru_cache(maxsize=65536)
def parse_reference(ref: str) -> ImageRef:
    """Parse an image reference the way docker/podman do, with their defaults.

    `ubuntu` -> docker.io/library/ubuntu:latest; `x:y` -> docker.io/library/x:y;
    `localhost/x:y` -> registry `localhost`; the first component is a registry
    when it has a `.` or `:`, is `localhost`, or has capitals. A `docker://`
    prefix is dropped, doubled and trailing slashes collapse, the registry
    host is lowercased (host names are case-insensitive) and Docker Hub's
    aliases become `docker.io`. Raises ValueError for what no tool would accept.
    """
    if not isinstance(ref, str):
        raise ValueError(f"image reference must be a string, not {type(ref).__name__}")
    text = ref.strip()
    if text.startswith("docker://"):
        text = text[len("docker://") :]
    if "//" in text:  # the regexp only when it has something to do (most references: nothing)
        text = re.sub(r"/{2,}", "/", text)
    text = text.strip("/")
    if not text:
        raise ValueError(f"empty image reference {ref!r}")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise ValueError(f"invalid digest {digest!r} in image reference {ref!r}")
        text = text.rstrip("/")
    tag = None
    slash, colon = text.rfind("/"), text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(
                f"invalid tag {tag!r} in image reference {ref!r} "
                "(letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')"
            )
        text = text.rstrip("/")
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        domain, path = first.lower(), rest
    else:
        domain, path = DEFAULT_REGISTRY, text
    if domain in DOCKER_HUB_ALIASES:
        domain = DEFAULT_REGISTRY
    if not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"invalid registry {domain!r} in image reference {ref!r}")
    if not path:
        raise ValueError(f"image reference {ref!r} names a registry but no repository")
    if domain == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not _PATH_RE.fullmatch(path):
        hint = " (repository names must be lowercase)" if path.lower() != path else ""
        raise ValueError(f"invalid repository name {path!r} in image reference {ref!r}{hint}")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(domain, path, tag, digest)


def normalize_reference(ref: str) -> str:
    """The canonical spelling of an image reference (see `parse_reference`)."""
    return str(parse_reference(ref))


def target_repository(spec: LayerSpec) -> ImageRef:
    """`<publish_registry>/<name>` of a layer, normalized, without a meaningful tag."""
    if not spec.publish_registry:
        raise PublishError(spec.name, "registry", "the layer has no publish_registry")
    return parse_reference(f"{spec.publish_registry.rstrip('/')}/{spec.name}")


def valid_tag(tag: str) -> bool:
    """Whether `tag` is a tag any registry accepts (letters, digits, `_.-`, at most 128)."""
    return bool(_TAG_RE.fullmatch(tag))


def canonical_host(host: str) -> str:
    """A registry host as references spell it: lowercased, Docker Hub's aliases as `docker.io`."""
    host = host.lower()
    return DEFAULT_REGISTRY if host in DOCKER_HUB_ALIASES else host
