"""Benchmark: the Slurm executor on a one-node Slurm brought up here (tests/slurmcluster.py).

A. Overhead: `imagegraph up --executor slurm` against `--executor local -j 2` on the
   same 6-layer graph (a dnf root from a local RPM repository, five cmd layers, three
   levels deep), both pushing to a real docker-registry, fresh state and a fresh
   registry namespace every round, alternating. Fresh processes, wall clock.
C. A chain of six no-op jobs (`true`), each after the one before: Slurm's own time per
   dependency step, from submission to the last job's end as the poll thread sees it.
B. Submission and polling: 1,000 stale synthetic layers (bench/synth.py) submitted by
   `SlurmBuildService.prepare` with the job command replaced by `true`; then the poll
   thread watches them for a window while Slurm runs them, and its CPU (the process's
   threads plus the squeue/scontrol children) is divided by the window's wall time.

Usage: python bench/slurm_bench.py [ROUNDS] [WINDOW_SECONDS]
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
sys.path.insert(0, str(REPO))

from bench.synth import make_layers  # noqa: E402
from tests.fixtures_servers import RegistryServer  # noqa: E402
from tests.rpmrepo import make_repo, serve  # noqa: E402
from tests.slurmcluster import SlurmCluster  # noqa: E402

ENV = {**os.environ, "BUILDAH_ISOLATION": "chroot"}


def six_layers(root: Path, repo_url: str, registry: str, ns: str, graphroot: Path) -> Path:
    root.mkdir(parents=True)
    edges = {"root": None, "a": "root", "b": "a", "c": "root", "d": "c", "e": "root"}
    for name, parent in edges.items():
        p = f"{registry}/{ns}/bench-{parent}:1" if parent else "scratch"
        text = (
            f"options:\n  layer_type: base\n  name: bench-{name}\n  publish_tags: ['1']\n  pkg_manager: dnf\n"
            f"  parent: '{p}'\n  publish_registry: '{registry}/{ns}'\n"
            "  registry_opts_push: ['--tls-verify=false']\n  registry_opts_pull: ['--tls-verify=false']\n"
            "  gpgcheck: false\n  releasever: '9'\n"
        )
        if parent is None:
            text += f"repos:\n  - alias: igtest\n    url: '{repo_url}'\npackage_groups: ['IG Minimal']\n"
        text += f"cmds:\n  - cmd: 'echo {name} > /etc/role'\n"
        (root / f"{name}.yaml").write_text(text)
    (root / "imagegraph.yaml").write_text(
        f"executor:\n  kind: local\n  partition: build\n  graphroot: {graphroot}\n  poll_interval: 0.5\n"
    )
    return root


def up(root: Path, executor: str, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegraph.cli",
            "up",
            str(root),
            "--executor",
            executor,
            "-j",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - t0
    doc = json.loads(r.stdout) if r.stdout.startswith("{") else {}
    if r.returncode != 0 or doc.get("summary", {}).get("ok") != 6:
        raise SystemExit(f"up --executor {executor} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds


def clean_local(prefix: str, env: dict) -> None:
    out = subprocess.run(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], capture_output=True, text=True, env=env
    ).stdout
    for ref in out.split():
        if prefix in ref:
            subprocess.run(["buildah", "rmi", "-f", ref], capture_output=True, env=env)


def part_a(cluster: SlurmCluster, work: Path, rounds: int) -> dict:
    repo = make_repo(work / "rpm")
    server = serve(repo.path)
    (work / "registry").mkdir()
    registry = RegistryServer(work / "registry")
    registry.start()
    graphroot = Path(tempfile.mkdtemp(prefix="ig-bench-node-", dir="/var/tmp"))
    env = {**cluster.env, **ENV}
    times: dict[str, list[float]] = {"local": [], "slurm": []}
    steps: list[dict] = []
    try:
        for i in range(rounds):
            for kind in ("local", "slurm"):
                ns = f"r{i}{kind}"
                root = six_layers(work / ns, server.url, registry.host, ns, graphroot)
                times[kind].append(up(root, kind, env))
                print(f"round {i} {kind}: {times[kind][-1]:.1f} s", flush=True)
                if kind == "slurm":
                    steps.append(_job_steps(root))
                clean_local("bench-", env)
    finally:
        registry.stop()
        server.stop()
        node = {**env, "CONTAINERS_STORAGE_CONF": f"{graphroot}-run/storage.conf"}
        subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True, env=node)
        shutil.rmtree(graphroot, ignore_errors=True)
        shutil.rmtree(f"{graphroot}-run", ignore_errors=True)
        repo.cleanup()
    best = {k: min(v) for k, v in times.items()}
    return {"times": times, "best": best, "ratio": best["slurm"] / best["local"], "job_steps": steps}


def _job_steps(root: Path) -> dict:
    """Mean seconds per step inside the jobs (their result documents), over the six layers."""
    docs = [json.loads(p.read_text()) for p in (root / ".imagegraph" / "logs").glob("*.result.json")]
    out: dict[str, float] = {}
    for name in ("key", "cleanup", "pull", "build", "push", "total"):
        vals = [d["durations"].get(name, 0.0) for d in docs]
        out[name] = round(sum(vals) / max(1, len(vals)), 2)
    return out


def part_b(cluster: SlurmCluster, work: Path, window: float) -> dict:
    from imagegraph.graph import build_graph
    from imagegraph.plan import Action, StaticInventory, make_plan
    from imagegraph.project import ExecutorKind, ExecutorSettings, load_project
    from imagegraph.slurm import SlurmBuildService
    from imagegraph.state import State

    root = make_layers(work / "synth", 1000)
    plan = make_plan(
        build_graph(load_project(root)), State(work / "synth.db"), StaticInventory(reachable=False)
    )
    builds = [lp for lp in plan.layers.values() if lp.action == Action.BUILD]
    settings = ExecutorSettings(kind=ExecutorKind.SLURM, partition="build")
    svc = SlurmBuildService(
        settings, project_root=root, log_dir=work / "synth-logs", run_id="bench", command=["true"]
    )
    c0, w0 = _cpu(), time.perf_counter()
    svc.prepare(plan, builds)
    submit_wall, submit_cpu = time.perf_counter() - w0, _cpu() - c0
    deps = sum(1 for j in svc.jobs.values() if j.dependencies)
    c1, w1, p1 = _cpu(), time.perf_counter(), svc.polls
    time.sleep(window)
    poll_wall, poll_cpu, polls = time.perf_counter() - w1, _cpu() - c1, svc.polls - p1
    done = sum(1 for j in svc.jobs.values() if j.state.finished)
    svc.cancel()
    return {
        "jobs": len(svc.jobs),
        "with_dependency": deps,
        "submit_wall": submit_wall,
        "submit_cpu": submit_cpu,
        "window": poll_wall,
        "poll_cpu": poll_cpu,
        "polls": polls,
        "poll_core_percent": 100 * poll_cpu / poll_wall,
        "mean_poll_interval": poll_wall / max(1, polls),
        "finished_in_window": done,
    }


def part_c(cluster: SlurmCluster, work: Path, length: int = 6) -> dict:
    """A chain of `length` no-op jobs: Slurm's own time per dependency step."""
    from imagegraph.graph import build_graph
    from imagegraph.plan import StaticInventory, make_plan
    from imagegraph.project import ExecutorKind, ExecutorSettings, load_project
    from imagegraph.slurm import SlurmBuildService
    from imagegraph.state import State

    root = work / "chain"
    root.mkdir()
    for i in range(length):
        parent = f"r.example/x/c{i - 1}:1" if i else "scratch"
        (root / f"c{i}.yaml").write_text(
            f"options:\n  layer_type: base\n  name: c{i}\n  pkg_manager: dnf\n  parent: '{parent}'\n"
            "  publish_tags: ['1']\n  publish_registry: r.example/x\npackages: [x]\n"
        )
    plan = make_plan(
        build_graph(load_project(root)), State(work / "chain.db"), StaticInventory(reachable=False)
    )
    settings = ExecutorSettings(kind=ExecutorKind.SLURM, partition="build", poll_interval=0.2)
    svc = SlurmBuildService(
        settings, project_root=root, log_dir=work / "chain-logs", run_id="c", command=["true"]
    )
    t0 = time.perf_counter()
    svc.prepare(plan, list(plan.layers.values()))
    last = svc.jobs[f"c{length - 1}"]
    while last.outcome is None and time.perf_counter() - t0 < 120:
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    svc.cancel()
    return {"chain": length, "seconds": seconds, "per_step": seconds / length, "last_state": str(last.state)}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    window = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    work = Path(tempfile.mkdtemp(prefix="ig-slurm-bench-"))
    os.chmod(work, 0o755)
    cluster = SlurmCluster(work / "slurm").start()
    os.environ["SLURM_CONF"] = str(cluster.conf)  # for parts B and C, which run in this process
    from imagegraph import log as logmod

    logmod.configure("console", "ERROR")  # as `up` on a terminal: events are not the work measured
    try:
        a = part_a(cluster, work, rounds) if rounds else None  # ROUNDS 0: part B only
        cluster.cancel_all()
        c = part_c(cluster, work)
        cluster.cancel_all()
        b = part_b(cluster, work, window) if window else None  # WINDOW 0: no 1,000-job part
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"overhead": a, "chain": c, "submission": b}, indent=2))


if __name__ == "__main__":
    main()
