"""`imagegraph up --executor slurm` end to end: the real CLI, a real one-node Slurm, real buildah
builds inside the jobs (their own node-local storage), a real docker-registry between them.

    root (dnf from scratch) -> good -> leaf
                            -> bad  -> after-bad     (bad's cmds fail until fixed)
                            -> side
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

from imagegraph.key import KEY_TAG_PREFIX
from imagegraph.publish.registry_client import RegistryClient
from tests.fixtures_build import have_buildah
from tests.slurmcluster import SlurmCluster

pytestmark = [
    pytest.mark.buildah,
    pytest.mark.slurm,
    pytest.mark.skipif(not have_buildah(), reason="needs buildah as root"),
]

P = "igt-slurm"


def layer(name: str, parent: str, registry: str, cmds: list[str], extra: str = "") -> str:
    text = f"""
    options:
      layer_type: base
      name: {P}-{name}
      publish_tags: ['1']
      pkg_manager: dnf
      parent: '{parent}'
      publish_registry: '{registry}/igs'
      registry_opts_push: ['--tls-verify=false']
      registry_opts_pull: ['--tls-verify=false']
      gpgcheck: false
      releasever: '9'
    """
    text = textwrap.dedent(text) + extra
    return text + "cmds:\n" + "".join(f"  - cmd: {json.dumps(c)}\n" for c in cmds)


def make_site(root: Path, repo_url: str, registry: str, graphroot: Path, bad_cmd: str = "exit 7") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    base = f"{registry}/igs/{P}"
    repos = f"repos:\n  - alias: igtest\n    url: '{repo_url}'\npackage_groups: ['IG Minimal']\n"
    (root / "root.yaml").write_text(layer("root", "scratch", registry, ["echo root > /etc/role"], repos))
    (root / "good.yaml").write_text(layer("good", f"{base}-root:1", registry, ["echo good > /etc/role"]))
    (root / "leaf.yaml").write_text(layer("leaf", f"{base}-good:1", registry, ["cat /etc/role > /etc/was"]))
    (root / "bad.yaml").write_text(layer("bad", f"{base}-root:1", registry, [bad_cmd]))
    (root / "after-bad.yaml").write_text(layer("after-bad", f"{base}-bad:1", registry, ["echo ab"]))
    (root / "side.yaml").write_text(layer("side", f"{base}-root:1", registry, ["echo side > /etc/role"]))
    settings(root, graphroot)
    return root


def settings(root: Path, graphroot: Path, **extra: object) -> None:
    doc = {"kind": "slurm", "partition": "build", "graphroot": str(graphroot), "poll_interval": 0.5, **extra}
    (root / "imagegraph.yaml").write_text(
        "executor:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in doc.items())
    )


def cli_env(cluster: SlurmCluster) -> dict[str, str]:
    return {
        **cluster.env,
        "BUILDAH_ISOLATION": "chroot",
        "IMAGEGRAPH_RETRY_ATTEMPTS": "2",
        "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.2",
    }


def up(cluster: SlurmCluster, root: Path, *args: str, timeout: int = 600) -> tuple[int, dict, str]:
    r = subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--json", *args],
        capture_output=True,
        text=True,
        env=cli_env(cluster),
        timeout=timeout,
    )
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return r.returncode, doc, r.stderr


def statuses(doc: dict) -> dict[str, str]:
    return {x["name"]: x["status"] for x in doc["layers"]}


def run_doc(root: Path, doc: dict) -> dict:
    return json.loads((root / ".imagegraph" / "runs" / f"{doc['run_id']}.json").read_text())


def active(cluster: SlurmCluster) -> list[str]:
    return [
        j for j in cluster.jobs() if j.split("|")[2] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
    ]


def wait_until(what: str, check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def node_env(graphroot: Path) -> dict[str, str]:
    conf = Path(str(graphroot) + "-run") / "storage.conf"
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "BUILDAH_ISOLATION": "chroot"}


def node_containers(graphroot: Path) -> list[str]:
    r = subprocess.run(
        ["buildah", "containers", "--format", "{{.ContainerName}}"],
        capture_output=True,
        text=True,
        env=node_env(graphroot),
        check=True,
    )
    return r.stdout.split()


def node_storage_clean(graphroot: Path) -> None:
    """Remove what jobs left in their node-local storage (working containers, images)."""
    conf = Path(str(graphroot) + "-run") / "storage.conf"
    if conf.exists():
        env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "BUILDAH_ISOLATION": "chroot"}
        subprocess.run(["buildah", "rm", "--all"], capture_output=True, env=env, check=False)
        subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True, env=env, check=False)


@pytest.fixture
def site(tmp_path: Path, rpm_repo, registry, slurm):
    graphroot = Path("/var/tmp") / f"ig-slurm-node-{os.getpid()}-{tmp_path.name}"
    root = make_site(tmp_path / "site", rpm_repo.url, registry.host, graphroot)
    yield root, registry, slurm, graphroot
    slurm.cancel_all()
    node_storage_clean(graphroot)
    subprocess.run(["rm", "-rf", str(graphroot), str(graphroot) + "-run"], check=False)


def test_failing_branch_then_fix_then_noop(site) -> None:
    root, registry, cluster, graphroot = site
    rc, doc, err = up(cluster, root)
    assert rc == 1, err
    st = statuses(doc)
    assert st == {
        "root": "ok",
        "good": "ok",
        "leaf": "ok",
        "bad": "failed",
        "after-bad": "blocked",
        "side": "ok",
    }, err
    bad = {x["name"]: x for x in doc["layers"]}["bad"]
    assert "exit status 1 (the build failed)" in bad["error"] and "cmds[0]" in bad["error"], bad["error"]
    assert active(cluster) == [], "a job of the run is still queued or running"

    rd = run_doc(root, doc)
    by_layer = {j["layer"]: j for j in rd["jobs"]}
    assert set(by_layer) == {"root", "good", "leaf", "bad", "after-bad", "side"}
    assert by_layer["bad"]["state"] == "FAILED" and by_layer["bad"]["exit_code"].startswith("1:")
    # Slurm itself cancelled the failed layer's descendant (afterok + --kill-on-invalid-dep)...
    wait_until(
        "Slurm to cancel after-bad",
        lambda: any("|CANCELLED" in j and "after-bad" in j for j in cluster.jobs()),
    )
    # ... and every job depended on exactly its parent's job.
    assert by_layer["good"]["dependencies"] == [by_layer["root"]["job_id"]]
    assert by_layer["leaf"]["dependencies"] == [by_layer["good"]["job_id"]]
    assert by_layer["after-bad"]["dependencies"] == [by_layer["bad"]["job_id"]]
    assert by_layer["root"]["dependencies"] == []
    assert all(j["node"] == cluster.host for n, j in by_layer.items() if n != "after-bad")

    client = RegistryClient()
    client.configure_registry(registry.host, ["--tls-verify=false"])
    for name in ("root", "good", "leaf", "side"):
        tags = client.tags(f"{registry.host}/igs/{P}-{name}") or set()
        assert "1" in tags and any(t.startswith(KEY_TAG_PREFIX) for t in tags), (name, tags)
    assert not client.tags(f"{registry.host}/igs/{P}-bad")
    # Each job read its image's package inventory on the node; the submit host recorded it and
    # attached the SBOM to the pushed image.
    from imagegraph.diff import inventory_of
    from imagegraph.publish.referrers import referring
    from imagegraph.state import State

    state = State(root / ".imagegraph" / "state.db", readonly=True)
    leaf = state.layer("leaf")
    assert "ig-busybox" in {p.name for p in inventory_of(state, leaf.key).packages}
    leaf_repo = f"{registry.host}/igs/{P}-leaf"
    found = referring(client, leaf_repo, client.manifest_digest(f"{leaf_repo}:{KEY_TAG_PREFIX}{leaf.key}"))
    assert [m["annotations"]["io.imagegraph.key"] for m in found] == [leaf.key]
    # The children were built on their parent pulled by its key tag.
    log = Path(by_layer["leaf"]["log_file"]).read_text()
    assert f"pulling parent {registry.host}/igs/{P}-good:{KEY_TAG_PREFIX}" in log

    # Fixed: only bad and its child are stale, and only they are submitted.
    (root / "bad.yaml").write_text(
        (root / "bad.yaml").read_text().replace('"exit 7"', '"echo fixed > /etc/role"')
    )
    rc, doc, err = up(cluster, root)
    assert rc == 0, err
    assert {n for n, s in statuses(doc).items() if s == "ok"} == {"bad", "after-bad"}
    assert {j["layer"] for j in run_doc(root, doc)["jobs"]} == {"bad", "after-bad"}

    # Nothing stale: nothing submitted.
    before = cluster.last_job_id()
    rc, doc, err = up(cluster, root)
    assert rc == 0, err
    assert set(statuses(doc).values()) == {"up-to-date"}
    assert run_doc(root, doc)["jobs"] == []
    assert cluster.last_job_id() == before

    # `status` shows each layer's job of the last Slurm run.
    r = subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", "status", str(root), "--json"],
        capture_output=True,
        text=True,
        env=cli_env(cluster),
    )
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert {j["layer"] for j in st["slurm_jobs"]} == {"bad", "after-bad"}
    r = subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", "status", str(root)],
        capture_output=True,
        text=True,
        env={**cli_env(cluster), "COLUMNS": "200"},
    )
    assert "Slurm jobs of the last Slurm run" in r.stdout
    for j in st["slurm_jobs"]:
        assert f" {j['job_id']} " in r.stdout and "COMPLETED" in r.stdout


def test_missing_registry_is_a_spec_error(site) -> None:
    root, registry, cluster, graphroot = site
    text = (root / "side.yaml").read_text()
    (root / "side.yaml").write_text(
        "\n".join(ln for ln in text.splitlines() if "publish_registry" not in ln) + "\n"
    )
    before = cluster.last_job_id()
    rc, doc, err = up(cluster, root, "--log-format", "console")
    assert rc == 2
    assert "side.yaml:2:1" in err and "publish_registry" in err and "nothing was built" in err
    assert cluster.last_job_id() == before


def _up_while_root_runs(
    root: Path, cluster: SlurmCluster, cmd: str, drop: tuple[str, ...] = (), quiet: bool = False
) -> subprocess.Popen:
    """`up --json` started with root's cmd replaced by `cmd` (and the specs in `drop` removed),
    returned once root's job runs that command."""
    for name in drop:
        (root / f"{name}.yaml").unlink()
    (root / "root.yaml").write_text(
        (root / "root.yaml").read_text().replace('"echo root > /etc/role"', f'"{cmd}"')
    )
    out = subprocess.DEVNULL if quiet else subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--json"],
        stdout=out,
        stderr=out,
        text=True,
        env=cli_env(cluster),
    )
    try:
        wait_until("root's job to run its command", lambda: cmd in _job_log(root))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def test_sigterm_cancels_the_run_jobs(site) -> None:
    root, registry, cluster, graphroot = site
    first = max((int(j.split("|")[0]) for j in cluster.jobs()), default=0)
    proc = _up_while_root_runs(root, cluster, "sleep 60")
    try:
        assert len(active(cluster)) == 6
        rc, _doc, err2 = up(cluster, root)  # a second submit side for the same state directory
        assert rc == 3 and "another imagegraph run holds" in err2
        assert len(active(cluster)) == 6, "the second submit side submitted jobs"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    doc = json.loads(out)
    assert doc["cancelled"] is True
    wait_until("the run's jobs to end", lambda: active(cluster) == [], timeout=60)
    ours = [j.split("|") for j in cluster.jobs() if int(j.split("|")[0]) > first]
    assert len(ours) == 6
    assert {state for _id, _name, state in ours} == {"CANCELLED"}, ours
    # The job's build stopped and removed its working container.
    log = _job_log(root)
    assert "SIGTERM: stopping" in log
    wait_until("the job's working container to go", lambda: node_containers(graphroot) == [], timeout=30)


