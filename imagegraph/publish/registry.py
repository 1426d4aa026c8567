"""The registry side of publishing: image references, pushes, and cheap existence checks.

This module holds three things:

* **References.** `parse_reference` / `normalize_reference` turn what people
  write in specs (`ubuntu`, `localhost/x:y`, `reg:5000//ns/`, `x@sha256:...`)
  into one canonical spelling with Docker's defaults (`docker.io`,
  `library/`, tag `latest`), so graph resolution can compare references as
  strings. They are pure and cached: the planner calls them per layer.

* **Pushing** (`push_layer`). buildah speaks every transport and reads every
  credential source (auth files, credential helpers), so the bytes go through
  `buildah push`, once, to the layer's immutable key tag, with `--digestfile`.
  The human tags are then added by copying that one manifest over the HTTP
  API (GET by digest, PUT under each tag): every tag points at the same
  digest by construction, and a tag costs one small request instead of a
  process. Measured on this machine against docker-registry with a 60 MB
  image: first push 0.5 s, a second `buildah push` of the same image to
  another tag 20-30 ms (blobs are reused but it is a process and a manifest
  re-encoding), `skopeo copy` 30 ms, the API copy 7 ms. When the API cannot
  tag (e.g. the only credentials live in a credential helper we do not run),
  a tag falls back to another `buildah push`, and its digest is checked
  against the first one so tags can never silently diverge.

  Transient failures (connection refused, timeouts, HTTP 5xx, 429) are
  retried with tenacity, exponential backoff with jitter, bounded by a
  `RetryPolicy` (env `IMAGEGRAPH_RETRY_ATTEMPTS`, `IMAGEGRAPH_RETRY_INITIAL_WAIT`,
  `IMAGEGRAPH_RETRY_MAX_WAIT`); permanent ones (401, 403, unknown or invalid
  name, 404, TLS misconfiguration) raise `RegistryError` (a `PublishError`)
  at once. buildah's own retry loop is switched off (`--retry 0`) so the two
  loops do not multiply. buildah failures are classified from its stderr
  (`classify_error`).

* **`RegistryClient`**, the HTTP API side for the planner: tag lists (one
  request per repository, cached, `Link` pagination followed), manifest
  digests (HEAD), tagging and deletion. One pooled `requests.Session`.

Why requests and not the `oras` package: oras-py reads credentials only from
`~/.docker/config.json` (not the containers auth files buildah writes), takes
`insecure` per client rather than per registry, has its own fixed retry
decorator, and is built around pushing/pulling artifacts. What we need is
four endpoints plus the standard challenge dance (`WWW-Authenticate: Basic`
or `Bearer realm=,service=,scope=`), which is ~100 lines here and lets us
count requests, cache per repository and choose http/https explicitly.

TLS policy (explicit, like the container tools): every registry is spoken
to over verified https, except "insecure" registries: those whose layer opts
say `--tls-verify=false`, those marked `insecure = true` in
`/etc/containers/registries.conf`, and loopback hosts (`localhost`,
`127.0.0.0/8`, `::1`). For those, https without verification is tried first
and plain http after it, and the scheme that answered is remembered per host.

Credentials come from the files buildah/podman/skopeo use, in their order:
`--authfile` from the layer opts, `$REGISTRY_AUTH_FILE`,
`$XDG_RUNTIME_DIR/containers/auth.json`, `/run/containers/<uid>/auth.json`,
`$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config`),
`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`; `--creds` in the
opts wins over files. Within a file the most specific key
(`host/ns/repo`, then `host/ns`, then `host`) wins. Credential helpers
(`credHelpers`, `credsStore`) are not run. Every password loaded is
registered with `imagegraph.redact` so it never reaches a log or a message.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ImagegraphError, PublishError
from ..keytag import key_tag
from ..log import get_logger
from ..redact import add_secret, redact
from ..runner import Cancelled, CommandError, Runner, cancel_requested

if TYPE_CHECKING:
    import requests
    import tenacity

    from ..spec import LayerSpec

__all__ = [
    "DEFAULT_REGISTRY",
    "MANIFEST_ACCEPT",
    "Credentials",
    "ErrorClass",
    "ImageRef",
    "RegistryClient",
    "RegistryError",
    "RegistryPublication",
    "RetryPolicy",
    "TransientError",
    "auth_file_paths",
    "classify_error",
    "classify_status",
    "find_credentials",
    "normalize_reference",
    "parse_reference",
    "push_layer",
    "target_repository",
]

DEFAULT_REGISTRY = "docker.io"
# Docker Hub's API does not live at its reference name.
_API_HOSTS = {"docker.io": "registry-1.docker.io"}
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

# Every manifest kind a tag may point at; an index (multi-arch parent) has its own digest.
MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)

_log = get_logger(component="registry")

# ------------------------------------------------------------------------ references

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
    text = re.sub(r"/{2,}", "/", text).strip("/")
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
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first.lower(), rest
    else:
        domain, path = DEFAULT_REGISTRY, text
    if domain in _DOCKER_HUB_ALIASES:
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


# ---------------------------------------------------------------------------- errors


class RegistryError(PublishError):
    """A registry operation failed; `transient` says whether retrying could help."""

    def __init__(
        self,
        target: str,
        message: str,
        *,
        layer: str = "",
        status: int | None = None,
        transient: bool = False,
    ):
        self.layer = layer
        self.target = target
        self.status = status
        self.transient = transient
        text = f"{layer}: publishing to {target} failed: {message}" if layer else f"{target}: {message}"
        # PublishError's own __init__ insists on a layer; keep its attributes, write our text.
        ImagegraphError.__init__(self, redact(text))


class TLSVerifyError(RegistryError):
    """The registry's certificate is not trusted (not transient: a setting must change)."""

    def __init__(self, host: str, reason: str):
        self.host = host
        self.reason = reason
        super().__init__(
            host,
            f"TLS certificate verification failed ({reason}): install the registry's CA, or set "
            "--cert-dir=DIR (DIR/*.crt) or --tls-verify=false in the layer's registry options",
        )


