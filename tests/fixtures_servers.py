"""Fixtures for real registry and S3 servers on 127.0.0.1."""

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .needs import missing

# Each server has its own clearly named section below; add new servers as new sections.

# --------------------------------------------------------------- registry (docker-registry)
#
# `registry` / `auth_registry`: the CNCF distribution registry (Debian package
# docker-registry) on 127.0.0.1:<free port>, filesystem storage in tmp,
# deletes enabled. `.stop()` / `.start()` take it away and bring it back on
# the same port and storage, to test retries.

REGISTRY_USER = "imagegraph"
REGISTRY_PASSWORD = "pw-Zq7xV3kP9sLm"  # test-only; asserted never to appear in logs


def _registry_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    """One docker-registry process; restartable on the same port and storage."""

    def __init__(self, root: Path, htpasswd: Path | None = None):
        self.root = root
        self.port = _registry_free_port()
        self.htpasswd = htpasswd
        self.username = REGISTRY_USER if htpasswd else None
        self.password = REGISTRY_PASSWORD if htpasswd else None
        self.config = root / "config.yml"
        self.logfile = root / "registry.log"
        self.proc: subprocess.Popen | None = None
        auth = ""
        if htpasswd:
            auth = f"auth:\n  htpasswd:\n    realm: imagegraph-test\n    path: {htpasswd}\n"
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: imagegraph-test-secret\n" + auth
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "registry already running"
        log = open(self.logfile, "ab")  # noqa: SIM115  (owned by the process for its lifetime)
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=1).close()
                return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"docker-registry did not answer on {self.host} in {timeout} s:\n{self.log_text()}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace")[-4000:] if self.logfile.exists() else ""


def _registry_server(root: Path, htpasswd: Path | None = None) -> Iterator[RegistryServer]:
    if shutil.which("docker-registry") is None:
        missing("docker-registry is not installed (scripts/install-system-deps.sh installs it)")
    server = RegistryServer(root, htpasswd)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.kill()


@pytest.fixture
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A docker-registry without authentication on 127.0.0.1 (plain http)."""
    yield from _registry_server(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A docker-registry with htpasswd (bcrypt) basic auth; `.username` / `.password`."""
    import bcrypt

    root = tmp_path_factory.mktemp("auth-registry")
    htpasswd = root / "htpasswd"
    hashed = bcrypt.hashpw(REGISTRY_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{REGISTRY_USER}:{hashed}\n")
    yield from _registry_server(root, htpasswd)


# ------------------------------------------------------------------------ S3 (moto server)
#
# `s3_server`: moto's S3 server (`python -m moto.server`) on 127.0.0.1:<free port>,
# spoken to over HTTP exactly like MinIO or Ceph RGW. One process per test
# session (start-up takes a second); tests use their own buckets. In front of
# it runs `S3FaultProxy`, a TCP proxy that can reset connections on demand, so
# retry and cleanup paths are exercised against the real server:
# `s3_server.proxy_endpoint` goes through the proxy, `s3_server.endpoint` does not.

S3_TEST_ACCESS = "AKIAIMAGEGRAPHTEST01"
S3_TEST_SECRET = "s3-secret-Hq4vN8tR2wXy6Zb"  # test-only; asserted never to appear in errors or logs


def _s3_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3FaultProxy:
    """A TCP proxy to 127.0.0.1:`target_port` that can reset connections.

    A connection is reset (RST, no response) once it has carried more than
    `min_bytes` from the client while a fault is armed: `reset_next(n)` for
    the next n such connections, `reset_always()` until `heal()`. With
    `min_bytes` of a few MiB only uploads of big parts/objects are cut and
    small requests (create/abort multipart, HEAD, list) pass.
    """

    def __init__(self, target_port: int):
        import threading

        self.target_port = target_port
        self._lock = threading.Lock()
        self._budget = 0  # connections still to reset; -1 = every one
        self._min_bytes = 0
        self.resets = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset_next(self, n: int, min_bytes: int = 0) -> None:
        with self._lock:
            self._budget, self._min_bytes = n, min_bytes

    def reset_always(self, min_bytes: int = 0) -> None:
        self.reset_next(-1, min_bytes)

    def heal(self) -> None:
        self.reset_next(0)

    def _take(self, forwarded: int) -> bool:
        with self._lock:
            if self._budget == 0 or forwarded <= self._min_bytes:
                return False
            if self._budget > 0:
                self._budget -= 1
            self.resets += 1
            return True

    def _accept_loop(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _rst(*socks: socket.socket) -> None:
        import struct

        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def _serve(self, client: socket.socket) -> None:
        import threading

        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            self._rst(client)
            return
        dead = threading.Event()

        def back() -> None:  # server -> client
            try:
                while data := upstream.recv(65536):
                    client.sendall(data)
            except OSError:
                pass
            finally:
                if not dead.is_set():
                    try:
                        client.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass

        threading.Thread(target=back, daemon=True).start()
        forwarded = 0
        try:
            while data := client.recv(65536):
                forwarded += len(data)
                if self._take(forwarded):
                    dead.set()
                    self._rst(client, upstream)
                    return
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            dead.set()
            self._rst(client, upstream)

    def close(self) -> None:
        self._closed = True
        self._sock.close()


class S3Server:
    """moto_server on a free port, plus a fault proxy in front of it."""

    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.port = _s3_free_port()
        self.env = env or {}
        self.logfile = root / "moto.log"
        self.proc: subprocess.Popen | None = None
        self.proxy: S3FaultProxy | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxy_endpoint(self) -> str:
        assert self.proxy is not None
        return self.proxy.endpoint

    def start(self, timeout: float = 30.0) -> None:
        import os
        import sys

        assert self.proc is None or self.proc.poll() is not None, "moto already running"
        log = open(self.logfile, "ab")  # noqa: SIM115  (owned by the process)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true", **self.env},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"moto_server did not answer on port {self.port}:\n{self.log_text()}")
        if self.proxy is None:
            self.proxy = S3FaultProxy(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        if self.proxy is not None:
            self.proxy.close()

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace")[-4000:] if self.logfile.exists() else ""

    def client(self, endpoint: str | None = None):
        """A boto3 S3 client with the test credentials (direct to moto unless `endpoint`)."""
        import boto3
        import botocore.config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=S3_TEST_ACCESS,
            aws_secret_access_key=S3_TEST_SECRET,
            region_name="us-east-1",
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, prefix: str = "boot") -> str:
        """A new, empty bucket with a unique name."""
        import uuid

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _need_moto() -> None:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        missing("moto[server] is in the test extras (make venv)")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server over HTTP on 127.0.0.1 (+ `.proxy` for fault injection)."""
    _need_moto()
    server = S3Server(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """`s3_server` with image-builder's credential variables set and the proxy healed after the test."""
    monkeypatch.setenv("S3_ACCESS", S3_TEST_ACCESS)
    monkeypatch.setenv("S3_SECRET", S3_TEST_SECRET)
    assert s3_server.proxy is not None
    s3_server.proxy.heal()
    s3_server.proxy.resets = 0  # counted per test
    yield s3_server
    s3_server.proxy.heal()


@pytest.fixture
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A second moto server that checks credentials (unknown keys get InvalidAccessKeyId, 403)."""
    _need_moto()
    server = S3Server(tmp_path_factory.mktemp("moto-auth"), env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    server.start()
    try:
        yield server
    finally:
        server.close()
