"""The registry client over http.client (publish/httpconn.py) against the same client over requests."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.publish import httpconn
from imagegraph.publish.registry_client import RegistryClient
from imagegraph.retry import RetryPolicy

from .httpstub import reply, serving
from .test_publish_registry import KEY, FakeRegistry, _runner, _spec, fake_registry, needs_buildah, tiny_image  # noqa: F401

FAST = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02)

_piece = st.text(st.characters(codec="ascii", exclude_characters="\r\n"), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    links=st.lists(
        st.tuples(_piece, st.lists(st.tuples(_piece, _piece), max_size=3)), min_size=0, max_size=3
    ),
    sep=st.sampled_from([", ", ",", ",  "]),
    quote=st.sampled_from(['"', "", "'"]),
)
def test_link_headers_read_as_requests_reads_them(links, sep, quote) -> None:
    import requests

    value = sep.join(
        f"<{url}>" + "".join(f"; {k}={quote}{v}{quote}" for k, v in params) for url, params in links
    )
    resp = requests.Response()
    resp.headers["Link"] = value
    assert httpconn.parse_links(value) == resp.links


@given(
    user=st.text(st.characters(codec="latin-1"), max_size=10),
    password=st.text(st.characters(codec="latin-1"), max_size=10),
)
def test_basic_auth_is_requests_header(user: str, password: str) -> None:
    from requests.auth import _basic_auth_str

    assert httpconn.basic_auth(user, password) == _basic_auth_str(user, password)


def _clients(monkeypatch: pytest.MonkeyPatch) -> tuple[RegistryClient, RegistryClient]:
    light = RegistryClient(retry=FAST, auth_files=[])
    monkeypatch.setenv("IMAGEGRAPH_HTTP", "requests")
    heavy = RegistryClient(retry=FAST, auth_files=[])
    monkeypatch.delenv("IMAGEGRAPH_HTTP")
    assert light._light and not heavy._light
    return light, heavy


def test_bearer_tokens_and_pages_as_over_requests(fake_registry: str, monkeypatch) -> None:  # noqa: F811
    """The challenge, the token request, three pages through `Link`, a transient 503: the same
    answers, requests and request counts."""
    out = []
    for client in _clients(monkeypatch):
        FakeRegistry.calls, FakeRegistry.token_calls, FakeRegistry.auth_headers = [], [], []
        FakeRegistry.script = [503]
        got = (client.tags(f"{fake_registry}/ns/img"), client.has_tag(f"{fake_registry}/ns/img", "t6"))
        out.append((got, list(FakeRegistry.calls), list(FakeRegistry.token_calls), client.request_count))
    assert out[0] == out[1]
    assert out[0][0] == (set(FakeRegistry.tags), True)


@needs_buildah
def test_a_real_registry_answers_the_same(registry, tiny_image: str, monkeypatch) -> None:  # noqa: F811
    """docker-registry over plain http (https tried first, as for any loopback registry): tags,
    digests, a manifest, a missing tag and a repository never pushed to."""
    from imagegraph.publish.push import push_layer

    pub = push_layer(_spec(registry.host), KEY, tiny_image, _runner(), retry=FAST)
    repo = pub.repository
    answers = []
    for client in _clients(monkeypatch):
        answers.append(
            (
                sorted(client.tags(repo) or ()),
                [client.manifest_digest(f"{repo}:{t}") for t in pub.tags],
                client.manifest_digest(f"{repo}:missing"),
                client.manifest(f"{repo}:{pub.tags[0]}"),
                sorted(client.tags(f"{registry.host}/site/never-pushed") or ()),
                client.schemes(registry.host),
                dict(client.errors),
                client.request_count,
            )
        )
    assert answers[0] == answers[1]
    assert answers[0][1] == [pub.digest] * len(pub.tags) and answers[0][2] is None


class _Redirecting(http.server.BaseHTTPRequestHandler):
    """/v2/ns/img/tags/list redirects (307) to /elsewhere, which answers the tag list."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/v2/ns/img/tags/list"):
            reply(self, 307, {"Location": "/elsewhere"}, b"")
            return
        body = json.dumps({"name": "ns/img", "tags": ["moved"]}).encode()
        reply(self, 200, {"Content-Type": "application/json"}, body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    with serving(_Redirecting) as port:
        yield f"127.0.0.1:{port}"


def test_a_redirect_is_followed_by_requests(redirecting: str) -> None:
    c = RegistryClient(retry=FAST, auth_files=[])
    assert c._light
    assert c.tags(f"{redirecting}/ns/img") == {"moved"}
    assert c._session is not None  # requests answered the redirect


def test_a_plan_sized_client_loads_no_requests(fake_registry: str) -> None:  # noqa: F811
    probe = (
        "import sys\nfrom imagegraph.publish.registry_client import RegistryClient\n"
        f"c = RegistryClient(auth_files=[])\nassert c.tags('{fake_registry}/ns/img')\n"
        "print(sorted(m for m in ('requests', 'urllib3') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"  # (the log lines go to stdout here)
