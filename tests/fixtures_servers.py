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
        raise RuntimeError(f"docker-registry did not answer on {self.host} in {timeout} s:\n{self.log_text()}")

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
        pytest.skip("docker-registry is not installed (scripts/install-system-deps.sh installs it)")
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