def test_node_failure_is_reported(site) -> None:
    root, registry, cluster, graphroot = site
    proc = _up_while_root_runs(root, cluster, "sleep 60", ("good", "leaf", "bad", "after-bad", "side"))
    try:
        job_id = next(j.split("|")[0] for j in cluster.jobs() if "|RUNNING" in j)
        cluster.kill_node(job_id)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    doc = json.loads(out)
    res = doc["layers"][0]
    assert res["status"] == "failed"
    assert "NODE_FAIL" in res["error"] and "build node failed" in res["error"]
    cluster.revive_node()
    # The dead job left its working container (and its mount) in the node's storage; the next
    # job on that node removes it, and `up` again builds.
    assert node_containers(graphroot), "the killed job's working container should still be there"
    (root / "root.yaml").write_text((root / "root.yaml").read_text().replace('"sleep 60"', '"echo again"'))
    rc, doc, err = up(cluster, root)
    assert rc == 0, err
    assert node_containers(graphroot) == []
    assert not [m for m in Path("/proc/mounts").read_text().splitlines() if str(graphroot) in m]


def _job_log(root: Path) -> str:
    logs = list((root / ".imagegraph" / "logs").glob("root-*.log"))
    return "".join(p.read_text(errors="replace") for p in logs if not p.is_symlink())


