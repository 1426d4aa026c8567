"""Benchmark: a real run's makespan against max(critical path, work / slots), from its run record.

With no argument: `imagegraph up --force-all` on a fresh copy of the
bundled `layers/` (fresh state; -j as given, else the CLI's default), then
the analysis of its `last-run.json`. With a run record (runs/<id>.json or
last-run.json): the analysis only.

The analysis uses the recorded task durations and the plan's task edges
(both in the record): the critical path is the longest chain of task
durations along `after` edges; the work of each resource class (build:
builds and SquashFS; upload; boot; and SquashFS alone, against `--squashfs`)
divided by its slots (the record's `limits`); the lower bound of any
schedule is the largest of these. The
makespan is the record's `finished - started` (planning excluded).

Usage: python bench/makespan_bench.py [RUN_RECORD | -j N]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESOURCE = {
    "build": "build",
    "squashfs": "build",
    "push": "upload",
    "tag-registry": "upload",
    "publish-artifacts": "upload",
    "boot-test": "boot",
    "tag-local": "none",
}


def analyse(record: dict) -> dict:
    tasks = {t["id"]: t for x in record["layers"] for t in x["tasks"] if t["status"] == "ok"}
    after = {t["id"]: t["after"] for x in record["plan"]["layers"] for t in x["tasks"]}
    finish: dict[str, float] = {}

    def chain(tid: str) -> float:  # longest duration-weighted chain ending with `tid`
        if tid not in finish:
            before = [chain(a) for a in after.get(tid, []) if a in tasks]
            finish[tid] = tasks[tid]["duration"] + max(before, default=0.0)
        return finish[tid]

    critical = max((chain(t) for t in tasks), default=0.0)
    work: dict[str, float] = {}
    for t in tasks.values():
        res = RESOURCE[t["kind"]]
        work[res] = work.get(res, 0.0) + t["duration"]
        if t["kind"] == "squashfs":  # also a class of its own: `squashfs` at once
            work["squashfs"] = work.get("squashfs", 0.0) + t["duration"]
    limits = record.get("limits") or {}
    per_slot = {r: w / limits.get(r, 1) for r, w in work.items() if r != "none"}
    bound = max([critical, *per_slot.values()])
    makespan = record["finished"] - record["started"]
    return {
        "tasks": len(tasks),
        "limits": limits,
        "critical": critical,
        "work": work,
        "per_slot": per_slot,
        "bound": bound,
        "makespan": makespan,
        "ratio": makespan / bound if bound else 0.0,
    }


def fresh_run(jobs: str | None) -> dict:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as t:
        tmp = Path(t)
        shutil.copytree(REPO / "layers", tmp / "layers", symlinks=True)
        state = tmp / "state" / "state.db"
        argv = [sys.executable, "-m", "imagegraph.cli", "up", str(tmp / "layers"), "--state", str(state)]
        argv += ["--force-all", "--json", *(["-j", jobs] if jobs else [])]
        t0 = time.perf_counter()
        r = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env={**os.environ, "BUILDAH_ISOLATION": "chroot"},
            check=False,
        )
        print(
            f"`up --force-all{' -j ' + jobs if jobs else ''}` exit {r.returncode}, {time.perf_counter() - t0:.1f} s"
        )
        if r.returncode != 0:
            print(r.stderr[-3000:])
        return json.loads((state.parent / "last-run.json").read_text())


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] != "-j":
        record = json.loads(Path(args[0]).read_text())
    else:
        record = fresh_run(args[1] if len(args) > 1 else None)
    a = analyse(record)
    print("| task | started (s) | duration (s) |")
    print("|---|---:|---:|")
    for t in sorted((t for x in record["layers"] for t in x["tasks"]), key=lambda t: t["started"] or 0):
        print(
            f"| {t['id']} | {(t['started'] or record['started']) - record['started']:.1f} | {t['duration']:.1f} |"
        )
    print()
    print(
        "| slots | critical path (s) | build work / slots (s) | upload work / slots (s) | boot work / slots (s) "
        "| lower bound (s) | makespan (s) | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    lim = ", ".join(f"{k} {v}" for k, v in a["limits"].items())
    ps = a["per_slot"]
    print(
        f"| {lim} | {a['critical']:.1f} | {ps.get('build', 0):.1f} | {ps.get('upload', 0):.1f} | "
        f"{ps.get('boot', 0):.1f} | {a['bound']:.1f} | {a['makespan']:.1f} | {a['ratio']:.3f} |"
    )


if __name__ == "__main__":
    main()
