"""imagegraph/slurm.py: job-state mapping (property-based), and submission, adoption, polling and
cancellation against a recording fake Slurm (tests/fakeslurm.py). The real thing: test_up_slurm.py."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegraph.build_one import JobExit, result_path
from imagegraph.graph import build_graph
from imagegraph.key import key_tag
from imagegraph.plan import Action, StaticInventory, make_plan
from imagegraph.project import ExecutorKind, ExecutorSettings, load_project
from imagegraph.runner import Cancelled
from imagegraph.slurm import (
    ACTIVE_STATES,
    JobState,
    Outcome,
    SlurmBuildService,
    SlurmJobError,
    check_plan,
    job_outcome,
    parse_scontrol,
)
from imagegraph.state import State
from tests import fakeslurm

from .specdirs import write

KEY = "a" * 64

# ------------------------------------------------------------------ state mapping

results = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "key": st.sampled_from([KEY, "b" * 64]),
            "status": st.sampled_from(["ok", "failed", "cancelled"]),
            "digest": st.sampled_from([None, "sha256:" + "c" * 64]),
            "error": st.sampled_from([None, "step cmds[0] failed"]),
            "image_ref": st.just("r.io/x/a:ig-" + KEY),
        }
    ),
)
finished = st.sampled_from([s for s in JobState if s not in ACTIVE_STATES])
reasons = st.sampled_from(["None", "NonZeroExitCode", "DependencyNeverSatisfied", "TimeLimit", ""])
exit_codes = st.sampled_from(["", "0:0", "1:0", "3:0", "4:0", "0:15", "143:0"])


def ok_doc(result: dict | None) -> bool:
    return bool(result and result["key"] == KEY and result["status"] == "ok" and result["digest"])


@given(finished, reasons, exit_codes, results)
def test_ok_only_with_a_result_document_for_the_key(state, reason, exit_code, result) -> None:
    outcome, message = job_outcome(state, reason, exit_code, result, KEY)
    assert message
    if outcome == Outcome.OK:
        assert state in (JobState.COMPLETED, JobState.UNKNOWN)
        assert result is not None and result["key"] == KEY and result["status"] == "ok"
    if state == JobState.COMPLETED:
        assert (outcome == Outcome.OK) == ok_doc(result)


@given(finished, reasons, exit_codes, results)
def test_every_finished_state_has_one_meaning(state, reason, exit_code, result) -> None:
    outcome, message = job_outcome(state, reason, exit_code, result, KEY)
    if state == JobState.CANCELLED:
        want = Outcome.BLOCKED if reason.startswith("Dependency") else Outcome.CANCELLED
        assert outcome == want
    elif state in (JobState.FAILED, JobState.TIMEOUT, JobState.NODE_FAIL, JobState.PREEMPTED):
        assert outcome == Outcome.FAILED
    elif state == JobState.UNKNOWN and not (result and result["key"] == KEY and result["status"] == "ok"):
        assert outcome == Outcome.UNKNOWN and "is unknown" in message
    if state == JobState.FAILED and exit_code:
        assert f"exit status {exit_code.split(':')[0]}" in message


@pytest.mark.parametrize(
    "state, reason, exit_code, words",
    [
        (JobState.FAILED, "NonZeroExitCode", "1:0", "exit status 1 (the build failed)"),
        (
            JobState.FAILED,
            "NonZeroExitCode",
            "3:0",
            "exit status 3 (the build node's layer directory gives another key)",
        ),
        (JobState.FAILED, "NonZeroExitCode", "4:0", "exit status 4 (infrastructure failure"),
        (JobState.TIMEOUT, "TimeLimit", "0:15", "hit its time limit (executor.time_limit)"),
        (JobState.NODE_FAIL, "NodeDown", "0:0", "the build node failed while the job ran (NODE_FAIL)"),
        (JobState.PREEMPTED, "None", "0:0", "preempted by Slurm"),
        (JobState.CANCELLED, "DependencyNeverSatisfied", "0:0", "a job it depends on failed"),
        (JobState.COMPLETED, "None", "0:0", "left no readable result document"),
    ],
)
def test_reasons_in_words(state, reason, exit_code, words) -> None:
    assert words in job_outcome(state, reason, exit_code, None, KEY)[1]


def test_job_exit_describes_each_status() -> None:
    assert {JobExit.describe(int(s)) for s in JobExit} >= {"ok", "the build failed", "cancelled"}
    assert JobExit.describe(99) == "failed"


def test_parse_scontrol() -> None:
    f = parse_scontrol(
        "JobId=7 JobName=ig-a-123 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 StdOut=/x/a.log"
    )
    assert f["JobState"] == "FAILED" and f["ExitCode"] == "1:0" and f["StdOut"] == "/x/a.log"


# ------------------------------------------------------------- a fake Slurm


def layer(name: str, parent: str | None, registry: bool = True, parent_registry: bool = True) -> str:
    p = (f"r.io/x/{parent}:1" if parent_registry else f"localhost/{parent}:1") if parent else "scratch"
    # Without a registry a layer publishes to local storage, where its children find it.
    reg = "  publish_registry: r.io/x\n" if registry else "  publish_local: true\n"
    return (
        f"options:\n  layer_type: base\n  pkg_manager: dnf\n  name: {name}\n  parent: '{p}'\n"
        f"  publish_tags: '1'\n{reg}packages: [x]\n"
    )


EDGES = {"a": None, "b": "a", "c": "b", "d": "a"}


def make(
    tmp_path: Path, edges: dict[str, str | None] = EDGES, tags: dict | None = None, no_registry=(), images=()
):
    root = tmp_path / "layers"
    for n, p in edges.items():
        write(root, f"{n}.yaml", layer(n, p, n not in no_registry, p not in no_registry))
    lg = build_graph(load_project(root))
    # Every listed tag points at one manifest: human tags are checked by what they hold (inventory.py).
    digests = {f"{repo}:{t}": "sha256:" + "a" * 64 for repo, ts in (tags or {}).items() for t in ts}
    inv = StaticInventory(images=set(images), tags=tags or {}, tag_digests=digests)
    return make_plan(lg, State(tmp_path / "s.db"), inv)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    d = tmp_path / "fake"
    bin_dir = fakeslurm.install(d)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.update({"AWS_SECRET_ACCESS_KEY": "sekrit-value-1", "IMAGEGRAPH_RETRY_ATTEMPTS": "2"})
    return d, env


def service(tmp_path: Path, env: dict, **settings) -> SlurmBuildService:
    s = ExecutorSettings(kind=ExecutorKind.SLURM, poll_interval=0.05, **settings)
    return SlurmBuildService(
        s, project_root=tmp_path / "layers", log_dir=tmp_path / "logs", run_id="r1", env=env
    )


def builds(plan) -> list:
    return [lp for lp in plan.layers.values() if lp.action == Action.BUILD]


def sbatches(d: Path) -> list[list[str]]:
    return [c[1:] for c in fakeslurm.calls(d) if c[0] == "sbatch"]


def opt(argv: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(name + "=")), None)


def test_submits_parents_first_each_after_its_parent(tmp_path, fake) -> None:
    d, env = fake
    plan = make(tmp_path)
    svc = service(tmp_path, env, partition="build", time_limit="30:00", sbatch_args=("--mem=2G",))
    svc.prepare(plan, builds(plan))
    svc.cancel()
    subs = sbatches(d)
    names = [opt(a, "--job-name") for a in subs]
    assert sorted(names) == sorted(f"ig-{lid}-{plan.layers[lid].key[:12]}" for lid in "abcd")
    pos = {n.split("-")[1]: i for i, n in enumerate(names)}
    assert pos["a"] < pos["b"] < pos["c"] and pos["a"] < pos["d"], "a job was submitted before its parent's"
    ids = {lid: svc.jobs[lid].job_id for lid in "abcd"}
    deps = {n.split("-")[1]: opt(a, "--dependency") for n, a in zip(names, subs, strict=True)}
    assert deps == {
        "a": None,
        "b": f"afterok:{ids['a']}",
        "c": f"afterok:{ids['b']}",
        "d": f"afterok:{ids['a']}",
    }
    for a in subs:
        assert "--kill-on-invalid-dep=yes" in a and "--no-requeue" in a and "--parsable" in a
        assert opt(a, "--partition") == "build" and opt(a, "--time") == "30:00" and "--mem=2G" in a
        exports = opt(a, "--export").split(",")
        assert "PATH" in exports and "IMAGEGRAPH_RETRY_ATTEMPTS" in exports
        assert "AWS_SECRET_ACCESS_KEY" not in exports
        assert "build-one" in a[-1] and "--key" in a[-1]
    assert "sekrit-value-1" not in json.dumps(fakeslurm.calls(d))


def test_a_built_parent_is_no_dependency(tmp_path, fake) -> None:
    d, env = fake
    first = make(tmp_path)
    ka = first.layers["a"].key
    plan = make(tmp_path, tags={"r.io/x/a": {key_tag(ka), "1"}})
    assert plan.layers["a"].action == Action.UP_TO_DATE
    svc = service(tmp_path, env)
    svc.prepare(plan, builds(plan))
    svc.cancel()
    deps = {opt(a, "--job-name").split("-")[1]: opt(a, "--dependency") for a in sbatches(d)}
    assert deps == {"b": None, "c": f"afterok:{svc.jobs['b'].job_id}", "d": None}


def test_adopts_a_queued_job_for_the_same_key(tmp_path, fake) -> None:
    d, env = fake
    plan = make(tmp_path)
    kb = plan.layers["b"].key
    old = fakeslurm.add_job(d, f"ig-b-{kb[:12]}", "RUNNING", stdout=str(tmp_path / "logs" / "b-r0.log"))
    fakeslurm.add_job(d, f"ig-d-{'0' * 12}", "RUNNING")  # another key of d: not this plan's
    svc = service(tmp_path, env)
    svc.prepare(plan, builds(plan))
    svc.cancel()
    names = [opt(a, "--job-name").split("-")[1] for a in sbatches(d)]
    assert sorted(names) == ["a", "c", "d"]
    assert svc.jobs["b"].adopted and svc.jobs["b"].job_id == old
    assert svc.jobs["b"].log_file.endswith("b-r0.log")
    c_call = next(a for a in sbatches(d) if opt(a, "--job-name").startswith("ig-c-"))
    assert opt(c_call, "--dependency") == f"afterok:{old}"


def test_a_refused_job_fails_its_layer_and_its_descendants_are_not_submitted(tmp_path, fake) -> None:
    d, env = fake
    plan = make(tmp_path)
    env = {**env, "FAKE_SLURM_REFUSE": "ig-b-"}
    svc = service(tmp_path, env)
    svc.prepare(plan, builds(plan))
    assert sorted(opt(a, "--job-name").split("-")[1] for a in sbatches(d)) == ["a", "b", "d"]
    with pytest.raises(SlurmJobError, match="sbatch refused the build job of b.*Invalid partition") as e:
        svc.build(plan.layers["b"], None)
    assert e.value.outcome == Outcome.FAILED
    with pytest.raises(SlurmJobError, match="parent b was not submitted") as e:
        svc.build(plan.layers["c"], None)
    assert e.value.outcome == Outcome.BLOCKED
    svc.cancel()


def write_result(svc: SlurmBuildService, lid: str, **fields) -> None:
    job = svc.jobs[lid]
    doc = {"key": job.key, "status": "ok", "digest": "sha256:" + "d" * 64, "image_ref": f"r.io/x/{lid}:ig-k"}
    doc.update(fields)
    result_path(Path(job.log_file)).write_text(json.dumps(doc))


def test_polled_states_become_results(tmp_path, fake) -> None:
    d, env = fake
    plan = make(tmp_path)
    svc = service(tmp_path, env)
    svc.prepare(plan, builds(plan))
    ids = {lid: svc.jobs[lid].job_id for lid in "abcd"}
    write_result(svc, "a")
    fakeslurm.set_state(d, ids["a"], "COMPLETED")
    built = svc.build(plan.layers["a"], None)
    assert (
        built.digest == "sha256:" + "d" * 64 and built.image_id is None and built.image_ref == "r.io/x/a:ig-k"
    )
    assert built.job["job_id"] == ids["a"] and built.job["node"] == "node1"

    write_result(svc, "b", status="failed", error="b: step cmds[0] failed: exit 7", digest=None)
    Path(svc.jobs["b"].log_file).write_text("line one\n==> [cmds[0]] exit 7\n")
    fakeslurm.set_state(d, ids["b"], "FAILED", "NonZeroExitCode", "1:0")
    fakeslurm.set_state(d, ids["c"], "CANCELLED", "DependencyNeverSatisfied")
    fakeslurm.set_state(d, ids["d"], "TIMEOUT", "TimeLimit", "0:15")
    with pytest.raises(SlurmJobError) as e:
        svc.build(plan.layers["b"], None)
    msg = str(e.value)
    assert "exit status 1 (the build failed): b: step cmds[0] failed" in msg and "==> [cmds[0]] exit 7" in msg
    assert e.value.log_file == svc.jobs["b"].log_file
    with pytest.raises(SlurmJobError) as e:
        svc.build(plan.layers["c"], None)
    assert e.value.outcome == Outcome.BLOCKED
    with pytest.raises(SlurmJobError, match="time limit"):
        svc.build(plan.layers["d"], None)
    svc.cancel()
    assert not [c for c in fakeslurm.calls(d) if c[0] == "scancel"], "nothing was left to cancel"


def test_a_purged_job_is_unknown_unless_its_result_says_ok(tmp_path, fake) -> None:
    d, env = fake
    plan = make(tmp_path, {"a": None, "d": None})
    svc = service(tmp_path, env)
    svc.prepare(plan, builds(plan))
    write_result(svc, "d")
    fakeslurm.purge(d, svc.jobs["a"].job_id)
    fakeslurm.purge(d, svc.jobs["d"].job_id)
    with pytest.raises(SlurmJobError, match="no longer knows the job and it left no result document") as e:
        svc.build(plan.layers["a"], None)
    assert e.value.outcome == Outcome.UNKNOWN
    assert svc.build(plan.layers["d"], None).digest


def test_cancel_scancels_only_unfinished_jobs(tmp_path, fake) -> None:
    d, env = fake
    plan = make(tmp_path)
    svc = service(tmp_path, env)
    svc.prepare(plan, builds(plan))
    ids = {lid: svc.jobs[lid].job_id for lid in "abcd"}
    write_result(svc, "a")
    fakeslurm.set_state(d, ids["a"], "COMPLETED")
    svc.build(plan.layers["a"], None)
    svc.cancel()
    scancels = [c[1:] for c in fakeslurm.calls(d) if c[0] == "scancel"]
    assert [sorted(c) for c in scancels] == [sorted([ids["b"], ids["c"], ids["d"]])]
    assert {fakeslurm.jobs(d)[ids[x]]["state"] for x in "bcd"} == {"CANCELLED"}
    with pytest.raises(Cancelled):
        svc.build(plan.layers["b"], None)
    svc.cancel()  # idempotent: nothing more to cancel
    assert len([c for c in fakeslurm.calls(d) if c[0] == "scancel"]) == 1


def test_check_plan_needs_a_registry_for_built_layers_and_their_parents(tmp_path) -> None:
    plan = make(tmp_path, no_registry=("a", "d"))
    diags = check_plan(plan)
    files = sorted(Path(x.file).name for x in diags)
    assert files == ["a.yaml", "d.yaml"]
    a = next(x for x in diags if x.file.endswith("a.yaml"))
    assert a.line == 1 and "publish_registry" in a.message and "publish_registry" in (a.hint or "")
    assert check_plan(make(tmp_path / "ok")) == []


def test_check_plan_needs_a_registry_on_a_parent_built_before(tmp_path) -> None:
    ka = make(tmp_path, no_registry=("a",)).layers["a"].key
    plan = make(
        tmp_path, no_registry=("a",), images={f"localhost/imagegraph/a:{key_tag(ka)}", "localhost/a:1"}
    )
    assert plan.layers["a"].action != Action.BUILD and plan.layers["b"].action == Action.BUILD
    (diag,) = check_plan(plan)
    assert diag.file.endswith("a.yaml") and "layer a is the parent of b" in diag.message


def test_per_arch_placement_wins(tmp_path) -> None:
    svc = service(tmp_path, {}, partition="build", constraint="el9", arches={"aarch64": {"partition": "arm"}})
    assert svc.placement(None) == ("build", "el9")
    assert svc.placement("aarch64") == ("arm", "el9")
    assert svc.placement("x86_64") == ("build", "el9")


class RecordingRunner:
    """In-process stand-in for the service's Runner: sbatch answers job ids, squeue no jobs."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def run(self, argv, **kw):
        from imagegraph.runner import Completed

        with self.lock:
            self.calls.append(list(argv))
            out = f"{len(self.calls)}\n" if argv[0] == "sbatch" else ""
        return Completed(list(argv), 0, out)


