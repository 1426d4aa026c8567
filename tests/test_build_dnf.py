"""Real dnf builds with buildah against a repository made at test time."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from imagegraph import runner as runner_mod
from imagegraph.build import BuildRequest, ParentImage, build_layer, local_image_id
from imagegraph.build.container import inspect_labels, read_owner, records_dir
from imagegraph.errors import BuildError
from imagegraph.runner import Cancelled, Runner
from tests.fixtures_build import (
    ENV,
    buildah,
    busybox_spec_text,
    containers,
    fake_key,
    have_buildah,
    overlay_mounts,
)
from tests.needs import requires

pytestmark = [
    pytest.mark.buildah,
    requires(have_buildah(), "needs buildah as root"),
]


def mounted_rpm_q(ref: str, *pkgs: str) -> subprocess.CompletedProcess:
    """rpm -q against the image's own database location (/var/lib/rpm)."""
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        mnt = buildah("mount", ctr).stdout.strip()
        return subprocess.run(
            ["rpm", "--root", mnt, "--dbpath", "/var/lib/rpm", "-q", *pkgs],
            capture_output=True,
            text=True,
            env={**ENV, "HOME": "/nonexistent"},
        )
    finally:
        buildah("rm", ctr, check=False)


def run_in(ref: str, *argv: str) -> str:
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        return buildah("run", ctr, "--", *argv).stdout
    finally:
        buildah("rm", ctr, check=False)


def no_leftovers(log: str = "") -> None:
    """None of our test layers' containers, records or mounts is left (other suites may run meanwhile)."""
    assert [c for c in containers() if c.startswith("imagegraph-ig-test-")] == []
    d = records_dir()
    assert not (d.is_dir() and list(d.glob("imagegraph-ig-test-*.json")))
    for mnt in re.findall(r"mounted at (\S+)", log):
        assert not any(mnt in m for m in overlay_mounts()), f"{mnt} is still mounted"


def test_dnf_from_scratch(rpm_repo, write_spec, build_runner, images, tmp_path, monkeypatch):
    work_dir = tmp_path / "cwd"
    work_dir.mkdir()
    monkeypatch.chdir(work_dir)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    spec = write_spec(
        busybox_spec_text(rpm_repo.url, name="ig-test/scratch")
        + """
    remove_packages:
      - ig-extra
    cmds:
      - cmd: 'echo cmd-stdout; echo cmd-stderr >&2; cat /usr/share/ig-hello/hello.txt > /etc/from-cmd'
        loglevel: WARN
      - 'test -x /bin/sh'
    """
    )
    key = fake_key("scratch")
    result = build_layer(BuildRequest(spec=spec, key=key, parent=None, run_id="r1"), build_runner)
    images.add(result.image_ref)

    assert result.image_ref == f"localhost/imagegraph/ig-test/scratch:ig-{key}"
    assert len(result.image_id) == 64
    assert local_image_id(result.image_ref) == result.image_id
    names = [s for s, _ in result.steps]
    assert names[:2] == ["from", "mount"]
    for step in ("repos", "package_groups", "packages", "remove_packages", "cmds[0]", "cmds[1]", "commit"):
        assert step in names
    assert names.index("package_groups") < names.index("packages") < names.index("remove_packages")

    # the rpm database is where the image's own rpm looks, with the group, the package, not the removed one
    q = mounted_rpm_q(result.image_ref, "ig-busybox", "ig-hello", "ig-extra")
    assert "ig-busybox-1.0-1.noarch" in q.stdout
    assert "ig-hello-1.0-1.noarch" in q.stdout
    assert "package ig-extra is not installed" in q.stdout
    assert run_in(result.image_ref, "cat", "/etc/from-cmd").strip() == "ig-hello 1.0"
    # no repo files of the layer inside the image (scratch repos are private to the build)
    assert "yum.repos.d" not in run_in(result.image_ref, "ls", "/etc").split()

    log = build_runner.logfile.getvalue()
    assert "cmd-stdout" in log and "cmd-stderr" in log
    assert "==> [cmds[0]]" in log

    labels = inspect_labels(result.image_ref, build_runner)
    assert labels["org.openchami.image.name"] == "ig-test/scratch"
    assert labels["org.openchami.image.type"] == "base"
    assert labels["org.openchami.image.parent"] == "scratch"
    assert labels["org.openchami.image.package-manager"] == "dnf"
    assert labels["org.openchami.image.repositories"] == "igtest"
    assert labels["org.openchami.image.packages"] == "ig-hello"
    assert labels["org.openchami.image.package-groups"] == "IG Minimal"
    # no publish tags (not key inputs) and no wall-clock date in the image (labels.py)
    assert not {"org.openchami.image.tags", "org.openchami.image.build-date"} & set(labels)
    assert labels["io.imagegraph.key"] == key
    assert labels["io.imagegraph.parent-key"] == ""

    # nothing left behind: cwd, /tmp, containers, mounts, ownership records
    assert list(work_dir.iterdir()) == []
    # the build's private temp dir (seen in the commit's --iidfile) is gone; other suites may run meanwhile
    build_tmp = re.findall(r"--iidfile (\S+)/iid", log)
    assert build_tmp and not any(os.path.exists(t) for t in build_tmp)
    no_leftovers(build_runner.logfile.getvalue())


