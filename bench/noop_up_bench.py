"""Benchmark: a no-op `up` on 1,000 layers, everything already published to a real registry.

A local `docker-registry` (the tests' RegistryServer) holds, for every layer
of a synthetic directory (bench/synth.py), its repository with the layer's
key tag and its publish tags, all on one tiny manifest (one config blob, no
layers: nothing is built). Then, in fresh processes:

- `plan`: time, and HTTP requests sent to the registry (RegistryClient.request_count)
- `imagegraph up DIR --json` with an EMPTY state (the registry is the shared
  memory: nothing builds, nothing is pushed), then again with the state that
  run recorded (warm).

Usage: python bench/noop_up_bench.py [LAYERS]   (default 1000; needs docker-registry)

`--three`: the side-by-side fixture's three layers instead (bench/imagebuilder_bench.py:
`base` from scratch by dnf to the registry, `compute` and `debug` to the registry
and moto S3 over HTTP, a SIZE MB kernel package from a local RPM repository),
built once by a real `up`, then a no-op `imagegraph up DIR` to a pipe, RUNS
fresh processes, each checked to have done nothing (exit 0, every layer
up to date, the run recorded in last-run.json). With `--before TREE` (an
exported, byte-compiled imagegraph tree, put first on PYTHONPATH) the
before and now processes alternate on the same fixture, and their outputs
are compared (same bytes, but for the run's timing).

Usage: python bench/noop_up_bench.py --three [--runs 9] [--size-mb 20] [--before TREE]
       (root; buildah, dnf, rpmbuild, createrepo_c, busybox-static, mksquashfs, docker-registry, moto)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from synth import make_layers  # noqa: E402

from tests.fixtures_servers import RegistryServer  # noqa: E402

PLAN_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from imagegraph.graph import build_graph
from imagegraph.plan import LiveInventory, make_plan
from imagegraph.project import load_project
from imagegraph.state import State
from imagegraph.log import configure
configure("json", "WARNING")  # events to stderr: stdout is this script's answer
root, state = Path(sys.argv[1]), Path(sys.argv[2])
lg = build_graph(load_project(root, cache_dir=state.parent / "cache"))
inv = LiveInventory()
plan = make_plan(lg, State(state, readonly=True), inv)
t1 = time.perf_counter()
actions = {}
for lp in plan.layers.values():
    actions[str(lp.action)] = actions.get(str(lp.action), 0) + 1
reg = inv._registry
print(json.dumps({"seconds": t1 - t0, "requests": reg.request_count if reg else 0, "actions": actions}))

"""


def _req(method: str, url: str, data: bytes | None = None, ctype: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers)