class TransientError(Exception):
    """Internal: a failure worth retrying (carried through tenacity)."""

    def __init__(self, reason: str, detail: str = "", status: int | None = None):
        self.reason = reason
        self.detail = detail
        self.status = status
        super().__init__(f"{reason}: {detail}" if detail else reason)


class _NoRetry(TransientError):
    """Transient, but retrying cannot help within the caller's time bound (a timeout while planning)."""


@dataclass(frozen=True)
class ErrorClass:
    """What a failure was: `transient` (retry) or not, and a reason for humans."""

    transient: bool
    reason: str


# Checked in order, permanent causes first: "unauthorized" beats a connection
# reset further down the same output. Unknown text is permanent: retrying
# something we do not understand only delays the error.
_PERMANENT_PATTERNS: list[tuple[re.Pattern, str]] = [
    (
        re.compile(r"unauthorized|authentication required|incorrect username or password|\b401\b", re.I),
        "authentication failed (401): log in with `buildah login {registry}` "
        "(or set REGISTRY_AUTH_FILE) and check the credentials",
    ),
    (
        re.compile(r"\bdenied\b|\bforbidden\b|\b403\b", re.I),
        "access denied (403): the credentials may not push to this repository",
    ),
    (
        re.compile(r"invalid reference format|name invalid|repository name must be", re.I),
        "invalid image name",
    ),
    (re.compile(r"name unknown|repository name not known", re.I), "unknown repository"),
    (re.compile(r"image not known|identifier is not an image|no such image", re.I), "local image not found"),
    (re.compile(r"manifest unknown|blob unknown|not found|\b404\b", re.I), "not found (404)"),
    (
        re.compile(r"server gave HTTP response to HTTPS client", re.I),
        "the registry speaks plain http: add --tls-verify=false to registry_opts_push",
    ),
    (
        re.compile(r"x509:|certificate (?:signed by unknown|is not valid|has expired)|tls: ", re.I),
        "TLS certificate problem: install the registry's CA or use --tls-verify=false",
    ),
    (re.compile(r"no such host", re.I), "unknown registry host (DNS lookup failed)"),
    (
        re.compile(r"unknown (?:shorthand )?flag", re.I),
        "buildah rejected an option (check registry_opts_push)",
    ),
]
_TRANSIENT_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"connection refused", re.I), "registry unreachable (connection refused)"),
    (re.compile(r"connection reset|broken pipe|unexpected EOF|\bEOF\b", re.I), "connection dropped"),
    (
        re.compile(r"no route to host|network is unreachable|host is down", re.I),
        "registry unreachable (network)",
    ),
    (re.compile(r"temporary failure in name resolution", re.I), "DNS lookup failed temporarily"),
    (
        re.compile(
            r"i/o timeout|handshake timeout|timed out|deadline exceeded|Client\.Timeout|killed after", re.I
        ),
        "timeout",
    ),
    (
        re.compile(
            r"toomanyrequests|too many requests|\b429\b|rate limit",
            re.I,
        ),
        "rate limited (429)",
    ),
    (
        re.compile(
            r"internal server error|bad gateway|service unavailable|gateway time-?out"
            r"|status(?: code)?:? 5\d\d\b|\b5\d\d (?:internal|bad|service|gateway)",
            re.I,
        ),
        "registry error (HTTP 5xx)",
    ),
]
# Things in buildah's messages that can contain any word (repository names
# such as "timeout-test", digests with "404" in them): removed before matching.
_NOISE = re.compile(r'"[^"\n]*"|\b[a-z0-9]+:[0-9a-fA-F]{32,}\b|[0-9a-fA-F]{32,}')


def classify_error(text: str, names: Iterable[str] = ()) -> ErrorClass:
    """Classify a push tool's error output as transient or permanent.

    `names` are references known to appear in the text (the destination);
    they are removed first so a repository called `timeout` cannot look like
    a timeout.
    """
    clean = text
    for n in sorted({n for n in names if n}, key=len, reverse=True):
        clean = clean.replace(n, " ")
    clean = _NOISE.sub(" ", clean)
    for pattern, reason in _PERMANENT_PATTERNS:
        if pattern.search(clean):
            return ErrorClass(False, reason)
    for pattern, reason in _TRANSIENT_PATTERNS:
        if pattern.search(clean):
            return ErrorClass(True, reason)
    return ErrorClass(False, "push failed")


def classify_status(status: int) -> ErrorClass:
    """Classify an HTTP status from the registry API."""
    if status == 429:
        return ErrorClass(True, "rate limited (429)")
    if status >= 500:
        return ErrorClass(True, f"registry error (HTTP {status})")
    if status == 401:
        return ErrorClass(False, "authentication failed (401)")
    if status == 403:
        return ErrorClass(False, "access denied (403)")
    if status == 404:
        return ErrorClass(False, "not found (404)")
    return ErrorClass(False, f"unexpected HTTP status {status}")


# ----------------------------------------------------------------------------- retry


def _env_number(name: str, default: float, cast: Callable[[str], float]) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        _log.warning("ignoring invalid setting", variable=name, value=raw)
        return default
    return value if value >= 0 else default


