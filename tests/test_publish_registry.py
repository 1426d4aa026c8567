"""Registry publishing: references, error classes, credentials, and pushes to a REAL registry.

Server tests use the `registry` / `auth_registry` fixtures (docker-registry on
127.0.0.1, tests/fixtures_servers.py) and real `buildah push`. A small
in-process HTTP server stands in for protocol details docker-registry 2.8 does
not exercise (tag-list pagination, bearer tokens, 5xx/429).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph import log as iglog
from imagegraph.errors import PublishError
from imagegraph.key import key_tag
from imagegraph.publish.containers_conf import auth_file_paths, find_credentials
from imagegraph.publish.push import push_layer
from imagegraph.publish.registry_client import RegistryClient
from imagegraph.publish.registry_errors import RegistryError, classify_error, classify_status
from imagegraph.redact import redact
from imagegraph.reference import ImageRef, normalize_reference, parse_reference
from imagegraph.retry import RetryPolicy
from imagegraph.runner import Runner
from imagegraph.spec import LayerSpec

from .needs import missing, requires

BUILDAH_ENV = {**os.environ, "BUILDAH_ISOLATION": os.environ.get("BUILDAH_ISOLATION", "chroot")}
needs_buildah = requires(shutil.which("buildah") is not None and os.geteuid() == 0, "needs buildah as root")
FAST = RetryPolicy(attempts=3, initial_wait=0.1, max_wait=0.5)
KEY = hashlib.sha256(b"registry-test").hexdigest()

# ------------------------------------------------------------------------ references


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("ubuntu", "docker.io/library/ubuntu:latest"),
        ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("x:y", "docker.io/library/x:y"),
        ("library/ubuntu", "docker.io/library/ubuntu:latest"),
        ("foo/bar", "docker.io/foo/bar:latest"),
        ("docker.io/ubuntu", "docker.io/library/ubuntu:latest"),
        ("index.docker.io/foo/bar:1", "docker.io/foo/bar:1"),
        ("docker://ubuntu", "docker.io/library/ubuntu:latest"),
        ("localhost/x:y", "localhost/x:y"),
        ("localhost/x", "localhost/x:latest"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        ("registry.example.com:5000/ns/img:1.2", "registry.example.com:5000/ns/img:1.2"),
        ("Registry.Example.COM/ns/img", "registry.example.com/ns/img:latest"),
        ("10.1.2.3:5000/stratus/rocky-base:8.9", "10.1.2.3:5000/stratus/rocky-base:8.9"),
        ("10.1.2.3/a", "10.1.2.3/a:latest"),
        ("[::1]:5000/x:y", "[::1]:5000/x:y"),
        ("reg:5000//ns//img/", "reg:5000/ns/img:latest"),
        (
            "registry.dist.si.usrc:5000/redondo//rocky-base:9.5",
            "registry.dist.si.usrc:5000/redondo/rocky-base:9.5",
        ),
        ("reg.local/ns/", "reg.local/ns:latest"),
        ("  ubuntu  ", "docker.io/library/ubuntu:latest"),
        ("ubuntu@sha256:" + "a" * 64, "docker.io/library/ubuntu@sha256:" + "a" * 64),
        ("reg:5000/x:1@sha256:" + "b" * 64, "reg:5000/x:1@sha256:" + "b" * 64),
        ("a/b/c/d:e_f-g.h", "docker.io/a/b/c/d:e_f-g.h"),
        ("my_host/x", "docker.io/my_host/x:latest"),  # no '.', ':' or capitals: a namespace
    ],
)
def test_normalize_reference(ref: str, expected: str) -> None:
    assert normalize_reference(ref) == expected
    assert normalize_reference(expected) == expected  # idempotent


def test_parse_reference_fields() -> None:
    assert parse_reference("reg:5000/ns/img:t") == ImageRef("reg:5000", "ns/img", "t", None)
    pinned = parse_reference("reg/img@sha256:" + "c" * 64)
    assert pinned.tag is None and pinned.reference == "sha256:" + "c" * 64
    assert parse_reference("x").name == "docker.io/library/x"
    assert parse_reference("localhost:5000").repository == "library/localhost"  # docker's reading


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "/",
        "UPPER",
        "reg/Upper",
        "reg/img:",
        "reg/img:-bad",
        "img@sha256:short",
        "reg/a b",
    ],
)
def test_parse_reference_rejects(ref: str) -> None:
    with pytest.raises(ValueError):
        parse_reference(ref)


def test_normalize_is_fast() -> None:
    refs = [f"reg{i % 7}.example:5000/ns/layer{i}:{i}" for i in range(2000)]
    start = time.perf_counter()
    for _ in range(5):
        for r in refs:
            normalize_reference(r)
    assert time.perf_counter() - start < 1.0


def _parse_reference_before(ref: str) -> ImageRef:
    """parse_reference as it was before its regexp became conditional (commit 5974207)."""
    import re

    from imagegraph import reference as r

    text = ref.strip()
    if text.startswith("docker://"):
        text = text[len("docker://") :]
    text = re.sub(r"/{2,}", "/", text).strip("/")
    if not text:
        raise ValueError("empty")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not r._DIGEST_RE.fullmatch(digest):
            raise ValueError("digest")
        text = text.rstrip("/")
    tag = None
    slash, colon = text.rfind("/"), text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not r._TAG_RE.fullmatch(tag):
            raise ValueError("tag")
        text = text.rstrip("/")
    first, sep, rest = text.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first.lower(), rest
    else:
        domain, path = r.DEFAULT_REGISTRY, text
    if domain in r.DOCKER_HUB_ALIASES:
        domain = r.DEFAULT_REGISTRY
    if not r._DOMAIN_RE.fullmatch(domain):
        raise ValueError("registry")
    if not path:
        raise ValueError("no repository")
    if domain == r.DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not r._PATH_RE.fullmatch(path):
        raise ValueError("repository")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(domain, path, tag, digest)


@given(
    st.lists(
        st.sampled_from(
            [
                "/",
                "//",
                ".",
                ":",
                "@",
                "sha256:" + "c" * 64,
                "localhost",
                "Reg",
                "reg",
                "x",
                "5000",
                " ",
                "docker://",
            ]
        ),
        max_size=8,
    ).map("".join)
)
@settings(max_examples=600, deadline=None)
def test_parse_reference_reads_as_before(ref: str) -> None:
    try:
        want: ImageRef | type = _parse_reference_before(ref)
    except ValueError:
        want = ValueError
    try:
        got: ImageRef | type = parse_reference.__wrapped__(ref)
    except ValueError:
        got = ValueError
    assert got == want


# -------------------------------------------------------------------- classification

REFUSED = (
    'Error: pushing image "6982a1" to "docker://127.0.0.1:5993/ns/tiny:x": trying to reuse blob '
    "sha256:489b562254a23d6e9c97ad5d48008f60d0f750801377756678125427d416bb39 at destination: pinging container "
    'registry 127.0.0.1:5993: Get "http://127.0.0.1:5993/v2/": dial tcp 127.0.0.1:5993: connect: connection refused'
)
UNAUTHORIZED = (
    "Error: pushing image ... checking whether a blob sha256:489b5622 exists in 127.0.0.1:5992/ns/tiny: "
    "unauthorized: authentication required"
)


@pytest.mark.parametrize(
    ("text", "transient", "words"),
    [
        (REFUSED, True, "connection refused"),
        ("Error: ...: dial tcp 10.0.0.1:443: i/o timeout", True, "timeout"),
        ("Error: ...: net/http: TLS handshake timeout", True, "timeout"),
        ("writing blob: ...: received unexpected HTTP status: 503 Service Unavailable", True, "5xx"),
        ("Error: ...: received unexpected HTTP status: 500 Internal Server Error", True, "5xx"),
        ("Error: ...: toomanyrequests: You have reached your pull rate limit", True, "429"),
        ("Error: ...: read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer", True, "dropped"),
        ("(killed after 600 s timeout)", True, "timeout"),
        (UNAUTHORIZED, False, "401"),
        ("Error: ...: requested access to the resource is denied", False, "403"),
        ("Error: ...: denied: requested access to the resource is denied", False, "403"),
        ("Error: ...: name unknown: repository name not known to registry", False, "unknown repository"),
        ("Error: invalid reference format: repository name must be lowercase", False, "invalid image name"),
        ("Error: ...: manifest unknown: manifest unknown", False, "404"),
        ('Error: pushing image "x": image not known', False, "local image"),
        ("Error: ...: http: server gave HTTP response to HTTPS client", False, "--tls-verify=false"),
        ("Error: ...: x509: certificate signed by unknown authority", False, "TLS"),
        ("Error: ...: dial tcp: lookup reg.invalid: no such host", False, "DNS"),
        ("Error: something nobody has seen before", False, "push failed"),
        # permanent beats transient when both show up
        (UNAUTHORIZED + "\nconnection reset by peer", False, "401"),
    ],
)
def test_classify_error(text: str, transient: bool, words: str) -> None:
    cls = classify_error(text)
    assert cls.transient is transient
    assert words in cls.reason


def test_classify_error_ignores_names_and_digests() -> None:
    # a repository called "timeout-test" or a digest containing 404 must not decide the class
    text = (
        'Error: pushing image "x" to "docker://reg/ns/timeout-test:1": unauthorized: authentication required'
    )
    assert classify_error(text, names=["reg/ns/timeout-test"]).transient is False
    text = "Error: ... blob sha256:" + "4040" * 16 + " ...: connection refused"
    assert classify_error(text).transient is True
    text = "Error: writing to reg/ns/timeout-test: connection refused"
    assert classify_error(text, names=["reg/ns/timeout-test"]).reason.endswith("(connection refused)")


@pytest.mark.parametrize(
    ("status", "transient"),
    [(500, True), (502, True), (503, True), (429, True), (401, False), (403, False), (404, False)],
)
def test_classify_status(status: int, transient: bool) -> None:
    assert classify_status(status).transient is transient


def test_retry_policy_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGRAPH_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("IMAGEGRAPH_RETRY_INITIAL_WAIT", "0.25")
    monkeypatch.setenv("IMAGEGRAPH_RETRY_MAX_WAIT", "3")
    assert RetryPolicy.from_env() == RetryPolicy(2, 0.25, 3.0)
    monkeypatch.setenv("IMAGEGRAPH_RETRY_ATTEMPTS", "zero")
    assert RetryPolicy.from_env().attempts == RetryPolicy().attempts


# ------------------------------------------------------------------- TLS and auth files


def test_tls_scheme_choice() -> None:
    c = RegistryClient(retry=FAST)
    assert c.schemes("registry.example.com:5000") == ["https"]
    for loopback in ("localhost:5000", "127.0.0.1:5000", "127.0.0.2", "[::1]:5000", "foo.localhost"):
        assert c.schemes(loopback) == ["https", "http"], loopback
    c.configure_registry("registry.example.com:5000", ["--tls-verify=false"])
    assert c.schemes("registry.example.com:5000") == ["https", "http"]
    c.configure_registry("other.example.com", ["--tls-verify", "false"])
    assert c.is_insecure("other.example.com")
    c.configure_registry("third.example.com", ["--tls-verify=true"])
    assert c.schemes("third.example.com") == ["https"]
    spec = LayerSpec(
        path=Path("x.yaml"),
        layer_type="base",
        name="c",
        parent="pull.example.com/ns/p:1",
        publish_registry="push.example.com/ns",
        registry_opts_push=("--tls-verify=false",),
        registry_opts_pull=("--tls-verify=false",),
    )
    c.configure_for(spec)
    assert c.is_insecure("push.example.com") and c.is_insecure("pull.example.com")


def _clean_auth_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_auth_file_paths_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_auth_env(monkeypatch, tmp_path)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", "/a/auth.json")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    paths = auth_file_paths("/explicit.json")
    assert paths == [
        Path("/explicit.json"),
        Path("/a/auth.json"),
        Path("/run/user/7/containers/auth.json"),
        Path(f"/run/containers/{os.getuid()}/auth.json"),
        tmp_path / ".config/containers/auth.json",
        tmp_path / ".docker/config.json",
    ]


def test_find_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def auth(user: str, pw: str) -> dict:
        return {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}

    containers = tmp_path / "auth.json"
    containers.write_text(
        json.dumps(
            {"auths": {"reg:5000": auth("host", "pw-host-1"), "reg:5000/team": auth("team", "pw-team-1")}}
        )
    )
    docker = tmp_path / "config.json"
    docker.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": auth("hub", "pw-hub-1"),
                    "other.example": {"username": "plain", "password": "pw-plain-1"},
                }
            }
        )
    )
    files = [containers, docker]
    assert find_credentials("reg:5000/team/img", files).username == "team"  # most specific key
    assert find_credentials("reg:5000/other/img", files).username == "host"
    assert find_credentials("docker.io/library/ubuntu", files).username == "hub"
    assert find_credentials("other.example/x", files).username == "plain"
    assert find_credentials("nowhere.example/x", files) is None
    creds = find_credentials("reg:5000/x", files)
    assert "pw-host-1" not in repr(creds)
    assert redact("leak pw-host-1 pw-hub-1") == "leak *** ***"  # loaded passwords are secrets now


def test_creds_option_is_a_secret() -> None:
    c = RegistryClient(retry=FAST)
    c.configure_registry("reg.example", ["--creds", "bob:pw-from-creds-9"])
    assert c.credentials("reg.example/x").username == "bob"
    assert "pw-from-creds-9" not in redact("--creds bob:pw-from-creds-9")


# --------------------------------------------------- protocol details, in-process server


class FakeRegistry(BaseHTTPRequestHandler):
    """Paginated tag lists, bearer tokens and scripted failures."""

    script: list[int] = []  # statuses to answer before behaving normally
    page_faults: dict[str, list[int]] = {}  # `last` of a page -> statuses to answer for it first
    calls: list[str] = []
    auth_headers: list[str | None] = []
    token_calls: list[dict] = []
    tags = [f"t{i}" for i in range(7)]

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append(self.path)
        self.auth_headers.append(self.headers.get("Authorization"))
        host = self.headers["Host"]
        if self.path.startswith("/token"):
            from urllib.parse import parse_qs, urlsplit

            self.token_calls.append(parse_qs(urlsplit(self.path).query))
            self._send(200, {"token": "tok-123", "expires_in": 300})
            return
        if self.script:
            self._send(self.script.pop(0), {"errors": [{"code": "X", "message": "scripted"}]})
            return
        if self.headers.get("Authorization") != "Bearer tok-123":
            challenge = f'Bearer realm="http://{host}/token",service="fake",scope="repository:ns/img:pull"'
            self._send(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": challenge})
            return
        # page size 3, following the distribution spec's Link header
        from urllib.parse import parse_qs, urlsplit

        q = parse_qs(urlsplit(self.path).query)
        last = q.get("last", [None])[0]
        if self.page_faults.get(last or ""):
            self._send(self.page_faults[last or ""].pop(0), {"errors": [{"code": "TOOMANYREQUESTS"}]})
            return
        start = self.tags.index(last) + 1 if last else 0
        page = self.tags[start : start + 3]
        headers = {}
        if start + 3 < len(self.tags):
            headers["Link"] = f'</v2/ns/img/tags/list?n=3&last={page[-1]}>; rel="next"'
        self._send(200, {"name": "ns/img", "tags": page}, headers)


@pytest.fixture
def fake_registry() -> Iterator[str]:
    FakeRegistry.script = []
    FakeRegistry.page_faults = {}
    FakeRegistry.calls = []
    FakeRegistry.auth_headers = []
    FakeRegistry.token_calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_pagination_and_bearer_token(fake_registry: str) -> None:
    c = RegistryClient(retry=FAST, auth_files=[])
    assert c.tags(f"{fake_registry}/ns/img") == set(FakeRegistry.tags)
    assert FakeRegistry.token_calls == [{"scope": ["repository:ns/img:pull"], "service": ["fake"]}]
    listings = [p for p in FakeRegistry.calls if "tags/list" in p]
    assert len(listings) == 4  # one 401, then three pages with the token reused
    assert c.request_count == 5  # + the token request
    assert c.has_tag(f"{fake_registry}/ns/img", "t6") is True
    assert c.request_count == 5


def test_netrc_is_never_read(fake_registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials come from the container tools' files only: a ~/.netrc entry for the registry
    sends no Basic header, neither to the registry nor to its token service."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-pw-77\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    c = RegistryClient(retry=FAST, auth_files=[])
    assert c.tags(f"{fake_registry}/ns/img") == set(FakeRegistry.tags)
    assert FakeRegistry.auth_headers[0] is None  # the first request, before the challenge
    assert not any(h and h.startswith("Basic") for h in FakeRegistry.auth_headers), FakeRegistry.auth_headers


def test_transient_status_is_retried(fake_registry: str) -> None:
    FakeRegistry.script = [503, 429]
    c = RegistryClient(retry=FAST, auth_files=[])
    assert c.tags(f"{fake_registry}/ns/img") == set(FakeRegistry.tags)


def test_429_in_the_middle_of_pagination_keeps_the_token_and_the_pages(fake_registry: str) -> None:
    FakeRegistry.page_faults = {"t2": [429, 429]}  # the second page is rate-limited twice
    c = RegistryClient(retry=FAST, auth_files=[])
    assert c.tags(f"{fake_registry}/ns/img") == set(FakeRegistry.tags)
    assert len(FakeRegistry.token_calls) == 1  # the bearer token outlives the retries
    listings = [p for p in FakeRegistry.calls if "tags/list" in p]
    assert sum("last=t2" in p for p in listings) == 3 and sum("last=t5" in p for p in listings) == 1


def test_transient_status_exhausts_to_none(fake_registry: str) -> None:
    FakeRegistry.script = [502] * 10
    c = RegistryClient(retry=FAST, auth_files=[])
    ref = f"{fake_registry}/ns/img"
    assert c.tags(ref) is None
    assert "unreachable" in c.errors[parse_reference(ref).name]
    assert c.request_count == 3  # FAST.attempts
    assert c.manifest_digest(f"{fake_registry}/ns/other:1") is None  # host remembered as down
    assert c.request_count == 3


def test_forbidden_is_not_retried(fake_registry: str) -> None:
    FakeRegistry.script = [403, 403, 403]
    c = RegistryClient(retry=RetryPolicy(attempts=5, initial_wait=1, max_wait=1), auth_files=[])
    start = time.monotonic()
    with pytest.raises(RegistryError, match="403") as err:
        c.tags(f"{fake_registry}/ns/img")
    assert isinstance(err.value, PublishError)
    assert time.monotonic() - start < 0.5 and c.request_count == 1


# ------------------------------------------------------------------ against the real registry


def _buildah(*args: str, input: str | None = None) -> str:
    return subprocess.run(
        ["buildah", *args], capture_output=True, text=True, env=BUILDAH_ENV, check=True, input=input
    ).stdout.strip()


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-file image from scratch (no package manager: fast); removed afterwards."""
    if shutil.which("buildah") is None or os.geteuid() != 0:
        missing("needs buildah as root")
    src = tmp_path_factory.mktemp("tiny") / "hello.txt"
    src.write_text(f"hello from imagegraph {uuid.uuid4()}\n")
    ctr = _buildah("from", "scratch")
    try:
        _buildah("copy", ctr, str(src), "/hello.txt")
        image = _buildah("commit", "-q", ctr)
    finally:
        _buildah("rm", ctr)
    yield image
    subprocess.run(["buildah", "rmi", "-f", image], capture_output=True, env=BUILDAH_ENV)


