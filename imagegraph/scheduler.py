"""Executes a Plan's task graph: ordering, resource classes, priorities, keep-going and cancellation.

The scheduler knows nothing of buildah. It takes the tasks of every layer
(`LayerPlan.tasks`, see tasks.py), hands each to an `Executor` once the
tasks it needs have succeeded, and does the bookkeeping:

- resource classes: `build` tasks (and `squashfs`) share `jobs` slots, a
  build holding `Executor.build_slots` of them (None: builds run elsewhere
  and hold none), and at most `squashfs_at_once` squashfs tasks run at once
  (each mksquashfs uses every core); `upload` tasks share `uploads`; `boot`
  tasks `boot_tests`; `none` tasks are not limited;
- among ready tasks of a class, the one with the longest remaining chain of
  tasks below it (builds weighted by recorded durations) starts first;
- a failure blocks only the tasks that need its result (a failed upload
  blocks nothing of its children); with `fail_fast` nothing new starts
  after the first failure;
- `cancel()` (Ctrl-C, SIGTERM) starts nothing new and lets running work end
  (the runner stops its commands), then reports what finished.

Progress goes to a `Reporter` (reporting.py) by named calls; results are
`TaskResult`s, folded into one `LayerResult` per layer (the run record's
shape) that carries its tasks as detail.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from .errors import ImagegraphError
from .plan import Action, Plan
from .redact import redact
from .reporting import NullReporter, Reporter
from .runner import Cancelled
from .tasks import DEFAULT_SECONDS, Resource, SkipReason, Task, TaskKind, TaskStatus

DEFAULT_UPLOADS = 2
DEFAULT_BOOT_TESTS = 1
# mksquashfs runs with every core (`-processors`): a second one at once only shares them, and makes
# the first one's upload start later (bench/README.md: the fresh chain's two 157 MB SquashFS).
DEFAULT_SQUASHFS_AT_ONCE = 1


class LayerStatus(StrEnum):
    """A layer's status in run results, folded from its tasks'."""

    OK = "ok"
    UP_TO_DATE = "up-to-date"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"
    NOT_STARTED = "not-started"
    UNKNOWN = "unknown"  # the plan could not read what it needed (inventory.py): nothing was done


@dataclass
class TaskResult:
    task: str  # task id, `<layer>:<kind>`
    layer: str
    kind: TaskKind
    status: TaskStatus = TaskStatus.OK
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    reason: SkipReason | None = None
    blocked_by: str | None = None  # the task whose failure blocked this one
    image_id: str | None = None
    image_ref: str | None = None
    published: list[dict] = field(default_factory=list)
    log_file: str | None = None
    detail: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        if self.started is None or self.finished is None:
            return 0.0
        return self.finished - self.started

    def to_json(self) -> dict:
        return {
            "id": self.task,
            "layer": self.layer,
            "kind": str(self.kind),
            "status": str(self.status),
            "started": self.started,
            "finished": self.finished,
            "duration": round(self.duration, 3),
            "error": redact(self.error) if self.error else None,
            "reason": str(self.reason) if self.reason else None,
            "blocked_by": self.blocked_by,
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass
class LayerResult:
    layer: str
    action: Action
    status: str  # ok, up-to-date, failed, blocked, unknown, cancelled, not-started
    duration: float = 0.0
    error: str | None = None
    image_id: str | None = None
    image_ref: str | None = None
    built_at: str | None = None  # ISO 8601 UTC time the image was committed (this run built it)
    published: list[dict] = field(default_factory=list)
    blocked_by: str | None = None
    log_file: str | None = None
    tasks: list[TaskResult] = field(default_factory=list)
    # A multi-arch layer's fan-in (its first node): {"status", "error", "blocked_by"}; None without one.
    index: dict | None = None

    @property
    def succeeded(self) -> bool:
        return self.status in (LayerStatus.OK, LayerStatus.UP_TO_DATE)

    def to_json(self) -> dict:
        return {
            "name": self.layer,
            "action": str(self.action),
            "status": self.status,
            "duration": round(self.duration, 3),
            "error": redact(self.error) if self.error else None,
            "image_id": self.image_id,
            "image_ref": self.image_ref,
            "built_at": self.built_at,
            "published": self.published,
            "blocked_by": self.blocked_by,
            "log_file": self.log_file,
            "tasks": [t.to_json() for t in self.tasks],
            **({"index": self.index} if self.index is not None else {}),
        }


@dataclass
class RunResult:
    run_id: str
    started: float
    finished: float
    results: dict[str, LayerResult]
    cancelled: bool = False
    signal_name: str | None = None
    limits: dict[str, int] = field(default_factory=dict)  # slots per resource class

    @property
    def failed(self) -> list[str]:
        return [
            k
            for k, r in self.results.items()
            if r.status in (LayerStatus.FAILED, LayerStatus.BLOCKED, LayerStatus.UNKNOWN)
        ]

    @property
    def exit_status(self) -> int:
        if self.cancelled:
            return {"SIGTERM": 143, "SIGHUP": 129}.get(self.signal_name or "", 130)
        return 1 if self.failed else 0

    @property
    def tasks(self) -> list[TaskResult]:
        return [t for r in self.results.values() for t in r.tasks]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "started": self.started,
            "finished": self.finished,
            "duration": round(self.finished - self.started, 3),
            "cancelled": self.cancelled,
            "exit_status": self.exit_status,
            "summary": self.counts(),
            "limits": self.limits,
            "layers": [r.to_json() for r in self.results.values()],
        }


class Executor(Protocol):
    """Where tasks run. `run_task` raises on failure and returns a result on success.

    `needs` holds the results of the tasks named in `task.after`.
    `build_slots` is the number of `build` slots one build task holds (None:
    builds are not limited here).
    """

    build_slots: int | None

    def prepare(self, plan: Plan, tasks: list[Task]) -> None: ...

    def run_task(self, task: Task, needs: dict[str, TaskResult]) -> TaskResult: ...

    def cancel(self) -> None: ...


def task_weight(task: Task, durations: dict[str, float]) -> float:
    """Seconds a task is expected to take: a build's recorded mean, else the kind's default."""
    if task.kind == TaskKind.BUILD:
        return durations.get(task.layer, DEFAULT_SECONDS[TaskKind.BUILD])
    return durations.get(task.id, DEFAULT_SECONDS[task.kind])


def plan_tasks(plan: Plan) -> list[Task]:
    """Every task of the plan, in dependency order (layers are topological, and so is each layer's list).

    A multi-arch layer's `index` task waits for its later arches' pushes, and nothing waits for it: last.
    """
    tasks = [t for lp in plan.layers.values() for t in lp.tasks]
    return [t for t in tasks if t.kind != TaskKind.INDEX] + [t for t in tasks if t.kind == TaskKind.INDEX]


def task_levels(tasks: list[Task], durations: dict[str, float]) -> dict[str, float]:
    """Length of the longest weighted chain of tasks from each task to the end (itself included)."""
    ids = {t.id for t in tasks}
    below: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for a in t.after:
            if a in ids:
                below[a].append(t.id)
    levels: dict[str, float] = {}
    for t in reversed(tasks):
        levels[t.id] = task_weight(t, durations) + max((levels[c] for c in below[t.id]), default=0.0)
    return levels


def bottom_levels(plan: Plan, durations: dict[str, float]) -> dict[str, float]:
    """Per layer: the longest weighted task chain starting at its first task (0 without tasks)."""
    levels = task_levels(plan_tasks(plan), durations)
    return {lid: max((levels[t.id] for t in lp.tasks), default=0.0) for lid, lp in plan.layers.items()}


class Scheduler:
    def __init__(
        self,
        plan: Plan,
        executor: Executor,
        *,
        jobs: int = 1,
        uploads: int | None = None,
        boot_tests: int | None = None,
        fail_fast: bool = False,
        durations: dict[str, float] | None = None,
        reporter: Reporter | None = None,
        run_id: str = "",
        squashfs_at_once: int | None = None,
    ):
        self.plan = plan
        self.executor = executor
        self.limits = {
            Resource.BUILD: max(1, jobs),
            Resource.UPLOAD: max(1, uploads or DEFAULT_UPLOADS),
            Resource.BOOT: max(1, boot_tests or DEFAULT_BOOT_TESTS),
        }
        self.squashfs_at_once = max(1, squashfs_at_once or DEFAULT_SQUASHFS_AT_ONCE)
        self.fail_fast = fail_fast
        self.durations = durations or {}
        self.reporter: Reporter = reporter or NullReporter()
        self.run_id = run_id
        self._cancel = threading.Event()
        self.signal_name: str | None = None

    def cancel(self, signal_name: str | None = None) -> None:
        self.signal_name = self.signal_name or signal_name
        self._cancel.set()
        self.executor.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _cost(self, task: Task) -> int:
        """Slots of its resource class a task holds (0: not limited)."""
        if task.resource == Resource.NONE:
            return 0
        if task.kind == TaskKind.BUILD:
            slots = self.executor.build_slots
            return 0 if slots is None else min(slots, self.limits[Resource.BUILD])
        return 1

    def run(self) -> RunResult:
        plan = self.plan
        started = time.time()
        tasks = {t.id: t for t in plan_tasks(plan)}
        order = list(tasks)
        levels = task_levels(list(tasks.values()), self.durations)
        below: dict[str, list[str]] = {tid: [] for tid in tasks}
        waiting: dict[str, int] = {}
        # `waits_for` orders without needing: released by its task's end, whatever the outcome.
        after_end: dict[str, list[str]] = {tid: [] for tid in tasks}
        for t in tasks.values():
            deps = [a for a in t.after if a in tasks]
            soft = [w for w in t.waits_for if w in tasks and w not in deps]
            waiting[t.id] = len(deps) + len(soft)
            for a in deps:
                below[a].append(t.id)
            for w in soft:
                after_end[w].append(t.id)
        results: dict[str, TaskResult] = {}
        ready: dict[Resource, list[tuple[float, int, str]]] = {r: [] for r in Resource}
        in_use = dict.fromkeys(Resource, 0)
        done_q: queue.SimpleQueue[tuple[str, TaskResult]] = queue.SimpleQueue()
        running: set[str] = set()
        squashing = 0  # squashfs tasks running
        failed_any = False

        queued: set[str] = set()

        def make_ready(tid: str) -> None:
            if tid not in queued:
                queued.add(tid)
                heapq.heappush(ready[tasks[tid].resource], (-levels[tid], order_index[tid], tid))

        def ended(tid: str) -> None:
            for c in after_end[tid]:
                waiting[c] -= 1
                if waiting[c] == 0 and c not in results:
                    make_ready(c)

        left = {lid: len(lp.tasks) for lid, lp in plan.layers.items()}

        def layer_done(lid: str) -> None:
            left[lid] -= 1
            if left[lid] == 0:
                self.reporter.layer_finished(self._layer_result(lid, results))

        def skip(tid: str, status: TaskStatus, reason: SkipReason, by: str | None, error: str | None) -> None:
            t = tasks[tid]
            res = TaskResult(tid, t.layer, t.kind, status, reason=reason, blocked_by=by, error=error)
            results[tid] = res
            self.reporter.task_skipped(t, res)
            layer_done(t.layer)
            ended(tid)

        def block_below(tid: str, reason: SkipReason, error: str) -> None:
            stack = list(below[tid])
            while stack:
                d = stack.pop()
                if d in results:
                    continue
                skip(d, TaskStatus.BLOCKED, reason, tid, error)
                stack.extend(below[d])

        def finish(tid: str, res: TaskResult) -> None:
            nonlocal failed_any
            results[tid] = res
            t = tasks[tid]
            ended(tid)
            if res.status == TaskStatus.OK:
                self.reporter.task_finished(t, res)
                layer_done(t.layer)
                for c in below[tid]:
                    waiting[c] -= 1
                    if waiting[c] == 0 and c not in results:
                        make_ready(c)
                return
            self.reporter.task_failed(t, res)
            layer_done(t.layer)
            if res.status == TaskStatus.CANCELLED:
                return  # what needs it is reported as not started, not as blocked
            failed_any = True
            block_below(tid, SkipReason.DEPENDENCY_FAILED, f"blocked by {tid} ({res.status})")
            if self.fail_fast:
                self.executor.cancel()

        order_index = {tid: i for i, tid in enumerate(order)}
        for lid, lp in plan.layers.items():
            if not lp.tasks:  # up to date (or blocked with nothing to run): finished before anything starts
                self.reporter.layer_finished(self._layer_result(lid, results))
        # Layers the plan already knows cannot build: their tasks, and what needs them, are blocked.
        for lid, lp in plan.layers.items():
            if lp.action == Action.BLOCKED:
                why = "; ".join(r.message for r in lp.reasons)
                for t in lp.tasks:
                    if t.id not in results:
                        skip(t.id, TaskStatus.BLOCKED, SkipReason.PLAN_BLOCKED, None, why)
                        block_below(t.id, SkipReason.PLAN_BLOCKED, f"blocked by {lid} (blocked)")
        try:
            self.executor.prepare(plan, [t for tid, t in tasks.items() if tid not in results])
        except ImagegraphError as exc:
            # Nothing could be handed to the build service (a batch system refused the jobs): the
            # builds fail with its reason; publish tasks of layers that need no build still run.
            for tid, t in tasks.items():
                if t.kind == TaskKind.BUILD and tid not in results:
                    finish(tid, TaskResult(tid, t.layer, t.kind, TaskStatus.FAILED, error=str(exc)))
        for tid in order:
            if tid not in results and waiting[tid] == 0:
                make_ready(tid)

        def work(t: Task, needs: dict[str, TaskResult]) -> None:
            done_q.put((t.id, self._execute(t, needs)))

        while True:
            if not (self.cancelled or (self.fail_fast and failed_any)):
                for resource, heap in ready.items():
                    limit = self.limits.get(resource)
                    held: list[tuple[float, int, str]] = []  # squashfs tasks over their own limit
                    while heap:
                        tid = heap[0][2]
                        t = tasks[tid]
                        if t.kind == TaskKind.SQUASHFS and squashing >= self.squashfs_at_once:
                            held.append(heapq.heappop(heap))  # the builds below it may still start
                            continue
                        cost = self._cost(t)
                        if cost and limit is not None and in_use[resource] + cost > limit:
                            break
                        heapq.heappop(heap)
                        in_use[resource] += cost
                        squashing += t.kind == TaskKind.SQUASHFS
                        running.add(tid)
                        self.reporter.task_started(t)
                        needs = {a: results[a] for a in t.after if a in results}
                        threading.Thread(
                            target=work, args=(t, needs), name=f"task-{tid}", daemon=True
                        ).start()
                    for item in held:
                        heapq.heappush(heap, item)
            if not running:
                break
            try:
                tid, res = done_q.get(timeout=0.5)
            except queue.Empty:
                continue
            running.discard(tid)
            in_use[tasks[tid].resource] -= self._cost(tasks[tid])
            squashing -= tasks[tid].kind == TaskKind.SQUASHFS
            finish(tid, res)
        reason = SkipReason.CANCELLED if self.cancelled else SkipReason.FAIL_FAST
        for tid in order:
            if tid not in results:
                skip(tid, TaskStatus.NOT_STARTED, reason, None, None)
        layers = {lid: self._layer_result(lid, results) for lid in plan.layers}
        limits = {**{str(k): v for k, v in self.limits.items()}, "squashfs": self.squashfs_at_once}
        result = RunResult(
            self.run_id, started, time.time(), layers, self.cancelled, self.signal_name, limits
        )
        self.reporter.run_finished(result)
        return result

    def _layer_result(self, lid: str, results: dict[str, TaskResult]) -> LayerResult:
        """One layer's result from its tasks' results (the run record's per-layer shape)."""
        lp = self.plan.layers[lid]
        trs = [results[t.id] for t in lp.tasks]
        ran = [r for r in trs if r.started is not None]
        duration = (max(r.finished or 0 for r in ran) - min(r.started or 0 for r in ran)) if ran else 0.0
        build = next((r for r in trs if r.kind == TaskKind.BUILD), None)
        published = [p for r in trs for p in r.published]
        order = ("registry", "local", "s3", "dir")  # then anything else (an SBOM beside them)
        published.sort(key=lambda p: order.index(p["target"]) if p.get("target") in order else len(order))
        out = LayerResult(
            lid,
            lp.action,
            LayerStatus.OK,
            duration=duration,
            image_id=(build.image_id if build and build.image_id else None) or lp.image_id,
            image_ref=build.image_ref if build else None,
            built_at=build.detail.get("built_at") if build else None,
            published=published,
            log_file=next((r.log_file for r in reversed(ran) if r.log_file), None),
            tasks=trs,
        )
        # The index task fans in every arch: its outcome is reported beside this node's own, so a
        # node whose build and push succeeded is not `blocked` because another arch failed.
        idx = next((r for r in trs if r.kind == TaskKind.INDEX), None)
        if idx is not None:
            out.index = {
                "status": str(idx.status),
                "error": redact(idx.error) if idx.error else None,
                "blocked_by": idx.blocked_by,
            }
            if idx.status == TaskStatus.BLOCKED:  # by another arch; the index failing is this node's own
                trs = [r for r in trs if r is not idx]
        statuses = {r.status for r in trs}
        failed = next((r for r in trs if r.status == TaskStatus.FAILED), None)
        if lp.action in (Action.BLOCKED, Action.UNKNOWN):
            out.status = LayerStatus.BLOCKED if lp.action == Action.BLOCKED else LayerStatus.UNKNOWN
            out.error = "; ".join(r.message for r in lp.reasons)
        elif not trs:
            out.status = LayerStatus.UP_TO_DATE
        elif failed is not None:
            out.status, out.error = LayerStatus.FAILED, failed.error
            out.log_file = failed.log_file or out.log_file
        elif TaskStatus.CANCELLED in statuses:
            cancelled = next(r for r in trs if r.status == TaskStatus.CANCELLED)
            out.status, out.error = LayerStatus.CANCELLED, cancelled.error
            out.log_file = cancelled.log_file or out.log_file
        elif TaskStatus.BLOCKED in statuses:
            blocked = next(r for r in trs if r.status == TaskStatus.BLOCKED)
            by = blocked.blocked_by.partition(":")[0] if blocked.blocked_by else None
            out.status, out.blocked_by = LayerStatus.BLOCKED, by
            out.error = f"blocked by {by} ({results[blocked.blocked_by].status})" if by else blocked.error
            if blocked.reason == SkipReason.PLAN_BLOCKED and blocked.error:
                out.error = blocked.error
        elif TaskStatus.NOT_STARTED in statuses:
            out.status = LayerStatus.NOT_STARTED
        return out

    def _execute(self, task: Task, needs: dict[str, TaskResult]) -> TaskResult:
        t0 = time.time()
        try:
            res = self.executor.run_task(task, needs)
            res.status = TaskStatus.OK
        except Cancelled as exc:
            res = TaskResult(
                task.id,
                task.layer,
                task.kind,
                TaskStatus.CANCELLED,
                error=str(exc),
                log_file=getattr(exc, "log_file", None),
            )
        except ImagegraphError as exc:
            res = TaskResult(
                task.id,
                task.layer,
                task.kind,
                TaskStatus.FAILED,
                error=str(exc),
                log_file=getattr(exc, "log_file", None),
            )
        except Exception as exc:  # a bug must not take the other tasks down
            res = TaskResult(
                task.id,
                task.layer,
                task.kind,
                TaskStatus.FAILED,
                error=f"internal error: {type(exc).__name__}: {exc}",
            )
        res.started, res.finished = t0, time.time()
        return res


def run_plan(plan: Plan, executor: Executor, **kw) -> RunResult:
    return Scheduler(plan, executor, **kw).run()


class NothingToRun:
    """The executor of a plan without a task: every layer up to date (or blocked or unknown
    before anything starts). Nothing is handed to it; it stands in for the local executor so
    that such a run is recorded without loading the build and publish side."""

    build_slots: int | None = None

    def prepare(self, plan: Plan, tasks: list[Task]) -> None:
        if tasks:
            raise ValueError(f"NothingToRun was given {len(tasks)} tasks")

    def run_task(self, task: Task, needs: dict[str, TaskResult]) -> TaskResult:
        raise AssertionError(f"NothingToRun cannot run {task.id}")

    def cancel(self) -> None:
        pass


def has_tasks(plan: Plan) -> bool:
    return any(lp.tasks for lp in plan.layers.values())


def record_run_without_tasks(
    plan: Plan,
    state: Any,
    *,
    state_dir: Path,
    run_id: str,
    command: str = "up",
    wait_lock: bool = False,
    reporter: Reporter | None = None,
    jobs: int = 1,
    uploads: int | None = None,
    boot_tests: int | None = None,
    squashfs_at_once: int | None = None,
) -> RunResult:
    """`run_up` for a plan without a task (`has_tasks` false): under the state lock, the run is
    started, its layers' results folded and recorded (state row, runs/, last-run.json) exactly as
    `run_up` records them (the same limits in the record), without the executor, its janitor of
    dead runs' working containers (`buildah containers`: the next run that builds removes them) or
    signal handlers (nothing runs)."""
    from .log import bind_run, get_logger
    from .reporting import LogReporter, Reporters, RunRecord
    from .statelock import StateLock

    if has_tasks(plan):
        raise ValueError("record_run_without_tasks: the plan has tasks; use executor.run_up")
    bind_run(run_id)
    with StateLock(state_dir, command, wait=wait_lock):
        sched = Scheduler(
            plan,
            NothingToRun(),
            jobs=jobs,
            uploads=uploads,
            boot_tests=boot_tests,
            squashfs_at_once=squashfs_at_once,
            reporter=Reporters(
                LogReporter(get_logger()), reporter, RunRecord(state, state_dir, plan, command)
            ),
            run_id=run_id,
        )
        state.start_run(run_id, command)
        return sched.run()
