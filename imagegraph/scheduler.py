"""Executes a Plan: ordering, parallelism, priorities, keep-going and cancellation.

The scheduler knows nothing of buildah. It hands each pending layer to an
`Executor` (where a layer's work runs: this machine today, a Slurm job
later) once its parent has finished, and does the bookkeeping:

- up to `jobs` layers at once; among ready layers, the one with the longest
  remaining chain below it (weighted by recorded durations) starts first;
- a failure blocks only the failed layer's descendants; with `fail_fast`
  nothing new starts after the first failure;
- `cancel()` (Ctrl-C, SIGTERM) starts nothing new and lets running work end
  (the runner stops its commands), then reports what finished.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ImagegraphError
from .plan import Action, LayerPlan, Plan
from .redact import redact
from .runner import Cancelled

DEFAULT_BUILD_SECONDS = 60.0
DEFAULT_PUBLISH_SECONDS = 10.0


@dataclass
class LayerResult:
    layer: str
    action: Action
    status: str  # ok, up-to-date, failed, blocked, unknown, cancelled, not-started
    duration: float = 0.0
    error: str | None = None
    image_id: str | None = None
    image_ref: str | None = None
    published: list[dict] = field(default_factory=list)
    blocked_by: str | None = None
    log_file: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status in ("ok", "up-to-date")

    def to_json(self) -> dict:
        return {
            "name": self.layer,
            "action": str(self.action),
            "status": self.status,
            "duration": round(self.duration, 3),
            "error": redact(self.error) if self.error else None,
            "image_id": self.image_id,
            "image_ref": self.image_ref,
            "published": self.published,
            "blocked_by": self.blocked_by,
            "log_file": self.log_file,
        }


@dataclass
class RunResult:
    run_id: str
    started: float
    finished: float
    results: dict[str, LayerResult]
    cancelled: bool = False
    signal_name: str | None = None

    @property
    def failed(self) -> list[str]:
        return [k for k, r in self.results.items() if r.status in ("failed", "blocked", "unknown")]

    @property
    def exit_status(self) -> int:
        if self.cancelled:
            return 143 if self.signal_name == "SIGTERM" else 130
        return 1 if self.failed else 0

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
            "layers": [r.to_json() for r in self.results.values()],
        }


class Executor(Protocol):
    """Runs one layer's action. Raises on failure; returns a result with status 'ok'."""

    def execute(self, lp: LayerPlan, parents: dict[str, LayerResult]) -> LayerResult: ...


EventHook = Callable[[str, str, LayerResult | None], None]


def bottom_levels(plan: Plan, durations: dict[str, float]) -> dict[str, float]:
    """Length of the longest weighted chain from each layer to a leaf (itself included)."""
    g = plan.graph.graph.subgraph(plan.layers)
    levels: dict[str, float] = {}
    for lid in reversed(list(plan.layers)):
        lp = plan.layers[lid]
        if lp.action == Action.BUILD:
            w = durations.get(lid, DEFAULT_BUILD_SECONDS)
        elif lp.action == Action.PUBLISH:
            w = DEFAULT_PUBLISH_SECONDS
        else:
            w = 0.0
        levels[lid] = w + max((levels[c] for c in g.successors(lid)), default=0.0)
    return levels


