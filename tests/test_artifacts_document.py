"""`artifacts_document` (executor) and `imagegraph artifacts`: every kind of target says something useful."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagegraph.errors import NotBuiltError
from imagegraph.executor import artifacts_document
from imagegraph.graph import build_graph
from imagegraph.project import load_project
from imagegraph.publish.artifacts import PublishedObject
from imagegraph.state import State

from .specdirs import write

SPEC = "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: compute\n  publish_tags: '1'\n{extra}packages: [bash]\n"


def _built(state: State, layer: str = "compute") -> None:
    state.record_build(
        run_id="r",
        layer=layer,
        key="k" * 64,
        inputs={},
        image_id="img",
        image_ref=None,
        spec_file=f"{layer}.yaml",
        parent_key=None,
        started=1.0,
        finished=2.0,
    )


def _dir_publication(state: State, out: Path) -> None:
    objs = [
        PublishedObject("dir", role, str(out / "compute" / "1" / name), "0" * 64, 10, "1", "written")
        for role, name in (
            ("rootfs", "rootfs.squashfs"),
            ("kernel", "vmlinuz"),
            ("initramfs", "initramfs.img"),
        )
    ]
    state.record_publication(
        run_id="r",
        layer="compute",
        key="k" * 64,
        target="dir",
        spec={"dir": str(out)},
        locations=[dataclasses.asdict(o) for o in objs],
        detail={"kver": "5.14.0"},
    )


def test_publish_dir_boot_config_with_file_urls_or_a_base_url(tmp_path: Path) -> None:
    out = tmp_path / "srv"
    root = tmp_path / "layers"
    write(root, "compute.yaml", SPEC.format(extra=f"  publish_dir: {out}\n"))
    lg = build_graph(load_project(root))
    state = State(tmp_path / "state.db")
    _built(state)
    _dir_publication(state, out)
    doc = artifacts_document(lg, state, "compute")
    (entry,) = doc["boot_config"]
    assert entry["kernel"] == (out / "compute/1/vmlinuz").as_uri()
    assert f"root=live:{(out / 'compute/1/rootfs.squashfs').as_uri()}" in entry["params"]
    doc = artifacts_document(lg, state, "compute", base_url="http://boot.example:8080/images/")
    (entry,) = doc["boot_config"]
    assert entry["kernel"] == "http://boot.example:8080/images/compute/1/vmlinuz"
    assert entry["initrd"] == "http://boot.example:8080/images/compute/1/initramfs.img"
    assert "root=live:http://boot.example:8080/images/compute/1/rootfs.squashfs" in entry["params"]


def test_local_only_says_nothing_to_boot_and_unbuilt_says_not_built(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    write(root, "compute.yaml", SPEC.format(extra="  publish_local: true\n"))
    lg = build_graph(load_project(root))
    state = State(tmp_path / "state.db")
    with pytest.raises(NotBuiltError, match="not built yet"):
        artifacts_document(lg, state, "compute")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegraph.cli",
            "artifacts",
            str(root),
            "compute",
            "--state",
            str(tmp_path / "state.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "not built yet" in r.stderr and "publishing" not in r.stderr
    _built(state)
    state.record_publication(
        run_id="r", layer="compute", key="k" * 64, target="local", spec={}, locations=["localhost/compute:1"]
    )
    doc = artifacts_document(lg, state, "compute")
    assert doc["boot_config"] == [] and "nothing to boot from here" in doc["message"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegraph.cli",
            "artifacts",
            str(root),
            "compute",
            "--state",
            str(tmp_path / "state.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "nothing to boot from here" in r.stderr and "localhost/compute:1" in r.stderr
    j = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegraph.cli",
            "artifacts",
            str(root),
            "compute",
            "--json",
            "--state",
            str(tmp_path / "state.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "nothing to boot" in json.loads(j.stdout)["message"]