@dataclass(frozen=True)
class RetryPolicy:
    """How transient registry failures are retried: `attempts` tries in all,
    exponential waits starting at `initial_wait` s, doubling, capped at
    `max_wait` s, with up to `initial_wait` s of jitter so parallel pushes
    that failed together do not come back together."""

    attempts: int = 5
    initial_wait: float = 1.0
    max_wait: float = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        base = cls()
        return cls(
            attempts=max(1, int(_env_number("IMAGEGRAPH_RETRY_ATTEMPTS", base.attempts, int))),
            initial_wait=_env_number("IMAGEGRAPH_RETRY_INITIAL_WAIT", base.initial_wait, float),
            max_wait=_env_number("IMAGEGRAPH_RETRY_MAX_WAIT", base.max_wait, float),
        )

    def retrying(
        self, on_retry: Callable[[TransientError, int, float], None] | None = None
    ) -> tenacity.Retrying:
        import tenacity  # with requests, loaded when a registry is first asked (not by `plan --offline`)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            if on_retry and isinstance(exc, TransientError):
                on_retry(exc, state.attempt_number, wait)

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            # (wait_exponential + wait_random rather than wait_exponential_jitter,
            # whose arguments changed between tenacity 8 and 9)
            wait=tenacity.wait_exponential(multiplier=self.initial_wait, max=self.max_wait)
            + tenacity.wait_random(0, min(1.0, self.initial_wait)),
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, TransientError) and not isinstance(e, _NoRetry)
            ),
            reraise=True,
            sleep=_interruptible_sleep,
            before_sleep=before_sleep,
        )


def _interruptible_sleep(seconds: float) -> None:
    """Sleep between retries, but give up at once when the run is cancelled."""
    deadline = time.monotonic() + seconds
    while True:
        if cancel_requested():
            raise Cancelled("cancelled while waiting to retry a registry operation")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.1, left))


_T = TypeVar("_T")


def with_retries(policy: RetryPolicy, fn: Callable[[], _T], on_retry=None) -> _T:
    for attempt in policy.retrying(on_retry):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # tenacity either returns or raises


# ----------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = ""  # the file (or "--creds") they came from, for messages

    def basic_header(self) -> str:
        import base64

        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        add_secret(token)
        return f"Basic {token}"


def auth_file_paths(explicit: str | Path | None = None) -> list[Path]:
    """The auth files buildah/podman/skopeo read, in the order they read them."""
    paths: list[Path] = []
    if explicit:
        paths.append(Path(explicit))
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(Path(f"/run/containers/{os.getuid()}/auth.json"))
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    paths.append(Path(config_home) / "containers" / "auth.json")
    docker_config = os.environ.get("DOCKER_CONFIG")
    paths.append(
        Path(docker_config) / "config.json" if docker_config else Path.home() / ".docker" / "config.json"
    )
    seen: set[Path] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]


def _auth_key(key: str) -> str:
    """An `auths` key as a comparable `host[/path]` (docker's keys are URLs)."""
    k = re.sub(r"^[a-z]+://", "", key.strip()).rstrip("/")
    k = re.sub(r"/v[12]$", "", k)
    host, sep, path = k.partition("/")
    host = host.lower()
    if host in _DOCKER_HUB_ALIASES:
        host = DEFAULT_REGISTRY
    return host + (sep + path if path else "")


