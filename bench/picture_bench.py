"""`graph --format svg` against `graph --format dot`: what Graphviz's layout adds, fresh processes.

Both commands load the same synthetic directory (bench/synth.py); `svg` also
plans (offline) and lays the graph out with `dot`. Medians of 5 runs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import make_layers  # noqa: E402


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    print("| layers | graph --format dot (s) | graph --format svg (s) | ratio |")
    print("|---:|---:|---:|---:|")
    for n in (50, 200, 1000):
        with tempfile.TemporaryDirectory() as tmp:
            root = make_layers(Path(tmp) / "layers", n)
            (root / ".imagegraph").mkdir()  # a state directory, so the spec cache is warm after run 1
            cli = [sys.executable, "-m", "imagegraph.cli", "graph", str(root)]
            timed([*cli, "--format", "dot"])
            dot = statistics.median(timed([*cli, "--format", "dot"]) for _ in range(5))
            svg = statistics.median(timed([*cli, "--format", "svg", "--offline"]) for _ in range(5))
            print(f"| {n:,} | {dot:.2f} | {svg:.2f} | {svg / dot:.1f} x |")


if __name__ == "__main__":
    main()
