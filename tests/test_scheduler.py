"""imagegraph/scheduler.py with a recording fake executor (no buildah)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.errors import BuildError
from imagegraph.graph import build_graph
from imagegraph.plan import StaticInventory, make_plan
from imagegraph.project import load_project
from imagegraph.runner import Cancelled
from imagegraph.scheduler import Scheduler, TaskResult, bottom_levels, task_levels
from imagegraph.state import State
from imagegraph.tasks import TaskKind

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
    """A fake executor: records the order and overlap of build tasks, fails the layers named.

    Violations are collected, not asserted in the worker thread (where the
    scheduler would turn them into a failed task); `check()` asserts them.
    """

    build_slots = 1

    def __init__(self, seconds: dict[str, float] | None = None, fail: set[str] | None = None):
        self.seconds = seconds or {}
        self.fail = fail or set()
        self.order: list[str] = []
        self.running = 0
        self.peak = 0
        self.violations: list[str] = []
        self.lock = threading.Lock()

    def prepare(self, plan, tasks) -> None:
        self.prepared = [t.id for t in tasks]

    def cancel(self) -> None:
        pass

    def run_task(self, task, needs):
        if task.kind != TaskKind.BUILD:
            return TaskResult(task.id, task.layer, task.kind)
        return self.execute(task, needs)

    def execute(self, task, needs):
        with self.lock:
            self.order.append(task.layer)
            self.running += 1
            self.peak = max(self.peak, self.running)
            for dep in task.after:
                if dep not in needs or needs[dep].status != "ok":
                    self.violations.append(f"{task.id} started before {dep} succeeded")
        try:
            time.sleep(self.seconds.get(task.layer, 0.01))
            if task.layer in self.fail:
                raise BuildError(task.layer, "cmds[0]", "exit 1", ["boom"])
            return TaskResult(task.id, task.layer, task.kind, image_id="sha256:" + task.layer)
        finally:
            with self.lock:
                self.running -= 1

    def check(self) -> None:
        assert self.violations == []


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
    rec.check()
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
    # Each layer builds (y: 100 s recorded, others 60 s by default), then pushes (10 s by default).
    assert levels["y"] == 110 and levels["x"] == 190
    rec = Recorder()
    Scheduler(plan, rec, jobs=1, durations={"y": 100}).run()
    assert rec.order[0] == "x"
    rec = Recorder()
    Scheduler(plan, rec, jobs=1, durations={"y": 1000}).run()
    assert rec.order[0] == "y"


def test_cancel_reports_what_finished(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"a": None, "b": "a", "c": "b"})

    class Slow(Recorder):
        def execute(self, task, needs):
            if task.layer == "b":
                sched.cancel("SIGTERM")
                raise Cancelled("b: stopped")
            return super().execute(task, needs)

    sched = Scheduler(plan, Slow(), jobs=1)
    result = sched.run()
    st = {k: r.status for k, r in result.results.items()}
    assert st == {"a": "ok", "b": "cancelled", "c": "not-started"}
    assert result.exit_status == 143


def test_internal_errors_do_not_stop_siblings(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"a": None, "b": None})

    class Buggy(Recorder):
        def execute(self, task, needs):
            if task.layer == "a":
                raise KeyError("oops")
            return super().execute(task, needs)

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


# ------------------------------------------------------------------ task-level behaviour


class TaskRecorder:
    """A fake executor over every task kind: timestamps, peak use per resource class, failures by task id."""

    def __init__(self, seconds: dict[str, float] | None = None, fail: set[str] | None = None, build_slots=1):
        self.seconds = seconds or {}
        self.fail = fail or set()
        self.build_slots = build_slots
        self.spans: dict[str, tuple[float, float]] = {}
        self.use: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.kind_use: dict[str, int] = {}
        self.kind_peak: dict[str, int] = {}
        self.violations: list[str] = []
        self.cancelled = False
        self.lock = threading.Lock()

    def prepare(self, plan, tasks) -> None:
        pass

    def cancel(self) -> None:
        self.cancelled = True

    def run_task(self, task, needs):
        res = str(task.resource) if task.kind != TaskKind.BUILD or self.build_slots else "unlimited"
        with self.lock:
            for dep in task.after:
                if dep not in needs or needs[dep].status != "ok":
                    self.violations.append(f"{task.id} started before {dep} succeeded")
            self.use[res] = self.use.get(res, 0) + 1
            self.peak[res] = max(self.peak.get(res, 0), self.use[res])
            kind = str(task.kind)
            self.kind_use[kind] = self.kind_use.get(kind, 0) + 1
            self.kind_peak[kind] = max(self.kind_peak.get(kind, 0), self.kind_use[kind])
        t0 = time.monotonic()
        try:
            time.sleep(self.seconds.get(task.id, self.seconds.get(str(task.kind), 0.005)))
            if task.id in self.fail:
                raise BuildError(task.layer, str(task.kind), "exit 1", ["boom"])
            return TaskResult(task.id, task.layer, task.kind, image_id=f"sha256:{task.layer}")
        finally:
            with self.lock:
                self.use[res] -= 1
                self.kind_use[str(task.kind)] -= 1
                self.spans[task.id] = (t0, time.monotonic())


def test_failed_push_does_not_block_children(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"base": None, "compute": "base"})
    rec = TaskRecorder(fail={"base:push"})
    result = Scheduler(plan, rec, jobs=2).run()
    rec_status = {t.task: str(t.status) for t in result.tasks}
    assert rec_status == {
        "base:build": "ok",
        "base:push": "failed",
        "compute:build": "ok",
        "compute:push": "ok",
    }
    assert {k: r.status for k, r in result.results.items()} == {"base": "failed", "compute": "ok"}
    assert "push" in result.results["base"].error and result.exit_status == 1
    assert rec.violations == []


def test_failed_build_blocks_own_publishes_and_child_tasks(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"base": None, "compute": "base", "other": None})
    result = Scheduler(plan, TaskRecorder(fail={"base:build"}), jobs=2).run()
    st = {t.task: (str(t.status), t.blocked_by) for t in result.tasks}
    assert st["base:push"] == ("blocked", "base:build")
    assert st["compute:build"] == ("blocked", "base:build")
    assert st["compute:push"][0] == "blocked"
    assert st["other:push"] == ("ok", None)
    assert result.results["compute"].status == "blocked" and result.results["compute"].blocked_by == "base"


def test_a_child_pushes_after_its_parents_push_ends_whatever_its_outcome(tmp_path: Path) -> None:
    """Two pushes of one chain at once would compress and send the parent's layers twice (the
    registry has neither yet); a failed parent push still lets the child push its own blobs."""
    plan = tree(tmp_path, {"base": None, "compute": "base", "other": None})
    assert plan.layers["compute"].tasks[-1].waits_for == ("base:push",)
    assert all(not t.waits_for for t in plan.layers["other"].tasks)
    for fail in (set(), {"base:push"}):
        rec = TaskRecorder({"base:push": 0.3, "build": 0.01}, fail=fail)
        result = Scheduler(plan, rec, jobs=3, uploads=2).run()
        st = {t.task: str(t.status) for t in result.tasks}
        assert st["compute:push"] == "ok" and rec.violations == []
        assert rec.spans["compute:push"][0] >= rec.spans["base:push"][1]
        # the unrelated layer's push is not held back
        assert rec.spans["other:push"][0] < rec.spans["base:push"][1]


def test_child_builds_while_parent_uploads(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"base": None, "compute": "base"})
    rec = TaskRecorder({"base:push": 0.4, "build": 0.05})
    Scheduler(plan, rec, jobs=1).run()
    assert rec.spans["compute:build"][0] < rec.spans["base:push"][1]


def test_upload_pool_and_build_slots_are_separate(tmp_path: Path) -> None:
    plan = tree(tmp_path, {f"l{i}": None for i in range(6)})
    rec = TaskRecorder({"build": 0.05, "push": 0.05})
    Scheduler(plan, rec, jobs=3, uploads=2).run()
    assert rec.peak["build"] == 3 and rec.peak["upload"] == 2 and rec.violations == []


def test_one_squashfs_at_a_time_while_builds_go_on(tmp_path: Path) -> None:
    """Each mksquashfs uses every core: a second at once would only delay the first one's upload.
    Builds are not held behind a waiting squashfs task."""
    root = tmp_path / "layers"
    for n in ("a", "b", "c"):
        write(root, f"{n}.yaml", layer(n, None) + "  publish_s3: 'http://127.0.0.1:9'\n  s3_bucket: boot\n")
    plan = make_plan(
        build_graph(load_project(root)),
        State(tmp_path / "s.db"),
        StaticInventory(reachable=False),
        offline=True,
    )
    # `a` builds fast and squashes first; `b` and `c` build while it squashes, and then wait their turn.
    rec = TaskRecorder({"squashfs": 0.15, "a:build": 0.01, "build": 0.05})
    result = Scheduler(plan, rec, jobs=3, uploads=3).run()
    assert result.exit_status == 0 and rec.violations == []
    assert rec.kind_peak["squashfs"] == 1 and rec.kind_peak["build"] == 3
    squash = sorted(rec.spans[f"{n}:squashfs"] for n in "abc")
    assert all(a[1] <= b[0] for a, b in zip(squash, squash[1:], strict=False))  # one after another
    assert all(rec.spans[f"{n}:build"][1] < squash[0][1] for n in "bc")  # built meanwhile
    assert result.limits["squashfs"] == 1
    rec = TaskRecorder({"squashfs": 0.1, "build": 0.01})
    Scheduler(plan, rec, jobs=3, uploads=3, squashfs_at_once=2).run()
    assert rec.kind_peak["squashfs"] == 2


def test_builds_elsewhere_hold_no_build_slot(tmp_path: Path) -> None:
    # A build service with slots=None (a batch system): waiting builds do not count against -j.
    plan = tree(tmp_path, {f"l{i}": None for i in range(4)})
    rec = TaskRecorder({"build": 0.1}, build_slots=None)
    Scheduler(plan, rec, jobs=1).run()
    assert rec.peak["unlimited"] == 4


def test_fail_fast_cancels_the_executor(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"a": None, "b": None})
    rec = TaskRecorder(fail={"a:build"})
    result = Scheduler(plan, rec, jobs=1, fail_fast=True, durations={"a": 100}).run()
    assert rec.cancelled and result.results["b"].status == "not-started"
    assert {t.task: str(t.reason) for t in result.tasks if t.status == "not-started"} == {
        "b:build": "fail-fast",
        "b:push": "fail-fast",
    }


class Reports:
    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def task_started(self, task):
        self.calls.append(("started", task.id))

    def task_finished(self, task, result):
        self.calls.append(("finished", task.id))

    def task_failed(self, task, result):
        self.calls.append(("failed", task.id))

    def task_skipped(self, task, result):
        self.calls.append(("skipped", task.id))

    def layer_finished(self, result):
        self.calls.append(("layer", result.layer))

    def run_finished(self, result):
        self.calls.append(("run", result.run_id))


def test_reporter_hears_every_task_once(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"a": None, "b": "a", "c": None})
    rep = Reports()
    Scheduler(plan, TaskRecorder(fail={"a:build"}), jobs=2, reporter=rep, run_id="r1").run()
    layers = [(i, c[1]) for i, c in enumerate(rep.calls) if c[0] == "layer"]
    assert sorted(name for _, name in layers) == ["a", "b", "c"]
    # A layer is reported once its last task has ended.
    for i, name in layers:
        assert all(
            rep.calls.index(c) < i for c in rep.calls if c[0] != "layer" and c[1].startswith(f"{name}:")
        )
    ends = [c for c in rep.calls if c[0] not in ("started", "layer")]
    assert sorted(t for _, t in ends[:-1]) == sorted(t.id for lp in plan.layers.values() for t in lp.tasks)
    assert ("failed", "a:build") in ends and ("skipped", "b:build") in ends and ends[-1] == ("run", "r1")
    assert {t for k, t in rep.calls if k == "started"} == {"a:build", "c:build", "c:push"}


@st.composite
def runs(draw):
    n = draw(st.integers(1, 8))
    edges: dict[str, str | None] = {}
    for i in range(n):
        edges[f"l{i}"] = draw(st.sampled_from([None, *edges])) if edges else None
    fail = draw(
        st.sets(st.sampled_from([f"l{i}:{k}" for i in range(n) for k in ("build", "push")]), max_size=3)
    )
    return edges, fail, draw(st.integers(1, 3)), draw(st.integers(1, 2))


@settings(max_examples=30, deadline=None)
@given(run=runs())
def test_scheduler_properties(tmp_path_factory, run) -> None:
    edges, fail, jobs, uploads = run
    plan = tree(tmp_path_factory.mktemp("s"), edges)
    rec = TaskRecorder({"build": 0.002, "push": 0.002}, fail=fail)
    result = Scheduler(plan, rec, jobs=jobs, uploads=uploads).run()
    assert rec.violations == []
    assert rec.peak.get("build", 0) <= jobs and rec.peak.get("upload", 0) <= uploads
    by_id = {t.task: t for t in result.tasks}
    tasks = {t.id: t for lp in plan.layers.values() for t in lp.tasks}
    assert set(by_id) == set(tasks)

    def failed_below(tid: str) -> bool:
        return any(a in fail or failed_below(a) for a in tasks[tid].after)

    for tid, t in by_id.items():
        want = "blocked" if failed_below(tid) else ("failed" if tid in fail else "ok")
        assert str(t.status) == want, tid
        assert (tid in rec.spans) == (want != "blocked")
        for w in tasks[tid].waits_for:  # ordering only: after its end, whatever its outcome
            if tid in rec.spans and w in rec.spans:
                assert rec.spans[tid][0] >= rec.spans[w][1], (tid, w)
    for lid, r in result.results.items():
        own = [by_id[t.id] for t in plan.layers[lid].tasks]
        if any(t.status == "failed" for t in own):
            assert r.status == "failed"
        elif any(t.status == "blocked" for t in own):
            assert r.status == "blocked"
        else:
            assert r.status == "ok"
    assert result.exit_status == (1 if fail else 0)


def test_recorded_task_durations_weigh_priorities(tmp_path: Path) -> None:
    # Two lone layers; 'a' pushed slowly last time, so with one build slot it goes first.
    plan = tree(tmp_path, {"a": None, "b": None})
    levels = task_levels([t for lp in plan.layers.values() for t in lp.tasks], {"a:push": 500})
    assert levels["a:build"] == 560 and levels["b:build"] == 70
    rec = Recorder()
    Scheduler(plan, rec, jobs=1, durations={"a:push": 500, "b": 100}).run()
    assert rec.order == ["a", "b"]
    rec = Recorder()
    Scheduler(plan, rec, jobs=1, durations={"b": 1000}).run()
    assert rec.order == ["b", "a"]


def test_prepare_failure_fails_the_builds_only(tmp_path: Path) -> None:
    from imagegraph.errors import BuildError
    from imagegraph.plan import Action

    plan = tree(tmp_path, {"a": None, "b": "a", "c": None})
    # 'c' needs only publishing (its image exists): its push still runs.
    plan.layers["c"].tasks = [t for t in plan.layers["c"].tasks if t.kind != TaskKind.BUILD]
    plan.layers["c"].tasks = [dataclasses.replace(t, after=()) for t in plan.layers["c"].tasks]
    plan.layers["c"].action = Action.PUBLISH

    class Refused(TaskRecorder):
        def prepare(self, plan, tasks):
            raise BuildError("a", "submit", "sbatch: error: Batch job submission failed")

    rec = Refused()
    result = Scheduler(plan, rec, jobs=2).run()
    st = {t.task: str(t.status) for t in result.tasks}
    assert st == {
        "a:build": "failed",
        "a:push": "blocked",
        "b:build": "blocked",
        "b:push": "blocked",
        "c:push": "ok",
    }
    assert "submission failed" in result.results["a"].error and set(rec.spans) == {"c:push"}
