"""Benchmark: `plan` on synthetic directories of 100, 1,000 and 5,000 layers.

Each size runs in a fresh process twice: cold (no parsed-spec cache) and
warm (cache filled by the first run), offline with an empty inventory so
only imagegraph's own work is measured. Prints a Markdown table.
Usage: python bench/plan_bench.py [SIZES...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import make_layers  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from imagegraph.project import load_project
from imagegraph.graph import build_graph
from imagegraph.plan import StaticInventory, make_plan
from imagegraph.state import State
t_import = time.perf_counter()
root = Path(sys.argv[1])
project = load_project(root, cache_dir=root / ".imagegraph" / "cache")
t_load = time.perf_counter()
lg = build_graph(project)
t_graph = time.perf_counter()
plan = make_plan(lg, State(root / ".imagegraph" / "state.db", readonly=True), StaticInventory(reachable=False), offline=True)
t_plan = time.perf_counter()
print(json.dumps({
    "load": t_load - t_import, "graph": t_graph - t_load, "plan": t_plan - t_graph,
    "total": t_plan - t_import, "layers": len(plan.layers),
    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def measure(root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [100, 1000, 5000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            root = make_layers(Path(tmp) / f"l{n}", n)
            (root / ".imagegraph" / "cache").mkdir(parents=True)
            cold = measure(root)
            warm = measure(root)
            rows.append((n, cold, warm))
    print("| layers | run | load specs (s) | graph (s) | keys + plan (s) | total (s) | peak RSS (MB) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n, cold, warm in rows:
        for label, m in (("cold", cold), ("warm", warm)):
            print(
                f"| {n:,} | {label} | {m['load']:.3f} | {m['graph']:.3f} | {m['plan']:.3f} | {m['total']:.3f} | {m['maxrss_mb']:.0f} |"
            )


if __name__ == "__main__":
    main()