def test_a_dead_submit_side_leaves_jobs_the_next_up_adopts(site) -> None:
    root, registry, cluster, graphroot = site
    first = _up_while_root_runs(root, cluster, "sleep 8", ("leaf", "bad", "after-bad", "side"), quiet=True)
    first.kill()  # SIGKILL: no chance to cancel anything
    first.wait()
    assert len(active(cluster)) == 2
    submitted = cluster.last_job_id()
    rc, doc, err = up(cluster, root)
    assert rc == 0, err
    assert statuses(doc) == {"root": "ok", "good": "ok"}
    assert cluster.last_job_id() == submitted, (
        "a layer whose job was still queued or running was submitted again"
    )
    assert all(j["adopted"] for j in run_doc(root, doc)["jobs"])


def test_an_admin_scancel_fails_the_layer_and_leaves_nothing(site) -> None:
    """`scancel` of a running build job (an admin, a preemption): the layer fails naming the job and
    its state, its child's job goes too, nothing stays queued or in the node's storage, and the next
    `up` builds them."""
    root, registry, cluster, graphroot = site
    proc = _up_while_root_runs(root, cluster, "sleep 60", ("leaf", "bad", "after-bad", "side"))
    try:
        job_id = next(j.split("|")[0] for j in cluster.jobs() if "|RUNNING" in j)
        subprocess.run(["scancel", job_id], env=cluster.env, check=True)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    doc = json.loads(out)
    st = statuses(doc)
    assert st["root"] == "failed" and st["good"] in ("blocked", "failed", "cancelled"), st
    res = {x["name"]: x for x in doc["layers"]}["root"]
    assert "CANCELLED" in res["error"] and job_id in res["error"], res["error"]
    wait_until("the run's jobs to end", lambda: active(cluster) == [], timeout=60)
    wait_until("the job's working container to go", lambda: node_containers(graphroot) == [], timeout=30)
    rd = run_doc(root, doc)
    assert {j["layer"]: j["state"] for j in rd["jobs"]}["root"] == "CANCELLED"
    (root / "root.yaml").write_text((root / "root.yaml").read_text().replace('"sleep 60"', '"echo again"'))
    rc, doc, err = up(cluster, root)
    assert rc == 0, err
    assert statuses(doc) == {"root": "ok", "good": "ok"}
    assert active(cluster) == []


