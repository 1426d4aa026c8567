"""imagegraph/gc.py: which keys a layer keeps (the end-to-end gc test is in test_unattended.py)."""

from __future__ import annotations

import time
from pathlib import Path

from imagegraph.gc import layer_keys
from imagegraph.state import State


def built(state: State, key: str) -> None:
    now = time.time()
    state.record_build(
        run_id="r", layer="a", key=key, inputs={}, image_id=None, image_ref=None,
        spec_file="a.yaml", parent_key=None, started=now, finished=now,
    )  # fmt: skip


def test_newest_current_and_promoted_keys_are_kept(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    for k in ("k1", "k2", "k3", "k4"):
        built(state, k)
    assert layer_keys(state, "a", keep=2) == (["k4", "k3"], ["k2", "k1"])
    # k1 was promoted to `prod` and later prod moved to k2: only k2 is still pointed at.
    for key in ("k1", "k2"):
        state.record_event(
            run_id="r",
            layer="a",
            key=key,
            kind="promote",
            location="[]",
            detail={"tag": "prod", "target": "registry"},
        )
    kept, old = layer_keys(state, "a", keep=1)
    assert kept == ["k4", "k2"] and old == ["k3", "k1"]


def test_the_key_the_specs_give_today_is_kept_after_a_revert(tmp_path: Path) -> None:
    """Built k1, then k2 (the last build); the spec was reverted to k1: k1 is the one in use."""
    state = State(tmp_path / "s.db")
    for k in ("k1", "k2"):
        built(state, k)
    assert layer_keys(state, "a", keep=1) == (["k2"], ["k1"])
    kept, old = layer_keys(state, "a", keep=1, current="k1")
    assert set(kept) == {"k1", "k2"} and old == []