def _spec(host: str, name: str = "tiny", tags: tuple[str, ...] = ("v1", "stable")) -> LayerSpec:
    # publish_registry written the way real files do: a namespace and a trailing slash
    return LayerSpec(
        path=Path("tiny.yaml"),
        layer_type="base",
        name=name,
        publish_tags=tags,
        publish_registry=f"{host}/site/",
        registry_opts_push=("--tls-verify=false",),
    )


def _runner() -> Runner:
    return Runner(layer="tiny", logfile=io.StringIO())


def _pushes(runner: Runner) -> int:
    # `nice -n 10 buildah push ...`: pushes run at a lower CPU priority (push.push_nice)
    lines = runner.logfile.getvalue().splitlines()
    return sum(1 for line in lines if re.match(r"\$ (nice -n \d+ )?buildah push", line))


@needs_buildah
def test_push_layer_one_manifest_for_all_tags(registry, tiny_image: str) -> None:
    runner = _runner()
    pub = push_layer(_spec(registry.host), KEY, tiny_image, runner, retry=FAST)
    repo = f"{registry.host}/site/tiny"
    assert pub.repository == repo
    assert pub.tags == ("v1", "stable", key_tag(KEY))
    assert pub.digest.startswith("sha256:")
    assert _pushes(runner) == 1  # one push; the other tags were added over the API

    client = RegistryClient(retry=FAST)
    assert client.tags(repo) == {"v1", "stable", key_tag(KEY)}
    for tag in pub.tags:
        assert client.manifest_digest(f"{repo}:{tag}") == pub.digest
    assert client.manifest_digest(pub.pinned) == pub.digest  # pinned: answered without asking
    assert client.manifest_digest(f"{repo}:missing") is None
    assert client.errors[f"{repo}:missing"] == "not found"
    assert client.schemes(registry.host) == ["http"]  # the probe's answer is remembered
    # the key tag is what children build from: pull it back through buildah
    _buildah("pull", "-q", "--tls-verify=false", f"{repo}:{key_tag(KEY)}")

    # explicit tags instead of publish_tags; the shared client's cache is kept current
    pub2 = push_layer(
        _spec(registry.host), KEY, tiny_image, _runner(), tags=["extra"], client=client, retry=FAST
    )
    assert pub2.digest == pub.digest and pub2.tags == ("extra", key_tag(KEY))
    assert client.has_tag(repo, "extra") is True


