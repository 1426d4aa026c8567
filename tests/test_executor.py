"""The executor and scheduler through the real CLI, with a recording fake buildah on PATH (no buildah needed).

The failure matrix: a failed build, a failed upload (real moto S3: a bucket
that does not exist, a server that is not there), a failed boot test (real
QEMU given a kernel that is not one), Ctrl-C mid-build and mid-upload. Real
mksquashfs and real S3 make the artifacts; only buildah is faked.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.fakebuildah import FakeBuildah, install

from .fixtures_servers import S3_TEST_ACCESS, S3_TEST_SECRET

KERNEL = "mkdir -p lib/modules/6.1.0 boot && echo k > boot/vmlinuz-6.1.0 && echo i > boot/initramfs-6.1.0.img"


def layer(name: str, parent: str | None, cmds: list[str], extra: str = "") -> str:
    text = f"""
    options:
      layer_type: base
      name: {name}
      publish_tags: ['1']
      pkg_manager: dnf
      parent: '{f"localhost/{parent}:1" if parent else "scratch"}'
      publish_local: true
    """
    text = textwrap.dedent(text) + textwrap.indent(extra, "  ")
    return text + "cmds:\n" + "".join(f"  - cmd: {json.dumps(c)}\n" for c in cmds)


@pytest.fixture
def fake(tmp_path: Path) -> FakeBuildah:
    return install(tmp_path)


def up_cmd(root: Path, state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state), "--json", *args]


def up(fake: FakeBuildah, root: Path, *args: str, env: dict | None = None) -> tuple[int, dict, str]:
    state = root.parent / "state" / "state.db"
    r = subprocess.run(
        up_cmd(root, state, *args), capture_output=True, text=True, env=fake.env(**(env or {})), timeout=300
    )
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return r.returncode, doc, r.stderr


def statuses(doc: dict) -> dict[str, str]:
    return {x["name"]: x["status"] for x in doc["layers"]}


def tasks(doc: dict) -> dict[str, dict]:
    return {t["id"]: t for x in doc["layers"] for t in x["tasks"]}


def last_run(root: Path) -> dict:
    return json.loads((root.parent / "state" / "last-run.json").read_text())


def site(tmp_path: Path, base_extra: str = "", compute_cmds: list[str] | None = None) -> Path:
    root = tmp_path / "layers"
    root.mkdir()
    pub = tmp_path / "pub"
    (root / "base.yaml").write_text(layer("base", None, [KERNEL], base_extra))
    (root / "compute.yaml").write_text(
        layer("compute", "base", compute_cmds or ["echo compute > role"], f"publish_dir: {pub}\n")
    )
    (root / "other.yaml").write_text(layer("other", None, ["echo other > role"]))
    return root


def test_all_ok_records_every_task(tmp_path: Path, fake: FakeBuildah) -> None:
    root = site(tmp_path)
    rc, doc, err = up(fake, root, "-j", "2")
    assert rc == 0, err
    assert statuses(doc) == {"base": "ok", "compute": "ok", "other": "ok"}
    t = tasks(doc)
    assert set(t) == {
        "base:build",
        "base:tag-local",
        "compute:build",
        "compute:squashfs",
        "compute:tag-local",
        "compute:publish-artifacts",
        "other:build",
        "other:tag-local",
    }
    assert t["compute:build"]["started"] >= t["base:build"]["finished"]
    assert (tmp_path / "pub" / "compute" / "1" / "rootfs.squashfs").is_file()
    assert last_run(root)["run_id"] == doc["run_id"] and last_run(root)["exit_status"] == 0
    assert fake.containers() == []
    # Nothing changed: no task at all, nothing called but the inventory.
    before = len(fake.calls())
    rc, doc, err = up(fake, root)
    assert rc == 0 and set(statuses(doc).values()) == {"up-to-date"} and tasks(doc) == {}
    assert {c["argv"][0] for c in fake.calls()[before:]} <= {"images", "containers", "inspect"}


def test_failed_build_blocks_its_branch_only(tmp_path: Path, fake: FakeBuildah) -> None:
    root = tmp_path / "layers"
    root.mkdir()
    (root / "base.yaml").write_text(layer("base", None, ["echo about to fail; exit 3"]))
    (root / "compute.yaml").write_text(layer("compute", "base", ["true"]))
    (root / "other.yaml").write_text(layer("other", None, ["true"]))
    rc, doc, err = up(fake, root, "-j", "2")
    assert rc == 1
    assert statuses(doc) == {"base": "failed", "compute": "blocked", "other": "ok"}
    t = tasks(doc)
    assert (
        t["compute:build"]["blocked_by"] == "base:build"
        and t["compute:build"]["reason"] == "dependency-failed"
    )
    assert "cmds[0]" in doc["layers"][0]["error"]
    assert last_run(root)["summary"] == {"failed": 1, "blocked": 1, "ok": 1}
    assert fake.containers() == []


def test_failed_upload_to_missing_bucket_fails_only_that_publish(
    tmp_path: Path, fake: FakeBuildah, s3_env
) -> None:
    root = site(tmp_path, f"publish_s3: {s3_env.endpoint}\ns3_bucket: no-such-bucket\n")
    rc, doc, err = up(fake, root, "-j", "2")
    assert rc == 1, err
    assert statuses(doc) == {"base": "failed", "compute": "ok", "other": "ok"}
    t = tasks(doc)
    assert t["base:squashfs"]["status"] == "failed" and "no-such-bucket" in t["base:squashfs"]["error"]
    assert t["base:publish-artifacts"]["status"] == "blocked"
    assert t["base:build"]["status"] == t["compute:build"]["status"] == "ok"
    assert (tmp_path / "pub" / "compute" / "1" / "rootfs.squashfs").is_file()
    assert fake.containers() == [] and list((tmp_path / "state" / "work").iterdir()) == []
    # The next run redoes base's publishing only: nothing builds.
    rc, doc, _ = up(fake, root)
    assert (
        rc == 1
        and "base:build" not in tasks(doc)
        and set(tasks(doc)) == {"base:squashfs", "base:publish-artifacts"}
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failed_upload_to_stopped_server(tmp_path: Path, fake: FakeBuildah) -> None:
    root = site(tmp_path, f"publish_s3: http://127.0.0.1:{free_port()}\n")
    env = {"S3_ACCESS": S3_TEST_ACCESS, "S3_SECRET": S3_TEST_SECRET, "IMAGEGRAPH_RETRY_ATTEMPTS": "2"}
    env |= {"IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.05", "IMAGEGRAPH_RETRY_MAX_WAIT": "0.1"}
    rc, doc, err = up(fake, root, "-j", "2", env=env)
    assert rc == 1, err
    assert statuses(doc) == {"base": "failed", "compute": "ok", "other": "ok"}
    assert tasks(doc)["base:squashfs"]["status"] == "failed"


def test_failed_boot_test_holds_human_tags_not_children(tmp_path: Path, fake: FakeBuildah) -> None:
    pub = tmp_path / "basepub"
    gate = f"publish_dir: {pub}\nboot_test:\n  enabled: true\n  timeout: 60\n"
    root = site(tmp_path, gate)
    rc, doc, err = up(fake, root, "-j", "2")
    assert rc == 1, err
    t = tasks(doc)
    assert t["base:boot-test"]["status"] == "failed"
    assert t["base:publish-artifacts"]["status"] == "blocked"
    assert t["base:publish-artifacts"]["blocked_by"] == "base:boot-test"
    assert statuses(doc) == {"base": "failed", "compute": "ok", "other": "ok"}
    assert not (pub / "base").exists()  # the tag directory never appeared
    assert list((tmp_path / "state" / "work").iterdir()) == []


def wait_for_call(fake: FakeBuildah, proc: subprocess.Popen, pred, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(pred(c) for c in fake.calls_started()):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"never saw {what}")


def test_ctrl_c_mid_build_exits_130_and_records(tmp_path: Path, fake: FakeBuildah) -> None:
    root = site(tmp_path, compute_cmds=["sleep 60"])
    state = tmp_path / "state" / "state.db"
    proc = subprocess.Popen(
        up_cmd(root, state, "-j", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=fake.env(),
    )
    wait_for_call(
        fake, proc, lambda c: c["argv"][0] == "run" and "sleep 60" in c["argv"], "the sleeping build"
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert statuses(doc)["compute"] == "cancelled" and statuses(doc)["base"] == "ok"
    rec = last_run(root)
    assert rec["run_id"] == doc["run_id"] and rec["cancelled"] and rec["exit_status"] == 130
    assert fake.containers() == []


def test_ctrl_c_mid_upload_leaves_no_partial_upload(tmp_path: Path, fake: FakeBuildah, s3_env) -> None:
    bucket = s3_env.make_bucket()
    big = "head -c 6000000 /dev/urandom > big.bin"
    extra = f"publish_s3: {s3_env.proxy_endpoint}\ns3_bucket: {bucket}\nrootfs_only: true\n"
    root = site(tmp_path, extra)
    (root / "base.yaml").write_text(layer("base", None, [big], extra))
    s3_env.proxy.reset_always(min_bytes=2 * 1024 * 1024)  # every big request is cut: the upload retries
    env = {
        "IMAGEGRAPH_RETRY_ATTEMPTS": "1000",
        "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.2",
        "IMAGEGRAPH_RETRY_MAX_WAIT": "0.5",
    }
    state = tmp_path / "state" / "state.db"
    proc = subprocess.Popen(
        up_cmd(root, state, "-j", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=fake.env(**env),
    )
    deadline = time.time() + 120
    while s3_env.proxy.resets < 2 and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    assert s3_env.proxy.resets >= 2, "the upload never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    s3_env.proxy.heal()
    assert proc.returncode == 130, err
    doc = json.loads(out)
    upload = tasks(doc)["base:publish-artifacts"]
    assert upload["status"] == "cancelled", upload["error"]
    # The children's builds did not wait for the upload.
    assert tasks(doc)["compute:build"]["status"] == "ok"
    client = s3_env.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert fake.containers() == [] and list((tmp_path / "state" / "work").iterdir()) == []
    assert last_run(root)["cancelled"]


def test_j2_runs_independent_builds_at_once(tmp_path: Path, fake: FakeBuildah) -> None:
    root = tmp_path / "layers"
    root.mkdir()
    for n in ("a", "b"):
        (root / f"{n}.yaml").write_text(layer(n, None, ["sleep 1"]))
    rc, doc, err = up(fake, root, "-j", "2")
    assert rc == 0, err
    a, b = tasks(doc)["a:build"], tasks(doc)["b:build"]
    assert a["started"] < b["finished"] and b["started"] < a["finished"]
    rc, doc, err = up(fake, root, "-j", "1", "--force", "a", "--force", "b")
    a, b = tasks(doc)["a:build"], tasks(doc)["b:build"]
    assert a["finished"] <= b["started"] or b["finished"] <= a["started"]


def test_fail_fast_starts_nothing_new(tmp_path: Path, fake: FakeBuildah) -> None:
    root = tmp_path / "layers"
    root.mkdir()
    # 'a' heads the longer chain, so it starts first with one slot; 'b' never starts.
    (root / "a.yaml").write_text(layer("a", None, ["exit 1"]))
    (root / "a2.yaml").write_text(layer("a2", "a", ["true"]))
    (root / "b.yaml").write_text(layer("b", None, ["true"]))
    rc, doc, err = up(fake, root, "-j", "1", "--fail-fast")
    assert rc == 1, err
    assert statuses(doc) == {"a": "failed", "a2": "blocked", "b": "not-started"}
    assert tasks(doc)["b:build"]["reason"] == "fail-fast"
    started = [a for c in fake.calls_started() if c["argv"][0] == "from" for a in c["argv"]]
    assert [a for a in started if a.startswith("imagegraph-a-")] and not [
        a for a in started if a.startswith("imagegraph-b-")
    ]
