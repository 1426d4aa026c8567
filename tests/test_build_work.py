"""build/work.py: `buildah run` is run again only when buildah failed before the command started."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagegraph.build import work
from imagegraph.build.work import Work
from imagegraph.runner import CommandError, Runner

FAKE = """#!/bin/sh
n=$(cat "{count}" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "{count}"
if [ "$n" -le "{fail_times}" ]; then
  echo "{message}" >&2
  echo "Error: exit status 1" >&2
  exit 1
fi
echo ran "$@"
"""


def fake_buildah(tmp: Path, monkeypatch: pytest.MonkeyPatch, fail_times: int, message: str) -> Path:
    """A `buildah` on PATH that fails its first `fail_times` calls with `message`; returns its call counter."""
    bindir, count = tmp / "bin", tmp / "count"
    bindir.mkdir()
    exe = bindir / "buildah"
    exe.write_text(FAKE.format(count=count, fail_times=fail_times, message=message))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(work, "REEXEC_WAIT", 0.01)
    return count


def buildah_run(argv: list[str]):
    runner = Runner("layer")
    fake_work = SimpleNamespace(
        container="c1",
        current="cmds[0]",
        runner=runner,
        run=lambda full, **kw: runner.run(full, step="cmds[0]", **kw),
    )
    return Work.buildah_run(fake_work, argv)


MEMFD = "Close_Fd sealing memfd copy: Device or resource busy"


def test_a_command_buildah_could_not_start_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = fake_buildah(tmp_path, monkeypatch, fail_times=2, message=MEMFD)
    r = buildah_run(["sh", "-c", "echo hi"])
    assert r.returncode == 0 and count.read_text().strip() == "3"


def test_it_gives_up_after_three_attempts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    count = fake_buildah(tmp_path, monkeypatch, fail_times=9, message=MEMFD)
    with pytest.raises(CommandError) as err:
        buildah_run(["true"])
    assert count.read_text().strip() == "3" and any(MEMFD in line for line in err.value.tail)


def test_a_command_that_ran_and_failed_is_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = fake_buildah(
        tmp_path, monkeypatch, fail_times=9, message="mkdir: cannot create directory: File exists"
    )
    with pytest.raises(CommandError):
        buildah_run(["mkdir", "/x"])
    assert count.read_text().strip() == "1"