forests = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(min_value=-1, max_value=n), min_size=n, max_size=n),
        st.sets(st.integers(min_value=0, max_value=n - 1)),
    )
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(forests)
def test_every_build_is_submitted_once_after_its_parent(tmp_path_factory, forest) -> None:
    picks, built = forest
    # layer i's parent is an earlier layer (picks[i] mod i), or scratch when picks[i] < 0 or i == 0
    edges = {f"l{i}": (f"l{p % i}" if i and p >= 0 else None) for i, p in enumerate(picks)}
    tmp = tmp_path_factory.mktemp("forest")
    first = make(tmp, edges)
    tags = {f"r.io/x/l{i}": {key_tag(first.layers[f"l{i}"].key), "1"} for i in built}
    plan = make(tmp, edges, tags=tags)
    todo = builds(plan)
    svc = service(tmp, {"PATH": os.environ["PATH"]})
    svc.runner = RecordingRunner()
    svc.prepare(plan, todo)
    svc._stop.set()
    subs = [c for c in svc.runner.calls if c[0] == "sbatch"]
    names = [opt(a, "--job-name").split("-")[1] for a in subs]
    assert sorted(names) == sorted(lp.layer for lp in todo)
    pos = {n: i for i, n in enumerate(names)}
    for lp, argv in ((plan.layers[n], a) for n, a in zip(names, subs, strict=True)):
        parent = plan.graph.parent_layer(lp.layer)
        if parent in pos:
            assert pos[parent] < pos[lp.layer]
            assert opt(argv, "--dependency") == f"afterok:{svc.jobs[parent].job_id}"
        else:  # scratch, or a parent already built: no dependency, the job pulls its key tag
            assert opt(argv, "--dependency") is None


