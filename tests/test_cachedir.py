"""imagegraph/cachedir.py: the parsed-spec cache works from the first run, only in the user's own places."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from imagegraph import cachedir
from imagegraph.project import load_project

from .specdirs import seed_dir

EXE = [sys.executable, "-m", "imagegraph.cli"]


def _plan(root: Path, xdg: Path, *extra: str) -> tuple[dict, dict]:
    """`imagegraph -v plan --offline --json` as a real process: (plan document, the `specs loaded` event)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg), "IMAGEGRAPH_RETRY_ATTEMPTS": "1"}
    r = subprocess.run(
        [*EXE, "-v", "--log-format", "json", "plan", "--offline", "--json", *extra, str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    loaded = [e for e in events if e["event"] == "specs loaded"]
    assert len(loaded) == 1, r.stderr
    return json.loads(r.stdout), loaded[0]


def test_first_plan_fills_the_user_cache_and_the_second_hits_it(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    xdg = tmp_path / "xdg"
    first, ev1 = _plan(root, xdg)
    assert ev1["path"].startswith(str(xdg / "imagegraph" / "projects"))
    # libyaml also read imagegraph.yaml (the seed's registry alias): settings are not cached
    assert (ev1["hits"], ev1["parsed"], ev1["libyaml"]) == (0, 3, 4)
    assert Path(ev1["path"]).is_file()
    assert not (root / ".imagegraph").exists()  # plan created no state directory (nor database)
    second, ev2 = _plan(root, xdg)
    assert (ev2["hits"], ev2["parsed"], ev2["libyaml"]) == (3, 0, 1)
    assert second == first
    # An edit is a miss for that file only, and the plan follows it.
    f = root / "compute.yaml"
    f.write_text(f.read_text().replace("  - vim\n", "  - vim\n  - htop\n"))
    third, ev3 = _plan(root, xdg)
    assert (ev3["hits"], ev3["parsed"]) == (2, 1)

    def keys(plan: dict) -> dict[str, str]:
        return {lp["name"]: lp["key"] for lp in plan["layers"]}

    assert keys(third)["compute"] != keys(first)["compute"]
    assert keys(third)["base"] == keys(first)["base"]


def test_a_state_directory_holds_the_cache(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    (root / ".imagegraph").mkdir()
    xdg = tmp_path / "xdg"
    _, ev = _plan(root, xdg)
    assert ev["path"] == str(root / ".imagegraph" / "cache" / "specs.pickle")
    assert not xdg.exists()
    assert not (root / ".imagegraph" / "state.db").exists()  # plan stays read-only


def test_fallback_files_are_counted(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    f = root / "compute.yaml"
    f.write_text(f.read_text().replace("options:\n", "options:\n  releasever: 9.5\n", 1))
    _, ev = _plan(root, tmp_path / "xdg")
    assert (ev["libyaml"], ev["ruamel"]) == (3, 1)  # base.yaml, gpu.yaml and imagegraph.yaml; compute.yaml


def test_paths_of_another_user_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    assert cachedir.safe_to_use(mine)
    assert cachedir.safe_to_use(mine / "not" / "yet")  # created later, under a directory of ours
    monkeypatch.setenv("XDG_CACHE_HOME", str(mine))
    assert cachedir.user_cache_dir() == mine / "imagegraph"
    # Someone else's directory (as seen by another uid) is never used.
    monkeypatch.setattr(cachedir.os, "geteuid", lambda: os.getuid() + 4242)
    assert not cachedir.safe_to_use(mine)
    assert cachedir.user_cache_dir() is None
    assert cachedir.spec_cache_dir(tmp_path / "proj") is None


def test_group_or_world_writable_places_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    assert cachedir.user_cache_dir() is None
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cachedir.user_cache_dir() == tmp_path / ".cache" / "imagegraph"


class _Planted:
    """A pickle that, loaded, leaves a mark: proof that the file was (or was not) unpickled."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (Path.touch, (self.mark,))


def test_a_cache_file_others_can_write_is_not_unpickled(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    mark = tmp_path / "unpickled"
    (cache / "specs.pickle").write_bytes(pickle.dumps({"planted": _Planted(mark)}))
    (cache / "specs.pickle").chmod(0o666)
    project = load_project(root, cache_dir=cache)
    assert not mark.exists()
    assert project.spec_cache["hits"] == 0
    # The same file, private, is read (and is no imagegraph cache: ignored, then replaced).
    (cache / "specs.pickle").write_bytes(pickle.dumps({"planted": _Planted(mark)}))
    (cache / "specs.pickle").chmod(0o600)
    load_project(root, cache_dir=cache)
    assert mark.exists()


def test_ensure_dir_makes_private_directories(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        cachedir.ensure_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    for p in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert p.stat().st_mode & 0o777 == 0o700