def test_a_drained_node_is_said_once_and_the_run_resumes_with_it(site) -> None:
    """The node drained mid-build: the running job finishes, the child's job waits for the node;
    `up` says so once (job, Slurm's reason, what to do) instead of waiting in silence, and completes
    when the node is resumed."""
    root, registry, cluster, graphroot = site
    proc = _up_while_root_runs(root, cluster, "sleep 4", ("leaf", "bad", "after-bad", "side"))
    drain = ["scontrol", "update", f"nodename={cluster.host}"]
    try:
        subprocess.run([*drain, "state=drain", "reason=faults-test"], env=cluster.env, check=True)

        def good_waits_for_the_node() -> bool:
            r = subprocess.run(
                ["squeue", "-h", "-o", "%j|%T|%r"], env=cluster.env, capture_output=True, text=True
            )
            return any(
                "ig-good" in ln and "PENDING" in ln and "DRAINED" in ln for ln in r.stdout.splitlines()
            )

        wait_until("good's job to wait for the drained node", good_waits_for_the_node, timeout=60)
        time.sleep(3)  # a few polls (poll_interval 0.5 s) while it waits: one warning, not one per poll
    finally:
        subprocess.run([*drain, "state=resume"], env=cluster.env, check=False)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert statuses(json.loads(out)) == {"root": "ok", "good": "ok"}
    said = [ln for ln in err.splitlines() if "build job cannot start" in ln]
    assert len(said) == 1, err
    assert "layer=good" in said[0] and "DRAINED" in said[0] and "state=resume" in said[0], said[0]
    assert active(cluster) == []
