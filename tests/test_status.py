"""`status`: up to date, stale (why), failed (with the log hint), never built; JSON without JSON inside."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from imagegraph.graph import build_graph
from imagegraph.key import key_tag
from imagegraph.plan import StaticInventory, make_plan
from imagegraph.project import load_project
from imagegraph.state import State
from imagegraph.status import LayerStatus, layer_status

from .specdirs import seed_dir

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _setup(tmp_path: Path):
    root = seed_dir(tmp_path / "layers")
    lg = build_graph(load_project(root))
    state = State(tmp_path / "state.db")
    plan = make_plan(lg, state, StaticInventory(), offline=True)
    t = 1_700_000_000.0
    state.start_run("r1", "up")
    base = plan.layers["base"]
    state.record_build(
        run_id="r1",
        layer="base",
        key=base.key,
        inputs=base.inputs,
        image_id="img-base",
        image_ref=None,
        spec_file="base.yaml",
        parent_key=None,
        started=t,
        finished=t + 12,
    )
    comp = make_plan(lg, state, StaticInventory(images={"img-base"}), offline=True).layers["compute"]
    state.record_build(
        run_id="r1",
        layer="compute",
        key=comp.key,
        inputs=comp.inputs,
        image_id=None,
        image_ref=None,
        spec_file="compute.yaml",
        parent_key=base.key,
        started=t + 12,
        finished=t + 20,
        status="failed",
        error="step packages failed: dnf exited 1\n  last output: ...",
    )
    state.finish_run("r1", "failed", {"layers": {"base": "ok", "compute": "failed"}})
    return root, lg, state


def _published_base(lg, state) -> StaticInventory:
    spec = lg.spec("base")
    key = state.layer("base").key
    repo = f"{spec.publish_registry}/{spec.name}"
    # Human tags are checked by what they point at: both name the key's manifest.
    return StaticInventory(
        images={"img-base"},
        tags={repo: {"9.5", key_tag(key)}},
        tag_digests={f"{repo}:9.5": "sha256:" + "b" * 64, f"{repo}:{key_tag(key)}": "sha256:" + "b" * 64},
    )


def test_status_of_each_layer(tmp_path: Path) -> None:
    _root, lg, state = _setup(tmp_path)
    plan = make_plan(lg, state, _published_base(lg, state))
    report = layer_status(plan, state)
    by = {s.layer: s for s in report.layers}
    assert by["base"].status == LayerStatus.UP_TO_DATE
    assert by["compute"].status == LayerStatus.FAILED
    assert by["compute"].hint == "imagegraph log compute"
    assert by["compute"].detail == "step packages failed: dnf exited 1"
    assert by["gpu"].status == LayerStatus.NEVER_BUILT
    # the base image gone from local storage: stale, and why
    stale = layer_status(make_plan(lg, state, StaticInventory(), offline=True), state)
    assert stale.layers[0].status == LayerStatus.STALE and "image missing" in stale.layers[0].detail


def test_status_json_is_flat_with_iso_timestamps(tmp_path: Path) -> None:
    root, _lg, _state = _setup(tmp_path)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegraph.cli",
            "status",
            str(root),
            "--offline",
            "--json",
            "--state",
            str(tmp_path / "state.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (run,) = doc["runs"]
    assert isinstance(run["result"], dict) and run["result"]["layers"]["compute"] == "failed"
    assert ISO.match(run["started"]) and ISO.match(run["finished"])
    layers = doc["layers"]
    assert list(layers) == ["base", "compute", "gpu"] and layers["gpu"]["status"] == "never built"
    assert layers["base"]["built_at"] == "2023-11-14T22:13:32Z"
    # no JSON documents hidden inside strings
    for v in _strings(doc):
        assert not v.lstrip().startswith(("{", "[")), v
    text = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegraph.cli",
            "status",
            str(root),
            "--offline",
            "--state",
            str(tmp_path / "state.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "failed" in text and "imagegraph log compute" in text and "stale" in text


def _strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)
