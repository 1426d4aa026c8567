"""Running unattended, through the real CLI and buildah: upstream lock round trip, JSON logs,
`status` and `log`, two concurrent `up` runs (`--wait`), and `gc` against a real registry and S3.

Layers are busybox images built from scratch with dnf from test repositories (a few seconds each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagegraph.key import KEY_TAG_PREFIX
from imagegraph.publish.registry_client import RegistryClient
from tests.fixtures_build import buildah, have_buildah
from tests.needs import requires
from tests.rpmrepo import make_repo, serve

pytestmark = [pytest.mark.buildah, requires(have_buildah(), "needs buildah as root")]

P = "igt-un"
EXE = [sys.executable, "-m", "imagegraph.cli"]


def env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "BUILDAH_ISOLATION": "chroot",
        "IMAGEGRAPH_RETRY_ATTEMPTS": "2",
        "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.1",
        **extra,
    }


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env(), timeout=timeout)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()
    )


def scratch_layer(name: str, repo_url: str, cmds: list[str], extra: str = "", alias: str = "igtest") -> str:
    return (
        f"options:\n  layer_type: base\n  name: {P}-{name}\n  publish_tags: ['1']\n  pkg_manager: dnf\n"
        f"  parent: scratch\n  gpgcheck: false\n  releasever: '9'\n  publish_local: true\n{extra}"
        f"repos:\n  - alias: {alias}\n    url: '{repo_url}'\n"
        "package_groups: ['IG Minimal']\npackages: [ig-hello]\n"
        "cmds:\n" + "".join(f"  - {json.dumps(c)}\n" for c in cmds)
    )


def child_layer(name: str, parent: str, cmds: list[str]) -> str:
    return (
        f"options:\n  layer_type: base\n  name: {P}-{name}\n  publish_tags: ['1']\n  pkg_manager: dnf\n"
        f"  parent: 'localhost/{P}-{parent}:1'\n  publish_local: true\n"
        "cmds:\n" + "".join(f"  - {json.dumps(c)}\n" for c in cmds)
    )


def by_name(doc: dict) -> dict[str, dict]:
    return {x["name"]: x for x in doc["layers"]}


def built(doc: dict) -> set[str]:
    return {x["name"] for x in doc["layers"] if x["action"] == "build" and x["status"] == "ok"}


def cat(ref: str, path: str) -> str:
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        return buildah("run", ctr, "--", "cat", path).stdout.strip()
    finally:
        buildah("rm", ctr, check=False)


def cleanup_images() -> None:
    for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
        if f"/{P}-" in ref:
            buildah("rmi", "-f", ref, check=False)


@pytest.fixture
def own_repo(tmp_path: Path):
    """A dnf repository of our own (the session one is shared; this one gets republished)."""
    repo = make_repo(tmp_path / "own-repo")
    server = serve(repo.path)
    repo.url = server.url
    yield repo
    server.stop()
    repo.cleanup()


@pytest.fixture
def cleanup():
    yield
    cleanup_images()


# ----------------------------------------------------------------------- upstream lock


def test_upstream_republish_rebuilds_exactly_its_users_with_json_logs(
    tmp_path: Path, own_repo, rpm_repo, cleanup
) -> None:
    """a (own repo) -> a2;  b (the session repo). A new ig-hello in own repo rebuilds a and a2 only."""
    root = tmp_path / "layers"
    root.mkdir()
    (root / "a.yaml").write_text(
        scratch_layer("a", own_repo.url, ["cat /usr/share/ig-hello/hello.txt > /etc/hello"], alias="ownrepo")
    )
    (root / "a2.yaml").write_text(child_layer("a2", "a", ["echo a2 > /etc/role"]))
    (root / "b.yaml").write_text(scratch_layer("b", rpm_repo.url, ["echo b > /etc/role"]))
    state = tmp_path / "state" / "state.db"

    r = cli("lock", str(root), "--state", str(state))
    assert r.returncode == 0, r.stderr
    assert "ownrepo" in (root / "imagegraph.lock").read_text()

    r = cli("up", str(root), "--state", str(state), "--json", "--log-format", "json", "-j", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert built(doc) == {"a", "a2", "b"}
    assert cat(f"localhost/{P}-a:1", "/etc/hello") == "ig-hello 1.0"
    # Every stderr line is a JSON event carrying the run id; layer events name their layer and step.
    events = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
    assert events and all(e["run_id"] == doc["run_id"] for e in events)
    finished = [e for e in events if e["event"] == "layer finished"]
    assert {e["layer"] for e in finished} == {"a", "a2", "b"}
    assert all(e["layer"] in ("a", "a2", "b") for e in events if "layer" in e)
    steps = {(e["layer"], e["step"]) for e in events if "layer" in e and "step" in e}
    assert {("a", "plan"), ("a", "build"), ("a2", "build"), ("b", "build")} <= steps

    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json").stdout)
    assert {x["action"] for x in plan["layers"]} == {"up-to-date"}

    own_repo.add_version("ig-hello", "2.0")
    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json").stdout)
    assert {x["action"] for x in plan["layers"]} == {"up-to-date"}  # locked: nothing moves yet

    r = cli("lock", str(root), "--update", "--state", str(state))
    assert r.returncode == 0 and "~ repository ownrepo" in r.stdout, r.stdout + r.stderr
    assert "~ packages a.yaml" in r.stdout and "ig-hello 1.0-1 -> 2.0-1 (ownrepo)" in r.stdout, r.stdout
    r = cli("plan", str(root), "--state", str(state))
    assert "upstream: ig-hello 1.0-1 -> 2.0-1 (ownrepo)" in r.stdout, r.stdout
    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json").stdout)
    acts = {x["name"]: x["action"] for x in plan["layers"]}
    assert acts == {"a": "build", "a2": "build", "b": "up-to-date"}
    assert by_name(plan)["a"]["reasons"][0]["code"] == "upstream-package"

    r = cli("up", str(root), "--state", str(state), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert built(json.loads(r.stdout)) == {"a", "a2"}
    assert cat(f"localhost/{P}-a:1", "/etc/hello") == "ig-hello 2.0"

    # status: the runs and each layer's key; log: the layer's last build log.
    st = json.loads(cli("status", str(root), "--state", str(state), "--json").stdout)
    assert [x["status"] for x in st["runs"]][:2] == ["ok", "ok"] and st["runs"][0]["command"] == "up"
    assert set(st["layers"]) == {"a", "a2", "b"} and st["layers"]["a"]["key"] == by_name(plan)["a"]["key"]
    text = cli("status", str(root), "--state", str(state)).stdout
    assert "recent runs" in text and "a2" in text and by_name(plan)["a"]["key"][:12] in text
    lg = cli("log", str(root), "a", "--state", str(state))
    assert (
        lg.returncode == 0
        and "upstream: ig-hello 1.0-1 -> 2.0-1 (ownrepo)" in lg.stdout
        and "==> [build]" in lg.stdout
    )
    assert cli("log", str(root), "nosuch", "--state", str(state)).returncode == 2
    assert (state.parent / "last-success.json").is_file()


# ------------------------------------------------------------------------ concurrency


def test_second_run_exits_3_and_wait_queues(tmp_path: Path, rpm_repo, cleanup) -> None:
    root = tmp_path / "layers"
    root.mkdir()
    (root / "slow.yaml").write_text(scratch_layer("slow", rpm_repo.url, ["sleep 5", "echo slow > /etc/role"]))
    state = tmp_path / "state" / "state.db"
    first = spawn("up", str(root), "--state", str(state), "--json")
    log = state.parent / "logs" / "slow.log"
    deadline = time.time() + 120
    while not (log.exists() and "sleep 5" in log.read_text(errors="replace")):
        assert first.poll() is None, first.communicate()
        assert time.time() < deadline, "the slow build never started"
        time.sleep(0.2)
    waiting = spawn("up", str(root), "--state", str(state), "--json", "--wait")
    second = cli("up", str(root), "--state", str(state), "--json")
    assert second.returncode == 3, second.stderr
    assert f"pid {first.pid}" in second.stderr and "--wait" in second.stderr
    assert first.poll() is None  # the refused run did not disturb the running one
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    out2, err2 = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err2[-2000:]
    # It planned after the first run finished: nothing left to build.
    doc = json.loads(out2)
    assert built(doc) == set() and by_name(doc)["slow"]["status"] == "up-to-date"
    assert doc["started"] >= json.loads(out)["finished"] - 1


# ------------------------------------------------------------------------------ gc


def kernel_cmd(v: int) -> str:
    return (
        f"mkdir -p /lib/modules/6.1.0-{v} /boot && echo k{v} > /boot/vmlinuz-6.1.0-{v}"
        f" && echo i{v} > /boot/initramfs-6.1.0-{v}.img && printf 'ID=igtest\\nVERSION_ID=1\\n' > /etc/os-release"
    )


def test_gc_keeps_newest_builds_in_registry_s3_and_local(
    tmp_path: Path, rpm_repo, registry, s3_env, cleanup
) -> None:
    bucket = s3_env.make_bucket()
    root = tmp_path / "layers"
    root.mkdir()
    extra = (
        f"  publish_registry: '{registry.host}/igt'\n  registry_opts_push: ['--tls-verify=false']\n"
        f"  publish_s3: '{s3_env.endpoint}'\n  s3_bucket: '{bucket}'\n  s3_prefix: 'gc/'\n"
    )
    spec = root / "node.yaml"
    state = tmp_path / "state" / "state.db"
    keys = []
    for v in (1, 2, 3):  # three versions; each one's kernel has its own S3 keys
        spec.write_text(scratch_layer("node", rpm_repo.url, [kernel_cmd(v)], extra))
        r = cli("up", str(root), "--state", str(state), "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        # The run record holds the plan it ran, keys included.
        record = json.loads((state.parent / "runs" / f"{json.loads(r.stdout)['run_id']}.json").read_text())
        keys.append(by_name(record["plan"])["node"]["key"])
    repo = f"{registry.host}/igt/{P}-node"
    s3 = s3_env.client()

    def tags() -> set[str]:
        # without the SBOMs' referrers indexes (OCI tag schema `sha256-<digest>`): checked apart
        return {t for t in RegistryClient().tags(repo) or set() if not t.startswith("sha256-")}

    def referrer_tags() -> set[str]:
        return {t for t in RegistryClient().tags(repo) or set() if t.startswith("sha256-")}

    def objects() -> set[str]:
        return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}

    def local() -> set[str]:
        return set(buildah("images", "--format", "{{.Name}}:{{.Tag}}").stdout.split())

    kt = [KEY_TAG_PREFIX + k for k in keys]
    assert tags() == {"1", *kt}
    digests = [RegistryClient().manifest_digest(f"{repo}:{t}") for t in kt]
    assert referrer_tags() == {d.replace(":", "-") for d in digests}
    assert {f"efi-images/gc/vmlinuz-6.1.0-{v}" for v in (1, 2, 3)} <= objects()
    before = (tags(), objects())

    r = cli("gc", str(root), "--keep", "2", "--dry-run", "--state", str(state), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    would = {(i["kind"], i["location"]) for i in doc["items"] if i["action"] == "would-remove"}
    assert ("key-tag", f"{repo}:{kt[0]}") in would
    assert ("local-image", f"localhost/imagegraph/{P}-node:{kt[0]}") in would
    assert {i["location"].rsplit("/", 1)[1] for i in doc["items"] if i["kind"] == "s3-object"} == {
        "vmlinuz-6.1.0-1",
        "initramfs-6.1.0-1.img",
    }
    assert (tags(), objects()) == before  # a dry run removes nothing

    r = cli("gc", str(root), "--keep", "2", "--state", str(state))
    assert r.returncode == 0, r.stdout + r.stderr
    assert tags() == {"1", kt[1], kt[2]}
    assert referrer_tags() == {d.replace(":", "-") for d in digests[1:]}  # the removed image's SBOM index too
    objs = objects()
    assert not {"efi-images/gc/vmlinuz-6.1.0-1", "efi-images/gc/initramfs-6.1.0-1.img"} & objs
    assert {f"efi-images/gc/vmlinuz-6.1.0-{v}" for v in (2, 3)} <= objs and "gc/igtest1-igt-un-node-1" in objs
    imgs = local()
    assert f"localhost/imagegraph/{P}-node:{kt[0]}" not in imgs
    assert {f"localhost/imagegraph/{P}-node:{kt[1]}", f"localhost/imagegraph/{P}-node:{kt[2]}"} <= imgs
    # Recorded as a run.
    runs = json.loads(cli("status", str(root), "--state", str(state), "--json").stdout)["runs"]
    assert runs[0]["command"] == "gc" and runs[0]["status"] == "ok"

    # A human tag on the second build's manifest protects its key tag (deleting it would delete both).
    client = RegistryClient()
    client.put_tag(repo, client.manifest_digest(f"{repo}:{kt[1]}"), "pinned")
    r = cli("gc", str(root), "--keep", "1", "--state", str(state), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert any(i["action"] == "kept" and "pinned" in i["reason"] for i in doc["items"])
    assert tags() == {"1", "pinned", kt[1], kt[2]}
    assert "efi-images/gc/vmlinuz-6.1.0-2" not in objects()  # its S3 objects were still old
    assert cli("plan", str(root), "--state", str(state), "--json").returncode == 0
    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json").stdout)
    assert {x["action"] for x in plan["layers"]} == {"up-to-date"}  # the current build is untouched
