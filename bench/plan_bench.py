"""Benchmark: `imagegraph plan` against `make -n` on the same graph, fresh processes.

For each size, `bench/synth.py` writes N synthetic layers (a forest of chains
and fans, a copyfiles source, repos, packages, one cmd each) and this script
writes the Makefile a make user would keep for them: one stamp target per
layer, its prerequisites the parent's stamp, the spec file and the copied
file, its recipe the build, push and touch lines. Nothing has been built, so
`make -n` prints every recipe, as `plan` lists every layer to build.

Runs, every one a new process, interleaved round by round so machine load
falls on all alike; the median of ROUNDS (5) is reported:

- `make -n` on the generated Makefile;
- `imagegraph plan --offline --json DIR`, never planned before: no state
  directory, an empty `$XDG_CACHE_HOME` (so no parsed-spec cache);
- the same, planned before: the cache the previous run filled;
- `imagegraph --version` and `imagegraph validate` of a one-file directory.

Peak RSS comes from the kernel's accounting of each child (wait4). imagegraph
is byte-compiled first, as an installed package is.
Usage: python bench/plan_bench.py [SIZES...]   (default 1000 5000)
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import make_layers  # noqa: E402

ROUNDS = 5
IMAGEGRAPH = shutil.which("imagegraph") or "imagegraph"


def makefile_for(root: Path) -> Path:
    """The Makefile of the same graph: stamps, parent -> child edges, spec and copied file prerequisites."""
    rules, stamps = [], []
    for spec in sorted(root.glob("*.yaml")):
        text = spec.read_text()
        parent = re.search(r"parent: '([^']*)'", text).group(1)
        prereq = "" if parent == "scratch" else parent.rsplit("/", 1)[1].split(":")[0] + ".stamp "
        name = spec.stem
        stamps.append(f"{name}.stamp")
        rules.append(
            f"{name}.stamp: {prereq}{spec.name} files/motd\n"
            f"\tbuildah build --layers -f {spec.name} -t registry.example.org:5000/site/{name}:1 .\n"
            f"\tbuildah push --tls-verify=false registry.example.org:5000/site/{name}:1\n"
            "\ttouch $@\n"
        )
    path = root / "Makefile"
    path.write_text(".PHONY: all\nall: " + " ".join(stamps) + "\n\n" + "\n".join(rules))
    return path


def run(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one fresh process; its output is discarded."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def bench_size(n: int, tmp: Path) -> dict[str, list[tuple[float, float]]]:
    root = make_layers(tmp / f"l{n}", n)
    makefile_for(root)
    warm_cache = tmp / f"xdg-warm-{n}"
    warm_cache.mkdir()
    plan = [IMAGEGRAPH, "plan", "--offline", "--json", str(root)]
    run(plan, env={**os.environ, "XDG_CACHE_HOME": str(warm_cache)})  # fills the warm cache
    out: dict[str, list[tuple[float, float]]] = {"make": [], "cold": [], "warm": []}
    for i in range(ROUNDS):
        out["make"].append(run(["make", "-n", "-f", "Makefile"], cwd=root))
        cold_cache = tmp / f"xdg-cold-{n}-{i}"
        cold_cache.mkdir()
        out["cold"].append(run(plan, env={**os.environ, "XDG_CACHE_HOME": str(cold_cache)}))
        out["warm"].append(run(plan, env={**os.environ, "XDG_CACHE_HOME": str(warm_cache)}))
    assert not (root / ".imagegraph").exists(), "plan created a state directory"
    return out


def bench_start(tmp: Path) -> dict[str, list[tuple[float, float]]]:
    one = make_layers(tmp / "one", 1)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg-one")}
    out: dict[str, list[tuple[float, float]]] = {"--version": [], "validate (1 file)": []}
    for _ in range(ROUNDS):
        out["--version"].append(run([IMAGEGRAPH, "--version"], env=env))
        out["validate (1 file)"].append(run([IMAGEGRAPH, "validate", str(one)], env=env))
    return out


def median(samples: list[tuple[float, float]], i: int = 0) -> float:
    return statistics.median(s[i] for s in samples)


def compile_package() -> None:
    """Byte-compile imagegraph as `pip install` does: with PYTHONDONTWRITEBYTECODE set (or a
    read-only checkout) every run would otherwise compile its modules from source."""
    import compileall

    import imagegraph

    compileall.compile_dir(str(Path(imagegraph.__file__).parent), quiet=1)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 5000]
    compile_package()
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp_s:
        tmp = Path(tmp_s)
        results = {n: bench_size(n, tmp) for n in sizes}
        start = bench_start(tmp)
    print(f"medians of {ROUNDS} fresh processes; load average at the end {os.getloadavg()[0]:.1f}\n")
    print(
        "| layers | `make -n` (s) | plan, never planned (s) | ratio | plan, planned before (s) | ratio | peak RSS cold / warm (MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in results.items():
        m, c, w = median(r["make"]), median(r["cold"]), median(r["warm"])
        print(
            f"| {n:,} | {m:.3f} | {c:.3f} | {c / m:.2f} x | {w:.3f} | {w / m:.2f} x "
            f"| {median(r['cold'], 1):.0f} / {median(r['warm'], 1):.0f} |"
        )
    print("\n| command | median (s) | peak RSS (MB) |\n|---|---:|---:|")
    for what, samples in start.items():
        print(f"| `imagegraph {what}` | {median(samples):.3f} | {median(samples, 1):.0f} |")


if __name__ == "__main__":
    main()
