"""imagegraph/buildservice.py: the build-service seam, driven by `run_up` with a recording fake buildah."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from imagegraph.buildservice import LocalBuildService
from imagegraph.executor import LocalExecutor, run_up
from imagegraph.graph import build_graph
from imagegraph.plan import LiveInventory, make_plan
from imagegraph.project import load_project
from imagegraph.state import State

from .fakebuildah import install
from .test_executor import layer


class Elsewhere:
    """A service whose builds are not limited here (slots None), wrapping the local one; records its calls."""

    slots = None

    def __init__(self, local: LocalBuildService):
        self.local = local
        self.prepared: list[str] = []
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.cancels = 0
        self.lock = threading.Lock()

    def prepare(self, plan, builds) -> None:
        self.prepared = [lp.layer for lp in builds]

    def build(self, lp, parent):
        with self.lock:
            self.started[lp.layer] = time.monotonic()
        try:
            return self.local.build(lp, parent)
        finally:
            with self.lock:
                self.ended[lp.layer] = time.monotonic()

    def cancel(self) -> None:
        self.cancels += 1


def test_a_service_with_no_local_slots_runs_every_ready_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = install(tmp_path)
    for k, v in fake.env().items():
        monkeypatch.setenv(k, v)
    root = tmp_path / "layers"
    root.mkdir()
    for n in ("a", "b", "c"):
        (root / f"{n}.yaml").write_text(layer(n, None, ["sleep 1"]))
    (root / "d.yaml").write_text(layer("d", "a", ["true"]))
    lg = build_graph(load_project(root))
    state = State(tmp_path / "state" / "state.db")
    plan = make_plan(lg, state, LiveInventory(offline=True))
    run_id, executors = "r1", []
    # Wrapping the local service: it writes into the executor's per-task logs (`runner_for`).
    svc = Elsewhere(LocalBuildService(plan, run_id, lambda name: executors[0].runner_for(name)))
    executors.append(LocalExecutor(plan, state, tmp_path / "state", run_id, svc))
    result = run_up(plan, state, state_dir=tmp_path / "state", jobs=1, executor=executors[0], run_id=run_id)
    assert result.exit_status == 0, result.to_json()
    assert sorted(svc.prepared) == ["a", "b", "c", "d"]
    # -j 1, yet the three independent builds ran at once: they hold no local slot.
    s, e = svc.started, svc.ended
    assert max(s["a"], s["b"], s["c"]) < min(e["a"], e["b"], e["c"])
    assert s["d"] >= e["a"]
    assert svc.cancels == 0 and fake.containers() == []
