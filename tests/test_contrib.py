"""contrib/: the nightly systemd unit, its timer and the crontab line, and the README's journal recipe."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .needs import missing

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"


def _unit(path: Path) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file (keys may repeat: ExecStart of a oneshot)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_nightly_unit_runs_imagegraph_itself_so_sigterm_reaches_it() -> None:
    """KillMode=mixed sends SIGTERM to the main process only: a `sh -c` in between would take the
    signal and leave imagegraph to be SIGKILLed, without recording what finished."""
    unit = _unit(CONTRIB / "imagegraph-nightly.service")
    assert unit["Type"] == ["oneshot"] and unit["KillMode"] == ["mixed"]
    steps = [shlex.split(cmd) for cmd in unit["ExecStart"]]
    assert all(Path(argv[0]).name == "imagegraph" for argv in steps), steps
    assert [argv[1:3] for argv in steps] == [["lock", "--update"], ["up", "layers/"]]
    for argv in steps:  # a report page's directory exists: systemd makes /var/lib/<StateDirectory>
        if "--report" in argv:
            report = Path(argv[argv.index("--report") + 1])
            assert report.parent == Path("/var/lib") / unit["StateDirectory"][0], report


def test_timer_starts_the_service_nightly() -> None:
    timer = _unit(CONTRIB / "imagegraph-nightly.timer")
    assert timer["OnCalendar"] and timer["Persistent"] == ["true"]
    assert timer.get("Unit", ["imagegraph-nightly.service"]) == ["imagegraph-nightly.service"]


def test_crontab_line_logs_json_lines_only() -> None:
    line = next(ln for ln in (CONTRIB / "crontab.example").read_text().splitlines() if ln and ln[0].isdigit())
    commands = re.findall(r"imagegraph (?:lock|up) [^&;}]*", line)
    assert len(commands) == 2 and all("--log-format json" in c for c in commands), commands


def test_readme_journal_recipe_filters_errors_among_systemd_lines(tmp_path: Path) -> None:
    """The README's `journalctl -u imagegraph-nightly -o cat | jq ...` on what the journal holds:
    systemd's own lines about the unit (not JSON) around imagegraph's JSON lines."""
    if shutil.which("jq") is None:
        missing("jq is needed (scripts/install-system-deps.sh)")
    readme = (ROOT / "README.md").read_text()
    recipe = re.search(r"`(journalctl -u imagegraph-nightly -o cat \| jq [^`]+)`", readme)
    assert recipe, "the README's journal recipe"
    jq = recipe.group(1).split(" | ", 1)[1]
    (tmp_path / "bad.yaml").write_text("options:\n  layer_type: base\n  pkg_manager: yum\n")
    env = {**os.environ, "JOURNAL_STREAM": "8:12345"}
    run = subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2
    journal = (
        "Starting imagegraph-nightly.service - imagegraph nightly: lock --update, then up...\n"
        + run.stdout
        + run.stderr
        + "imagegraph-nightly.service: Main process exited, code=exited, status=2/INVALIDARGUMENT\n"
    )
    got = subprocess.run(["sh", "-c", jq], input=journal, capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert '"level":"error"' in got.stdout.replace(" ", "") and "bad.yaml" in got.stdout
