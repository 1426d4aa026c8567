"""Benchmark: publishing a ~200 MB root filesystem to S3, imagegraph's way against image-builder's.

image-builder: `mksquashfs ROOTFS OUT` with default flags, then one upload per tag.
imagegraph: `publish_artifacts` (reproducible mksquashfs with the layer's
compression, made once; one upload, further tags as server-side copies).
Both against the same S3 endpoint over HTTP (moto's server on 127.0.0.1).
The root filesystem is the bundled example's `compute` image (build it first
with `make demo`), or any image given as argument.
Usage: python bench/publish_bench.py [IMAGE] [TAGS]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import botocore.config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imagegraph.publish.artifacts import mounted_image, publish_artifacts  # noqa: E402
from imagegraph.runner import Runner  # noqa: E402
from imagegraph.spec import load_spec  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def main() -> None:
    image = sys.argv[1] if len(sys.argv) > 1 else "localhost/compute:bookworm"
    ntags = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    tags = ["9.5", "latest", "stable", "v1"][:ntags]
    os.environ.setdefault("BUILDAH_ISOLATION", "chroot")
    os.environ["S3_ACCESS"] = os.environ["AWS_ACCESS_KEY_ID"] = "bench"
    os.environ["S3_SECRET"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "benchsecret"
    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket="ib-bench")
        s3.create_bucket(Bucket="ig-bench")
        runner = Runner("bench")
        rows = []
        with tempfile.TemporaryDirectory() as t, mounted_image(image, runner) as rootfs:
            tmp = Path(t)
            size = du(rootfs)
            # image-builder's way
            t0 = time.perf_counter()
            out = tmp / "ib.sqsh"
            subprocess.run(["mksquashfs", str(rootfs), str(out)], capture_output=True, check=False)
            t_sq = time.perf_counter() - t0
            for tag in tags:
                s3.upload_file(str(out), "ib-bench", f"compute/debian12-compute-{tag}")
            t_ib = time.perf_counter() - t0
            rows.append(
                (
                    "image-builder (mksquashfs defaults, upload per tag)",
                    t_sq,
                    t_ib - t_sq,
                    t_ib,
                    out.stat().st_size,
                )
            )
            for comp in ("gzip", "xz", "zstd"):
                spec_path = tmp / f"{comp}.yaml"
                spec_path.write_text(
                    "options:\n  layer_type: base\n  pkg_manager: apt\n  name: compute\n"
                    f"  publish_tags: {tags}\n  publish_s3: '{endpoint}'\n  s3_bucket: ig-bench\n  s3_prefix: '{comp}/'\n"
                    f"  rootfs_only: true\n  squashfs: {{compression: {comp}}}\n"
                )
                spec = load_spec(spec_path)
                t0 = time.perf_counter()
                pub = publish_artifacts(spec, "0" * 64, rootfs, runner, tmp / "work")
                total = time.perf_counter() - t0
                rows.append(
                    (f"imagegraph ({comp}, once + server-side copies)", None, None, total, pub.squashfs_size)
                )
        print(f"rootfs: {image}, {size / 1e6:.0f} MB on disk, {len(tags)} tags, {os.cpu_count()} cores")
        print()
        print("| method | mksquashfs (s) | upload (s) | total (s) | SquashFS (MB) |")
        print("|---|---:|---:|---:|---:|")
        for name, sq, up, total, sz in rows:
            fmt = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
            print(f"| {name} | {fmt(sq)} | {fmt(up)} | {total:.1f} | {sz / 1e6:.1f} |")
    finally:
        moto.terminate()
        moto.wait(10)


if __name__ == "__main__":
    main()
