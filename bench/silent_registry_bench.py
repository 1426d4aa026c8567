"""Benchmark: `plan` when the registry, or an S3 endpoint, accepts connections and never answers
(a firewall that drops replies, a hung daemon).

A synthetic directory (bench/synth.py) whose layers all publish to one registry that listens on
127.0.0.1 and never says a word. Fresh processes, wall clock:

- `imagegraph plan DIR --offline`: the floor (no registry asked).
- `imagegraph plan DIR` with the default planning timeout (5 s) and with `--registry-timeout 1`.
- By hand, the same listing with the client settings planning used before the bound
  (connect 5 s / read 30 s, timeouts retried, http tried after https): one repository's tag
  list, `RegistryClient(timeout=(5, 30), retry=2 attempts).tags(repo)`.
- The same layers publishing to S3 only (their parents named by layer name and tag), the
  endpoint silent: `plan` with the default timeout and with `--registry-timeout 1`, and by hand
  one listing with the S3 settings planning used before (connect 3 s / read 15 s, 2 attempts).

Usage: python bench/silent_registry_bench.py [LAYERS]   (default 200)
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synth import make_layers  # noqa: E402

BY_HAND_S3 = r"""
import sys
from imagegraph.publish.s3 import S3Index, S3Settings
from imagegraph.retry import RetryPolicy
old = S3Settings(botocore_attempts=2, retry=RetryPolicy.from_env().with_attempts(1), connect_timeout=3.0,
                 read_timeout=15.0)
print(S3Index(settings=old).objects(sys.argv[1], "boot"))
"""
S3_ENV = {"S3_ACCESS": "AKIDEXAMPLE", "S3_SECRET": "not-a-secret"}

BY_HAND = r"""
import sys
from imagegraph.publish.registry_client import RegistryClient
from imagegraph.retry import RetryPolicy
c = RegistryClient(timeout=(5.0, 30.0), retry=RetryPolicy(attempts=2, initial_wait=0.2, max_wait=0.5))
print(c.tags(sys.argv[1]))
"""


def silent_server() -> tuple[str, threading.Event]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    stop = threading.Event()
    held = []

    def loop() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
        for c in held:
            c.close()
        srv.close()

    threading.Thread(target=loop, daemon=True).start()
    return f"127.0.0.1:{srv.getsockname()[1]}", stop


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t, r


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    host, stop = silent_server()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_layers(Path(tmp) / "layers", n)
        for f in root.glob("*.yaml"):
            f.write_text(f.read_text().replace("registry.example.org:5000", host))
        exe = [sys.executable, "-m", "imagegraph.cli", "plan", str(root)]
        rows = []
        for label, argv in (
            ("plan --offline (floor)", [*exe, "--offline"]),
            ("plan (default timeout 5 s)", exe),
            ("plan --registry-timeout 1", [*exe, "--registry-timeout", "1"]),
            (
                "by hand: one tag list, old settings",
                [sys.executable, "-c", BY_HAND, f"{host}/site/layer-00000"],
            ),
        ):
            secs, r = timed(argv)
            warnings = sum(1 for line in r.stderr.splitlines() if host in line)
            rows.append((label, secs, r.returncode, warnings))
        s3_rows = []
        for f in root.glob("*.yaml"):
            text = f.read_text().replace(
                f"  publish_registry: '{host}/site'\n",
                f"  publish_s3: 'http://{host}'\n  s3_bucket: 'boot'\n",
            )
            f.write_text(re.sub(rf"parent: '{re.escape(host)}/site/([^']*)'", r"parent: '\1'", text))
        for label, argv in (
            ("plan (default timeout 5 s)", exe),
            ("plan --registry-timeout 1", [*exe, "--registry-timeout", "1"]),
            ("by hand: one listing, old settings", [sys.executable, "-c", BY_HAND_S3, f"http://{host}"]),
        ):
            secs, r = timed(argv, S3_ENV)
            said = sum(1 for line in r.stderr.splitlines() if f"s3 http://{host}/boot" in line)
            s3_rows.append((label, secs, r.returncode, said))
    stop.set()
    print(f"{n} layers, one silent registry\n")
    print("| run | wall (s) | exit | stderr lines naming the registry |\n|---|---:|---:|---:|")
    for label, secs, rc, w in rows:
        print(f"| {label} | {secs:.1f} | {rc} | {w} |")
    print(f"\n{n} layers publishing to one silent S3 endpoint\n")
    print("| run | wall (s) | exit | stderr lines naming the bucket |\n|---|---:|---:|---:|")
    for label, secs, rc, w in s3_rows:
        print(f"| {label} | {secs:.1f} | {rc} | {w} |")


if __name__ == "__main__":
    main()
