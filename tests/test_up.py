"""`imagegraph up` end to end: the real CLI, real buildah, a dnf repository made at test time.

The graph has four levels and two branches:

    root (dnf from scratch) -> mid -> left -> leaf
                            -> right
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.fixtures_build import buildah, containers, have_buildah, overlay_mounts
from tests.needs import requires

pytestmark = [pytest.mark.buildah, requires(have_buildah(), "needs buildah as root")]

P = "igt-up"


def layer(
    name: str, parent: str, packages: list[str] | None = None, cmds: list[str] | None = None, extra: str = ""
) -> str:
    text = f"""
    options:
      layer_type: base
      name: {P}-{name}
      publish_tags: ['1']
      pkg_manager: dnf
      parent: '{parent}'
      publish_local: true
      gpgcheck: false
      releasever: '9'
    """
    text = textwrap.dedent(text) + extra
    if packages:
        text += "packages:\n" + "".join(f"  - {p}\n" for p in packages)
    if cmds:
        text += "cmds:\n" + "".join(f"  - cmd: {json.dumps(c)}\n" for c in cmds)
    return text


def make_site(root: Path, repo_url: str) -> Path:
    root.mkdir(parents=True)
    repos = f"repos:\n  - alias: igtest\n    url: '{repo_url}'\npackage_groups: ['IG Minimal']\n"
    (root / "root.yaml").write_text(layer("root", "scratch", ["ig-hello"], ["echo root > /etc/role"], repos))
    (root / "mid.yaml").write_text(
        layer(
            "mid",
            f"localhost/{P}-root:1",
            ["ig-tool"],
            ["echo mid > /etc/role"],
            repos.split("package_groups")[0],
        )
    )
    (root / "left.yaml").write_text(layer("left", f"{P}-mid:1", cmds=["echo left > /etc/role"]))
    (root / "leaf.yaml").write_text(layer("leaf", f"{P}-left:1", cmds=["echo leaf > /etc/role"]))
    (root / "right.yaml").write_text(layer("right", f"{P}-root:1", cmds=["echo right > /etc/role"]))
    return root


def up(root: Path, state: Path, *args: str, timeout: int = 600) -> tuple[int, dict, str]:
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagegraph.cli",
            "up",
            str(root),
            "--state",
            str(state),
            "--json",
            "-j",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return r.returncode, doc, r.stderr


def statuses(doc: dict) -> dict[str, str]:
    return {x["name"]: x["status"] for x in doc["layers"]}


def built(doc: dict) -> set[str]:
    return {x["name"] for x in doc["layers"] if x["action"] == "build" and x["status"] == "ok"}


def role(ref: str) -> str:
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        return buildah("run", ctr, "--", "cat", "/etc/role").stdout.strip()
    finally:
        buildah("rm", ctr, check=False)


_mounts_before: set[str] = set()


def no_leftovers() -> None:
    # Only this test's containers: other suites may be building beside it.
    assert [c for c in containers() if c.startswith(f"imagegraph-{P}-")] == []
    assert set(overlay_mounts()) <= _mounts_before, "a container mount was left behind"


@pytest.fixture
def site(tmp_path: Path, rpm_repo):
    root = make_site(tmp_path / "layers", rpm_repo.url)
    _mounts_before.clear()
    _mounts_before.update(overlay_mounts())
    yield root, tmp_path / "state" / "state.db"
    out = buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split()
    for ref in out:
        if f"/{P}-" in ref:
            buildah("rmi", "-f", ref, check=False)


def test_incremental_builds(site) -> None:
    root, state = site
    rc, doc, err = up(root, state)
    assert rc == 0, err
    assert built(doc) == {"root", "mid", "left", "leaf", "right"}
    assert role(f"localhost/{P}-leaf:1") == "leaf"
    # -j 2: the independent builds of mid and right overlapped in time (the run record's timestamps).
    record = json.loads((state.parent / "last-run.json").read_text())
    assert record["run_id"] == doc["run_id"]
    spans = {t["id"]: (t["started"], t["finished"]) for x in record["layers"] for t in x["tasks"]}
    (m0, m1), (r0, r1) = spans["mid:build"], spans["right:build"]
    assert m0 < r1 and r0 < m1, spans
    assert spans["mid:build"][0] >= spans["root:build"][1]
    ids = {x["name"]: x["image_id"] for x in doc["layers"]}

    # Nothing changed: nothing builds, images unchanged.
    rc, doc, err = up(root, state)
    assert rc == 0 and built(doc) == set() and set(statuses(doc).values()) == {"up-to-date"}
    assert {x["name"]: x["image_id"] for x in doc["layers"]} == ids

    # Editing the leaf rebuilds only the leaf.
    leaf = root / "leaf.yaml"
    leaf.write_text(leaf.read_text().replace("echo leaf", "echo leaf2"))
    rc, doc, err = up(root, state)
    assert rc == 0 and built(doc) == {"leaf"}, err
    assert role(f"localhost/{P}-leaf:1") == "leaf2"

    # Editing the root rebuilds the whole chain.
    r = root / "root.yaml"
    r.write_text(r.read_text().replace("echo root", "echo root2"))
    rc, doc, err = up(root, state)
    assert rc == 0 and built(doc) == {"root", "mid", "left", "leaf", "right"}, err
    no_leftovers()


def test_failure_blocks_only_its_branch(site) -> None:
    root, state = site
    left = root / "left.yaml"
    left.write_text(left.read_text().replace("echo left > /etc/role", "echo about to fail; exit 7"))
    rc, doc, err = up(root, state)
    assert rc == 1
    st = statuses(doc)
    assert st == {"root": "ok", "mid": "ok", "left": "failed", "leaf": "blocked", "right": "ok"}
    failed = next(x for x in doc["layers"] if x["name"] == "left")
    assert "cmds[0]" in failed["error"] and "about to fail" in failed["error"]
    assert Path(failed["log_file"]).is_file()
    no_leftovers()
    # Fix it: only the failed branch builds now.
    left.write_text(left.read_text().replace("echo about to fail; exit 7", "echo left > /etc/role"))
    rc, doc, err = up(root, state)
    assert rc == 0 and built(doc) == {"left", "leaf"}, err


def test_fail_fast_starts_nothing_new(site) -> None:
    root, state = site
    left = root / "left.yaml"
    left.write_text(left.read_text().replace("echo left > /etc/role", "exit 7"))
    # One slot: after mid, left (the longer chain below it) starts before right, fails, and right never starts.
    rc, doc, err = up(root, state, "-j", "1", "--fail-fast")
    assert rc == 1, err
    assert statuses(doc) == {
        "root": "ok",
        "mid": "ok",
        "left": "failed",
        "leaf": "blocked",
        "right": "not-started",
    }
    record = json.loads((state.parent / "last-run.json").read_text())
    reasons = {t["id"]: t["reason"] for x in record["layers"] for t in x["tasks"]}
    assert reasons["right:build"] == "fail-fast" and reasons["leaf:build"] == "dependency-failed"
    no_leftovers()


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
)
def test_signal_cleans_up_and_next_run_resumes(site, sig: signal.Signals, status: int) -> None:
    root, state = site
    right = root / "right.yaml"
    right.write_text(right.read_text().replace("echo right > /etc/role", "sleep 120"))
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state), "--json", "-j", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 300
    logs = state.parent / "logs"
    while time.time() < deadline:
        log = logs / "right.log"
        if log.exists() and "sleep 120" in log.read_text(errors="replace"):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the sleeping build never started")
    time.sleep(1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    doc = json.loads(out)
    st = statuses(doc)
    assert st["right"] == "cancelled" and st["root"] == "ok"
    record = json.loads((state.parent / "last-run.json").read_text())
    assert record["run_id"] == doc["run_id"] and record["cancelled"] and record["exit_status"] == status
    no_leftovers()
    right.write_text(right.read_text().replace("sleep 120", "echo right > /etc/role"))
    rc, doc, err = up(root, state)
    assert rc == 0, err
    # What finished before the interruption is not built again.
    assert "root" not in built(doc) and "right" in built(doc)
