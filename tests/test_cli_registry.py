"""`plan` against registries and S3 endpoints that misbehave, as a real process: ones that never
answer, a registry with an untrusted certificate."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .specdirs import write

EXE = [sys.executable, "-m", "imagegraph.cli"]


def run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "IMAGEGRAPH_RETRY_ATTEMPTS": "2", **(env or {})}
    full.pop("JOURNAL_STREAM", None)
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=full, timeout=timeout)


def layers(root: Path, registry: str, opts: str = "") -> Path:
    for name, parent in (("base", "scratch"), ("compute", f"{registry}/site/base:1")):
        write(
            root,
            f"{name}.yaml",
            f"""
            options:
              layer_type: base
              name: {name}
              publish_tags: '1'
              pkg_manager: dnf
              parent: '{parent}'
              publish_registry: '{registry}/site/'
            {opts}
            packages: [bash]
            """,
        )
    return root


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """Accepts connections and never says a word (a firewall that drops replies, a hung daemon)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


def test_plan_with_a_silent_registry_is_bounded_and_warns_once(tmp_path: Path, silent_registry: str) -> None:
    root = layers(tmp_path / "layers", silent_registry)
    start = time.monotonic()
    r = run("plan", str(root), "--registry-timeout", "1")
    took = time.monotonic() - start
    # What the registry holds is unknown (not absent): exit 1, nothing planned as built or published.
    assert r.returncode == 1, r.stderr
    # one timeout, not one per retry, scheme or layer (the CLI's own start-up aside)
    assert took < 15, took
    said = [line for line in r.stderr.splitlines() if silent_registry in line]
    assert len(said) == 1, r.stderr  # one line for the registry, not one per layer
    assert "did not answer within 1 s" in said[0]
    assert "base.yaml" in said[0] and "compute.yaml" in said[0] and "2 layers" in said[0]
    assert "Traceback" not in r.stderr
    # JSON lines: the same one line, as a JSON object on stderr
    j = run("plan", str(root), "--registry-timeout", "1", "--log-format", "json")
    import json

    events = [json.loads(line) for line in j.stderr.splitlines()]
    assert [e["level"] for e in events] == ["error"] and silent_registry in events[0]["event"]
    assert json.loads(j.stdout)["event"] == "plan result"


@pytest.mark.parametrize("reader", ["stdlib", "botocore"])
def test_plan_with_a_silent_s3_endpoint_is_bounded_and_says_so_once(
    tmp_path: Path, silent_registry: str, reader: str
) -> None:
    """An S3 endpoint that accepts connections and never answers: what it holds is unknown (exit 1),
    after one planning timeout through the stdlib reader and two through botocore (its retry of a
    read timeout); before, two reads of 15 s each. One line names the bucket and its layer files."""
    from .fakebuildah import install
    from .test_executor import KERNEL, layer

    fake = install(tmp_path / "fake")
    root = tmp_path / "layers"
    root.mkdir()
    state = tmp_path / "state" / "state.db"
    for name, parent in (("compute", None), ("debug", "compute")):
        (root / f"{name}.yaml").write_text(layer(name, parent, [KERNEL]))
    env = fake.env(S3_ACCESS="AKIDEXAMPLE", S3_SECRET="not-a-real-secret")
    built = subprocess.run(
        [*EXE, "up", str(root), "--state", str(state)], capture_output=True, text=True, env=env, timeout=300
    )
    assert built.returncode == 0, built.stderr
    # Built, and now also published to S3: the plan must ask that endpoint what it holds.
    for name, parent in (("compute", None), ("debug", "compute")):
        extra = f"publish_s3: 'http://{silent_registry}'\ns3_bucket: boot\n"
        (root / f"{name}.yaml").write_text(layer(name, parent, [KERNEL], extra))
    if reader == "botocore":
        env["IMAGEGRAPH_S3_READ"] = "botocore"
    start = time.monotonic()
    r = run("plan", str(root), "--state", str(state), "--registry-timeout", "1", env=env)
    took = time.monotonic() - start
    assert r.returncode == 1, r.stdout + r.stderr
    assert took < (8 if reader == "stdlib" else 14), took
    assert "Traceback" not in r.stderr and "not-a-real-secret" not in r.stderr + r.stdout
    said = [line for line in r.stderr.splitlines() if silent_registry in line]
    assert len(said) == 1, r.stderr
    assert f"cannot tell what s3 http://{silent_registry}/boot holds" in said[0]
    assert "compute.yaml, debug.yaml: 2 layers unknown" in said[0]
    if reader == "stdlib":
        assert "did not answer within 1 s" in said[0]
    assert "2 layers: 2 unknown" in r.stdout


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A TLS server on 127.0.0.1 with a self-signed certificate, answering like a registry."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            body = b'{"name":"site/base","tags":[]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_untrusted_certificate_names_the_files_and_the_option(tmp_path: Path, tls_registry: str) -> None:
    # Loopback registries are trusted without TLS by default; --tls-verify=true asks for verification,
    # as a remote registry with a self-signed certificate gets it.
    root = layers(tmp_path / "layers", tls_registry, "  registry_opts_push: ['--tls-verify=true']")
    r = run("plan", str(root), "--registry-timeout", "5")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"registry {tls_registry}: TLS certificate verification failed" in r.stderr
    assert "self-signed certificate" in r.stderr
    assert "layers/base.yaml" in r.stderr and "layers/compute.yaml" in r.stderr
    assert "registry_opts_push: ['--tls-verify=false']" in r.stderr
    assert "--cert-dir=DIR" in r.stderr


def test_verbose_shows_each_registry_request(tmp_path: Path, tls_registry: str, tmp_path_factory) -> None:
    root = layers(tmp_path / "layers", tls_registry)  # loopback: TLS without verification
    quiet = run("plan", str(root), "--registry-timeout", "5")
    assert quiet.returncode == 0, quiet.stderr
    assert "registry request" not in quiet.stderr
    r = run("plan", str(root), "--registry-timeout", "5", "-v")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "registry request" in line]
    assert lines and all("/v2/site/" in line for line in lines), r.stderr
    assert any("status=200" in line for line in lines)


def test_terminal_shows_what_planning_waits_for(tmp_path: Path, silent_registry: str) -> None:
    from .test_cli_terminal import on_pty

    root = layers(tmp_path / "layers", silent_registry)
    rc, text = on_pty("plan", str(root), "--registry-timeout", "2")
    assert rc == 1, text  # unknown, and said once
    assert f"asking {silent_registry} (2 repositories)..." in text
    assert text.count("layers unknown)") == 1  # the summary line: once for the registry


def test_silent_parent_registry_is_one_warning_too(tmp_path: Path, silent_registry: str) -> None:
    root = tmp_path / "layers"
    for name in ("a", "b", "c"):
        write(
            root,
            f"{name}.yaml",
            f"""
            options:
              layer_type: base
              name: {name}
              pkg_manager: dnf
              parent: '{silent_registry}/vendor/rocky:9'
            packages: [bash]
            """,
        )
    start = time.monotonic()
    r = run("plan", str(root), "--registry-timeout", "1")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - start < 15
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "keyed by reference" in warnings[0] and "3 layers" in warnings[0], r.stderr
