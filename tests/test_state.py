"""imagegraph/state.py: records, migrations, permissions, clear errors."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from imagegraph.state import SCHEMA_VERSION, State, StateError


def build(state: State, layer: str, key: str, status: str = "ok", seconds: float = 5.0) -> None:
    now = time.time()
    state.record_build(
        run_id="r1",
        layer=layer,
        key=key,
        inputs={"k": key},
        image_id=f"id-{key}" if status == "ok" else None,
        image_ref=None,
        spec_file=f"{layer}.yaml",
        parent_key=None,
        started=now - seconds,
        finished=now,
        status=status,
    )


def test_successful_build_becomes_current_failed_does_not(tmp_path: Path) -> None:
    s = State(tmp_path / "s.db")
    build(s, "base", "k1")
    build(s, "base", "k2", status="failed")
    rec = s.layers()["base"]
    assert rec.key == "k1" and rec.inputs == {"k": "k1"} and rec.image_id == "id-k1"
    assert [b["status"] for b in s.builds("base")] == ["failed", "ok"]


def test_durations_average_recent_successes(tmp_path: Path) -> None:
    s = State(tmp_path / "s.db")
    for secs in (10, 20, 30):
        build(s, "a", f"k{secs}", seconds=secs)
    assert s.durations()["a"] == pytest.approx(20, abs=0.5)


def test_publications(tmp_path: Path) -> None:
    s = State(tmp_path / "s.db")
    s.record_publication(
        run_id="r",
        layer="a",
        key="k",
        target="registry",
        spec={"tags": ["1"]},
        locations=["r/a:1"],
        digest="sha256:x",
    )
    s.record_publication(
        run_id="r", layer="a", key="k", target="s3", spec={}, locations=[], detail={"kver": "6.1"}
    )
    p = s.published("a")["registry"]
    assert p.spec == {"tags": ["1"]} and p.locations == ["r/a:1"] and p.digest == "sha256:x"
    assert s.published("a")["s3"].detail == {"kver": "6.1"}
    s.forget_publication("a", "registry")
    assert list(s.published("a")) == ["s3"]


def test_owner_only_permissions(tmp_path: Path) -> None:
    s = State(tmp_path / "dir" / "s.db")
    build(s, "a", "k")
    assert stat.S_IMODE((tmp_path / "dir" / "s.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o700


def test_readonly_missing_database_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    s = State(tmp_path / "none" / "s.db", readonly=True)
    assert s.layers() == {} and s.runs() == []
    assert not (tmp_path / "none").exists()


def test_unversioned_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    sqlite3.connect(path).close()  # an empty, version-0 database
    s = State(path)
    build(s, "a", "k")
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.close()
    with pytest.raises(StateError, match="newer than this imagegraph"):
        State(path)


def test_corrupt_database_gives_a_way_forward(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError) as ei:
        State(path)
    assert "move it aside" in str(ei.value) and ei.value.exit_status == 2


def test_concurrent_writers_from_threads(tmp_path: Path) -> None:
    s = State(tmp_path / "s.db")
    threads = [threading.Thread(target=build, args=(s, f"l{i}", f"k{i}")) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(s.layers()) == 20 and len(s.builds(limit=100)) == 20


def test_runs(tmp_path: Path) -> None:
    s = State(tmp_path / "s.db")
    s.start_run("r1", "up")
    s.finish_run("r1", "ok", {"layers": []})
    (r,) = s.runs()
    assert r["status"] == "ok" and r["command"] == "up" and r["finished"] >= r["started"]