def _read_auths(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _log.warning("cannot read registry auth file", file=str(path), error=str(exc))
        return {}
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return {}
    return {_auth_key(k): v for k, v in auths.items() if isinstance(v, dict)}


def _decode_entry(entry: dict, source: str) -> Credentials | None:
    user = password = None
    if entry.get("auth"):
        try:
            import base64

            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        add_secret(entry["auth"])
    elif entry.get("username"):
        user, password = entry.get("username"), entry.get("password", "")
    if not user:
        return None
    add_secret(password)
    return Credentials(user, password or "", source)


def find_credentials(name: str, files: Sequence[Path]) -> Credentials | None:
    """Credentials for repository `name` (`host/ns/repo`) from the first file that has any.

    Within a file the most specific key wins: `host/ns/repo`, `host/ns`, `host`.
    """
    parts = name.split("/")
    candidates = ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    for path in files:
        auths = _read_auths(path)
        for c in candidates:
            if c in auths:
                creds = _decode_entry(auths[c], str(path))
                if creds:
                    return creds
    return None


# --------------------------------------------------------------------------- options


class _NoNetrc:
    """A requests auth that changes nothing (see RegistryClient.__init__)."""

    def __call__(self, request: Any) -> Any:
        return request


@dataclass(frozen=True)
class _RegistryOpts:
    """What buildah push/pull options say that the HTTP client must honour too."""

    insecure: bool = False
    verify: bool = False  # --tls-verify=true said explicitly: verify even a loopback registry
    authfile: str | None = None
    creds: Credentials | None = None
    cert_dir: str | None = None
    retry_given: bool = False


def _split_opts(opts: Iterable[str]) -> list[str]:
    import shlex  # loaded when a spec has registry options to read

    words: list[str] = []
    for item in opts:
        words.extend(shlex.split(str(item)))
    return words


@functools.lru_cache(maxsize=256)
def _parsed_opts(opts: tuple[str, ...]) -> _RegistryOpts:
    """`_parse_opts`, once per distinct option list: planning configures the client for every
    question it asks (thousands per plan), and shlex is slow."""
    return _parse_opts(opts)


def _parse_opts(opts: Iterable[str]) -> _RegistryOpts:
    words = _split_opts(opts)
    values: dict[str, str] = {}
    retry_given = False
    i = 0
    while i < len(words):
        w = words[i]
        name, eq, value = w.partition("=")
        if name in ("--tls-verify", "--dest-tls-verify", "--src-tls-verify") and not eq:
            # a bare boolean flag, or followed by true/false
            if i + 1 < len(words) and words[i + 1].lower() in ("true", "false"):
                value = words[i + 1]
                i += 1
            else:
                value = "true"
            eq = "="
        elif (
            name in ("--authfile", "--creds", "--cert-dir", "--retry", "--retry-delay")
            and not eq
            and i + 1 < len(words)
        ):
            value = words[i + 1]
            eq = "="
            i += 1
        if eq:
            values[name] = value
        retry_given = retry_given or name in ("--retry", "--retry-delay")
        i += 1
    tls = values.get("--tls-verify", values.get("--dest-tls-verify", values.get("--src-tls-verify", "true")))
    creds = None
    if values.get("--creds"):
        user, _, password = values["--creds"].partition(":")
        add_secret(password)
        creds = Credentials(user, password, "--creds")
    return _RegistryOpts(
        insecure=tls.lower() == "false",
        verify=any(
            values.get(k, "").lower() == "true"
            for k in ("--tls-verify", "--dest-tls-verify", "--src-tls-verify")
        ),
        authfile=values.get("--authfile"),
        creds=creds,
        cert_dir=values.get("--cert-dir"),
        retry_given=retry_given,
    )


def _is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry[1 : registry.find("]")]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def _registries_conf_insecure(path: str = "/etc/containers/registries.conf") -> frozenset[str]:
    """Registries marked `insecure = true` in containers' registries.conf (v2 format)."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return frozenset()
    found = set()
    for entry in data.get("registry", []) or []:
        if isinstance(entry, dict) and entry.get("insecure") and entry.get("location"):
            found.add(str(entry["location"]).split("/")[0].lower())
    # v1 format: [registries.insecure] registries = [...]
    v1 = ((data.get("registries") or {}).get("insecure") or {}).get("registries") or []
    found.update(str(r).split("/")[0].lower() for r in v1)
    return frozenset(found)


# ---------------------------------------------------------------------------- client

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): (m[2] if m[2] is not None else m[3]) for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def _error_detail(resp: requests.Response) -> str:
    """The registry's own error text (`{"errors":[{"code","message"}]}`), short."""
    try:
        errors = resp.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        text = resp.text[:200].strip()
    return text or resp.reason or ""


def _verify_reason(exc: BaseException) -> str:
    """What OpenSSL said about the certificate ("self-signed certificate", "certificate has expired")."""
    m = re.search(r"certificate verify failed: ([^(]+?)\s*\(", str(exc))
    return m[1].strip() if m else "certificate verify failed"


def _timeout_text(timeout: float | tuple[float, float]) -> str:
    t = max(timeout) if isinstance(timeout, tuple) else timeout
    return f"{t:g} s"


def _describe_exception(exc: BaseException) -> str:
    text = str(exc)
    for needle, short in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", "unknown host"),
        ("Temporary failure in name resolution", "DNS lookup failed"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "connection closed by the registry"),
        ("CERTIFICATE_VERIFY_FAILED", "certificate verification failed"),
        ("WRONG_VERSION_NUMBER", "not speaking TLS"),
    ):
        if needle in text:
            return short
    return type(exc).__name__


