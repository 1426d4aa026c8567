"""Benchmark: `imagegraph plan` on N layers built for one architecture against the same N for two.

`bench/synth.py` writes N synthetic layers twice: as they are (the host's
arch) and with `defaults: {arches: [x86_64, aarch64]}` in imagegraph.yaml, so
every layer plans two nodes (two keys, two sets of reasons and tasks, a fan-in
index task per layer). `imagegraph plan --offline --json DIR`, fresh
processes, interleaved round by round so machine load falls on both alike,
the median of ROUNDS (5); "never planned" has an empty `$XDG_CACHE_HOME`,
"planned before" the cache the previous run filled. The target: two arches
within 2 x one arch's time.

Usage: python bench/multiarch_bench.py [SIZES...]   (default 1000)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_bench import IMAGEGRAPH, ROUNDS, compile_package, median, run  # noqa: E402
from synth import make_layers  # noqa: E402


def nodes(root: Path, env: dict) -> int:
    out = subprocess.run(
        [IMAGEGRAPH, "plan", "--offline", "--json", str(root)], capture_output=True, text=True, env=env
    ).stdout
    return len(json.loads(out)["layers"])


def bench_size(n: int, tmp: Path) -> dict[str, list[tuple[float, float]]]:
    roots = {"1 arch": make_layers(tmp / f"one-{n}", n), "2 arches": make_layers(tmp / f"two-{n}", n)}
    settings = roots["2 arches"] / "imagegraph.yaml"
    extra = settings.read_text() if settings.exists() else ""
    settings.write_text(extra + "\ndefaults:\n  arches: [x86_64, aarch64]\n")
    out: dict[str, list[tuple[float, float]]] = {}
    warm = {}
    for what, root in roots.items():
        warm[what] = tmp / f"xdg-warm-{what[0]}-{n}"
        warm[what].mkdir()
        env = {**os.environ, "XDG_CACHE_HOME": str(warm[what])}
        print(f"{what}: {nodes(root, env)} plan nodes for {n} layers", file=sys.stderr)
    for i in range(ROUNDS):
        for what, root in roots.items():
            plan = [IMAGEGRAPH, "plan", "--offline", "--json", str(root)]
            cold = tmp / f"xdg-cold-{what[0]}-{n}-{i}"
            cold.mkdir()
            out.setdefault(f"{what} cold", []).append(
                run(plan, env={**os.environ, "XDG_CACHE_HOME": str(cold)})
            )
            env = {**os.environ, "XDG_CACHE_HOME": str(warm[what])}
            out.setdefault(f"{what} warm", []).append(run(plan, env=env))
    return out


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000]
    compile_package()
    with tempfile.TemporaryDirectory(prefix="multiarch-bench-") as tmp_s:
        results = {n: bench_size(n, Path(tmp_s)) for n in sizes}
    print(f"medians of {ROUNDS} fresh processes; load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| layers | run | 1 arch (s) | 2 arches (s) | ratio | peak RSS 1 / 2 (MB) |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, r in results.items():
        for run_ in ("cold", "warm"):
            one, two = r[f"1 arch {run_}"], r[f"2 arches {run_}"]
            label = "never planned" if run_ == "cold" else "planned before"
            print(
                f"| {n:,} | {label} | {median(one):.3f} | {median(two):.3f} | {median(two) / median(one):.2f} x "
                f"| {median(one, 1):.0f} / {median(two, 1):.0f} |"
            )


if __name__ == "__main__":
    main()
