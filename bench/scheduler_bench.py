"""Benchmark: scheduler makespan with a simulated backend against the lower bound.

Each layer "builds" by sleeping its simulated duration (milliseconds stand
for seconds). The lower bound of any schedule is max(critical path, total
work / jobs). Prints a Markdown table.
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
from imagegraph.scheduler import LayerResult, Scheduler  # noqa: E402
from imagegraph.state import State  # noqa: E402

SCALE = 0.01  # one simulated second = 10 ms


def spec(name: str, parent: str | None) -> str:
    p = f"r.example/x/{parent}:1" if parent else "scratch"
    return (
        f"options:\n  layer_type: base\n  pkg_manager: dnf\n  name: {name}\n  parent: '{p}'\n"
        "  publish_tags: '1'\n  publish_registry: r.example/x\n"
    )


class Sim:
    def __init__(self, durations: dict[str, float]):
        self.durations = durations

    def execute(self, lp, parents):
        time.sleep(self.durations[lp.layer] * SCALE)
        return LayerResult(lp.layer, lp.action, "ok")


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
    print(
        "| scenario | layers | jobs | total work (s) | critical path (s) | lower bound (s) | makespan (s) | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, jobs, work, cp, bound, span in rows:
        print(
            f"| {name} | {n} | {jobs} | {work:.0f} | {cp:.0f} | {bound:.0f} | {span:.0f} | {span / bound:.3f} |"
        )


if __name__ == "__main__":
    main()
