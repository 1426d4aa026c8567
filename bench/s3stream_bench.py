"""Benchmark: the SquashFS streamed to S3 while mksquashfs writes it, against make-then-upload.

One layer's artifacts (`make_artifacts` then `upload_artifacts`, what the
`squashfs` and `publish-artifacts` tasks run) of a root filesystem holding
SIZE MB of random bytes (incompressible, like the image-builder bench's
kernel package), to moto's S3 server on 127.0.0.1, in fresh processes, the
two modes alternating. Two links: moto directly (the upload is CPU-bound:
moto parses every byte on the same cores as mksquashfs) and through a proxy
that holds uploads to LINK MB/s in all (a network-bound upload, as to a
gateway on another host; the proxy itself costs little CPU).

Usage: python bench/s3stream_bench.py [--rounds 3] [--size-mb 157] [--link-mbs 50]
Needs mksquashfs and moto (the test extras).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures_servers import S3_TEST_ACCESS, S3_TEST_SECRET, S3Server  # noqa: E402

BUCKET = "stream-bench"


class LinkProxy:
    """A TCP proxy to 127.0.0.1:`port` whose client-to-server bytes share `rate` bytes per second."""

    def __init__(self, port: int, rate: float):
        self.port_to, self.rate = port, rate
        self._lock = threading.Lock()
        self._next = 0.0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _wait(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
        if start > now:
            time.sleep(start - now)

    def _serve(self, c: socket.socket) -> None:
        u = socket.create_connection(("127.0.0.1", self.port_to))

        def back() -> None:
            try:
                while d := u.recv(1 << 16):
                    c.sendall(d)
            except OSError:
                pass
            finally:
                try:
                    c.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=back, daemon=True).start()
        try:
            while d := c.recv(1 << 16):
                self._wait(len(d))
                u.sendall(d)
            u.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def one(mode: str, endpoint: str, root: Path, work: Path, tag: str) -> dict:
    """In a fresh process: make and publish one layer's artifacts; seconds of each half."""
    from imagegraph.publish.artifacts import make_artifacts, upload_artifacts
    from imagegraph.publish.s3 import S3Settings
    from imagegraph.runner import Runner
    from tests.test_publish_s3 import KEY, spec_for

    spec = spec_for(endpoint, BUCKET, publish_tags=(tag,))
    settings = S3Settings(stream=mode == "stream")
    t0 = time.monotonic()
    made = make_artifacts(spec, KEY, root, Runner("compute"), work, s3_settings=settings)
    t1 = time.monotonic()
    stats = dict(made.staged.stats.__dict__) if made.staged else {}
    try:
        upload_artifacts(made, spec, KEY, Runner("compute"), s3_settings=settings)
    finally:
        made.remove()
    t2 = time.monotonic()
    return {"make": t1 - t0, "publish": t2 - t1, "total": t2 - t0, "stats": stats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size-mb", type=int, default=157)
    p.add_argument("--link-mbs", type=float, default=50.0, help="the slow link, MB/s")
    p.add_argument("--one", nargs=4, metavar=("MODE", "ENDPOINT", "ROOT", "TAG"), help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("S3_ACCESS", S3_TEST_ACCESS)
    os.environ.setdefault("S3_SECRET", S3_TEST_SECRET)
    if args.one:
        mode, endpoint, root, tag = args.one
        work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="igstream-w-"))
        try:
            print(json.dumps(one(mode, endpoint, Path(root), work, tag)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    from tests.publish_helpers import EL, make_rootfs

    tmp = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="igstream-"))
    s3 = S3Server(tmp)
    try:
        s3.start()
        s3.client().create_bucket(Bucket=BUCKET)
        root = make_rootfs(tmp / "root", {"6.1.0-bench.x86_64": EL}, big_file=args.size_mb * 1024 * 1024)
        link = LinkProxy(s3.port, args.link_mbs * 1e6)
        links = {"direct": s3.endpoint, f"{args.link_mbs:g} MB/s": f"http://127.0.0.1:{link.port}"}
        results: dict[str, dict[str, list[dict]]] = {k: {"plain": [], "stream": []} for k in links}
        loads = [os.getloadavg()[0]]
        n = 0
        for r in range(args.rounds):
            for name, endpoint in links.items():
                modes = ("plain", "stream") if r % 2 == 0 else ("stream", "plain")
                for mode in modes:
                    n += 1
                    out = subprocess.run(
                        [sys.executable, __file__, "--one", mode, endpoint, str(root), f"t{n}"],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    res = json.loads(out.strip().splitlines()[-1])
                    results[name][mode].append(res)
                    print(
                        f"round {r + 1} {name:10} {mode:6} {res['total']:6.2f} s {res['stats']}",
                        file=sys.stderr,
                    )
            loads.append(os.getloadavg()[0])
    finally:
        s3.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.rounds} rounds, {args.size_mb} MB, load average {min(loads):.1f} to {max(loads):.1f}")
    print()
    print("| link | mode | make (SquashFS) s | publish s | total s (median) | totals |")
    print("|---|---|---:|---:|---:|---|")
    for name, modes in results.items():
        for mode, rs in modes.items():
            med = {k: statistics.median(x[k] for x in rs) for k in ("make", "publish", "total")}
            totals = ", ".join(f"{x['total']:.2f}" for x in rs)
            print(
                f"| {name} | {mode} | {med['make']:.2f} | {med['publish']:.2f} | {med['total']:.2f} | {totals} |"
            )


if __name__ == "__main__":
    main()
