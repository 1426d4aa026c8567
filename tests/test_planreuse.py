"""A reused offline plan (planreuse.py) is byte for byte the plan a fresh planner prints.

Every run is a new `imagegraph` process (the reuse check runs before the CLI
is imported). `IMAGEGRAPH_PLAN_CACHE_REPORT` names a file where each run
says whether it reused, recorded, or why not; `IMAGEGRAPH_PLAN_CACHE_MARGIN`
is lowered to 0.05 s so that a test need not wait 2 s after each change
(every change is followed by a 0.1 s pause: older than the margin).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from imagegraph import planreuse
from imagegraph.keytag import key_tag
from imagegraph.planreuse import OFF_ENV
from imagegraph.state import State

from .needs import missing

HEADER = """options:
  layer_type: 'base'
  name: '{name}'
  publish_tags: ['1']
  pkg_manager: 'dnf'
  parent: '{parent}'
  publish_local: true

repos:
  - alias: 'BaseOS'
    url: 'http://mirror.example.org/rocky/9/BaseOS/x86_64/os/'
    gpg: 'http://mirror.example.org/RPM-GPG-KEY'
packages:
{packages}
copyfiles:
  - src: 'files/motd'
    dest: '/etc/motd'
"""
PACKAGES = ["  - bash", "  - bash\n  - kernel", "  - vim", "  - bash\n  - zsh"]  # few: edits revert
MOTD = ["welcome\n", "hello\n", "welcome!\n"]
SETTINGS = [None, "jobs: 2\n", "registry_aliases:\n  site: registry.example.org:5000/site\n"]
LOCKS = [None, "not: [a lock\n"]  # absent, or a broken one (exit 2, the same message each time)


def write_spec(root: Path, name: str, parent: str, packages: str) -> None:
    (root / f"{name}.yaml").write_text(HEADER.format(name=name, parent=parent, packages=packages))


def settle() -> None:
    time.sleep(0.1)  # older than the test's margin (0.05 s): a record may be written


class Runner:
    def __init__(self, tmp: Path, root: Path):
        self.tmp, self.root = tmp, root
        self.report = tmp / "report"
        self.env = {
            **os.environ,
            "XDG_CACHE_HOME": str(tmp / "xdg"),
            "IMAGEGRAPH_PLAN_CACHE_REPORT": str(self.report),
            "IMAGEGRAPH_PLAN_CACHE_MARGIN": "0.05",
        }
        self.env.pop(OFF_ENV, None)
        self.extra: dict[str, str] = {}
        self.reused = 0
        (tmp / "xdg").mkdir(exist_ok=True)  # a run that creates it is not recorded (it changed meanwhile)

    def plan(self, *args: str, cached: bool = True) -> tuple[int, str, str, str]:
        """(exit status, stdout, stderr, what the run reported) of one fresh process."""
        env = {**self.env, **self.extra}
        if not cached:
            env[OFF_ENV] = "1"
        before = self.report.read_text() if self.report.exists() else ""
        proc = subprocess.run(
            [sys.executable, "-m", "imagegraph.planreuse", "plan", "--offline", *args, str(self.root)],
            env=env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        after = self.report.read_text() if self.report.exists() else ""
        said = after[len(before) :].strip()
        self.reused += said == "reused"
        return proc.returncode, proc.stdout, proc.stderr, said

    def same_as_fresh(self, *args: str) -> str:
        """Plan with reuse allowed, then without: the same bytes and status. Returns the report."""
        rc, out, err, said = self.plan(*args)
        frc, fout, ferr, fsaid = self.plan(*args, cached=False)
        assert fsaid == "", "an uncached run records nothing"
        assert (rc, out, err) == (frc, fout, ferr), f"reused answer differs ({said})"
        return said


def make_project(root: Path) -> None:
    root.mkdir()
    (root / "files").mkdir()
    (root / "files" / "motd").write_text(MOTD[0])
    write_spec(root, "base", "scratch", PACKAGES[0])
    write_spec(root, "compute", "base", PACKAGES[1])


def test_a_plan_is_reused_when_nothing_changed(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    make_project(root)
    settle()
    r = Runner(tmp_path, root)
    first = r.plan("--json")
    assert first[3] == "recorded", first
    second = r.plan("--json")
    assert second[3] == "reused"
    assert second[:3] == first[:3]
    assert r.same_as_fresh("--json") == "reused"
    # Another output mode, another record.
    assert r.plan()[3] == "recorded"
    # A record directory others may write is never read (a record could be planted there).
    plans = tmp_path / "xdg" / "imagegraph" / "plans"
    plans.chmod(0o777)
    said = r.plan("--json")[3]
    assert said != "reused" and "not the user's own" in said, said


def test_a_file_rewritten_in_the_same_tick_is_not_reused(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    make_project(root)
    r = Runner(tmp_path, root)
    r.env["IMAGEGRAPH_PLAN_CACHE_MARGIN"] = "2"  # the default
    spec = root / "compute.yaml"
    # Written just now: within the margin of the plan's start, so no record can be trusted.
    rc, out, _, said = r.plan("--json")
    assert said.startswith("not recorded:") and "too recently" in said, said
    # Rewritten with the same size and its mtime set back: only ctime tells.
    st0 = spec.stat()
    text = spec.read_text()
    spec.write_text(text.replace("kernel", "kernal"))
    os.utime(spec, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    assert spec.stat().st_size == st0.st_size and spec.stat().st_mtime_ns == st0.st_mtime_ns
    rc2, out2, _, said2 = r.plan("--json")
    assert said2 != "reused"
    assert out2 != out  # another package: another key
    assert out2 == r.plan("--json", cached=False)[1]

    # A record written with old inputs, then the same trick: ctime differs, not reused.
    r.env["IMAGEGRAPH_PLAN_CACHE_MARGIN"] = "0.05"
    settle()
    assert r.plan("--json")[3] == "recorded"
    st1 = spec.stat()
    spec.write_text(text)
    os.utime(spec, ns=(st1.st_atime_ns, st1.st_mtime_ns))
    rc3, out3, _, said3 = r.plan("--json")
    assert said3 != "reused" and out3 == out


def test_doubt_means_no_record(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    make_project(root)
    settle()
    r = Runner(tmp_path, root)
    rc, out, err, said = r.plan("-v", "--json")
    assert said == ""  # -v: not even tried
    r.extra["JOURNAL_STREAM"] = "8:1"
    assert r.plan("--json")[3] == ""
    del r.extra["JOURNAL_STREAM"]
    # A storage configuration with a drop-in directory: where images live is not followed here.
    conf = tmp_path / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{tmp_path}/graph"\nrunroot = "{tmp_path}/run"\n'
    )
    (tmp_path / "storage.conf.d").mkdir()
    r.extra["CONTAINERS_STORAGE_CONF"] = str(conf)
    settle()
    said = r.plan("--json")[3]
    assert said.startswith("not recorded: where local storage"), said


@pytest.mark.parametrize("event", ["os.fork", "os.forkpty", "os.system", "socket.connect", "os.posix_spawn"])
def test_what_the_hooks_cannot_follow_means_no_record(
    event: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rec = planreuse.Recorder(["plan", "--offline", str(tmp_path)])
    assert rec.why is None
    rec.hook(event, ())
    assert rec.why == event


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True).stdout.strip()


class PlanReuse(RuleBasedStateMachine):
    """Random edits, reverts, images, state (a recorded build, `gc`) and environment changes; after every step the
    reused answer (when there is one) is the fresh planner's, byte for byte."""

    tmp: Path
    base_image: str

    @initialize()
    def setup(self) -> None:
        self.dir = Path(self.tmp_factory())
        self.root = self.dir / "layers"
        make_project(self.root)
        self.runner = Runner(self.dir, self.root)
        self.tagged: set[str] = set()
        self.json = True
        settle()

    def _keys(self) -> dict[str, str]:
        rc, out, _, _ = self.runner.plan("--json", cached=False)
        if rc == 2 or not out.strip():
            return {}
        return {lp["name"]: lp["key"] for lp in json.loads(out)["layers"]}

    @rule(layer=st.sampled_from(["base", "compute", "extra"]), packages=st.sampled_from(PACKAGES))
    def edit_spec(self, layer: str, packages: str) -> None:
        path = self.root / f"{layer}.yaml"
        if layer == "extra" and not path.exists():
            return
        write_spec(self.root, layer, "scratch" if layer == "base" else "base", packages)

    @rule(present=st.booleans())
    def add_or_remove_spec(self, present: bool) -> None:
        path = self.root / "extra.yaml"
        if present:
            write_spec(self.root, "extra", "base", PACKAGES[2])
        elif path.exists():
            path.unlink()

    @rule(text=st.sampled_from(MOTD))
    def edit_copied_file(self, text: str) -> None:
        (self.root / "files" / "motd").write_text(text)

    @rule(text=st.sampled_from(SETTINGS))
    def change_settings(self, text: str | None) -> None:
        path = self.root / "imagegraph.yaml"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)

    @rule(text=st.sampled_from(LOCKS))
    def change_lock(self, text: str | None) -> None:
        path = self.root / "imagegraph.lock"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)

    @rule(value=st.sampled_from([None, "1", "2"]))
    def change_environment(self, value: str | None) -> None:
        if value is None:
            self.runner.extra.pop("IMAGEGRAPH_REGISTRY_TIMEOUT", None)
        else:
            self.runner.extra["IMAGEGRAPH_REGISTRY_TIMEOUT"] = value

    @rule(as_json=st.booleans())
    def output_mode(self, as_json: bool) -> None:
        self.json = as_json

    @rule(layer=st.sampled_from(["base", "compute"]))
    def tag_local_image(self, layer: str) -> None:
        key = self._keys().get(layer)
        if key:
            ref = f"localhost/imagegraph/{layer}:{key_tag(key)}"
            if subprocess.run(["buildah", "tag", self.base_image, ref], capture_output=True).returncode:
                return  # gc removed the base image (a build recorded under an old key): nothing to tag
            self.tagged.add(ref)

    @precondition(lambda self: bool(self.tagged))
    @rule(data=st.data())
    def remove_local_image(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(sorted(self.tagged)))
        subprocess.run(["buildah", "rmi", ref], capture_output=True)  # gc may have removed it already
        self.tagged.discard(ref)

    @rule()
    def gc_keep_one(self) -> None:
        # The real command: keep one build per layer, remove older key images and tags.
        subprocess.run(
            [sys.executable, "-m", "imagegraph.cli", "gc", "--keep", "1", str(self.root)],
            env=self.runner.env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )

    @rule(layer=st.sampled_from(["base", "compute"]))
    def record_a_build(self, layer: str) -> None:
        key = self._keys().get(layer)
        if not key:
            return
        # What `up` records after a build; the image is the shared base image (present locally).
        state_dir = self.root / ".imagegraph"
        state_dir.mkdir(exist_ok=True)
        state = State(state_dir / "state.db")
        now = time.time()
        state.record_build(
            run_id="r1",
            layer=layer,
            key=key,
            inputs={},
            image_id=self.base_image,
            image_ref=None,
            spec_file=str(self.root / f"{layer}.yaml"),
            parent_key=None,
            started=now,
            finished=now,
        )
        state.close()

    @invariant()
    def reused_is_fresh(self) -> None:
        if not hasattr(self, "runner"):
            return
        settle()
        args = ("--json",) if self.json else ()
        said = self.runner.same_as_fresh(*args)
        assert said in ("reused", "recorded") or said.startswith("not recorded"), said
        again = self.runner.plan(*args)
        fresh = self.runner.plan(*args, cached=False)
        assert again[:3] == fresh[:3]
        if said == "recorded":  # nothing changed since: this one must have been answered from it
            assert again[3] == "reused", again[3]

    def teardown(self) -> None:
        for ref in getattr(self, "tagged", ()):
            subprocess.run(["buildah", "rmi", ref], capture_output=True)