def test_image_parent_without_dnf_uses_host_dnf(
    busybox_image, rpm_repo, write_spec, build_runner, images, tmp_path
):
    parent_result, _, parent_key = busybox_image
    (tmp_path / "files" / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "files" / "tree" / "a.txt").write_text("A\n")
    (tmp_path / "files" / "tree" / "sub" / "b.txt").write_text("B\n")
    (tmp_path / "files" / "single.conf").write_text("single\n")
    spec = write_spec(
        f"""
        options:
          layer_type: base
          name: ig-test/child
          publish_tags: [a, b]
          pkg_manager: dnf
          parent: localhost/ig-busybox-base:1.0
          gpgcheck: false
          publish_local: true
          labels:
            site.example/owner: hpc-team
        repos:
          - alias: igchild
            url: '{rpm_repo.url}'
        packages:
          - ig-tool
        remove_packages:
          - ig-hello
        copyfiles:
          - src: files/single.conf
            dest: /etc/single.conf
            opts: ['--chown 1000:1000']
          - src: files/tree
            dest: /opt/tree
        cmds:
          - 'stat -c "%u:%g" /etc/single.conf > /etc/owner; cat /opt/tree/sub/b.txt'
        """
    )
    key = fake_key("child")
    parent = ParentImage(image=parent_result.image_id, ref="localhost/ig-busybox-base:1.0", key=parent_key)
    result = build_layer(BuildRequest(spec=spec, key=key, parent=parent), build_runner)
    images.add(result.image_ref, "localhost/ig-test/child:a", "localhost/ig-test/child:b")

    q = mounted_rpm_q(result.image_ref, "ig-busybox", "ig-tool", "ig-hello")
    assert "ig-busybox-1.0-1.noarch" in q.stdout  # from the parent: same database, extended
    assert "ig-tool-1.0-1.noarch" in q.stdout
    assert "package ig-hello is not installed" in q.stdout
    assert run_in(result.image_ref, "cat", "/etc/owner").strip() == "1000:1000"
    assert run_in(result.image_ref, "cat", "/opt/tree/a.txt", "/opt/tree/sub/b.txt").split() == ["A", "B"]
    # the layer's repos are added to the image for later layers, as image-builder does on parents
    assert "baseurl=" + rpm_repo.url in run_in(result.image_ref, "cat", "/etc/yum.repos.d/igchild.repo")
    assert local_image_id("localhost/ig-test/child:a") == result.image_id
    assert local_image_id("localhost/ig-test/child:b") == result.image_id
    labels = inspect_labels(result.image_ref, build_runner)
    assert labels["org.openchami.image.parent"] == "localhost/ig-busybox-base:1.0"
    assert labels["io.imagegraph.parent-key"] == parent_key
    assert labels["site.example/owner"] == "hpc-team"
    no_leftovers(build_runner.logfile.getvalue())


