"""Benchmark: `imagegraph up` on the bundled example against the same commands in a plain shell script.

1. `imagegraph up --force-all -j 1` on a copy of layers/ (fresh state), timed.
2. The buildah/mmdebstrap commands it logged (`$ ...` lines of each layer log,
   which are shell-quoted) are replayed by a generated bash script, in the
   same order, with image IDs replaced by the references the script commits
   and mount paths by the script's own `buildah mount` output. Timed.
3. Repeated, alternating, so network and cache effects hit both alike.
Usage: python bench/overhead_bench.py [ROUNDS]
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


def run_imagegraph(layers: Path, state: Path, jobs: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegraph.cli",
            "up",
            str(layers),
            "--state",
            str(state),
            "--force-all",
            "-j",
            str(jobs),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"imagegraph up failed:\n{r.stderr[-3000:]}")
    return elapsed, json.loads(r.stdout)


def script_from_logs(doc: dict, tmp: Path) -> str:
    refs = {x["image_id"]: x["image_ref"] for x in doc["layers"] if x.get("image_id")}
    lines = ["set -euo pipefail", f"T={shlex.quote(str(tmp))}"]
    for layer in doc["layers"]:
        mount = None
        for raw in Path(layer["log_file"]).read_text().splitlines():
            if not raw.startswith("$ "):
                continue
            argv = shlex.split(raw[2:])
            if argv[:2] == ["buildah", "inspect"]:
                continue  # imagegraph's own look-ups, not build work
            for i, a in enumerate(argv):
                if a == "--iidfile":
                    argv[i + 1] = "$T/iid"
            cmd = shlex.join(argv).replace("'$T/iid'", '"$T/iid"')
            for image_id, ref in refs.items():
                cmd = cmd.replace(image_id, shlex.quote(ref))
            if mount and mount in cmd:
                cmd = cmd.replace(mount, '"$MNT"')
            if argv[:2] == ["buildah", "mount"] and len(argv) == 3:
                lines.append(f"MNT=$({cmd})")
                mount = _mount_path(layer["log_file"], argv[2])
                continue
            lines.append(cmd)
    return "\n".join(lines) + "\n"


def _mount_path(log_file: str, container: str) -> str | None:
    text = Path(log_file).read_text()
    m = re.search(rf"{re.escape(container)} mounted at (\S+)", text)
    if m:
        return m.group(1)
    m = re.search(r"(/var/lib/containers/storage/overlay/[0-9a-f]{64}/merged)", text)
    return m.group(1) if m else None


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        layers = tmp / "layers"
        shutil.copytree(REPO / "layers", layers, ignore=shutil.ignore_patterns(".imagegraph"))
        for r in range(rounds):
            ig, doc = run_imagegraph(layers, tmp / f"state{r}" / "state.db", 1)
            script = tmp / "replay.sh"
            script.write_text(script_from_logs(doc, tmp))
            t0 = time.perf_counter()
            subprocess.run(["bash", str(script)], env=ENV, check=True, capture_output=True)
            sh = time.perf_counter() - t0
            ig2, _ = run_imagegraph(layers, tmp / f"state{r}b" / "state.db", 2)
            per_layer = {x["name"]: x["duration"] for x in doc["layers"]}
            rows.append((r + 1, ig, sh, ig2, per_layer))
    print(
        "| round | imagegraph up -j 1 (s) | same commands, bash script (s) | overhead (s) | imagegraph up -j 2 (s) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for r, ig, sh, ig2, _ in rows:
        print(f"| {r} | {ig:.1f} | {sh:.1f} | {ig - sh:+.1f} | {ig2:.1f} |")
    print()
    print(
        "per-layer build durations in round 1 (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in rows[0][4].items())
    )


if __name__ == "__main__":
    main()
