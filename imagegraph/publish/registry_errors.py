"""Registry failures: the error type, and which failures are worth retrying.

`classify_error` reads a push tool's stderr (buildah's), `classify_status`
an HTTP status from the API; both answer an `ErrorClass` (transient or not,
and a reason for humans). Transient ones are retried by `imagegraph.retry`;
permanent ones (401, 403, unknown or invalid name, 404, TLS
misconfiguration) raise `RegistryError` (a `PublishError`) at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ImagegraphError, PublishError
from ..redact import redact

__all__ = ["ErrorClass", "RegistryError", "TLSVerifyError", "classify_error", "classify_status"]


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