@needs_buildah
def test_request_count_one_listing_for_many_lookups(registry, tiny_image: str) -> None:
    push_layer(_spec(registry.host, tags=("a",)), KEY, tiny_image, _runner(), retry=FAST)
    client = RegistryClient(retry=FAST)
    repo = f"{registry.host}/site/tiny"
    assert client.has_tag(repo, "a") is True
    assert client.request_count == 1
    for i in range(50):
        assert client.has_tag(f"{repo}:ignored", key_tag(KEY) if i % 2 else f"nope{i}") is (i % 2 == 1)
    assert client.request_count == 1
    assert client.tags(f"{registry.host}/site/never-pushed") == set()  # 404 NAME_UNKNOWN: nothing there
    assert client.request_count == 2


@needs_buildah
def test_push_fails_after_retries_when_registry_is_down(registry, tiny_image: str, monkeypatch) -> None:
    monkeypatch.setenv("IMAGEGRAPH_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("IMAGEGRAPH_RETRY_INITIAL_WAIT", "0.1")
    monkeypatch.setenv("IMAGEGRAPH_RETRY_MAX_WAIT", "0.2")
    registry.stop()
    runner = _runner()
    start = time.monotonic()
    with pytest.raises(PublishError) as err:
        push_layer(_spec(registry.host), KEY, tiny_image, runner)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert message.startswith("tiny: publishing to docker://")
    assert "connection refused" in message and "gave up after 3 attempts" in message
    assert _pushes(runner) == 3
    assert err.value.transient is True
    registry.start()
    assert RegistryClient(retry=FAST).tags(f"{registry.host}/site/tiny") == set()  # nothing half-published


@needs_buildah
def test_push_survives_registry_restart(registry, tiny_image: str) -> None:
    registry.stop()
    restarter = threading.Timer(1.0, registry.start)
    restarter.start()
    runner = _runner()
    try:
        pub = push_layer(
            _spec(registry.host),
            KEY,
            tiny_image,
            runner,
            retry=RetryPolicy(attempts=8, initial_wait=0.3, max_wait=1),
        )
    finally:
        restarter.join()
    assert _pushes(runner) >= 2
    assert "retrying in" in runner.logfile.getvalue()
    assert RegistryClient(retry=FAST).tags(pub.repository) == set(pub.tags)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    old = structlog.get_config()
    stream = io.StringIO()
    iglog.configure(fmt="json", level="DEBUG", stream=stream)
    try:
        yield stream
    finally:
        structlog.configure(**old)


@needs_buildah
def test_basic_auth_push_and_list_never_leak_password(
    auth_registry, tiny_image: str, tmp_path: Path, monkeypatch, captured_logs
) -> None:
    _clean_auth_env(monkeypatch, tmp_path)
    authfile = tmp_path / "auth.json"
    login = Runner(layer="login", logfile=io.StringIO())
    login.run(
        [
            "buildah",
            "login",
            "--authfile",
            authfile,
            "--tls-verify=false",
            "-u",
            auth_registry.username,
            "--password-stdin",
            auth_registry.host,
        ],
        step="login",
        input=auth_registry.password + "\n",
    )
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    runner = _runner()
    client = RegistryClient(retry=FAST)
    pub = push_layer(_spec(auth_registry.host), KEY, tiny_image, runner, client=client, retry=FAST)
    assert client.tags(pub.repository) == {"v1", "stable", key_tag(KEY)}
    assert RegistryClient(retry=FAST).tags(pub.repository) == set(pub.tags)  # a fresh client logs in too
    assert client.manifest_digest(pub.reference("v1")) == pub.digest

    encoded = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    texts = [captured_logs.getvalue(), runner.logfile.getvalue(), login.logfile.getvalue(), repr(pub)]
    assert captured_logs.getvalue()  # logging did happen
    for text in texts:
        assert auth_registry.password not in text
        assert encoded not in text


@needs_buildah
def test_tags_fall_back_to_buildah_when_the_api_cannot_authenticate(
    auth_registry, tiny_image: str, tmp_path: Path, monkeypatch
) -> None:
    # buildah has credentials the HTTP client cannot use (think credential helper):
    # the extra tags are pushed by buildah and must still name the same manifest.
    _clean_auth_env(monkeypatch, tmp_path)
    authfile = tmp_path / "auth.json"
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    runner = _runner()
    blind = RegistryClient(retry=FAST, auth_files=[])
    pub = push_layer(_spec(auth_registry.host), KEY, tiny_image, runner, client=blind, retry=FAST)
    assert _pushes(runner) == 3
    assert "pushing the tag with buildah" in runner.logfile.getvalue()
    seeing = RegistryClient(retry=FAST)
    for tag in pub.tags:
        assert seeing.manifest_digest(pub.reference(tag)) == pub.digest


@needs_buildah
def test_unauthorized_fails_fast_without_retries(
    auth_registry, tiny_image: str, tmp_path: Path, monkeypatch, captured_logs
) -> None:
    _clean_auth_env(monkeypatch, tmp_path)
    monkeypatch.setenv("IMAGEGRAPH_RETRY_ATTEMPTS", "5")
    monkeypatch.setenv("IMAGEGRAPH_RETRY_INITIAL_WAIT", "2")
    runner = _runner()
    start = time.monotonic()
    with pytest.raises(PublishError) as err:
        push_layer(_spec(auth_registry.host), KEY, tiny_image, runner)
    assert time.monotonic() - start < 2  # a single retry would wait 2 s
    assert _pushes(runner) == 1
    assert "authentication failed (401)" in str(err.value)
    assert f"buildah login {auth_registry.host}" in str(err.value)

    client = RegistryClient(retry=RetryPolicy(attempts=5, initial_wait=2))
    start = time.monotonic()
    with pytest.raises(RegistryError, match="401"):
        client.tags(f"{auth_registry.host}/site/tiny")
    assert time.monotonic() - start < 2 and client.request_count == 1

    # wrong password: rejected, also without retrying
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"auths": {auth_registry.host: {"auth": base64.b64encode(b"imagegraph:wrong-pw-77").decode()}}}
        )
    )
    client = RegistryClient(retry=RetryPolicy(attempts=5, initial_wait=2), auth_files=[bad])
    with pytest.raises(RegistryError, match="401") as err2:
        client.tags(f"{auth_registry.host}/site/tiny")
    assert "wrong-pw-77" not in str(err2.value) and "wrong-pw-77" not in captured_logs.getvalue()


