"""imagegraph/runner.py: streaming, failures with tails, cancellation."""

from __future__ import annotations

import io
import threading
import time

import pytest

from imagegraph import runner as runner_mod
from imagegraph.runner import Cancelled, CommandError, Runner


def test_output_is_streamed_into_the_layer_log() -> None:
    buf = io.StringIO()
    r = Runner("a", buf)
    done = r.run(["sh", "-c", "echo out; echo err >&2"], step="s")
    assert done.returncode == 0
    text = buf.getvalue()
    assert "$ sh -c" in text and "out\n" in text and "err\n" in text


def test_failure_quotes_the_last_lines() -> None:
    with pytest.raises(CommandError) as ei:
        Runner("a").run(["sh", "-c", "for i in $(seq 1 50); do echo line$i; done; exit 3"], step="cmds[0]")
    e = ei.value
    assert e.returncode == 3 and e.step == "cmds[0]" and e.tail[-1] == "line50" and len(e.tail) == 20
    assert "line50" in str(e)


def test_capture_and_missing_program() -> None:
    assert Runner().output(["echo", "hi"], step="s") == "hi"
    with pytest.raises(CommandError, match="cannot run"):
        Runner().run(["/nonexistent/prog"], step="s")


def test_terminate_all_stops_running_commands() -> None:
    errors: list[BaseException] = []

    def go() -> None:
        try:
            Runner("a").run(["sleep", "30"], step="s")
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    t = threading.Thread(target=go)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    runner_mod.terminate_all(grace=2)
    t.join(10)
    try:
        assert time.monotonic() - t0 < 5 and isinstance(errors[0], Cancelled)
        # After cancellation nothing new starts, but clean-up commands still run.
        with pytest.raises(Cancelled):
            Runner().run(["true"], step="s")
        assert Runner().run(["true"], step="s", cleanup=True).returncode == 0
    finally:
        runner_mod.reset_cancel()


def _niceness(runner: Runner, nice: int) -> int:
    # field 19 of /proc/PID/stat is the nice value of the process that reads it (the shell)
    out = runner.run(["sh", "-c", "cut -d' ' -f19 /proc/$$/stat"], step="t", capture=True, nice=nice)
    return int(out.stdout.strip())


def test_nice_lowers_the_cpu_priority_of_the_command_and_says_so() -> None:
    import os

    runner = Runner(layer="x", logfile=io.StringIO())
    own = os.nice(0)
    assert _niceness(runner, 0) == own
    assert _niceness(runner, 7) == min(19, own + 7)
    assert "$ nice -n 7 sh -c" in runner.logfile.getvalue()


def test_pushes_run_nice_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagegraph.publish.push import push_nice

    assert push_nice() == 10
    for value, want in (("0", 0), ("5", 5), ("40", 19), ("-3", 0), ("x", 10)):
        monkeypatch.setenv("IMAGEGRAPH_PUSH_NICE", value)
        assert push_nice() == want
