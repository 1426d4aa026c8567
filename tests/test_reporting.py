"""imagegraph/reporting.py: the run record and the log reporter, fed by a real Scheduler run."""

from __future__ import annotations

import json
from pathlib import Path

from imagegraph.redact import add_secret
from imagegraph.reporting import LogReporter, Reporters, RunRecord, task_durations
from imagegraph.scheduler import Scheduler
from imagegraph.state import State

from .test_scheduler import TaskRecorder, tree


class Log:
    def __init__(self):
        self.events: list[tuple[str, str, dict]] = []

    def _add(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))

    def __getattr__(self, level):
        return self._add(level)


def test_run_record_and_task_durations(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"a": None, "b": "a"})
    state = State(tmp_path / "state.db")
    state.start_run("r1", "up")
    sd = tmp_path / "sd"
    log = Log()
    rec = TaskRecorder({"a:push": 0.05})
    Scheduler(
        plan, rec, jobs=2, reporter=Reporters(LogReporter(log), RunRecord(state, sd, plan, "up")), run_id="r1"
    ).run()
    doc = json.loads((sd / "last-run.json").read_text())
    assert doc == json.loads((sd / "runs" / "r1.json").read_text())
    assert doc["command"] == "up" and doc["exit_status"] == 0 and (sd / "last-success.json").is_file()
    ts = {t["id"]: t for x in doc["layers"] for t in x["tasks"]}
    assert set(ts) == {"a:build", "a:push", "b:build", "b:push"}
    assert ts["b:build"]["started"] >= ts["a:build"]["finished"]
    durs = task_durations(sd)
    assert set(durs) == {"a:push", "b:push"} and durs["a:push"] >= 0.05
    assert [e for lvl, e, _ in log.events].count("task started") == 4
    assert sorted(kw["layer"] for _, e, kw in log.events if e == "layer finished") == ["a", "b"]
    assert log.events[-1][1] == "run finished" and log.events[-1][2]["status"] == "ok"


def test_failed_run_keeps_last_success_and_redacts(tmp_path: Path) -> None:
    plan = tree(tmp_path, {"a": None})
    state = State(tmp_path / "state.db")
    sd = tmp_path / "sd"
    add_secret("s3cr3t-token-value")

    class Leaky(TaskRecorder):
        def run_task(self, task, needs):
            from imagegraph.errors import PublishError

            if task.kind == "push":
                raise PublishError("a", "registry", "denied for s3cr3t-token-value")
            return super().run_task(task, needs)

    state.start_run("r2", "up")
    log = Log()
    Scheduler(
        plan, Leaky(), reporter=Reporters(LogReporter(log), RunRecord(state, sd, plan, "up")), run_id="r2"
    ).run()
    text = (sd / "last-run.json").read_text()
    assert "s3cr3t-token-value" not in text and json.loads(text)["exit_status"] == 1
    assert not (sd / "last-success.json").exists()
    assert ("error", "task failed") in [(lvl, e) for lvl, e, _ in log.events]
    assert task_durations(tmp_path / "nowhere") == {}