class Scheduler:
    def __init__(
        self,
        plan: Plan,
        executor: Executor,
        *,
        jobs: int = 1,
        fail_fast: bool = False,
        durations: dict[str, float] | None = None,
        on_event: EventHook | None = None,
        run_id: str = "",
    ):
        self.plan = plan
        self.executor = executor
        self.jobs = max(1, jobs)
        self.fail_fast = fail_fast
        self.durations = durations or {}
        self.on_event = on_event or (lambda kind, layer, result: None)
        self.run_id = run_id
        self._cancel = threading.Event()
        self.signal_name: str | None = None

    def cancel(self, signal_name: str | None = None) -> None:
        self.signal_name = self.signal_name or signal_name
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> RunResult:
        plan = self.plan
        started = time.time()
        results: dict[str, LayerResult] = {}
        levels = bottom_levels(plan, self.durations)
        g = plan.graph.graph.subgraph(plan.layers)
        waiting = {lid: set(g.predecessors(lid)) for lid in plan.layers}
        ready: list[tuple[float, str]] = []
        failed_any = False

        def push_ready(lid: str) -> None:
            heapq.heappush(ready, (-levels[lid], lid))

        def finish(lid: str, res: LayerResult) -> None:
            nonlocal failed_any
            results[lid] = res
            self.on_event("finish", lid, res)
            if res.status == "cancelled":
                return  # descendants are reported as not started, not as blocked
            if not res.succeeded:
                failed_any = failed_any or res.status == "failed"
                for d in sorted(plan.graph.descendants(lid) & set(plan.layers)):
                    if d not in results:
                        results[d] = LayerResult(
                            d,
                            plan.layers[d].action,
                            "blocked",
                            blocked_by=lid,
                            error=f"blocked by {lid} ({res.status})",
                        )
                        self.on_event("finish", d, results[d])
                return
            for c in g.successors(lid):
                waiting[c].discard(lid)
                if not waiting[c] and c not in results:
                    push_ready(c)

        for lid, deps in waiting.items():
            if not deps:
                push_ready(lid)

        running: dict[Future, str] = {}
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="layer") as pool:
            while ready or running:
                stop_starting = self.cancelled or (self.fail_fast and failed_any)
                while ready and not stop_starting:
                    _, lid = heapq.heappop(ready)
                    if lid in results:
                        continue
                    lp = plan.layers[lid]
                    if lp.action in (Action.BLOCKED, Action.UNKNOWN):  # the plan knows it cannot go on
                        why = "; ".join(r.message for r in lp.reasons)
                        finish(lid, LayerResult(lid, lp.action, str(lp.action), error=why))
                        continue
                    if not lp.pending:
                        finish(lid, LayerResult(lid, lp.action, "up-to-date", image_id=lp.image_id))
                        continue
                    if len(running) >= self.jobs:
                        push_ready(lid)
                        break
                    parents = {p: results[p] for p in g.predecessors(lid)}
                    self.on_event("start", lid, None)
                    running[pool.submit(self._execute, lp, parents)] = lid
                if not running:
                    break
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    lid = running.pop(fut)
                    finish(lid, fut.result())
        # Whatever never started (cancel, fail-fast) is reported as such.
        for lid, lp in plan.layers.items():
            if lid not in results:
                status = (
                    "not-started"
                    if lp.pending or lp.action in (Action.BLOCKED, Action.UNKNOWN)
                    else "up-to-date"
                )
                results[lid] = LayerResult(lid, lp.action, status)
        ordered = {lid: results[lid] for lid in plan.layers}
        return RunResult(self.run_id, started, time.time(), ordered, self.cancelled, self.signal_name)

    def _execute(self, lp: LayerPlan, parents: dict[str, LayerResult]) -> LayerResult:
        t0 = time.monotonic()
        try:
            res = self.executor.execute(lp, parents)
            res.duration = res.duration or (time.monotonic() - t0)
            return res
        except Cancelled as exc:
            return LayerResult(
                lp.layer,
                lp.action,
                "cancelled",
                time.monotonic() - t0,
                error=str(exc),
                log_file=getattr(exc, "log_file", None),
            )
        except ImagegraphError as exc:
            return LayerResult(
                lp.layer,
                lp.action,
                "failed",
                time.monotonic() - t0,
                error=str(exc),
                log_file=getattr(exc, "log_file", None),
            )
        except Exception as exc:  # a bug must not take the other layers down
            return LayerResult(
                lp.layer,
                lp.action,
                "failed",
                time.monotonic() - t0,
                error=f"internal error: {type(exc).__name__}: {exc}",
            )


def run_plan(plan: Plan, executor: Executor, **kw) -> RunResult:
    return Scheduler(plan, executor, **kw).run()
