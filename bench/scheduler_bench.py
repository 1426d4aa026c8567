"""Benchmark: scheduler makespan with a simulated backend against the lower bound; overhead per task.

1. Each layer's build task sleeps its simulated duration (milliseconds stand
   for seconds; its push task takes no time). The lower bound of any
   schedule is max(critical path, total work / jobs).
2. Overhead: 2,500 layers (5,000 tasks: a build and a push each) through the
   scheduler with an executor that returns at once; wall time per task.
Prints Markdown tables.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagegraph.graph import build_graph  # noqa: E402
from imagegraph.plan import StaticInventory, make_plan  # noqa: E402
from imagegraph.project import load_project  # noqa: E402
from imagegraph.scheduler import Scheduler, TaskResult  # noqa: E402
from imagegraph.state import State  # noqa: E402
from imagegraph.tasks import TaskKind  # noqa: E402

SCALE = 0.01  # one simulated second = 10 ms


def spec(name: str, parent: str | None) -> str:
    p = f"r.example/x/{parent}:1" if parent else "scratch"
    return (
        f"options:\n  layer_type: base\n  pkg_manager: dnf\n  name: {name}\n  parent: '{p}'\n"
        "  publish_tags: '1'\n  publish_registry: r.example/x\n"
    )


class Sim:
    build_slots = 1

    def __init__(self, durations: dict[str, float] | None = None):
        self.durations = durations or {}

    def prepare(self, plan, tasks) -> None:
        pass

    def cancel(self) -> None:
        pass

    def run_task(self, task, needs):
        if task.kind == TaskKind.BUILD and self.durations:
            time.sleep(self.durations[task.layer] * SCALE)
        return TaskResult(task.id, task.layer, task.kind)


def overhead(tmp: Path, layers: int = 2500, rounds: int = 3) -> list[tuple[int, int, float, float]]:
    """Scheduler wall time per task with an executor that does nothing (a forest of chains of 5)."""
    root = tmp / "overhead"
    root.mkdir()
    for i in range(layers):
        (root / f"o{i:05d}.yaml").write_text(spec(f"o{i:05d}", f"o{i - 1:05d}" if i % 5 else None))
    plan = make_plan(build_graph(load_project(root)), State(tmp / "o.db"), StaticInventory(reachable=False))
    n = sum(len(lp.tasks) for lp in plan.layers.values())
    rows = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = Scheduler(plan, Sim(), jobs=8, uploads=2).run()
        wall = time.perf_counter() - t0
        assert result.exit_status == 0
        rows.append((layers, n, wall, wall / n * 1000))
    return rows


def scenario(tmp: Path, name: str, edges: dict[str, str | None], durations: dict[str, float], jobs: int):
    root = tmp / name
    root.mkdir()
    for n, p in edges.items():
        (root / f"{n}.yaml").write_text(spec(n, p))
    lg = build_graph(load_project(root))
    plan = make_plan(lg, State(tmp / f"{name}.db"), StaticInventory(reachable=False), offline=True)
    # critical path
    cp: dict[str, float] = {}
    for lid in plan.layers:
        par = edges[lid]
        cp[lid] = durations[lid] + (cp[par] if par else 0)
    bound = max(max(cp.values()), sum(durations.values()) / jobs)
    t0 = time.perf_counter()
    Scheduler(plan, Sim(durations), jobs=jobs, durations=durations).run()
    makespan = (time.perf_counter() - t0) / SCALE
    return name, len(edges), jobs, sum(durations.values()), max(cp.values()), bound, makespan


def main() -> None:
    rng = random.Random(7)
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # 50 independent layers, -j 8
        edges = {f"l{i:02d}": None for i in range(50)}
        durs = {k: float(rng.randint(20, 120)) for k in edges}
        rows.append(scenario(tmp, "50-independent", edges, durs, 8))
        # a deep chain plus many short leaves: priorities matter
        edges = {f"c{i}": (f"c{i - 1}" if i else None) for i in range(10)}
        edges.update({f"s{i:02d}": None for i in range(30)})
        durs = {k: (60.0 if k.startswith("c") else 30.0) for k in edges}
        rows.append(scenario(tmp, "chain+leaves", edges, durs, 4))
        # a random tree of 200 layers
        edges = {"t000": None}
        for i in range(1, 200):
            edges[f"t{i:03d}"] = f"t{rng.randrange(i):03d}"
        durs = {k: float(rng.randint(10, 100)) for k in edges}
        rows.append(scenario(tmp, "random-tree-200", edges, durs, 8))
        over = overhead(tmp)
    print(
        "| scenario | layers | jobs | total work (s) | critical path (s) | lower bound (s) | makespan (s) | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, jobs, work, cp, bound, span in rows:
        print(
            f"| {name} | {n} | {jobs} | {work:.0f} | {cp:.0f} | {bound:.0f} | {span:.0f} | {span / bound:.3f} |"
        )
    print()
    print("| layers | tasks | scheduler wall time (s) | per task (ms) |")
    print("|---:|---:|---:|---:|")
    for layers, n, wall, per in over:
        print(f"| {layers} | {n} | {wall:.3f} | {per:.3f} |")


if __name__ == "__main__":
    main()