def test_a_controller_that_stops_answering_makes_the_jobs_unknown(tmp_path, monkeypatch) -> None:
    import imagegraph.slurm as slurm_mod
    from imagegraph.runner import Completed

    plan = make(tmp_path, {"a": None})
    svc = service(tmp_path, {"PATH": os.environ["PATH"]})
    rec = RecordingRunner()
    svc.runner = rec
    svc.prepare(plan, builds(plan))  # submitted while slurmctld answered

    def down(argv, **kw):
        return Completed(list(argv), 1, "", ["squeue: error: Unable to contact slurm controller"])

    monkeypatch.setattr(slurm_mod, "CONTROLLER_TIMEOUT", 0.2)
    rec.run = down
    with pytest.raises(SlurmJobError, match="slurmctld did not answer") as e:
        svc.build(plan.layers["a"], None)
    assert e.value.outcome == Outcome.UNKNOWN and "whether the job built is unknown" in str(e.value)
    svc.cancel()


def test_a_controller_that_does_not_answer_at_submission_fails_every_build(tmp_path) -> None:
    from imagegraph.runner import Completed

    plan = make(tmp_path)
    svc = service(tmp_path, {"PATH": os.environ["PATH"]})
    svc.runner = RecordingRunner()
    svc.runner.run = lambda argv, **kw: Completed(list(argv), 1, "", ["Unable to contact slurm controller"])
    svc.prepare(plan, builds(plan))
    for lp in builds(plan):
        with pytest.raises(SlurmJobError, match="squeue failed.*Unable to contact"):
            svc.build(lp, None)
