"""Benchmark: children build while their parent's large S3 upload runs (from the run record's task times).

A parent layer (dnf from scratch: busybox from a local RPM repository, plus
a file of SIZE MB of random bytes by `copyfiles`, so the SquashFS does not
compress) publishes to
moto's S3 server over HTTP on 127.0.0.1; two children publish nothing but
local tags. Real buildah, real mksquashfs, real S3. One `imagegraph up -j 2`
in a fresh process; the task start/end times come from `last-run.json`.
Exits 1 unless both children's builds started before the parent's upload
ended. Prints a Markdown table (seconds from the run's start).

Usage: python bench/upload_overlap_bench.py [SIZE_MB]   (default 500)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures_servers import S3_TEST_ACCESS, S3_TEST_SECRET, S3Server  # noqa: E402
from tests.rpmrepo import make_repo, serve  # noqa: E402

PREFIX = "igbench-ov"


def layer(name: str, parent: str, cmds: list[str], extra: str = "") -> str:
    text = f"""options:
  layer_type: base
  name: {PREFIX}-{name}
  publish_tags: ['1']
  pkg_manager: dnf
  parent: '{parent}'
  publish_local: true
  gpgcheck: false
  releasever: '9'
{extra}"""
    return text + "cmds:\n" + "".join(f"  - cmd: {json.dumps(c)}\n" for c in cmds)


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory(dir="/var/tmp") as t:
        tmp = Path(t)
        repo = make_repo(tmp / "repo")
        server = serve(repo.path)
        (tmp / "moto").mkdir()
        s3 = S3Server(tmp / "moto")
        s3.start()
        try:
            bucket = s3.make_bucket()
            root = tmp / "layers"
            root.mkdir()
            extra = (
                "  rootfs_only: true\n"
                f"  publish_s3: {s3.endpoint}\n  s3_bucket: {bucket}\n"
                f"repos:\n  - alias: igtest\n    url: '{server.url}'\npackage_groups: ['IG Minimal']\n"
            )
            with open(root / "big.bin", "wb") as f:  # random: the SquashFS stays as big as this
                for _ in range(size):
                    f.write(os.urandom(1024 * 1024))
            extra += "copyfiles:\n  - {src: big.bin, dest: /big.bin}\n"
            (root / "base.yaml").write_text(layer("base", "scratch", ["echo base > /etc/role"], extra))
            for child in ("c1", "c2"):
                (root / f"{child}.yaml").write_text(
                    layer(child, f"localhost/{PREFIX}-base:1", [f"echo {child} > /etc/role"])
                )
            state = tmp / "state" / "state.db"
            env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "S3_ACCESS": S3_TEST_ACCESS}
            env["S3_SECRET"] = S3_TEST_SECRET
            t0 = time.perf_counter()
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "imagegraph.cli",
                    "up",
                    str(root),
                    "--state",
                    str(state),
                    "-j",
                    "2",
                    "--json",
                ],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"up failed:\n{r.stderr[-3000:]}")
            record = json.loads((state.parent / "last-run.json").read_text())
        finally:
            s3.close()
            server.stop()
            out = subprocess.run(
                ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            for ref in out:
                if f"/{PREFIX}-" in ref:
                    subprocess.run(["buildah", "rmi", "-f", ref], capture_output=True, check=False)
            repo.cleanup()
    start = record["started"]
    tasks = {t["id"]: t for x in record["layers"] for t in x["tasks"]}
    print(f"parent SquashFS {size} MB to S3; `up -j 2` wall time {wall:.1f} s")
    print()
    print("| task | started (s) | finished (s) |")
    print("|---|---:|---:|")
    for tid, t in sorted(tasks.items(), key=lambda kv: kv[1]["started"] or 0):
        print(f"| {tid} | {t['started'] - start:.1f} | {t['finished'] - start:.1f} |")
    upload_end = tasks["base:publish-artifacts"]["finished"]
    early = all(tasks[f"{c}:build"]["started"] < upload_end for c in ("c1", "c2"))
    print()
    print(f"children's builds started before the parent's upload ended: {'yes' if early else 'NO'}")
    sys.exit(0 if early else 1)


if __name__ == "__main__":
    main()