@pytest.mark.timeout(600)
def test_reused_plans_are_fresh_plans(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not shutil.which("buildah"):
        missing("buildah is not installed")
    ctr = buildah("from", "scratch")
    image = buildah("commit", "--quiet", ctr, "localhost/ig-planreuse-base:latest")
    buildah("rm", ctr)
    reused_before = []

    class Machine(PlanReuse):
        tmp_factory = staticmethod(lambda: tmp_path_factory.mktemp("reuse"))
        base_image = image

        def teardown(self) -> None:
            reused_before.append(self.runner.reused if hasattr(self, "runner") else 0)
            super().teardown()

    try:
        Machine.TestCase.settings = settings(
            max_examples=4,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        Machine.TestCase().runTest()
    finally:
        subprocess.run(["buildah", "rmi", "localhost/ig-planreuse-base:latest"], capture_output=True)
    assert sum(reused_before) > 0, "no step reused a record: the test proved nothing"


def test_root_without_any_storage_conf_follows_the_built_in_graph_root(monkeypatch) -> None:
    """Debian's buildah ships no storage.conf: root's images are then under containers/storage's
    built-in graph root, with whichever driver it picked; every driver's image list is an input."""
    import imagegraph.planreuse as pr

    if os.geteuid() != 0:
        pytest.skip("root's built-in defaults")  # rootless: not followed (no record), tested above
    for var in ("CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER", "STORAGE_OPTS"):
        monkeypatch.delenv(var, raising=False)
    real_isfile, real_exists = os.path.isfile, os.path.exists
    etc = ("/etc/containers/", "/usr/share/containers/")
    monkeypatch.setattr(os.path, "isfile", lambda p: False if str(p).startswith(etc) else real_isfile(p))
    monkeypatch.setattr(os.path, "exists", lambda p: False if str(p).startswith(etc) else real_exists(p))
    inputs = pr.storage_inputs()
    assert inputs is not None
    for d in pr.KNOWN_DRIVERS:
        assert f"/var/lib/containers/storage/{d}-images/images.json" in inputs
    assert "/etc/containers/storage.conf" in inputs  # one appearing later is a change
    monkeypatch.setenv("STORAGE_DRIVER", "vfs")
    assert [p for p in pr.storage_inputs() if p.endswith("images.json")] == [
        "/var/lib/containers/storage/vfs-images/images.json"
    ]
