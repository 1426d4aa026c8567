"""One retry policy (imagegraph.retry) drives the lock-file fetch, the registry client and S3 uploads.

A real HTTP server on 127.0.0.1 answers 503 (or 503 a few times, then well):
each of the three users retries exactly as many times as IMAGEGRAPH_RETRY_ATTEMPTS
says, and a cancelled run ends every one of them in the middle of a wait.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.lockfile import FetchError, http_fetch
from imagegraph.publish.registry_client import RegistryClient
from imagegraph.publish.s3 import S3Settings, S3Target
from imagegraph.retry import ENV_ATTEMPTS, ENV_INITIAL_WAIT, ENV_MAX_WAIT, RetryPolicy, TransientError
from imagegraph.runner import Cancelled, reset_cancel, terminate_all


class FlakyServer:
    """Answers 503 to the first `fail` requests of each path (all when None), then 200."""

    def __init__(self) -> None:
        self.fail: int | None = None
        self.seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with outer._lock:
                    outer.seen[path] += 1
                    n = outer.seen[path]
                if outer.fail is None or n <= outer.fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"name": "x", "tags": ["a", "b"]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = do_POST = _answer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    server = FlakyServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv(ENV_ATTEMPTS, "3")
    monkeypatch.setenv(ENV_INITIAL_WAIT, "0.01")
    monkeypatch.setenv(ENV_MAX_WAIT, "0.02")
    monkeypatch.setenv("S3_ACCESS", "AKIARETRYTEST0000001")
    monkeypatch.setenv("S3_SECRET", "retry-test-secret-value")
    return 3


def _lockfile(server: FlakyServer) -> Callable[[], object]:
    return lambda: http_fetch(f"http://{server.host}/repo/repodata/repomd.xml")


def _registry(server: FlakyServer) -> Callable[[], object]:
    def ask() -> object:
        client = RegistryClient(auth_files=[])  # the policy from the environment
        found = client.tags(f"{server.host}/ns/app")
        if found is None:
            raise TransientError(client.errors[f"{server.host}/ns/app"])
        return found

    return ask


def _s3(server: FlakyServer, tmp_path: Path) -> Callable[[], object]:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    # botocore's own retries off: every attempt counted is one of the policy's
    settings = S3Settings(botocore_attempts=1, connect_timeout=2, read_timeout=5, checksum=False)
    return lambda: S3Target(f"http://{server.host}", "bucket", settings=settings).upload(f, "k/a.bin", {})


USERS = {
    "lockfile": ("/repo/repodata/repomd.xml", lambda s, _t: _lockfile(s)),
    "registry": ("/v2/ns/app/tags/list", lambda s, _t: _registry(s)),
    "s3": ("/bucket/k/a.bin", _s3),
}


@pytest.mark.parametrize("user", sorted(USERS))
def test_each_user_tries_as_often_as_the_environment_says(
    user: str, flaky: FlakyServer, fast_retries: int, tmp_path: Path
) -> None:
    path, make = USERS[user]
    with pytest.raises((FetchError, TransientError, Exception)) as info:
        make(flaky, tmp_path)()
    assert not isinstance(info.value, Cancelled)
    assert flaky.seen[path] == fast_retries, (flaky.seen, info.value)


@pytest.mark.parametrize("user", ["lockfile", "registry"])
def test_a_transient_failure_then_success_is_an_answer(
    user: str, flaky: FlakyServer, fast_retries: int, tmp_path: Path
) -> None:
    path, make = USERS[user]
    flaky.fail = fast_retries - 1
    assert make(flaky, tmp_path)()
    assert flaky.seen[path] == fast_retries


def test_the_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ATTEMPTS, "7")
    monkeypatch.setenv(ENV_INITIAL_WAIT, "0.5")
    monkeypatch.setenv(ENV_MAX_WAIT, "4")
    assert RetryPolicy.from_env() == RetryPolicy(7, 0.5, 4.0)
    assert S3Settings().retry == RetryPolicy(7, 0.5, 4.0)
    assert S3Settings.quick().retry.attempts == 1
    monkeypatch.setenv(ENV_ATTEMPTS, "-3")
    assert RetryPolicy.from_env().attempts == RetryPolicy().attempts


@pytest.mark.parametrize("user", sorted(USERS))
def test_a_cancel_ends_the_wait_at_once(
    user: str, flaky: FlakyServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_ATTEMPTS, "5")
    monkeypatch.setenv(ENV_INITIAL_WAIT, "60")  # a wait no test would sit out
    monkeypatch.setenv(ENV_MAX_WAIT, "60")
    monkeypatch.setenv("S3_ACCESS", "AKIARETRYTEST0000001")
    monkeypatch.setenv("S3_SECRET", "retry-test-secret-value")
    path, make = USERS[user]
    fn = make(flaky, tmp_path)
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while flaky.seen[path] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flaky.seen[path] == 1
    time.sleep(0.2)  # well inside the first wait
    try:
        cancelled_at = time.monotonic()
        terminate_all(grace=0.1)
        thread.join(5)
        took = time.monotonic() - cancelled_at
    finally:
        reset_cancel()
    assert not thread.is_alive()
    assert isinstance(outcome[0], Cancelled), outcome
    assert took < 2, took
    assert flaky.seen[path] == 1  # no attempt after the cancel


@given(
    outcomes=st.lists(st.sampled_from(["ok", "transient", "permanent"]), min_size=1, max_size=6),
    attempts=st.integers(1, 5),
)
@settings(max_examples=200, deadline=None)
def test_call_runs_as_tenacitys_own_loop(outcomes: list[str], attempts: int) -> None:
    """`call` (first attempt outside tenacity) against the plain tenacity loop: the same calls, the
    same `on_retry` reports (attempt numbers and waits) and the same result or exception."""
    policy = RetryPolicy(attempts=attempts, initial_wait=0.0, max_wait=0.0)

    def run(via_call: bool) -> tuple:
        script, calls, retries = list(outcomes), [], []

        def fn() -> str:
            calls.append(len(calls))
            what = script.pop(0) if script else "ok"
            if what == "transient":
                raise TransientError(f"flaky {len(calls)}")
            if what == "permanent":
                raise ValueError(f"broken {len(calls)}")
            return f"answer {len(calls)}"

        def on_retry(exc: BaseException, n: int, wait: float) -> None:
            retries.append((str(exc), n, wait))

        try:
            if via_call:
                result: object = policy.call(fn, on_retry)
            else:
                result = None
                for attempt in policy.retrying(on_retry):
                    with attempt:
                        result = fn()
        except Exception as exc:
            result = (type(exc).__name__, str(exc))
        return result, calls, retries

    assert run(True) == run(False)


def test_a_call_that_succeeds_at_once_loads_no_tenacity() -> None:
    import subprocess
    import sys

    probe = (
        "import sys\nfrom imagegraph.retry import RetryPolicy\n"
        "assert RetryPolicy().call(lambda: 42) == 42\nprint('tenacity' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
