"""imagegraph/scheduler.py with a recording fake executor (no buildah)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from imagegraph.errors import BuildError
from imagegraph.graph import build_graph
from imagegraph.plan import StaticInventory, make_plan
from imagegraph.project import load_project
from imagegraph.runner import Cancelled
from imagegraph.scheduler import LayerResult, Scheduler, bottom_levels
from imagegraph.state import State

from .specdirs import write


def layer(name: str, parent: str | None) -> str:
    p = f"r.io/x/{parent}:1" if parent else "scratch"
    return f"options:\n  layer_type: base\n  pkg_manager: dnf\n  name: {name}\n  parent: '{p}'\n  publish_tags: '1'\n  publish_registry: r.io/x\n"


def tree(tmp_path: Path, edges: dict[str, str | None]):
    root = tmp_path / "layers"
    for n, p in edges.items():
        write(root, f"{n}.yaml", layer(n, p))
    lg = build_graph(load_project(root))
    return make_plan(lg, State(tmp_path / "s.db"), StaticInventory(reachable=False), offline=True)


class Recorder:
    def __init__(self, seconds: dict[str, float] | None = None, fail: set[str] | None = None):
        self.seconds = seconds or {}
        self.fail = fail or set()
        self.order: list[str] = []
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def execute(self, lp, parents):
        with self.lock:
            self.order.append(lp.layer)
            self.running += 1
            self.peak = max(self.peak, self.running)
            for p, r in parents.items():
                assert r.status in ("ok", "up-to-date"), f"{lp.layer} started before parent {p} succeeded"
        try:
            time.sleep(self.seconds.get(lp.layer, 0.01))
            if lp.layer in self.fail:
                raise BuildError(lp.layer, "cmds[0]", "exit 1", ["boom"])
            return LayerResult(lp.layer, lp.action, "ok", image_id="sha256:" + lp.layer)
        finally:
            with self.lock:
                self.running -= 1


EDGES = {
    "base": None,
    "compute": "base",
    "login": "compute",
    "debug": "compute",
    "other": "base",
    "leaf": "other",
}


def test_parents_before_children_and_parallelism(tmp_path: Path) -> None:
    plan = tree(tmp_path, EDGES)
    rec = Recorder({k: 0.2 for k in EDGES})
    result = Scheduler(plan, rec, jobs=2).run()
    assert result.exit_status == 0 and set(result.counts()) == {"ok"}
    assert rec.order[0] == "base" and rec.peak == 2
    for child, parent in EDGES.items():
        if parent:
            assert rec.order.index(parent) < rec.order.index(child)


def test_failure_blocks_only_descendants(tmp_path: Path) -> None:
    plan = tree(tmp_path, EDGES)
    result = Scheduler(plan, Recorder(fail={"compute"}), jobs=2).run()
    st = {k: r.status for k, r in result.results.items()}
    assert st == {
        "base": "ok",
        "compute": "failed",
        "login": "blocked",
        "debug": "blocked",
        "other": "ok",
        "leaf": "ok",
    }
    assert result.results["login"].blocked_by == "compute"
    assert "cmds[0]" in result.results["compute"].error and result.exit_status == 1


def test_fail_fast_starts_nothing_new(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"a": None, "b": None, "c": None})
    rec = Recorder(fail={"a"})
    result = Scheduler(plan, rec, jobs=1, fail_fast=True, durations={"a": 100, "b": 10, "c": 1}).run()
    assert rec.order == ["a"]
    assert result.results["b"].status == "not-started" and result.exit_status == 1


def test_longest_chain_first(tmp_path: Path) -> None:
    # 'x' heads a long chain, 'y' is a lone layer: with one worker, x starts first.
    plan = tree(tmp_path, {"x": None, "x1": "x", "x2": "x1", "y": None})
    levels = bottom_levels(plan, {"y": 100})
    assert levels["y"] == 100 and levels["x"] == 180
    rec = Recorder()
    Scheduler(plan, rec, jobs=1, durations={"y": 100}).run()
    assert rec.order[0] == "x"
    rec = Recorder()
    Scheduler(plan, rec, jobs=1, durations={"y": 1000}).run()
    assert rec.order[0] == "y"


def test_cancel_reports_what_finished(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"a": None, "b": "a", "c": "b"})

    class Slow(Recorder):
        def execute(self, lp, parents):
            if lp.layer == "b":
                sched.cancel("SIGTERM")
                raise Cancelled("b: stopped")
            return super().execute(lp, parents)

    sched = Scheduler(plan, Slow(), jobs=1)
    result = sched.run()
    st = {k: r.status for k, r in result.results.items()}
    assert st == {"a": "ok", "b": "cancelled", "c": "not-started"}
    assert result.exit_status == 143


def test_internal_errors_do_not_stop_siblings(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"a": None, "b": None})

    class Buggy(Recorder):
        def execute(self, lp, parents):
            if lp.layer == "a":
                raise KeyError("oops")
            return super().execute(lp, parents)

    result = Scheduler(plan, Buggy(), jobs=2).run()
    assert result.results["a"].status == "failed" and "internal error" in result.results["a"].error
    assert result.results["b"].status == "ok"


def test_plan_blocked_layers_block_descendants(tmp_path: Path) -> None:
    from imagegraph.plan import Action, Reason

    plan = tree(tmp_path, {"a": None, "b": "a", "c": None})
    plan.layers["a"].action = Action.BLOCKED
    plan.layers["a"].reasons = [Reason("parent-unavailable", "external parent x is unavailable")]
    rec = Recorder()
    result = Scheduler(plan, rec, jobs=2).run()
    st = {k: r.status for k, r in result.results.items()}
    assert st == {"a": "blocked", "b": "blocked", "c": "ok"} and rec.order == ["c"]
    assert "unavailable" in result.results["a"].error and result.exit_status == 1
