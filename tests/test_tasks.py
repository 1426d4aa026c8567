"""imagegraph/tasks.py: each layer's tasks and their edges, as properties over random layers and plans."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.graph import build_graph
from imagegraph.plan import Action, StaticInventory, action_of, make_plan
from imagegraph.project import load_project
from imagegraph.state import State
from imagegraph.tasks import Resource, TaskKind, layer_tasks, task_id

from .specdirs import write

TARGETS = ["registry", "local", "s3", "dir"]
HUMAN_TAGS = {TaskKind.TAG_REGISTRY, TaskKind.PUBLISH_ARTIFACTS}


@given(
    build=st.booleans(),
    publish=st.lists(st.sampled_from(TARGETS), unique=True),
    gate=st.booleans(),
    parent=st.sampled_from([None, "p:build"]),
)
def test_layer_tasks_edges(build: bool, publish: list[str], gate: bool, parent: str | None) -> None:
    tasks = layer_tasks(
        "x", build=build, publish=publish, boot_test=gate and bool(publish), parent_build=parent
    )
    ids = [t.id for t in tasks]
    by_kind = {t.kind: t for t in tasks}
    assert len(ids) == len(set(ids))
    # Dependency order within the list, and nothing of another layer but the parent's build.
    for i, t in enumerate(tasks):
        for a in t.after:
            assert a in ids[:i] or (t.kind == TaskKind.BUILD and a == parent)
    assert (TaskKind.BUILD in by_kind) == build
    if build:
        assert by_kind[TaskKind.BUILD].after == ((parent,) if parent else ())
        # Every publish waits for its own build.
        for t in tasks:
            if t.kind in (TaskKind.PUSH, TaskKind.TAG_LOCAL, TaskKind.SQUASHFS):
                assert t.after == ("x:build",)
    else:
        assert all(not t.after or all(a.startswith("x:") for a in t.after) for t in tasks)
    filled = {tg for t in tasks for tg in t.targets}
    assert filled == set(publish)
    gated = gate and bool(publish)
    assert (TaskKind.BOOT_TEST in by_kind) == gated
    if gated:
        # Human tags and tag-named artifacts move only after the boot.
        for kind in HUMAN_TAGS & set(by_kind):
            assert "x:boot-test" in by_kind[kind].after
        if "registry" in publish:
            assert by_kind[TaskKind.PUSH].gated and TaskKind.TAG_REGISTRY in by_kind
    else:
        assert TaskKind.TAG_REGISTRY not in by_kind
        assert not any(t.gated for t in tasks)
    assert (TaskKind.SQUASHFS in by_kind) == (gated or bool({"s3", "dir"} & set(publish)))
    assert action_of(tasks) == (Action.BUILD if build else Action.PUBLISH if publish else Action.UP_TO_DATE)


def test_resource_classes() -> None:
    tasks = {
        t.kind: t for t in layer_tasks("x", build=True, publish=TARGETS, boot_test=True, parent_build=None)
    }
    assert tasks[TaskKind.BUILD].resource == tasks[TaskKind.SQUASHFS].resource == Resource.BUILD
    assert tasks[TaskKind.PUSH].resource == tasks[TaskKind.PUBLISH_ARTIFACTS].resource == Resource.UPLOAD
    assert tasks[TaskKind.BOOT_TEST].resource == Resource.BOOT
    assert tasks[TaskKind.TAG_LOCAL].resource == Resource.NONE


def layer_yaml(name: str, parent: str | None, s3: bool, gate: bool) -> str:
    p = f"r.io/x/{parent}:1" if parent else "scratch"
    extra = "  publish_s3: http://127.0.0.1:1\n  s3_bucket: boot-images\n" if s3 else ""
    if gate:
        extra += "  boot_test:\n    enabled: true\n"
    return (
        f"options:\n  layer_type: base\n  pkg_manager: dnf\n  name: {name}\n  parent: '{p}'\n"
        f"  publish_tags: '1'\n  publish_registry: r.io/x\n{extra}"
    )


@st.composite
def forests(draw):
    n = draw(st.integers(1, 7))
    edges: dict[str, tuple[str | None, bool, bool]] = {}
    for i in range(n):
        parent = draw(st.sampled_from([None, *edges])) if edges else None
        edges[f"l{i}"] = (parent, draw(st.booleans()), draw(st.booleans()))
    return edges


@settings(max_examples=25, deadline=None)
@given(edges=forests())
def test_plan_tasks_cross_layer_edges(tmp_path_factory, edges) -> None:
    tmp = tmp_path_factory.mktemp("p")
    root = tmp / "layers"
    for name, (parent, s3, gate) in edges.items():
        write(root, f"{name}.yaml", layer_yaml(name, parent, s3, gate))
    plan = make_plan(
        build_graph(load_project(root)), State(tmp / "s.db"), StaticInventory(reachable=False), offline=True
    )
    for lid, lp in plan.layers.items():
        assert lp.action == action_of(lp.tasks) == Action.BUILD
        for t in lp.tasks:
            foreign = [a for a in t.after if not a.startswith(f"{lid}:")]
            # Only a build waits for another layer, and only for its parent's build.
            if t.kind == TaskKind.BUILD and edges[lid][0]:
                assert foreign == [task_id(edges[lid][0], TaskKind.BUILD)]
            else:
                assert foreign == []
        kinds = {t.kind for t in lp.tasks}
        assert (TaskKind.BOOT_TEST in kinds) == edges[lid][2]
        assert lp.to_json()["tasks"] == [t.to_json() for t in lp.tasks]


def test_booted_key_is_not_gated_again(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    write(root, "a.yaml", layer_yaml("a", None, False, True))
    lg = build_graph(load_project(root))
    state = State(tmp_path / "s.db")
    plan = make_plan(lg, state, StaticInventory(reachable=False), offline=True)
    assert TaskKind.BOOT_TEST in {t.kind for t in plan.layers["a"].tasks}
    state.record_event(
        run_id="r",
        layer="a",
        key=plan.layers["a"].key,
        kind="boot-test",
        location="qemu",
        detail={"outcome": "booted"},
    )
    again = make_plan(lg, state, StaticInventory(reachable=False), offline=True)
    assert TaskKind.BOOT_TEST not in {t.kind for t in again.layers["a"].tasks}


GOLDEN = Path(__file__).parent / "golden_tasks.json"


def golden_plan(tmp: Path) -> dict:
    root = tmp / "g"
    write(root, "base.yaml", layer_yaml("base", None, True, True))
    write(root, "compute.yaml", layer_yaml("compute", "base", False, False))
    write(root, "debug.yaml", layer_yaml("debug", "compute", True, False))
    write(root, "login.yaml", layer_yaml("login", "compute", False, True))
    docs = {}
    for name, where in (("site", root), ("layers", Path(__file__).parents[1] / "layers")):
        plan = make_plan(
            build_graph(load_project(where)),
            State(tmp / f"{name}.db"),
            StaticInventory(reachable=False),
            offline=True,
        )
        docs[name] = {
            lid: {"action": str(lp.action), "tasks": lp.to_json()["tasks"]} for lid, lp in plan.layers.items()
        }
    return docs


def test_golden_task_graphs(tmp_path: Path) -> None:
    """The task graphs of a fresh plan (a gated S3+registry base and its children; the bundled layers/).

    Regenerate with IMAGEGRAPH_UPDATE_GOLDEN=1 after an intended change, and review the diff.
    """
    import json
    import os

    docs = golden_plan(tmp_path)
    if os.environ.get("IMAGEGRAPH_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(docs, indent=2, sort_keys=True) + "\n")
    assert docs == json.loads(GOLDEN.read_text())
