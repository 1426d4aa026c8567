"""The CLI on a real terminal (a pty) and through pipes: text vs JSON lines, colour, `head`."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from .specdirs import seed_dir

EXE = [sys.executable, "-m", "imagegraph.cli"]
ANSI = "\x1b["


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "JOURNAL_STREAM")}
    env.update({"IMAGEGRAPH_RETRY_ATTEMPTS": "1", "TERM": "xterm-256color", "COLUMNS": "200"}, **extra)
    return env


def on_pty(*args: str, **env: str) -> tuple[int, str]:
    """Run with stdin, stdout and stderr on one pseudo-terminal; everything it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*EXE, *args], stdin=slave, stdout=slave, stderr=slave, env=_env(**env))
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError("no output for 60 s")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def piped(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=_env(**env), timeout=120)


def test_terminal_gets_colour_pipes_and_no_color_do_not(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    (root / "imagegraph.yaml").unlink()  # without its registry alias, the seed's parent gets a warning
    rc, text = on_pty("validate", str(root))
    assert rc == 0 and "names a registry no layer publishes to" in text
    assert ANSI in text  # the warning is coloured on a terminal
    rc, text = on_pty("validate", str(root), "-v", NO_COLOR="1")
    assert rc == 0 and "names a registry no layer publishes to" in text and ANSI not in text
    rc, text = on_pty("plan", str(root), "--offline", "-v", NO_COLOR="1")
    assert rc == 0 and "layer directory loaded" in text  # log events follow NO_COLOR too:
    assert not re.search(r"\x1b\[[0-9;]*(3|9)[0-7]m", text)  # no colour (bold is not colour)
    r = piped("validate", str(root))
    assert "names a registry no layer publishes to" in r.stderr and ANSI not in r.stderr + r.stdout
    # text, not JSON, when stderr is a pipe (`validate DIR 2>&1 | grep error`)
    assert not r.stderr.lstrip().startswith("{")
    assert "warning:" in r.stderr


def test_log_format_json_makes_every_line_json(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    for args, env in (
        (("--log-format", "json"), {}),
        ((), {"JOURNAL_STREAM": "8:12345"}),  # under systemd, without being asked
    ):
        for cmd in (
            ["validate", str(root)],
            ["plan", str(root), "--offline"],
            ["status", str(root), "--offline"],
            ["up", str(root), "--offline", "--dry-run"],
            ["graph", str(root), "--format", "dot"],
            ["doctor", str(root), "--offline"],
        ):
            r = piped(*cmd, *args, **env)
            assert r.returncode in ((0, 1) if cmd[0] == "doctor" else (0,)), r.stderr
            lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
            assert lines
            docs = [json.loads(line) for line in lines]  # every line parses
            assert all({"event", "level", "timestamp"} <= set(d) for d in docs)
    r = piped("plan", str(root), "--offline", "--log-format", "json")
    (result,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert result["event"] == "plan result" and result["result"]["summary"]["build"] == 3
    # errors are JSON lines too, with the exit status
    bad = piped("plan", str(tmp_path / "missing"), "--log-format", "json")
    assert bad.returncode == 2
    assert all(json.loads(line)["level"] == "error" for line in bad.stderr.splitlines())


def test_json_log_format_on_a_terminal_has_no_colour_codes(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    rc, text = on_pty("plan", str(root), "--offline", "--log-format", "json")
    assert rc == 0
    for line in text.splitlines():
        if line.strip():
            json.loads(line)


def test_head_closing_the_pipe_exits_0_quietly(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    for n in range(2, 60):
        (root / f"extra{n}.yaml").write_text(
            (root / "base.yaml").read_text().replace("rocky-base", f"extra{n}")
        )
    r = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{' '.join(EXE)} plan {root} --offline | head -1"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_quiet_prints_only_the_summary_and_no_warnings(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    r = piped("plan", str(root), "--offline", "-q")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.strip() == "3 layers: 3 build"
    v = piped("validate", str(root), "-q")
    assert v.returncode == 0 and v.stdout == "" and v.stderr == ""
