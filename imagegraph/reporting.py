"""What a run tells as it goes: the `Reporter` protocol and the reporters of the core.

The scheduler calls a reporter by name, from its own thread, as tasks
start, finish, fail (or are cancelled) and are skipped (blocked by a failed
task, or never started), as each layer's last task ends (or at once for a
layer with nothing to do), and once when the run is over. Implemented here:
`LogReporter` (structlog events: the console or JSON-lines log) and
`RunRecord` (the state's run row, `runs/<run id>.json`, `last-run.json` and
`last-success.json`); the CLI's terminal progress is a third. `Reporters`
fans one call out to several.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .redact import redact_obj
from .statelock import atomic_write

if TYPE_CHECKING:
    from .plan import Plan
    from .scheduler import LayerResult, RunResult, TaskResult
    from .state import State
    from .tasks import Task


class Reporter(Protocol):
    def task_started(self, task: Task) -> None: ...

    def task_finished(self, task: Task, result: TaskResult) -> None: ...

    def task_failed(self, task: Task, result: TaskResult) -> None: ...

    def task_skipped(self, task: Task, result: TaskResult) -> None: ...

    def layer_finished(self, result: LayerResult) -> None: ...

    def run_finished(self, result: RunResult) -> None: ...


class NullReporter:
    """Tells nothing."""

    def task_started(self, task: Task) -> None:
        pass

    def task_finished(self, task: Task, result: TaskResult) -> None:
        pass

    def task_failed(self, task: Task, result: TaskResult) -> None:
        pass

    def task_skipped(self, task: Task, result: TaskResult) -> None:
        pass

    def layer_finished(self, result: LayerResult) -> None:
        pass

    def run_finished(self, result: RunResult) -> None:
        pass


class Reporters:
    """Several reporters as one, called in the order given."""

    def __init__(self, *reporters: Reporter | None):
        self.reporters = [r for r in reporters if r is not None]

    def task_started(self, task: Task) -> None:
        for r in self.reporters:
            r.task_started(task)

    def task_finished(self, task: Task, result: TaskResult) -> None:
        for r in self.reporters:
            r.task_finished(task, result)

    def task_failed(self, task: Task, result: TaskResult) -> None:
        for r in self.reporters:
            r.task_failed(task, result)

    def task_skipped(self, task: Task, result: TaskResult) -> None:
        for r in self.reporters:
            r.task_skipped(task, result)

    def layer_finished(self, result: LayerResult) -> None:
        for r in self.reporters:
            r.layer_finished(result)

    def run_finished(self, result: RunResult) -> None:
        for r in self.reporters:
            r.run_finished(result)


class LogReporter:
    """Task events into the structlog log (console lines, or JSON lines with `--log-format json`)."""

    def __init__(self, log: Any):
        self.log = log

    def _fields(self, task: Task, result: TaskResult) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "layer": task.layer,
            "task": str(task.kind),
            "status": str(result.status),
            "seconds": round(result.duration, 1),
        }
        if result.error:
            fields["error"] = result.error.splitlines()[0]
        if result.blocked_by:
            fields["blocked_by"] = result.blocked_by
        return fields

    def task_started(self, task: Task) -> None:
        self.log.info("task started", layer=task.layer, task=str(task.kind))

    def task_finished(self, task: Task, result: TaskResult) -> None:
        self.log.info("task finished", **self._fields(task, result))

    def task_failed(self, task: Task, result: TaskResult) -> None:
        log = self.log.warning if str(result.status) == "cancelled" else self.log.error
        log("task failed", **self._fields(task, result))

    def task_skipped(self, task: Task, result: TaskResult) -> None:
        self.log.info("task skipped", reason=str(result.reason), **self._fields(task, result))

    def layer_finished(self, result: LayerResult) -> None:
        fields: dict[str, Any] = {
            "layer": result.layer,
            "action": str(result.action),
            "status": str(result.status),
            "seconds": round(result.duration, 1),
        }
        if result.error:
            fields["error"] = result.error.splitlines()[0]
        if result.index is not None:
            fields["index"] = result.index["status"]
        (self.log.error if result.status == "failed" else self.log.info)("layer finished", **fields)

    def run_finished(self, result: RunResult) -> None:
        self.log.info(
            "run finished",
            status=run_status(result),
            summary=result.counts(),
            seconds=round(result.finished - result.started, 1),
        )


def run_status(result: RunResult) -> str:
    return "cancelled" if result.cancelled else ("failed" if result.failed else "ok")


class RunRecord(NullReporter):
    """The run's record: its row in the state, `runs/<run id>.json`, `last-run.json`, `last-success.json`."""

    def __init__(
        self, state: State, state_dir: Path, plan: Plan, command: str, extra: Callable[[], dict] | None = None
    ):
        self.state = state
        self.state_dir = state_dir
        self.plan = plan
        self.command = command
        self.extra = extra  # more fields for the record, asked when the run ends (e.g. Slurm's jobs)

    def run_finished(self, result: RunResult) -> None:
        from .plan import Action

        status = run_status(result)
        built = {
            lid: self.plan.layers[lid].key
            for lid, r in result.results.items()
            if r.action == Action.BUILD and r.status == "ok"
        }
        changes: dict[str, dict] = {}
        if built:  # per rebuilt layer: packages since its previous build (diff loads with a build only)
            from .diff import run_changes

            changes = run_changes(self.state, built)
        doc = redact_obj(
            {
                **result.to_json(),
                "command": self.command,
                "plan": self.plan.to_json(),
                "package_changes": changes,
                **(self.extra() if self.extra else {}),
            }
        )
        self.state.finish_run(result.run_id, status, doc)
        write_records(self.state_dir, result.run_id, doc, status)


def write_records(state_dir: Path, run_id: str, doc: dict, status: str) -> None:
    """The run's result document, and a last-success marker a monitor can check."""
    runs = state_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(runs / f"{run_id}.json", json.dumps(doc, indent=2, sort_keys=True))
    atomic_write(state_dir / "last-run.json", json.dumps(doc, indent=2, sort_keys=True))
    if status == "ok":
        marker = {"run_id": run_id, "finished": doc["finished"], "layers": len(doc["layers"])}
        atomic_write(state_dir / "last-success.json", json.dumps(marker, indent=2))


def task_durations(state_dir: Path) -> dict[str, float]:
    """Seconds each task took in the last run (`last-run.json`), by task id: priorities for the next.

    Builds are weighted by the state's recorded means (`State.durations`);
    this adds the other tasks (uploads, SquashFS, boot tests). A missing or
    unreadable record gives nothing: the defaults of tasks.py apply.
    """
    try:
        doc = json.loads((state_dir / "last-run.json").read_text())
        return {
            t["id"]: float(t["duration"])
            for layer in doc.get("layers", [])
            for t in layer.get("tasks", [])
            if t.get("status") == "ok" and t.get("kind") != "build"
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
