"""The registry HTTP API: the fast path for plans, and tagging without a process.

`RegistryClient` answers the planner's questions: tag lists (one request
per repository, cached, `Link` pagination followed), manifest digests
(HEAD), and the few writes publishing needs (a tag copied from a manifest,
deletes, blobs and manifests for artifacts). Requests go over http.client
(`httpconn.py`) where that sends what requests would send, else through one
pooled `requests.Session` (proxies, redirects, `IMAGEGRAPH_HTTP=requests`).
Each request is logged at info.

Why requests and not the `oras` package: oras-py reads credentials only from
`~/.docker/config.json` (not the containers auth files buildah writes), takes
`insecure` per client rather than per registry, has its own fixed retry
decorator, and is built around pushing/pulling artifacts. What we need is
four endpoints plus the standard challenge dance (`WWW-Authenticate: Basic`
or `Bearer realm=,service=,scope=`), which is ~100 lines here and lets us
count requests, cache per repository and choose http/https explicitly.

TLS policy (explicit, like the container tools): every registry is spoken
to over verified https, except "insecure" registries: those whose layer opts
say `--tls-verify=false`, those marked `insecure = true` in registries.conf
or its drop-ins (`containers_conf.RegistriesConf`), and loopback hosts
(`localhost`, `127.0.0.0/8`, `::1`). For those, https without verification
is tried first and plain http after it, and the scheme that answered is
remembered per host.

Credentials (`containers_conf`) are looked up, and a Basic header is kept,
per repository path (`host/ns/repo`), not per host: two repositories on one
registry may need different accounts. Options from a layer (`--creds`,
`--authfile`) apply to the repository they were given for and below it.
Transient failures are retried by the one policy (`imagegraph.retry`).
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..log import get_logger
from ..reference import ImageRef, parse_reference, target_repository
from ..retry import NoRetry, RetryPolicy, TransientError
from . import httpconn
from .containers_conf import (
    Credentials,
    RegistriesConf,
    auth_file_paths,
    find_credentials,
    is_loopback,
    parsed_opts,
    repository_prefixes,
)
from .httpconn import SendError
from .registry_errors import RegistryError, TLSVerifyError, classify_status

if TYPE_CHECKING:
    import requests

    from ..spec import LayerSpec

__all__ = ["MANIFEST_ACCEPT", "RegistryClient"]

# Docker Hub's API does not live at its reference name.
_API_HOSTS = {"docker.io": "registry-1.docker.io"}

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


class _NoNetrc:
    """A requests auth that changes nothing (see RegistryClient.__init__)."""

    def __call__(self, request: Any) -> Any:
        return request


class RegistryClient:
    """The registry HTTP API with one pooled session, for cheap checks and tagging.

    Tag lists are cached per repository for the client's lifetime (a client
    is meant to live for one plan or one run): 1,000 layers in one repository
    cost one listing. A host that stayed unreachable through the retries is
    remembered as down for `down_ttl` seconds, so the next queries against it
    answer None at once instead of retrying per layer; any success clears
    that. `errors` maps what was asked (repository or reference) to why the
    answer was None. `request_count` counts the HTTP
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
        registries_conf: RegistriesConf | None = None,
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
        self._conf = registries_conf
        # keyed by repository path or host, whichever the options were given for
        self._opt_authfile: dict[str, str] = {}
        self._opt_creds: dict[str, Credentials] = {}
        self._creds: dict[str, Credentials | None] = {}  # repository -> what it authenticates as
        self._host_verify: dict[str, str] = {}
        self._scheme: dict[str, str] = {}
        self._basic_hosts: set[str] = set()  # hosts that asked for Basic: send it unasked
        self._basic: dict[str, str | None] = {}  # repository -> its Basic header
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._tags: dict[str, set[str]] = {}
        self._manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._down: dict[str, tuple[str, float]] = {}  # host -> (reason, until)
        self.down_ttl = down_ttl
        self._lock = threading.Lock()
        self._repo_locks: dict[str, threading.Lock] = {}
        self._session = session
        # Requests go over http.client where that is what requests would send (httpconn.py:
        # requests' import is a quarter of a no-op `up`); a given session always answers.
        self._light = session is None and httpconn.usable()
        self._conns = httpconn.Connections()
        self._session_lock = threading.Lock()
        # What requests reads from the environment on every request (trust_env), read once: the
        # proxies per scheme and host (HTTP(S)_PROXY, NO_PROXY), the CA bundle. Planning asks
        # thousands of questions; the per-request scan of os.environ was a seventh of its client time.
        self._ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._proxies: dict[str, dict[str, str]] = {}

    @property
    def session(self) -> requests.Session:
        """The requests session (made on first use: proxies, redirects, or IMAGEGRAPH_HTTP=requests)."""
        with self._session_lock:
            if self._session is None:
                import requests

                session = requests.Session()
                adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=16, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers["User-Agent"] = httpconn.USER_AGENT
                session.trust_env = False  # read once, above
                self._session = session
            # Credentials come from the container tools' files only (module docstring), never from
            # ~/.netrc: a session-wide no-op auth keeps requests from looking for one on every request
            # (a tenth of a no-op plan's client time) and from replacing our Authorization header.
            if self._session.auth is None:
                self._session.auth = _NoNetrc()
                self._session.trust_env = False
            return self._session

    def _http(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        verify: bool | str,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> Any:
        """One HTTP request (httpconn where it sends what requests sends, else requests). Raises SendError."""
        verify = self._ca_bundle if verify is True and self._ca_bundle else verify
        if self._light:
            hdrs = {**headers, "Authorization": httpconn.basic_auth(*auth)} if auth else headers
            resp = self._conns.send(method, url, hdrs, data, self.timeout, verify, params)
            if resp is not None:
                return resp
        import requests

        if verify is False:
            _quiet_insecure_warnings()
        split = urllib.parse.urlsplit(url)
        try:
            return self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                params=params,
                auth=auth,
                timeout=self.timeout,
                verify=verify,
                proxies=self._proxies_for(f"{split.scheme}://{split.netloc}"),
            )
        except requests.exceptions.SSLError as exc:
            raise SendError(str(exc), tls=True) from exc
        except requests.exceptions.Timeout as exc:
            raise SendError(str(exc), timeout=True) from exc
        except requests.exceptions.ConnectionError as exc:
            raise SendError(str(exc)) from exc

    # -- configuration

    def configure_for(self, spec: LayerSpec) -> None:
        """Honour a layer's registry options (TLS, --authfile, --creds, --cert-dir):
        push options for its publish repository, pull options for its parent's."""
        if spec.publish_registry:
            repo = target_repository(spec)
            self.configure_registry(repo.registry, spec.registry_opts_push, repository=repo.name)
        if not spec.is_scratch:
            try:
                parent = parse_reference(spec.parent)
            except ValueError:
                return
            self.configure_registry(parent.registry, spec.registry_opts_pull, repository=parent.name)

    def configure_registry(
        self, registry: str, opts: Iterable[str], *, repository: str | None = None
    ) -> None:
        """Apply buildah-style options to requests to `registry` (host[:port]).

        TLS options hold for the host (connections are per host); `--creds`
        and `--authfile` for `repository` (`host/ns/repo`) and the paths
        below it when given, else for every repository of the host.
        """
        parsed = parsed_opts(tuple(opts))
        host = registry.lower()
        scope = repository or host
        with self._lock:
            if parsed.insecure:
                self._insecure.add(host)
            if parsed.verify:
                self._verify.add(host)
            if parsed.authfile:
                self._opt_authfile[scope] = parsed.authfile
            if parsed.creds:
                self._opt_creds[scope] = parsed.creds
            if parsed.authfile or parsed.creds:
                self._creds.clear()
                self._basic.clear()
            if parsed.cert_dir:
                cas = sorted(Path(parsed.cert_dir).glob("*.crt"))
                if cas:
                    self._host_verify[host] = str(cas[0])

    def is_insecure(self, registry: str) -> bool:
        """Whether plain http (and unverified https) may be used for `registry`."""
        host = registry.lower()
        if host in self._verify and host not in self._insecure:
            return False
        return host in self._insecure or is_loopback(host) or self.registries_conf.insecure(host)

    @property
    def registries_conf(self) -> RegistriesConf:
        """registries.conf and its drop-ins, read once per client (when first needed)."""
        if self._conf is None:
            self._conf = RegistriesConf.load()
        return self._conf

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
        """Credentials for repository `name` (`host/ns/repo`), or None (anonymous).

        The most specific source wins: `--creds` given for the repository (or a
        path above it, or its host), then the auth files (`--authfile` given
        that way first), each by its most specific key. Cached per repository.
        """
        with self._lock:
            if name in self._creds:
                return self._creds[name]
            prefixes = repository_prefixes(name)
            opt_creds = next((self._opt_creds[p] for p in prefixes if p in self._opt_creds), None)
            authfile = next((self._opt_authfile[p] for p in prefixes if p in self._opt_authfile), None)
        if opt_creds is not None:
            found: Credentials | None = opt_creds
        else:
            files = (
                list(self._auth_files) if self._auth_files is not None else auth_file_paths(self._auth_file)
            )
            if authfile:
                files.insert(0, Path(authfile))
            found = find_credentials(name, files)
        with self._lock:
            self._creds[name] = found
        return found

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
            resp = self.retry.call(
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
            digest = self.retry.call(lambda: self._head_digest(ref))
            if digest is None:
                return False
            resp = self.retry.call(lambda: self._request("DELETE", ref, f"/manifests/{digest}", "delete"))
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

    def platforms(self, ref: str) -> frozenset[str] | None:
        """The `os/architecture` platforms a reference offers (an index's members, or one image's
        config); None when it does not exist. Raises RegistryError when the registry cannot say."""
        got = self._index_or_config(ref)
        if got is None:
            return None
        index, config = got
        if index is not None:
            return frozenset(
                f"{m['platform'].get('os', '')}/{m['platform'].get('architecture', '')}"
                for m in index.get("manifests", [])
                if m.get("platform")
            )
        return frozenset({f"{config.get('os', '')}/{config.get('architecture', '')}"})

    def image_labels(self, ref: str) -> dict[str, str] | None:
        """The labels in the config of the image `ref` points at; None when it does not exist or is
        an index. Raises RegistryError when the registry cannot say."""
        got = self._index_or_config(ref)
        if got is None or got[0] is not None:
            return None
        return dict((got[1].get("config") or {}).get("Labels") or {})

    def _index_or_config(self, ref: str) -> tuple[dict | None, dict] | None:
        """(the index document, {}) when `ref` names an index, (None, its image config) when an image
        (the config's bytes checked against its digest); None when it does not exist."""
        got = self.manifest(ref)
        if got is None:
            return None
        body, media_type = got
        doc = json.loads(body)
        if "manifests" in doc or "index" in media_type or "list" in media_type:
            return doc, {}
        digest = (doc.get("config") or {}).get("digest", "")
        data = self.blob(ref, digest, max_size=16 << 20)
        if data is None:
            raise RegistryError(str(parse_reference(ref)), f"the image config {digest} is missing")
        return None, json.loads(data)

    def put_blob(self, repository_ref: str, data: bytes) -> str:
        """Upload `data` as a blob of the repository (monolithic POST + PUT); returns its digest."""
        ref = parse_reference(repository_ref)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        try:
            head = self.retry.call(lambda: self._request("HEAD", ref, f"/blobs/{digest}", "pull,push"))
            if head.status_code == 200:
                return digest
            start = self.retry.call(lambda: self._request("POST", ref, "/blobs/uploads/", "pull,push"))
            if start.status_code != 202 or "Location" not in start.headers:
                raise self._http_error(ref.name, start, "starting a blob upload")
            loc = urllib.parse.urlsplit(urllib.parse.urljoin(start.url, start.headers["Location"]))
            path = loc.path.removeprefix(f"/v2/{ref.repository}")
            query = (loc.query + "&" if loc.query else "") + urllib.parse.urlencode({"digest": digest})
            resp = self.retry.call(
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
            resp = self.retry.call(
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
            resp = self.retry.call(
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

    def blob(self, repository_ref: str, digest: str, max_size: int = 64 << 20) -> bytes | None:
        """A blob's bytes, checked against `digest`; None when it does not exist (RegistryError
        when unreachable, too large, or the bytes do not match)."""
        ref = parse_reference(repository_ref)
        try:
            resp = self.retry.call(lambda: self._request("GET", ref, f"/blobs/{digest}", "pull"))
        except TransientError as exc:
            raise RegistryError(ref.name, f"gave up reading blob {digest}: {exc}", transient=True) from exc
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._http_error(f"{ref.name}@{digest}", resp, "reading a blob")
        data = resp.content
        if len(data) > max_size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"{ref.name}@{digest}", "the blob's bytes do not match its digest")
        return data

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
            resp = self.retry.call(lambda p=path: self._request("GET", ref, p, "pull"))
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
        resp = self.retry.call(
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
        resp = self.retry.call(
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
        auth = self._cached_auth(ref, scope)
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

    def _proxies_for(self, base: str) -> dict[str, str]:
        """The environment's proxies for `scheme://host[:port]`, as requests would find them
        (NO_PROXY honoured), once per host."""
        found = self._proxies.get(base)
        if found is None:
            import requests.utils

            found = self._proxies[base] = requests.utils.get_environ_proxies(base + "/")
        return found

    def _send(
        self, method: str, host: str, path: str, headers: dict[str, str], data: bytes | None
    ) -> requests.Response:
        api_host = _API_HOSTS.get(host, host)
        schemes = self.schemes(host)
        last: Exception | None = None
        for i, scheme in enumerate(schemes):
            verify: bool | str = True
            if scheme == "https":
                verify = self._host_verify.get(host.lower(), not self.is_insecure(host))
            url = f"{scheme}://{api_host}{path}"
            started = time.monotonic()
            try:
                resp = self._http(method, url, headers=headers, data=data, verify=verify)
            except SendError as exc:
                last = exc
                if exc.tls:
                    if i + 1 < len(schemes):
                        continue
                    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                        raise TLSVerifyError(host, _verify_reason(exc)) from exc
                    raise TransientError("TLS handshake failed", _describe_exception(exc)) from exc
                timed_out = exc.timeout
                _log.info("registry request", method=method, url=url, error=_describe_exception(exc))
                if timed_out and not self.retry_timeouts:
                    # Something listens and does not answer: asking again (or over http) waits again.
                    raise NoRetry(f"did not answer within {_timeout_text(self.timeout)}") from exc
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

    def _cached_auth(self, ref: ImageRef, scope: str) -> str | None:
        with self._lock:
            token = self._tokens.get((ref.registry, scope))
            if token and token[1] > time.monotonic():
                return token[0]
            if ref.registry not in self._basic_hosts:
                return None
        # The host takes Basic: send this repository's own credentials without waiting for a 401.
        return self._basic_header(ref.name)

    def _basic_header(self, name: str) -> str | None:
        with self._lock:
            if name in self._basic:
                return self._basic[name]
        creds = self.credentials(name)
        header = creds.basic_header() if creds else None
        with self._lock:
            self._basic[name] = header
        return header

    def _authenticate(self, ref: ImageRef, challenge: str, scope: str) -> str | None:
        """Answer a 401 challenge: a Basic header, or a Bearer token from the realm."""
        host = ref.registry
        scheme, params = _parse_challenge(challenge)
        creds = self.credentials(ref.name)
        if scheme == "basic":
            with self._lock:
                self._basic_hosts.add(host)
            return self._basic_header(ref.name)
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
        try:
            resp = self._http(
                "GET",
                realm,
                headers={},
                params=query,
                auth=(creds.username, creds.password) if creds else None,
                verify=verify,
            )
        except SendError as exc:
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


def planning_client(timeout: float) -> RegistryClient:
    """A client for questions a plan asks, which must stay fast when a registry is down: a short
    retry, then "did not answer"; a registry that accepts connections and never answers costs one
    timeout (seconds to connect, and again to read), not one per retry and scheme. Unreachable
    registries are not warned about here: the caller says once per registry what did not answer."""
    policy = RetryPolicy.from_env()
    return RegistryClient(
        retry=RetryPolicy(attempts=min(policy.attempts, 2), initial_wait=0.2, max_wait=0.5),
        timeout=(timeout, timeout),
        retry_timeouts=False,
        warn_unreachable=False,
    )
