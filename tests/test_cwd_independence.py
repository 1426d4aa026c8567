"""Where imagegraph is started from, and how DIR is spelled, change nothing (the real CLI, a real build).

The scenario of issue 10: `cd layers && imagegraph plan .` (which fills the
parsed-spec cache), then the nightly `imagegraph up layers/` from the parent
directory, which used to fail with "copyfiles source 'files/motd' does not
exist" and, from inside layers/, to republish a `publish_dir: ../out` target
as `layers/../out -> ../out`. The layer is tiny: dnf from scratch with no
packages, one copied file, a SquashFS root filesystem in a directory target.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_build import buildah, have_buildah

pytestmark = [pytest.mark.buildah, pytest.mark.skipif(not have_buildah(), reason="needs buildah as root")]

NAME = "igt-keys-cwd"
SPEC = f"""\
options:
  layer_type: base
  name: {NAME}
  pkg_manager: dnf
  parent: scratch
  publish_local: true
  publish_tags: ['1']
  publish_dir: ../out
  rootfs_only: true
copyfiles:
  - src: files/motd
    dest: /etc/motd
"""


def ig(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def plan(cwd: Path, spelling: str) -> dict:
    r = ig(cwd, "plan", spelling, "--json", "--offline")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def summary(doc: dict) -> list[tuple]:
    return [(x["name"], x["key"], x["publish_key"], x["action"], x["file"]) for x in doc["layers"]]


@pytest.fixture
def site(tmp_path: Path):
    layers = tmp_path / "site" / "layers"
    (layers / "files").mkdir(parents=True)
    (layers / "files" / "motd").write_text("built by imagegraph\n")
    (layers / "tiny.yaml").write_text(SPEC)
    (layers / ".imagegraph").mkdir()  # a state directory: the parsed-spec cache is used
    (tmp_path / "elsewhere").mkdir()
    yield layers
    out = buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split()
    for ref in out:
        if f"/{NAME}:" in ref:
            buildah("rmi", "-f", ref, check=False)


def test_plan_inside_then_up_from_the_parent_then_every_spelling_agrees(site: Path, tmp_path: Path) -> None:
    parent = site.parent
    first = plan(site, ".")
    assert [x["action"] for x in first["layers"]] == ["build"]
    assert (site / ".imagegraph" / "cache" / "specs.pickle").exists()

    r = ig(parent, "up", "layers/", "--json")
    assert r.returncode == 0, r.stderr
    assert (parent / "out" / NAME / "1" / "rootfs.squashfs").is_file()
    assert not (site / "out").exists()

    # From inside layers/, nothing is republished: the dir target is the same path.
    r = ig(site, "up", ".", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert all(x["action"] == "up-to-date" for x in done["layers"]), done

    spellings = [
        (site, "."),
        (parent, "layers"),
        (parent, "layers/"),
        (parent, "./layers"),
        (tmp_path / "elsewhere", str(site)),
        (tmp_path / "elsewhere", "../site/layers"),
    ]
    plans = [plan(cwd, spelling) for cwd, spelling in spellings]
    assert all(summary(p) == summary(plans[0]) for p in plans), [summary(p) for p in plans]
    assert [x["action"] for x in plans[0]["layers"]] == ["up-to-date"]
    # the key is the one planned before the build, from inside layers/
    assert summary(plans[0])[0][1] == first["layers"][0]["key"]
