"""imagegraph/build_one.py, the job side of a Slurm build, run as its hidden CLI subcommand.

Builds inside real jobs are tested in test_up_slurm.py; here what a job refuses, with its
exit status and result document, without a build.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from imagegraph.build_one import JobExit, read_result, result_path
from imagegraph.graph import build_graph
from imagegraph.plan import StaticInventory, make_plan
from imagegraph.project import load_project
from imagegraph.state import State

from .specdirs import write

SPEC = "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: a\n  publish_registry: 127.0.0.1:9/x\npackages: [x]\n"


def build_one(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", "build-one", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_result_document_sits_beside_the_log() -> None:
    assert result_path(Path("/l/a-r1.log")) == Path("/l/a-r1.result.json")


def test_refuses_another_key_than_planned(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    write(root, "a.yaml", SPEC)
    key = (
        make_plan(build_graph(load_project(root)), State(tmp_path / "s.db"), StaticInventory())
        .layers["a"]
        .key
    )
    write(root, "a.yaml", SPEC.replace("[x]", "[x, y]"))  # the node's checkout differs
    result = tmp_path / "a-r1.result.json"
    r = build_one(str(root), "a", "--key", key, "--result", str(result), "--run-id", "r1")
    assert r.returncode == JobExit.KEY_MISMATCH, r.stderr
    doc = read_result(result)
    assert doc["status"] == "failed" and doc["key"] == key and doc["exit_status"] == 3
    assert "the layer directories differ" in doc["error"] and "refusing to build" in doc["error"]
    assert "==> [result] failed" in r.stdout  # the job log says it too


def test_a_directory_it_cannot_load_is_a_usage_failure(tmp_path: Path) -> None:
    result = tmp_path / "a-r1.result.json"
    r = build_one(str(tmp_path / "nowhere"), "a", "--key", "0" * 64, "--result", str(result))
    assert r.returncode == JobExit.USAGE
    assert (
        json.loads(result.read_text())["category"]
        == "the layer directory could not be loaded on the build node"
    )


def test_an_arch_this_node_cannot_run_fails_before_anything_is_built(tmp_path: Path, monkeypatch) -> None:
    """The submit host's binfmt check says nothing of a build node's: the job checks its own."""
    import pytest

    from imagegraph import build_one as job
    from imagegraph.arch import Arch, Emulation, host_arch
    from imagegraph.runner import Runner

    foreign = Arch.AARCH64 if host_arch() != Arch.AARCH64 else Arch.X86_64
    root = tmp_path / "layers"
    write(root, "a.yaml", SPEC.replace("  name: a\n", f"  name: a\n  arches: [{host_arch()}, {foreign}]\n"))
    asked: list[Arch] = []

    def no_handler(arch: Arch) -> Emulation:
        asked.append(arch)
        return Emulation(
            arch, native=False, usable=False, problem="no handler", fix="update-binfmts --enable x"
        )

    monkeypatch.setattr(job, "emulation", no_handler)
    monkeypatch.setattr(job, "compute_keys", lambda *a, **k: pytest.fail("got as far as the keys"))
    with pytest.raises(job.JobFailure) as exc:
        job.build_one(root, f"a@{foreign}", "0" * 64, "r1", Runner(), {}, str(foreign))
    assert asked == [foreign]
    assert exc.value.status == JobExit.INFRASTRUCTURE
    msg = str(exc.value)
    assert f"cannot run {foreign} binaries: no handler" in msg and "update-binfmts --enable x" in msg
    assert f"executor.arch.{foreign}" in msg
