"""The `imagegraph` command line (validate, graph, plan) run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .specdirs import seed_dir, write

EXE = [sys.executable, "-m", "imagegraph.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMAGEGRAPH_RETRY_ATTEMPTS": "1"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_validate_ok_with_warning(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    r = run("validate", str(root))
    assert r.returncode == 0, r.stderr
    assert "3 layer specs OK" in r.stdout
    assert "resolved by name and tag" in r.stderr  # the seed's registry mismatch warning


def test_validate_reports_every_problem_of_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    write(root, "a.yaml", "options:\n  layer_type: base\n  pkg_manager: dnf\npakages: [vim]\n")
    write(root, "b.yaml", "options:\n  layer_type: base\n  pkg_manager: yum\n")
    write(
        root,
        "c.yaml",
        "options:\n  layer_type: base\n  pkg_manager: dnf\ncopyfiles:\n  - src: /data/x\n    dest: /x\n",
    )
    r = run("validate", str(root))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "a.yaml:4:1" in r.stderr and "did you mean 'packages'" in r.stderr
    assert "b.yaml:3:16" in r.stderr
    assert "c.yaml:5:10" in r.stderr and "/data/x" in r.stderr
    assert "3 errors; nothing was built" in r.stderr
    j = run("validate", str(root), "--json")
    doc = json.loads(j.stdout)
    assert j.returncode == 2 and not doc["ok"] and len(doc["diagnostics"]) == 3


def test_graph_formats(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    dot = run("graph", str(root), "--format", "dot")
    assert dot.returncode == 0 and '"base" -> "compute";' in dot.stdout
    mer = run("graph", str(root), "--format", "mermaid")
    assert mer.stdout.startswith("graph TD")
    js = json.loads(run("graph", str(root), "--format", "json").stdout)
    assert js["edges"] == [{"from": "base", "to": "compute"}, {"from": "compute", "to": "gpu"}]


def test_plan_json_check_and_selection(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    r = run("plan", str(root), "--offline", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(x["name"], x["action"], x["parent"]) for x in doc["layers"]] == [
        ("base", "build", "scratch"),
        ("compute", "build", "base"),
        ("gpu", "build", "compute"),
    ]
    assert doc["layers"][0]["reasons"][0]["code"] == "never-built"
    assert run("plan", str(root), "--offline", "--check").returncode == 1
    sel = json.loads(run("plan", str(root), "compute", "--offline", "--json").stdout)
    assert [x["name"] for x in sel["layers"]] == ["base", "compute"]
    human = run("plan", str(root), "--offline")
    assert "never built" in human.stdout and "parent compute rebuilds" in human.stdout
    # plan is read-only: no state database appears
    assert not (root / ".imagegraph" / "state.db").exists()


def test_unknown_layer_is_a_usage_error(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    r = run("plan", str(root), "compte", "--offline")
    assert r.returncode == 2 and "did you mean 'compute'" in r.stderr and "Traceback" not in r.stderr


def test_cycle_exit_2(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    write(
        root,
        "a.yaml",
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: a\n  parent: r.io/x/b:1\n  publish_tags: '1'\n  publish_registry: r.io/x\n",
    )
    write(
        root,
        "b.yaml",
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: b\n  parent: r.io/x/a:1\n  publish_tags: '1'\n  publish_registry: r.io/x\n",
    )
    r = run("plan", str(root), "--offline")
    assert r.returncode == 2 and "parent cycle: a.yaml -> b.yaml -> a.yaml" in r.stderr