def test_failing_cmd_names_step_and_cleans_up(busybox_image, write_spec, build_runner):
    parent_result, _, _ = busybox_image
    spec = write_spec(
        """
        options:
          layer_type: base
          name: ig-test/fails
          pkg_manager: dnf
          parent: localhost/ig-busybox-base:1.0
        cmds:
          - 'true'
          - 'echo fine'
          - 'echo about to fail; echo boom-detail >&2; exit 7'
        """
    )
    parent = ParentImage(image=parent_result.image_id, ref="localhost/ig-busybox-base:1.0", key=None)
    with pytest.raises(BuildError) as info:
        build_layer(BuildRequest(spec=spec, key=fake_key("fails"), parent=parent), build_runner)
    err = info.value
    assert err.step == "cmds[2]"
    assert err.layer == "ig-test/fails"
    assert any("boom-detail" in t for t in err.tail)
    assert "cmds[2]" in str(err) and "status" in str(err)
    assert local_image_id(f"localhost/imagegraph/ig-test/fails:ig-{fake_key('fails')}") is None
    no_leftovers(build_runner.logfile.getvalue())


def test_failing_package_install_names_packages_step(rpm_repo, write_spec, build_runner):
    spec = write_spec(busybox_spec_text(rpm_repo.url, name="ig-test/nopkg").replace("ig-hello", "ig-missing"))
    with pytest.raises(BuildError) as info:
        build_layer(BuildRequest(spec=spec, key=fake_key("nopkg"), parent=None), build_runner)
    assert info.value.step == "packages"
    assert any("ig-missing" in t for t in info.value.tail)
    no_leftovers(build_runner.logfile.getvalue())


def test_missing_parent_image_fails_in_from(write_spec, build_runner):
    spec = write_spec(
        """
        options:
          layer_type: base
          name: ig-test/orphan
          pkg_manager: dnf
          parent: localhost/does-not-exist:1
        """
    )
    parent = ParentImage(image="localhost/does-not-exist:1", ref="localhost/does-not-exist:1", key=None)
    with pytest.raises(BuildError) as info:
        build_layer(BuildRequest(spec=spec, key=fake_key("orphan"), parent=parent), build_runner)
    assert info.value.step == "from"
    no_leftovers(build_runner.logfile.getvalue())


def test_cancel_stops_running_cmd_and_cleans_up(busybox_image, write_spec):
    parent_result, _, _ = busybox_image
    spec = write_spec(
        """
        options:
          layer_type: base
          name: ig-test/cancel
          pkg_manager: dnf
          parent: localhost/ig-busybox-base:1.0
        cmds:
          - 'echo sleeping; sleep 60'
        """
    )
    parent = ParentImage(image=parent_result.image_id, ref="localhost/ig-busybox-base:1.0", key=None)
    outcome: dict = {}
    log_runner = Runner("cancel", logfile=io.StringIO())

    def target() -> None:
        try:
            build_layer(BuildRequest(spec=spec, key=fake_key("cancel"), parent=parent), log_runner)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["exc"] = exc

    t = threading.Thread(target=target)
    start = time.monotonic()
    t.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = [c for c in containers() if c.startswith("imagegraph-ig-test-cancel")]
            if names and any(
                "sleep 60" in " ".join(p.args) if hasattr(p, "args") else False
                for p in list(runner_mod._active)
            ):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        runner_mod.terminate_all(grace=5)
        t.join(30)
    finally:
        runner_mod.reset_cancel()
    assert not t.is_alive()
    assert isinstance(outcome.get("exc"), Cancelled), outcome
    assert time.monotonic() - start < 40
    no_leftovers(log_runner.logfile.getvalue())
    assert "mounted at" in log_runner.logfile.getvalue()


