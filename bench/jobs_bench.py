"""Benchmark: `up -j N` on independent real builds, with the package repository near and far.

Four independent dnf layers from scratch (busybox + ig-hello from a local
RPM repository made with tests/rpmrepo.py, served over HTTP on 127.0.0.1),
built by `imagegraph up --force-all -j N` for N = 1..4 in fresh processes
with a fresh state each time. Twice: the repository answering at once, and
with a fixed delay before every response (a distant mirror: what builds
wait on in practice). Prints a Markdown table of wall times.

Usage: python bench/jobs_bench.py [DELAY_SECONDS]   (default 0.5)
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.rpmrepo import make_repo  # noqa: E402

ENV = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
LAYERS = 4
PREFIX = "igbench-j"


class SlowHandler(http.server.SimpleHTTPRequestHandler):
    delay = 0.0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        time.sleep(self.delay)
        super().do_GET()


def serve(directory: Path, delay: float) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = type("H", (SlowHandler,), {"delay": delay})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def write_layers(root: Path, url: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(LAYERS):
        (root / f"l{i}.yaml").write_text(
            f"""options:
  layer_type: base
  name: {PREFIX}{i}
  publish_tags: ['1']
  pkg_manager: dnf
  parent: scratch
  gpgcheck: false
  releasever: '9'
repos:
  - alias: igtest
    url: '{url}'
package_groups: ['IG Minimal']
packages: [ig-hello]
cmds:
  - cmd: 'echo {i} > /etc/role'
"""
        )


def up(root: Path, state: Path, jobs: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state), "--force-all"]
        + ["-j", str(jobs), "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"up -j {jobs} failed:\n{r.stderr[-3000:]}")
    return wall, json.loads(r.stdout)


def clean() -> None:
    out = subprocess.run(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], capture_output=True, text=True, check=False
    ).stdout.split()
    for ref in out:
        if f"/{PREFIX}" in ref:
            subprocess.run(["buildah", "rmi", "-f", ref], capture_output=True, check=False)


def main() -> None:
    delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        repo = make_repo(tmp / "repo")
        for d in (0.0, delay):
            server, url = serve(repo.path, d)
            try:
                for jobs in range(1, LAYERS + 1):
                    root = tmp / f"layers-{d}-{jobs}"
                    write_layers(root, url)
                    wall, doc = up(root, tmp / f"state-{d}-{jobs}" / "state.db", jobs)
                    builds = [t for x in doc["layers"] for t in x["tasks"] if t["kind"] == "build"]
                    mean = sum(b["duration"] for b in builds) / len(builds)
                    rows.append((d, jobs, wall, mean))
                    clean()
            finally:
                server.shutdown()
        repo.cleanup()
    print(f"| repository delay per request (s) | -j | wall time, {LAYERS} builds (s) | mean build task (s) |")
    print("|---:|---:|---:|---:|")
    for d, jobs, wall, mean in rows:
        print(f"| {d:.1f} | {jobs} | {wall:.1f} | {mean:.1f} |")


if __name__ == "__main__":
    main()