class RegistryClient:
    """The registry HTTP API with one pooled session, for cheap checks and tagging.

    Tag lists are cached per repository for the client's lifetime (a client
    is meant to live for one plan or one run): 1,000 layers in one repository
    cost one listing. A host that stayed unreachable through the retries is
    remembered as down for `down_ttl` seconds, so the next queries against it
    answer None at once instead of retrying per layer; any success clears that. `errors` maps what was asked (repository
    or reference) to why the answer was None. `request_count` counts the HTTP
    requests that got an answer, token requests included (a TLS probe of an
    http-only registry or a refused connection is not counted).

    Thread-safe for concurrent queries (planner threads, parallel pushes).
    """

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | tuple[float, float] = (5.0, 30.0),
        insecure: Iterable[str] = (),
        auth_file: str | Path | None = None,
        auth_files: Sequence[str | Path] | None = None,
        session: requests.Session | None = None,
        down_ttl: float = 60.0,
        retry_timeouts: bool = True,
        warn_unreachable: bool = True,
    ):
        self.retry = retry or RetryPolicy.from_env()
        self.timeout = timeout
        # False: a registry that did not answer within the timeout is down at once (planning);
        # neither retried nor asked again over plain http.
        self.retry_timeouts = retry_timeouts
        self.warn_unreachable = warn_unreachable
        self.request_count = 0
        self.errors: dict[str, str] = {}
        self._auth_file = auth_file
        self._auth_files = [Path(p) for p in auth_files] if auth_files is not None else None
        self._insecure: set[str] = {h.lower() for h in insecure}
        self._verify: set[str] = set()
        self._host_authfile: dict[str, str] = {}
        self._host_creds: dict[str, Credentials] = {}
        self._host_verify: dict[str, str] = {}
        self._scheme: dict[str, str] = {}
        self._basic: dict[str, str] = {}  # host -> Basic header, once the host asked for Basic
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._tags: dict[str, set[str]] = {}
        self._manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._down: dict[str, tuple[str, float]] = {}  # host -> (reason, until)
        self.down_ttl = down_ttl
        self._lock = threading.Lock()
        self._repo_locks: dict[str, threading.Lock] = {}
        import requests

        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=16, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "imagegraph"
        # Credentials come from the container tools' files only (module docstring), never from
        # ~/.netrc: a session-wide no-op auth keeps requests from looking for one on every request
        # (a tenth of a no-op plan's client time) and from replacing our Authorization header.
        if self.session.auth is None:
            self.session.auth = _NoNetrc()
        # What requests reads from the environment on every request (trust_env), read once: the
        # proxies per scheme and host (HTTP(S)_PROXY, NO_PROXY), the CA bundle. Planning asks
        # thousands of questions; the per-request scan of os.environ was a seventh of its client time.
        self.session.trust_env = False
        self._ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._proxies: dict[str, dict[str, str]] = {}

    # -- configuration

    def configure_for(self, spec: LayerSpec) -> None:
        """Honour a layer's registry options (TLS, --authfile, --creds, --cert-dir):
        push options for its publish registry, pull options for its parent's."""
        if spec.publish_registry:
            self.configure_registry(target_repository(spec).registry, spec.registry_opts_push)
        if not spec.is_scratch:
            try:
                parent = parse_reference(spec.parent)
            except ValueError:
                return
            self.configure_registry(parent.registry, spec.registry_opts_pull)

    def configure_registry(self, registry: str, opts: Iterable[str]) -> None:
        """Apply buildah-style options to every request to `registry` (host[:port])."""
        parsed = _parsed_opts(tuple(opts))
        host = registry.lower()
        with self._lock:
            if parsed.insecure:
                self._insecure.add(host)
            if parsed.verify:
                self._verify.add(host)
            if parsed.authfile:
                self._host_authfile[host] = parsed.authfile
            if parsed.creds:
                self._host_creds[host] = parsed.creds
            if parsed.cert_dir:
                cas = sorted(Path(parsed.cert_dir).glob("*.crt"))
                if cas:
                    self._host_verify[host] = str(cas[0])

    def is_insecure(self, registry: str) -> bool:
        """Whether plain http (and unverified https) may be used for `registry`."""
        host = registry.lower()
        if host in self._verify and host not in self._insecure:
            return False
        return host in self._insecure or _is_loopback(host) or host in _registries_conf_insecure()

    def schemes(self, registry: str) -> list[str]:
        """The URL schemes to try for a registry, in order (see the module docstring)."""
        host = registry.lower()
        if host in self._scheme:
            return [self._scheme[host]]
        return ["https", "http"] if self.is_insecure(host) else ["https"]

    def clear_cache(self) -> None:
        with self._lock:
            self._tags.clear()
            self._manifests.clear()
            self._down.clear()
            self.errors.clear()

    def down_reasons(self) -> dict[str, str]:
        """Registry host -> why it was marked down (what the last attempt said)."""
        with self._lock:
            return {
                host: reason.removeprefix("registry unreachable: ")
                for host, (reason, _) in self._down.items()
            }

    def credentials(self, name: str) -> Credentials | None:
        """Credentials for repository `name` (`host/ns/repo`), or None (anonymous)."""
        host = name.split("/", 1)[0].lower()
        if host in self._host_creds:
            return self._host_creds[host]
        files = list(self._auth_files) if self._auth_files is not None else auth_file_paths(self._auth_file)
        if host in self._host_authfile:
            files.insert(0, Path(self._host_authfile[host]))
        return find_credentials(name, files)

    # -- public queries

    def tags(self, repository_ref: str) -> set[str] | None:
        """All tags of a repository (one listing, cached), empty if the repository
        does not exist, None if the registry cannot be reached.

        Raises RegistryError for answers that retrying cannot fix (401, 403).
        """
        ref = parse_reference(repository_ref)
        key = ref.name
        with self._lock:
            if key in self._tags:
                return set(self._tags[key])
            lock = self._repo_locks.setdefault(key, threading.Lock())
        with lock:  # concurrent callers for one repository share one listing
            with self._lock:
                if key in self._tags:
                    return set(self._tags[key])
            if self._is_down(ref.registry, key):
                return None
            try:
                found = self._list_tags(ref)
            except TransientError as exc:
                self._mark_down(ref.registry, key, exc)
                return None
            with self._lock:
                self._tags[key] = found
            return set(found)

    def has_tag(self, repo: str, tag: str) -> bool | None:
        """Whether `repo` has `tag` (from the cached listing); None if unreachable."""
        found = self.tags(repo)
        return None if found is None else tag in found

    def manifest_digest(self, ref: str) -> str | None:
        """The digest a reference points at (HEAD with every manifest media type).

        A reference pinned by digest answers itself without a request. None
        when the image does not exist or the registry cannot be reached
        (`errors[ref]` says which).
        """
        image = parse_reference(ref)
        if image.digest:
            return image.digest
        key = str(image)
        if self._is_down(image.registry, key):
            return None
        try:
            digest = self._head_digest(image)
        except TransientError as exc:
            self._mark_down(image.registry, key, exc)
            return None
        if digest is None:
            with self._lock:
                self.errors[key] = "not found"
        return digest

    def put_tag(self, repository_ref: str, digest: str, tag: str) -> str:
        """Make `tag` point at the manifest `digest` in the same repository.

        The manifest's bytes are copied unchanged (GET by digest, PUT by tag),
        so the tag gets exactly that digest. Returns the digest. Transient
        failures are retried; others raise RegistryError.
        """
        ref = parse_reference(repository_ref)
        target = f"{ref.name}:{tag}"
        try:
            body, media_type = self._manifest(ref.with_digest(digest))
            resp = with_retries(
                self.retry,
                lambda: self._request(
                    "PUT",
                    ref,
                    f"/manifests/{tag}",
                    "pull,push",
                    data=body,
                    headers={"Content-Type": media_type},
                ),
            )
        except TransientError as exc:
            raise RegistryError(
                target, f"gave up after {self.retry.attempts} attempts: {exc}", transient=True
            ) from exc
        if resp.status_code not in (200, 201, 202):
            raise self._http_error(target, resp, "tagging")
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise RegistryError(target, f"registry stored the manifest as {got}, expected {digest}")
        with self._lock:
            if ref.name in self._tags:
                self._tags[ref.name].add(tag)
        return digest

    def delete_tag(self, repo: str, tag: str) -> bool:
        """Delete the manifest `tag` points at; False if the tag does not exist.

        The API deletes manifests by digest, so every other tag pointing at
        the same manifest goes with it (for gc that is the layer version as a
        whole). The distribution registry needs `storage.delete.enabled: true`;
        without it this raises RegistryError (405).
        """
        ref = parse_reference(repo).with_tag(tag)
        target = str(ref)
        try:
            digest = with_retries(self.retry, lambda: self._head_digest(ref))
            if digest is None:
                return False
            resp = with_retries(
                self.retry, lambda: self._request("DELETE", ref, f"/manifests/{digest}", "delete")
            )
        except TransientError as exc:
            raise RegistryError(
                target, f"gave up after {self.retry.attempts} attempts: {exc}", transient=True
            ) from exc
        if resp.status_code == 404:
            return False
        if resp.status_code == 405:
            raise RegistryError(
                target,
                "the registry does not allow deletes (distribution registry: storage.delete.enabled: true)",
                status=405,
            )
        if resp.status_code not in (200, 202):
            raise self._http_error(target, resp, "deleting")
        with self._lock:
            self._tags.pop(ref.name, None)  # other tags of the manifest went too: list again
            self._manifests.pop((ref.name, digest), None)
        return True

    # -- artifacts (publish/referrers.py attaches SBOMs with these)

    def manifest(self, ref: str) -> tuple[bytes, str] | None:
        """The manifest bytes and media type a reference points at; None when it does not exist."""
        image = parse_reference(ref)
        try:
            return self._manifest(image)
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        except TransientError as exc:
            raise RegistryError(str(image), f"gave up: {exc}", transient=True) from exc

    def put_blob(self, repository_ref: str, data: bytes) -> str:
        """Upload `data` as a blob of the repository (monolithic POST + PUT); returns its digest."""
        ref = parse_reference(repository_ref)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        try:
            head = with_retries(
                self.retry, lambda: self._request("HEAD", ref, f"/blobs/{digest}", "pull,push")
            )
            if head.status_code == 200:
                return digest
            start = with_retries(
                self.retry, lambda: self._request("POST", ref, "/blobs/uploads/", "pull,push")
            )
            if start.status_code != 202 or "Location" not in start.headers:
                raise self._http_error(ref.name, start, "starting a blob upload")
            loc = urllib.parse.urlsplit(urllib.parse.urljoin(start.url, start.headers["Location"]))
            path = loc.path.removeprefix(f"/v2/{ref.repository}")
            query = (loc.query + "&" if loc.query else "") + urllib.parse.urlencode({"digest": digest})
            resp = with_retries(
                self.retry,
                lambda: self._request(
                    "PUT",
                    ref,
                    f"{path}?{query}",
                    "pull,push",
                    data=data,
                    headers={"Content-Type": "application/octet-stream"},
                ),
            )
        except TransientError as exc:
            raise RegistryError(ref.name, f"gave up uploading a blob: {exc}", transient=True) from exc
        if resp.status_code not in (201, 202):
            raise self._http_error(ref.name, resp, "uploading a blob")
        return digest

    def put_manifest(
        self, repository_ref: str, reference: str, body: bytes, media_type: str
    ) -> dict[str, str]:
        """PUT a manifest under a tag or its digest; returns the response headers (OCI-Subject ...)."""
        ref = parse_reference(repository_ref)
        try:
            resp = with_retries(
                self.retry,
                lambda: self._request(
                    "PUT",
                    ref,
                    f"/manifests/{reference}",
                    "pull,push",
                    data=body,
                    headers={"Content-Type": media_type},
                ),
            )
        except TransientError as exc:
            raise RegistryError(ref.name, f"gave up putting a manifest: {exc}", transient=True) from exc
        if resp.status_code not in (200, 201, 202):
            raise self._http_error(f"{ref.name}:{reference}", resp, "putting a manifest")
        return dict(resp.headers)

    def referrers(self, repository_ref: str, digest: str) -> dict | None:
        """The referrers API's index for `digest`; None when the registry has no referrers API (404)."""
        ref = parse_reference(repository_ref)
        try:
            resp = with_retries(
                self.retry,
                lambda: self._request(
                    "GET",
                    ref,
                    f"/referrers/{digest}",
                    "pull",
                    headers={"Accept": "application/vnd.oci.image.index.v1+json"},
                ),
            )
        except TransientError as exc:
            raise RegistryError(ref.name, f"gave up asking for referrers: {exc}", transient=True) from exc
        if resp.status_code != 200:
            return None
        try:
            return resp.json()
        except ValueError:
            return None

    # -- internals

    def _is_down(self, registry: str, key: str) -> bool:
        with self._lock:
            reason, until = self._down.get(registry.lower(), ("", 0.0))
            if reason and until > time.monotonic():
                self.errors[key] = reason
                return True
        return False

    def _mark_down(self, registry: str, key: str, exc: TransientError) -> None:
        reason = f"registry unreachable: {exc}"
        with self._lock:
            self._down[registry.lower()] = (reason, time.monotonic() + self.down_ttl)
            self.errors[key] = reason
        if self.warn_unreachable:
            _log.warning("registry unreachable", registry=registry, reason=str(exc))

    def _list_tags(self, ref: ImageRef) -> set[str]:
        found: set[str] = set()
        path = "/tags/list"
        pages = 0
        while path:
            resp = with_retries(self.retry, lambda p=path: self._request("GET", ref, p, "pull"))
            if resp.status_code == 404:
                return found  # NAME_UNKNOWN: nothing was ever pushed there
            if resp.status_code != 200:
                raise self._http_error(ref.name, resp, "listing tags")
            try:
                found.update((resp.json() or {}).get("tags") or [])
            except ValueError as exc:
                raise RegistryError(ref.name, "the tag list is not JSON") from exc
            path = self._next_page(ref, resp)
            pages += 1
            if pages > 10000:
                raise RegistryError(ref.name, "tag list pagination does not end")
        return found

    @staticmethod
    def _next_page(ref: ImageRef, resp: requests.Response) -> str | None:
        link = resp.links.get("next", {}).get("url")
        if not link:
            return None
        url = urllib.parse.urljoin(resp.url, link)
        parsed = urllib.parse.urlsplit(url)
        prefix = f"/v2/{ref.repository}"
        if not parsed.path.startswith(prefix):
            return None
        return parsed.path[len(prefix) :] + (f"?{parsed.query}" if parsed.query else "")

    def _head_digest(self, ref: ImageRef) -> str | None:
        """Digest of a tag or None on 404; TransientError when unreachable."""
        target = str(ref)
        resp = with_retries(
            self.retry,
            lambda: self._request(
                "HEAD", ref, f"/manifests/{ref.reference}", "pull", headers={"Accept": MANIFEST_ACCEPT}
            ),
        )
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._http_error(target, resp, "looking up the manifest")
        digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        # Not every registry sends the header on HEAD: hash the manifest itself.
        body, _ = self._manifest(ref)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def _manifest(self, ref: ImageRef) -> tuple[bytes, str]:
        cache_key = (ref.name, ref.reference)
        with self._lock:
            if cache_key in self._manifests:
                return self._manifests[cache_key]
        resp = with_retries(
            self.retry,
            lambda: self._request(
                "GET", ref, f"/manifests/{ref.reference}", "pull", headers={"Accept": MANIFEST_ACCEPT}
            ),
        )
        if resp.status_code != 200:
            raise self._http_error(str(ref), resp, "reading the manifest")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not media_type:
            try:
                media_type = json.loads(resp.content).get("mediaType", "")
            except ValueError:
                media_type = ""
        result = (resp.content, media_type or "application/vnd.oci.image.manifest.v1+json")
        if ref.digest:  # only content-addressed answers are immutable
            with self._lock:
                self._manifests[cache_key] = result
        return result

    def _http_error(self, target: str, resp: requests.Response, doing: str) -> RegistryError:
        cls = classify_status(resp.status_code)
        detail = _error_detail(resp)
        message = f"{doing}: {cls.reason}" + (f" ({detail})" if detail else "")
        if resp.status_code == 401:
            host = target.split("/", 1)[0]
            message += f"; log in with `buildah login {host}` or set REGISTRY_AUTH_FILE"
        return RegistryError(target, message, status=resp.status_code, transient=cls.transient)

    def _request(
        self,
        method: str,
        ref: ImageRef,
        path: str,
        actions: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """One API request under /v2/<repository>, authenticating on a challenge.

        Raises TransientError for what a retry may fix (connection failures,
        5xx, 429); returns every other response for the caller to judge.
        """
        host = ref.registry
        url_path = f"/v2/{ref.repository}{path}"
        scope = f"repository:{ref.repository}:{actions}"
        hdrs = dict(headers or {})
        auth = self._cached_auth(host, scope)
        if auth:
            hdrs["Authorization"] = auth
        resp = self._send(method, host, url_path, hdrs, data)
        if resp.status_code == 401 and "WWW-Authenticate" in resp.headers:
            new_auth = self._authenticate(ref, resp.headers["WWW-Authenticate"], scope)
            if new_auth and new_auth != auth:
                hdrs["Authorization"] = new_auth
                resp = self._send(method, host, url_path, hdrs, data)
        if resp.status_code == 429 or resp.status_code >= 500:
            cls = classify_status(resp.status_code)
            raise TransientError(cls.reason, f"{method} {host}{url_path}", resp.status_code)
        with self._lock:
            self._down.pop(host.lower(), None)
        return resp

    def _send(
        self, method: str, host: str, path: str, headers: dict[str, str], data: bytes | None
    ) -> requests.Response:
        api_host = _API_HOSTS.get(host, host)
        schemes = self.schemes(host)
        last: Exception | None = None
        import requests

        for i, scheme in enumerate(schemes):
            verify: bool | str = True
            if scheme == "https":
                verify = self._host_verify.get(host.lower(), not self.is_insecure(host))
                if verify is False:
                    _quiet_insecure_warnings()
            url = f"{scheme}://{api_host}{path}"
            started = time.monotonic()
            try:
                resp = self.session.request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    timeout=self.timeout,
                    verify=self._ca_bundle if verify is True and self._ca_bundle else verify,
                    proxies=self._proxies_for(f"{scheme}://{api_host}"),
                )
            except requests.exceptions.SSLError as exc:
                last = exc
                if i + 1 < len(schemes):
                    continue
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    raise TLSVerifyError(host, _verify_reason(exc)) from exc
                raise TransientError("TLS handshake failed", _describe_exception(exc)) from exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last = exc
                timed_out = isinstance(exc, requests.exceptions.Timeout)
                _log.info("registry request", method=method, url=url, error=_describe_exception(exc))
                if timed_out and not self.retry_timeouts:
                    # Something listens and does not answer: asking again (or over http) waits again.
                    raise _NoRetry(f"did not answer within {_timeout_text(self.timeout)}") from exc
                if i + 1 < len(schemes):
                    continue
                raise TransientError(f"{host} unreachable", _describe_exception(exc)) from exc
            _log.info(
                "registry request",
                method=method,
                url=url,
                status=resp.status_code,
                seconds=round(time.monotonic() - started, 3),
            )
            with self._lock:
                self.request_count += 1
                if len(schemes) > 1:
                    self._scheme[host.lower()] = scheme  # remember what answered
            return resp
        raise TransientError(f"{host} unreachable", _describe_exception(last) if last else "")

    def _proxies_for(self, base: str) -> dict[str, str]:
        """The environment's proxies for `scheme://host[:port]`, as requests would find them
        (NO_PROXY honoured), once per host."""
        found = self._proxies.get(base)
        if found is None:
            import requests.utils

            found = self._proxies[base] = requests.utils.get_environ_proxies(base + "/")
        return found

    def _cached_auth(self, host: str, scope: str) -> str | None:
        with self._lock:
            token = self._tokens.get((host, scope))
            if token and token[1] > time.monotonic():
                return token[0]
            return self._basic.get(host)

    def _authenticate(self, ref: ImageRef, challenge: str, scope: str) -> str | None:
        """Answer a 401 challenge: a Basic header, or a Bearer token from the realm."""
        host = ref.registry
        scheme, params = _parse_challenge(challenge)
        creds = self.credentials(ref.name)
        if scheme == "basic":
            if creds is None:
                return None
            header = creds.basic_header()
            with self._lock:
                self._basic[host] = header
            return header
        if scheme != "bearer" or "realm" not in params:
            return None
        # The registry's own scope (it knows what the request needs) beats ours.
        want = params.get("scope") or scope
        query = {"scope": want}
        if params.get("service"):
            query["service"] = params["service"]
        realm = params["realm"]
        realm_host = urllib.parse.urlsplit(realm).netloc.lower()
        verify: bool | str = self._host_verify.get(realm_host, not self.is_insecure(realm_host))
        import requests

        try:
            split = urllib.parse.urlsplit(realm)
            resp = self.session.get(
                realm,
                params=query,
                auth=(creds.username, creds.password) if creds else None,
                timeout=self.timeout,
                verify=self._ca_bundle if verify is True and self._ca_bundle else verify,
                proxies=self._proxies_for(f"{split.scheme}://{split.netloc}"),
            )
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise TransientError("token service unreachable", _describe_exception(exc)) from exc
        with self._lock:
            self.request_count += 1
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientError(classify_status(resp.status_code).reason, "token service", resp.status_code)
        if resp.status_code in (401, 403):
            who = f"as {creds.username} (from {creds.source})" if creds else "anonymously"
            raise RegistryError(
                ref.name,
                f"the token service refused to authenticate {who} ({resp.status_code}); "
                f"log in with `buildah login {host}`",
                status=resp.status_code,
            )
        if resp.status_code != 200:
            raise self._http_error(ref.name, resp, "getting a registry token")
        try:
            body: dict[str, Any] = resp.json()
        except ValueError as exc:
            raise RegistryError(
                ref.name, "the token service answered with something that is not JSON"
            ) from exc
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(ref.name, "the token service answered without a token")
        lifetime = float(body.get("expires_in") or 60)
        header = f"Bearer {token}"
        with self._lock:
            # keyed by our scope so the next request of the same kind finds it
            self._tokens[(host, scope)] = (header, time.monotonic() + max(10.0, lifetime - 10))
        return header


