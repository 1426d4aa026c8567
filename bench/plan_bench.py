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
- the same, planned before: the cache the previous run filled, and the plan
  record (planreuse.py) it wrote: nothing changed, so the answer is reused;
- planned before without reuse (`IMAGEGRAPH_NO_PLAN_CACHE=1`): the planner
  itself with a warm parsed-spec cache;
- planned before, one spec edited since (a copy of the tree, one package of
  one layer toggled before each run): the record no longer matches, the
  planner runs with 999 specs from the cache;
- `imagegraph --version` and `imagegraph validate` of a one-file directory.

Peak RSS and CPU time (user + system) come from the kernel's accounting of
each child (wait4): on a shared machine the CPU time moves less with the load
than the wall time does. imagegraph is byte-compiled first, as an installed
package is.

With `--before CMD` (an `imagegraph` of another tree, e.g. a script that puts
an exported older commit first on sys.path), every run is also made with CMD
in the same rounds, and a second table compares the two.

Usage: python bench/plan_bench.py [--before CMD] [SIZES...]   (default 1000 5000)
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


Sample = tuple[float, float, float]  # wall seconds, peak RSS MB, CPU seconds (user + system)


def run(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> Sample:
    """(wall seconds, peak RSS MB, CPU seconds) of one fresh process; its output is discarded."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


MARGIN = 2.1  # planreuse.DEFAULT_MARGIN: a record is written only when every input is older


def bench_size(n: int, tmp: Path, commands: dict[str, str]) -> dict[str, list[Sample]]:
    """Samples per run kind: `make`, and `cold`/`warm`/`nocache`/`edited` per command label
    ("" = this tree)."""
    root = make_layers(tmp / f"l{n}", n)
    makefile_for(root)
    edit_root = make_layers(tmp / f"l{n}-edit", n)
    edited = edit_root / "layer-00010.yaml"
    original = edited.read_text()
    time.sleep(MARGIN)  # as a user's files are: written more than a moment ago
    env = os.environ.copy()
    env.pop("IMAGEGRAPH_NO_PLAN_CACHE", None)
    out: dict[str, list[Sample]] = {"make": []}
    for label, cmd in commands.items():
        for kind, where in (("warm", root), ("edited", edit_root)):
            cache = tmp / f"xdg-{kind}-{n}{label}"
            cache.mkdir()
            run([cmd, "plan", "--offline", "--json", str(where)], env={**env, "XDG_CACHE_HOME": str(cache)})
        for kind in ("cold", "warm", "nocache", "edited"):
            out[f"{kind}{label}"] = []
    for i in range(ROUNDS):
        out["make"].append(run(["make", "-n", "-f", "Makefile"], cwd=root))
        for label, cmd in commands.items():
            plan = [cmd, "plan", "--offline", "--json", str(root)]
            cold_cache = tmp / f"xdg-cold-{n}-{i}{label}"
            cold_cache.mkdir()
            out[f"cold{label}"].append(run(plan, env={**env, "XDG_CACHE_HOME": str(cold_cache)}))
            warm = {**env, "XDG_CACHE_HOME": str(tmp / f"xdg-warm-{n}{label}")}
            out[f"warm{label}"].append(run(plan, env=warm))
            out[f"nocache{label}"].append(run(plan, env={**warm, "IMAGEGRAPH_NO_PLAN_CACHE": "1"}))
            # One package of one layer toggled: what the next `plan` after an edit costs.
            edited.write_text(
                original.replace("packages:\n", "packages:\n  - edited-package\n") if i % 2 == 0 else original
            )
            out[f"edited{label}"].append(
                run(
                    [cmd, "plan", "--offline", "--json", str(edit_root)],
                    env={**env, "XDG_CACHE_HOME": str(tmp / f"xdg-edited-{n}{label}")},
                )
            )
    assert not (root / ".imagegraph").exists(), "plan created a state directory"
    return out


def bench_start(tmp: Path, commands: dict[str, str]) -> dict[str, list[Sample]]:
    one = make_layers(tmp / "one", 1)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg-one")}
    out: dict[str, list[Sample]] = {}
    for _ in range(ROUNDS):
        for label, cmd in commands.items():
            out.setdefault(f"--version{label}", []).append(run([cmd, "--version"], env=env))
            out.setdefault(f"validate (1 file){label}", []).append(run([cmd, "validate", str(one)], env=env))
    return out


def median(samples: list[Sample], i: int = 0) -> float:
    return statistics.median(s[i] for s in samples)


def compile_package() -> None:
    """Byte-compile imagegraph as `pip install` does: with PYTHONDONTWRITEBYTECODE set (or a
    read-only checkout) every run would otherwise compile its modules from source."""
    import compileall

    import imagegraph

    compileall.compile_dir(str(Path(imagegraph.__file__).parent), quiet=1)


def main() -> None:
    args = sys.argv[1:]
    commands = {"": IMAGEGRAPH}
    if args[:1] == ["--before"]:
        commands[" before"] = args[1]
        args = args[2:]
    sizes = [int(a) for a in args] or [1000, 5000]
    compile_package()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp_s:
        tmp = Path(tmp_s)
        results = {n: bench_size(n, tmp, commands) for n in sizes}
        start = bench_start(tmp, commands)
    print(
        f"medians of {ROUNDS} fresh processes; load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end\n"
    )
    print(
        "| layers | `make -n` (s) | plan, never planned (s) | ratio | plan, planned before (s) | ratio "
        "| planned before, no reuse (s) | ratio | one spec edited since (s) | ratio "
        "| CPU s: make / cold / warm / no reuse / edited | peak RSS cold / warm (MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in results.items():
        m = median(r["make"])
        cells = " | ".join(
            f"{median(r[k]):.3f} | {median(r[k]) / m:.2f} x" for k in ("cold", "warm", "nocache", "edited")
        )
        cpu = " / ".join(f"{median(r[k], 2):.3f}" for k in ("make", "cold", "warm", "nocache", "edited"))
        print(
            f"| {n:,} | {m:.3f} | {cells} | {cpu} | {median(r['cold'], 1):.0f} / {median(r['warm'], 1):.0f} |"
        )
    print("\n| command | median (s) | CPU (s) | peak RSS (MB) |\n|---|---:|---:|---:|")
    for what in ("--version", "validate (1 file)"):
        samples = start[what]
        print(
            f"| `imagegraph {what}` | {median(samples):.3f} | {median(samples, 2):.3f} | {median(samples, 1):.0f} |"
        )
    if len(commands) == 1:
        return
    print("\nBefore (`--before`) and now, the same rounds: wall (CPU) seconds, medians\n")
    print("| run | before | now | faster by | now / `make -n` |\n|---|---:|---:|---:|---:|")
    for n, r in results.items():
        m = median(r["make"])
        for kind, words in (("cold", "never planned"), ("warm", "planned before")):
            b, a = r[f"{kind} before"], r[kind]
            print(
                f"| {n:,} layers, {words} | {median(b):.3f} ({median(b, 2):.3f}) | {median(a):.3f} "
                f"({median(a, 2):.3f}) | {median(b) / median(a):.1f} x | {median(a) / m:.2f} x |"
            )
    for what in ("--version", "validate (1 file)"):
        b, a = start[f"{what} before"], start[what]
        print(
            f"| `{what}` | {median(b):.3f} ({median(b, 2):.3f}) | {median(a):.3f} ({median(a, 2):.3f}) "
            f"| {median(b) / median(a):.1f} x | |"
        )


if __name__ == "__main__":
    main()