def test_remove_stale_containers(busybox_image, build_runner, monkeypatch, tmp_path):
    from imagegraph.build import remove_stale_containers
    from imagegraph.build.container import container_name, forget_owner, record_owner

    parent_result, _, _ = busybox_image
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = container_name("ig-test/stale", fake_key("stale"))
    live = container_name("ig-test/live", fake_key("live"))
    orphan = container_name("ig-test/orphan", fake_key("orphan"))  # no record at all
    # a build killed outright leaves its temporary directory: the sweep removes it with the container
    import tempfile

    stale_tmp = Path(tempfile.mkdtemp(prefix="imagegraph-build-"))
    (stale_tmp / "iid").write_text("x")
    gone_tmp = Path(tempfile.mkdtemp(prefix="imagegraph-build-"))  # its container is gone already
    record_owner(stale, "ig-test/stale", fake_key("stale"), "dead-run", pid=dead.pid, tmp=stale_tmp)
    gone = container_name("ig-test/gone", fake_key("gone"))
    record_owner(gone, "ig-test/gone", fake_key("gone"), "dead-run", pid=dead.pid, tmp=gone_tmp)
    not_ours = Path(tempfile.mkdtemp(prefix="other-"))
    record_owner(
        container_name("ig-test/x", fake_key("x")), "x", fake_key("x"), "r", pid=dead.pid, tmp=not_ours
    )
    record_owner(live, "ig-test/live", fake_key("live"), "live-run")
    for name in (stale, live, orphan):
        buildah("from", "--pull=never", "--name", name, parent_result.image_id)
    buildah("mount", stale)
    try:
        removed = remove_stale_containers(build_runner)
        # other suites' orphans may go too; ours must, the live one must not
        assert stale in removed and orphan in removed and live not in removed
        now = containers()
        assert live in now and stale not in now and orphan not in now
        assert read_owner(live) is not None and read_owner(stale) is None
        assert json.loads((records_dir() / f"{live}.json").read_text())["run_id"] == "live-run"
        assert not stale_tmp.exists() and not gone_tmp.exists()
        assert not_ours.is_dir()  # only our own build directories are removed
    finally:
        shutil.rmtree(not_ours, ignore_errors=True)
        for name in (stale, live, orphan):
            buildah("rm", name, check=False)
            forget_owner(name)


def test_stale_record_with_recycled_pid_is_stale(tmp_path, monkeypatch):
    from imagegraph.build.container import pid_alive

    # our own pid, but a start time that is not ours: the pid was recycled
    assert pid_alive(os.getpid())
    assert not pid_alive(os.getpid(), start_time="1")
    assert not pid_alive(2**22 + 12345)
    assert Path("/proc/self/stat").exists()


def test_repo_helper_adds_newer_version(write_spec, build_runner, images, tmp_path):
    """tests/rpmrepo.py's add_version: a newer package lands in the repo and is what dnf installs."""
    from tests.rpmrepo import make_repo, serve

    repo = make_repo(tmp_path / "own-repo")
    server = serve(repo.path)
    try:
        repo.add_version("ig-hello", "2.0")
        # and a repository given as a .repo file URL, which is downloaded as it is
        (repo.path / "own.repo").write_text(f"[own]\nname=own\nbaseurl={server.url}\ngpgcheck=0\n")
        spec = write_spec(busybox_spec_text(server.url + "own.repo", name="ig-test/newer"))
        result = build_layer(BuildRequest(spec=spec, key=fake_key("newer"), parent=None), build_runner)
        images.add(result.image_ref)
        assert "ig-hello-2.0-1.noarch" in mounted_rpm_q(result.image_ref, "ig-hello").stdout
    finally:
        server.stop()
        repo.cleanup()


def test_pull_image_from_registry(busybox_image, registry, build_runner):
    """pull_image with registry_opts_pull-style options returns the pulled image's ID."""
    from imagegraph.build import pull_image

    result, _, _ = busybox_image
    ref = f"{registry.host}/ig-test/pulled:1"
    buildah("push", "--tls-verify=false", result.image_id, f"docker://{ref}")
    buildah("rmi", "-f", ref, check=False)
    try:
        image_id = pull_image(ref, ["--tls-verify=false"], build_runner)
        assert len(image_id) == 64
        assert local_image_id(ref, build_runner) == image_id
    finally:
        buildah("rmi", ref, check=False)