@needs_buildah
def test_delete_tag(registry, tiny_image: str) -> None:
    pub = push_layer(_spec(registry.host, tags=("v1",)), KEY, tiny_image, _runner(), retry=FAST)
    client = RegistryClient(retry=FAST)
    assert client.has_tag(pub.repository, "v1") is True
    assert client.delete_tag(pub.repository, "v1") is True
    # deletion is by digest: every tag of that manifest goes (the layer version as a whole)
    assert client.tags(pub.repository) == set()
    assert client.manifest_digest(pub.reference(key_tag(KEY))) is None
    assert client.delete_tag(pub.repository, "v1") is False


@needs_buildah
def test_unreachable_registry_answers_none_quickly(registry) -> None:
    registry.stop()
    client = RegistryClient(retry=RetryPolicy(attempts=2, initial_wait=0.1, max_wait=0.1))
    repo = f"{registry.host}/site/tiny"
    assert client.tags(repo) is None
    assert "unreachable" in client.errors[parse_reference(repo).name]
    start = time.monotonic()
    for i in range(100):  # a plan over many layers does not retry per layer
        assert client.has_tag(repo, f"t{i}") is None
    assert client.manifest_digest(f"{registry.host}/x/parent:1") is None
    assert time.monotonic() - start < 0.5


def test_registry_requests_follow_the_proxy_environment(registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY is honoured per host and NO_PROXY bypasses it (a host name that does not
    resolve is reached only through the proxy)."""
    from tests.httpproxy import RecordingProxy

    proxy = RecordingProxy(registry.url)
    try:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        host = "standin.invalid:5000"
        c = RegistryClient(retry=FAST, auth_files=[])
        c.configure_registry(host, ["--tls-verify=false"])
        assert c.tags(f"{host}/site/never-pushed") == set()  # 404 NAME_UNKNOWN, relayed
        assert ("GET", f"http://{host}/v2/site/never-pushed/tags/list") in proxy.requests
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, "standin.invalid")
        seen = len(proxy.requests)
        direct = RegistryClient(retry=FAST, auth_files=[])
        direct.configure_registry(host, ["--tls-verify=false"])
        assert direct.tags(f"{host}/site/never-pushed") is None  # straight to a name that does not resolve
        assert len(proxy.requests) == seen
    finally:
        proxy.stop()