@functools.cache
def _quiet_insecure_warnings() -> None:
    """The user asked for no TLS verification for this registry; don't warn per request."""
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


# ---------------------------------------------------------------------------- push


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
    if not _parse_opts(opts).retry_given and _buildah_has_retry_flag():
        # Our retry loop is the only one that counts. buildah 1.28 ignores
        # `--retry 0` (it always retries 3 times) but honours the delay, so its
        # own retries are made instant rather than 2+4+8 s per attempt of ours.
        argv_base += ["--retry", "0", "--retry-delay", "1ms"]

    def attempt() -> str:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="imagegraph-push-") as tmp:
            digestfile = Path(tmp) / "digest"
            try:
                runner.run([*argv_base, "--digestfile", str(digestfile), image, dest], step="push")
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

    def on_retry(exc: TransientError, n: int, wait: float) -> None:
        runner.note("push", f"{exc.reason}; attempt {n}/{policy.attempts} failed, retrying in {wait:.1f} s")

    started = time.monotonic()
    try:
        return with_retries(policy, attempt, on_retry)
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
    opts = _split_opts(spec.registry_opts_push)
    _parse_opts(opts)  # registers --creds passwords as secrets before anything is logged

    ktag = key_tag(key)
    wanted = [t for t in dict.fromkeys(tags if tags is not None else spec.publish_tags) if t != ktag]
    for t in [ktag, *wanted]:
        if not _TAG_RE.fullmatch(t):
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
