"""tests/needs.py: a missing tool skips on a workstation and fails under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SAMPLE = """
from tests.needs import missing, requires

@requires(False, "needs a tool this machine lacks")
def test_marked():
    pass

def test_called():
    missing("needs another tool")

def test_fine():
    pass
"""


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "tests.needs", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip


def test_missing_tools_skip_outside_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 2 skipped" in r.stdout


def test_missing_tools_fail_in_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, "true")
    assert r.returncode == 1, r.stdout + r.stderr
    # the marker fails in setup (an error), the call in the test (a failure): neither passes
    assert "1 failed, 1 passed, 1 error" in r.stdout, r.stdout
    assert "CI=true: a missing tool fails the run" in r.stdout