def publish_everything(base: str, keys: dict[str, tuple[str, str]]) -> None:
    """keys: repository path -> (key tag, digest placeholder); one config blob, one manifest per repo."""
    from imagegraph.publish.registry_client import RegistryClient

    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cdigest,
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    client = RegistryClient()
    host = base.split("//", 1)[1]
    client.configure_registry(host, ["--tls-verify=false"])
    for repo, (ktag, _) in keys.items():
        _, h = _req("POST", f"{base}/v2/{repo}/blobs/uploads/")
        loc = h["Location"]
        loc = loc if loc.startswith("http") else base + loc
        _req("PUT", f"{loc}{'&' if '?' in loc else '?'}digest={cdigest}", config, "application/octet-stream")
        _req(
            "PUT",
            f"{base}/v2/{repo}/manifests/{ktag}",
            manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        for t in ("1", "latest"):
            client.put_tag(f"{host}/{repo}", mdigest, t)


def run(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    return time.perf_counter() - t0, r


def _cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # children that ended (and what they waited for)
    return ru.ru_utime + ru.ru_stime


def _noop_run(argv: list[str], env: dict[str, str], record: Path) -> tuple[float, float, str]:
    """One fresh `up` that must do nothing; its wall time, its CPU time (with `buildah`'s) and stdout."""
    record.unlink(missing_ok=True)
    c0 = _cpu()
    t0 = time.perf_counter()
    r = subprocess.run(
        argv,
        env=env,
        cwd=record.parents[2],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )  # not from this tree's directory: `-m` would put it before --before's PYTHONPATH
    secs = time.perf_counter() - t0
    cpu = _cpu() - c0
    if r.returncode != 0:
        raise SystemExit(f"no-op up failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    doc = json.loads(record.read_text())  # the run is still recorded
    statuses = {x["status"] for x in doc["layers"]}
    if statuses != {"up-to-date"} or len(doc["layers"]) != 3:
        raise SystemExit(f"not a no-op: {statuses}\n{r.stdout}{r.stderr}")
    return secs, cpu, r.stdout


def three(argv: list[str]) -> None:
    """The side-by-side fixture's three layers: a no-op `up`, before and now (see the docstring)."""
    import argparse
    import os
    import re
    import shutil
    import statistics

    import imagebuilder_bench as ib

    from tests.fixtures_servers import S3_TEST_ACCESS, S3_TEST_SECRET, S3Server

    p = argparse.ArgumentParser()
    p.add_argument("--three", action="store_true")
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--size-mb", type=int, default=20)
    p.add_argument("--before", type=Path, default=None)
    p.add_argument("--hold", type=float, default=0, help=argparse.SUPPRESS)  # seconds, to profile by hand
    args = p.parse_args(argv)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "BUILDAH_ISOLATION": "chroot",
        "S3_ACCESS": S3_TEST_ACCESS,
        "S3_SECRET": S3_TEST_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    import compileall

    compileall.compile_dir(str(HERE.parent / "imagegraph"), quiet=1)  # byte-compiled, as installed
    kinds = {"now": env}
    if args.before:
        compileall.compile_dir(str(args.before / "imagegraph"), quiet=1)
        kinds = {"before": {**env, "PYTHONPATH": str(args.before.resolve())}, "now": env}
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` of a --hold run cleans up too
    tmp = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="igbench-noop-"))
    reg = s3 = server = repo = None
    try:
        repo = ib.make_rpm_repo(tmp / "repo", args.size_mb)
        server = ib.serve(repo.path)
        (tmp / "registry").mkdir()
        (tmp / "moto").mkdir()
        (tmp / "layers").mkdir()
        reg = RegistryServer(tmp / "registry")
        reg.start()
        s3 = S3Server(tmp / "moto")
        s3.start()
        ib.clean_storage()
        bucket = s3.make_bucket()
        ib.write_specs(tmp / "layers", server.url, reg.host, s3.endpoint, bucket, edits={})
        up = [sys.executable, "-m", "imagegraph.cli", "up", str(tmp / "layers")]
        env["XDG_CACHE_HOME"] = str(tmp / "cache")
        for e in kinds.values():
            e["XDG_CACHE_HOME"] = str(tmp / "cache")
        r = subprocess.run(up, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"the first up failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        ib.check_published("imagegraph", reg, s3, bucket, args.size_mb)
        record = tmp / "layers" / ".imagegraph" / "last-run.json"
        for e in kinds.values():  # warm-up: caches written, pages read
            _noop_run(up, e, record)
        times: dict[str, list[float]] = {k: [] for k in kinds}
        cpus: dict[str, list[float]] = {k: [] for k in kinds}
        outputs: dict[str, set[str]] = {k: set() for k in kinds}
        load = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
        for i in range(args.runs):
            for k in list(kinds)[:: 1 if i % 2 == 0 else -1]:
                secs, cpu, text = _noop_run(up, kinds[k], record)
                times[k].append(secs)
                cpus[k].append(cpu)
                outputs[k].add(re.sub(r"\d+\.\d+ ?s\b|\brun \S+", "N", text))
        load.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
        ib.check_published("imagegraph", reg, s3, bucket, args.size_mb)
        if args.hold:
            (tmp / "fixture.json").write_text(json.dumps({"argv": up, "env": env}))
            print(
                f"holding the fixture {args.hold:.0f} s: {tmp / 'fixture.json'}", file=sys.stderr, flush=True
            )
            time.sleep(args.hold)
    finally:
        for thing in (reg, server):
            if thing is not None:
                thing.stop()
        if reg is not None:
            reg.kill()
        if s3 is not None:
            s3.close()
        if repo is not None:
            repo.cleanup()
        ib.clean_storage()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"no-op `up` of the three side-by-side layers, {args.runs} fresh processes each, alternating")
    print(f"load: {load[0]}  ->  {load[-1]}\n")
    print(
        "| tree | median (s) | min (s) | max (s) | CPU median (s) | runs (s) |\n|---|---:|---:|---:|---:|---|"
    )
    for k, ts in times.items():
        runs = ", ".join(f"{t:.2f}" for t in ts)
        cpu = statistics.median(cpus[k])
        print(f"| {k} | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} | {cpu:.3f} | {runs} |")
    if len(kinds) > 1:
        same = outputs["before"] == outputs["now"] and len(outputs["now"]) == 1
        print(f"\noutputs to a pipe: {'the same bytes' if same else 'DIFFERENT'} (timings masked)")
        if not same:
            for k, o in outputs.items():
                print(f"--- {k}:", *sorted(o), sep="\n")


def main() -> None:
    if "--three" in sys.argv[1:]:
        three(sys.argv[1:])
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "reg").mkdir()
        server = RegistryServer(tmp / "reg")
        server.start()
        try:
            root = make_layers(tmp / "layers", n)
            for p in root.glob("*.yaml"):
                p.write_text(p.read_text().replace("registry.example.org:5000", server.host))
            # Keys, offline (no registry needed for layers whose parents are layers).
            out = subprocess.run(
                [sys.executable, "-m", "imagegraph.cli", "plan", str(root), "--offline", "--json",
                 "--state", str(tmp / "keys" / "state.db")],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            from imagegraph.key import key_tag

            layers = json.loads(out.stdout)["layers"]
            keys = {f"site/{x['name']}": (key_tag(x["key"]), "") for x in layers}
            t0 = time.perf_counter()
            publish_everything(server.url, keys)
            setup = time.perf_counter() - t0

            state = tmp / "state" / "state.db"
            rows = []
            for label in ("empty state", "warm state"):
                if label == "warm state":
                    pass  # the state the first `up` recorded
                secs, r = run([sys.executable, "-c", PLAN_CHILD, str(root), str(state)])
                p = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-2000:]}
                secs_up, r = run(
                    [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state), "--json"]
                )
                if r.returncode != 0:
                    raise SystemExit(f"up failed ({r.returncode}):\n{r.stderr[-3000:]}")
                doc = json.loads(r.stdout)
                statuses: dict[str, int] = {}
                for x in doc["layers"]:
                    statuses[x["status"]] = statuses.get(x["status"], 0) + 1
                rows.append((label, p, secs_up, statuses, doc.get("remote_requests")))
        finally:
            server.stop()
            server.kill()
    print(f"{n:,} layers, all published (setup: {setup:.1f} s to push {n:,} manifests and {2 * n:,} tags)\n")
    print(
        "| state | plan: decide (s) | plan: registry requests | plan actions | `up` wall time (s) | `up` results |"
    )
    print("|---|---:|---:|---|---:|---|")
    for label, p, secs_up, statuses, _rr in rows:
        acts = ", ".join(f"{v} {k}" for k, v in sorted(p.get("actions", {}).items()))
        sts = ", ".join(f"{v} {k}" for k, v in sorted(statuses.items()))
        print(
            f"| {label} | {p.get('seconds', 0):.2f} | {p.get('requests', '?')} | {acts} | {secs_up:.2f} | {sts} |"
        )


if __name__ == "__main__":
    main()
