"""imagegraph/plan.py: actions and reasons from state + inventory (no real builds here)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegraph.graph import build_graph
from imagegraph.key import key_tag
from imagegraph.plan import Action, StaticInventory, make_plan
from imagegraph.project import load_project
from imagegraph.state import State

from .specdirs import seed_dir


@pytest.fixture
def site(tmp_path: Path):
    root = seed_dir(tmp_path / "layers")
    state = State(tmp_path / "state.db")
    return root, state


def plan_of(root: Path, state: State, inv: StaticInventory | None = None, **kw):
    """A plan; with an unreachable inventory, offline unless told (unknown is not absent)."""
    inv = inv or StaticInventory(reachable=False)
    kw.setdefault("offline", not inv.reachable)
    lg = build_graph(load_project(root))
    return make_plan(lg, state, inv, **kw)


def record_all(plan, state: State, inv: StaticInventory, published: bool = True) -> None:
    """Pretend every layer of `plan` was built (and published) as planned."""
    for lid, lp in plan.layers.items():
        image = f"sha256:{lp.key[:12]}"
        state.record_build(
            run_id="r",
            layer=lid,
            key=lp.key,
            inputs=lp.inputs,
            image_id=image,
            image_ref=None,
            spec_file=lp.file,
            parent_key=None,
            started=time.time() - 3,
            finished=time.time(),
        )
        inv.images.add(image)
        if published:
            for target, spec in lp.targets.items():
                state.record_publication(
                    run_id="r", layer=lid, key=lp.key, target=target, spec=spec, locations=[]
                )


def test_first_plan_builds_everything_never_built(site) -> None:
    root, state = site
    plan = plan_of(root, state)
    assert [lp.action for lp in plan.layers.values()] == [Action.BUILD] * 3
    assert plan.layers["base"].reasons[0].code == "never-built"
    assert plan.layers["compute"].reasons[0].code == "parent-rebuilds"
    assert plan.pending
    doc = plan.to_json()
    assert [x["name"] for x in doc["layers"]] == ["base", "compute", "gpu"]
    assert doc["layers"][1]["parent"] == "base" and doc["layers"][0]["parent"] == "scratch"
    assert set(doc["layers"][0]) >= {"name", "file", "parent", "key", "action", "reasons"}


def test_after_recording_nothing_to_do(site) -> None:
    root, state = site
    inv = StaticInventory(reachable=False)
    record_all(plan_of(root, state, inv), state, inv)
    plan = plan_of(root, state, inv)
    assert {lp.action for lp in plan.layers.values()} == {Action.UP_TO_DATE}
    assert not plan.pending


def test_package_added_says_so_and_rebuilds_descendants(site) -> None:
    root, state = site
    inv = StaticInventory(reachable=False)
    record_all(plan_of(root, state, inv), state, inv)
    f = root / "compute.yaml"
    f.write_text(f.read_text().replace("  - chrony\n", "  - chrony\n  - htop\n"))
    plan = plan_of(root, state, inv)
    assert plan.layers["base"].action == Action.UP_TO_DATE
    assert [r.message for r in plan.layers["compute"].reasons] == ["packages: +htop"]
    assert plan.layers["gpu"].action == Action.BUILD
    assert plan.layers["gpu"].reasons[0].message == "parent compute rebuilds"


def test_copied_file_change_is_named(site) -> None:
    root, state = site
    inv = StaticInventory(reachable=False)
    record_all(plan_of(root, state, inv), state, inv)
    (root / "files/chrony.conf").write_text("server other\n")
    plan = plan_of(root, state, inv)
    (r,) = plan.layers["compute"].reasons
    assert r.code == "file-changed" and r.message == "copyfiles files/chrony.conf changed"


def test_new_tag_only_publishes(site) -> None:
    root, state = site
    inv = StaticInventory(reachable=False)
    record_all(plan_of(root, state, inv), state, inv)
    f = root / "gpu.yaml"
    f.write_text(f.read_text().replace("['9.5', 'latest']", "['9.5', 'latest', 'stable']"))
    plan = plan_of(root, state, inv)
    lp = plan.layers["gpu"]
    assert lp.action == Action.PUBLISH and lp.publish == ["registry"]
    assert "+stable" in lp.reasons[0].message and lp.reasons[0].code == "targets-changed"


def test_lost_image_rebuilds(site) -> None:
    root, state = site
    inv = StaticInventory(reachable=False)
    record_all(plan_of(root, state, inv), state, inv)
    inv.images.clear()
    plan = plan_of(root, state, inv)
    assert plan.layers["base"].reasons[0].code == "image-missing"


def test_registry_key_tag_is_shared_memory(site) -> None:
    """A fresh state and a registry that already holds every key tag: nothing to do."""
    root, state = site
    first = plan_of(root, state)
    inv = StaticInventory(reachable=True)
    for lid, lp in first.layers.items():
        spec = first.graph.spec(lid)
        repo = f"{spec.publish_registry}/{spec.name}"
        inv.tags[repo] = {*spec.publish_tags, key_tag(lp.key)}
        for t in inv.tags[repo]:
            inv.tag_digests[f"{repo}:{t}"] = "sha256:" + lp.key  # one manifest per key
    plan = plan_of(root, state, inv)
    assert {lp.action for lp in plan.layers.values()} == {Action.UP_TO_DATE}
    assert plan.layers["base"].image_source == "registry"
    assert any(n.code == "built-elsewhere" for n in plan.layers["base"].notes)
    # A human tag deleted from the registry is published again, without a build.
    spec = first.graph.spec("gpu")
    inv.tags[f"{spec.publish_registry}/{spec.name}"].discard("latest")
    plan = plan_of(root, state, inv)
    assert plan.layers["gpu"].action == Action.PUBLISH
    assert "latest" in plan.layers["gpu"].reasons[0].message


def test_force_and_selection(site) -> None:
    root, state = site
    inv = StaticInventory(reachable=False)
    record_all(plan_of(root, state, inv), state, inv)
    plan = plan_of(root, state, inv, names=["compute"], force={"compute"})
    assert list(plan.layers) == ["base", "compute"]
    assert (
        plan.layers["compute"].action == Action.BUILD and plan.layers["compute"].reasons[0].code == "forced"
    )
    plan = plan_of(root, state, inv, force_all=True)
    assert {lp.action for lp in plan.layers.values()} == {Action.BUILD}
    # --force names a layer outside the selection: it joins the selection.
    plan = plan_of(root, state, inv, names=["base"], force={"gpu"})
    assert list(plan.layers) == ["base", "compute", "gpu"] and plan.layers["gpu"].action == Action.BUILD
    assert plan.layers["compute"].action == Action.UP_TO_DATE


def test_external_parent_digest_moved(tmp_path: Path) -> None:
    root = tmp_path / "l"
    root.mkdir()
    (root / "suse.yaml").write_text(
        "options:\n  layer_type: base\n  pkg_manager: zypper\n  parent: registry.suse.com/bci/bci-base:15.7\n"
    )
    state = State(tmp_path / "s.db")
    ref = "registry.suse.com/bci/bci-base:15.7"
    inv = StaticInventory(reachable=True, digests={ref: "sha256:" + "1" * 64})
    record_all(plan_of(root, state, inv), state, inv)
    assert not plan_of(root, state, inv).pending
    inv.digests[ref] = "sha256:" + "2" * 64
    (r,) = plan_of(root, state, inv).layers["suse"].reasons
    assert r.code == "parent-digest-moved"
    # Offline: keyed by reference, and the plan says so.
    off = plan_of(root, state, StaticInventory(reachable=False))
    assert off.layers["suse"].notes[0].code == "parent-digest-unknown"


def test_plan_is_read_only(site) -> None:
    root, state = site
    before = state.path.read_bytes()
    plan_of(root, state)
    assert state.path.read_bytes() == before


def test_unobtainable_external_parent_blocks_the_layer_and_its_children(tmp_path: Path) -> None:
    root = tmp_path / "l"
    root.mkdir()
    ref = "registry.suse.com/bci/bci-base:15.7"
    (root / "suse.yaml").write_text(
        f"options:\n  layer_type: base\n  pkg_manager: zypper\n  name: suse\n  parent: {ref}\n"
        "  publish_local: true\n"
    )
    (root / "child.yaml").write_text(
        "options:\n  layer_type: base\n  pkg_manager: zypper\n  name: child\n  parent: suse:latest\n"
    )
    state = State(tmp_path / "s.db")
    down = StaticInventory(reachable=False)
    plan = plan_of(root, state, down, offline=False)
    assert [lp.action for lp in plan.layers.values()] == [Action.BLOCKED, Action.BLOCKED]
    assert plan.layers["suse"].reasons[0].code == "parent-unavailable"
    assert plan.layers["child"].reasons[0].message == "parent suse is blocked"
    # Offline, imagegraph cannot know: it plans the build. With the image in local storage, it builds.
    assert plan_of(root, state, down, offline=True).layers["suse"].action == Action.BUILD
    down.images.add(ref)
    assert plan_of(root, state, down, offline=False).layers["suse"].action == Action.BUILD


# ------------------------------------------------------ targets verified by what they hold


def _registry_site(tmp_path: Path) -> Path:
    root = tmp_path / "reg"
    root.mkdir()
    (root / "base.yaml").write_text(
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: b\n  publish_tags: ['1', 'latest']\n"
        "  publish_registry: 'reg.example:5000/ns'\n  publish_local: true\n"
        "packages: [bash]\n"
    )
    (root / "child.yaml").write_text(
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: c\n  parent: 'reg.example:5000/ns/b:1'\n"
        "  publish_registry: 'reg.example:5000/ns'\npackages: [vim]\n"
    )
    return root


def _publish_as_up(plan, state: State, inv: StaticInventory, when: float) -> None:
    """What `up` leaves behind: builds recorded, every tag (registry, local) on the key's image."""
    for lid, lp in plan.layers.items():
        spec = plan.graph.spec(lid)
        image = f"sha256:{lp.key[:16]}"
        if lp.action == Action.BUILD:
            state.record_build(
                run_id="r",
                layer=lid,
                key=lp.key,
                inputs=lp.inputs,
                image_id=image,
                image_ref=None,
                spec_file=lp.file,
                parent_key=None,
                started=when - 1,
                finished=when,
            )
        inv.names[f"localhost/imagegraph/{spec.name}:{key_tag(lp.key)}"] = image
        repo = f"{spec.publish_registry}/{spec.name}"
        inv.tags.setdefault(repo, set()).update({*spec.publish_tags, key_tag(lp.key)})
        digest = "sha256:" + lp.key[::-1]
        for t in [*spec.publish_tags, key_tag(lp.key)]:
            inv.tag_digests[f"{repo}:{t}"] = digest
        if spec.publish_local:
            for t in spec.publish_tags:
                inv.names[f"localhost/{spec.name}:{t}"] = image
        for target, tspec in lp.targets.items():
            state.record_publication(
                run_id="r",
                layer=lid,
                key=lp.key,
                target=target,
                spec=tspec,
                locations=[f"{repo}:{t}" for t in spec.publish_tags],
                digest=digest if target == "registry" else None,
            )


def test_revert_finds_every_tag_pointing_at_the_newer_build(tmp_path: Path) -> None:
    """Build K1, edit (K2) and publish, revert: every human tag still holds K2, and the plan says so."""
    root = _registry_site(tmp_path)
    state, inv = State(tmp_path / "s.db"), StaticInventory()
    p1 = plan_of(root, state, inv)
    _publish_as_up(p1, state, inv, time.time() - 100)
    assert {lp.action for lp in plan_of(root, state, inv).layers.values()} == {Action.UP_TO_DATE}
    f = root / "base.yaml"
    original = f.read_text()
    f.write_text(original.replace("[bash]", "[bash, htop]"))
    p2 = plan_of(root, state, inv)
    assert p2.layers["base"].action == Action.BUILD
    _publish_as_up(p2, state, inv, time.time())
    f.write_text(original)
    p3 = plan_of(root, state, inv)
    base, child = p3.layers["base"], p3.layers["child"]
    assert base.key == p1.layers["base"].key and child.key == p1.layers["child"].key
    assert base.action == Action.PUBLISH and sorted(base.publish) == ["local", "registry"]
    msgs = [r.message for r in base.reasons]
    k1, k2 = p1.layers["base"].key, p2.layers["base"].key
    assert f"1 -> {k2[:12]}… (a later build), wants {k1[:12]}…" in msgs, msgs
    assert f"latest -> {k2[:12]}… (a later build), wants {k1[:12]}…" in msgs, msgs
    assert f"localhost/b:latest -> {k2[:12]}… (a later build), wants {k1[:12]}…" in msgs, msgs
    assert {r.code for r in base.reasons} == {"target-moved"}
    # Children follow: the child's key reverted too, and its tag points at the child built on K2.
    assert child.action == Action.PUBLISH and child.reasons[0].code == "target-moved"
    # Once the tags hold K1 again (what `up` does), nothing is left to do.
    _publish_as_up(p3, state, inv, time.time())
    assert {lp.action for lp in plan_of(root, state, inv).layers.values()} == {Action.UP_TO_DATE}


def test_a_tag_moved_by_hand_to_an_unknown_digest_is_republished(tmp_path: Path) -> None:
    root = _registry_site(tmp_path)
    state, inv = State(tmp_path / "s.db"), StaticInventory()
    _publish_as_up(plan_of(root, state, inv), state, inv, time.time())
    inv.tag_digests["reg.example:5000/ns/c:latest"] = "sha256:" + "e" * 64
    lp = plan_of(root, state, inv).layers["child"]
    assert lp.action == Action.PUBLISH and lp.publish == ["registry"]
    assert "latest -> sha256:eeeeeeeeeeee… (not a digest this state recorded)" in lp.reasons[0].message


def test_unknown_local_images_are_not_absent(tmp_path: Path) -> None:
    root = _registry_site(tmp_path)
    state, inv = State(tmp_path / "s.db"), StaticInventory()
    _publish_as_up(plan_of(root, state, inv), state, inv, time.time())
    inv.local_error = "`buildah images` failed (exit status 125): database is locked"
    plan = plan_of(root, state, inv)
    assert [lp.action for lp in plan.layers.values()] == [Action.UNKNOWN, Action.UNKNOWN]
    assert "database is locked" in plan.layers["base"].reasons[0].message
    assert plan.layers["base"].reasons[0].code == "inventory-unknown"
    assert not plan.pending and plan.unknown
    # An empty store is another answer: everything builds.
    inv.local_error, inv.names = None, {}
    inv.tags.clear()
    assert {lp.action for lp in plan_of(root, state, inv).layers.values()} == {Action.BUILD}


def test_unknown_registry_is_not_absent_and_offline_uses_records(tmp_path: Path) -> None:
    root = _registry_site(tmp_path)
    state, inv = State(tmp_path / "s.db"), StaticInventory()
    first = plan_of(root, state, inv)
    _publish_as_up(first, state, inv, time.time())
    inv.names.clear()  # no local images: only the registry could say whether the keys are built
    inv.reachable = False
    plan = plan_of(root, state, inv, offline=False)
    assert plan.layers["base"].action == Action.UNKNOWN
    assert "registry reg.example:5000/ns" in plan.layers["base"].reasons[0].message
    assert plan.layers["child"].action == Action.UNKNOWN
    # A layer that must build below an unknown parent is blocked, not built.
    c = root / "child.yaml"
    c.write_text(c.read_text().replace("[vim]", "[vim, git]"))
    child = plan_of(root, state, inv, offline=False).layers["child"]
    assert child.action == Action.UNKNOWN  # its own registry is unknown too
    # --offline is the explicit way: the records decide, and no image means a build.
    assert plan_of(root, state, inv, offline=True).layers["base"].action == Action.BUILD


def test_s3_and_dir_targets_compared_by_the_key_they_hold(tmp_path: Path) -> None:
    root = tmp_path / "l"
    root.mkdir()
    (root / "a.yaml").write_text(
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: a\n  publish_tags: [x]\n"
        "  publish_s3: 'http://s3.example'\n  publish_dir: out\n"
    )
    from imagegraph.inventory import ABSENT, Answer, Presence

    state, inv = State(tmp_path / "s.db"), StaticInventory()
    first = plan_of(root, state, inv)
    record_all(first, state, inv)
    assert plan_of(root, state, inv).layers["a"].action == Action.UP_TO_DATE
    other = "f" * 64
    inv.artifacts_by[("a", "s3")] = {"x": Answer(Presence.ABSENT, holds=other)}
    inv.artifacts_by[("a", "dir")] = {"x": ABSENT}
    lp = plan_of(root, state, inv).layers["a"]
    assert lp.action == Action.PUBLISH and sorted(lp.publish) == ["dir", "s3"]
    msgs = [r.message for r in lp.reasons]
    assert f"s3 x -> {other[:12]}… (a build this state does not know), wants {lp.key[:12]}…" in msgs
    assert "published artifact missing from dir x" in msgs
    # Something of this key is there, and not whole: the answer's why is the reason.
    why = "a file its manifest names is missing or has another size"
    inv.artifacts_by[("a", "dir")] = {"x": Answer(Presence.ABSENT, holds=lp.key, why=why)}
    lp = plan_of(root, state, inv).layers["a"]
    assert f"dir x: {why}" in [r.message for r in lp.reasons]
    assert [r.code for r in lp.reasons if r.message == f"dir x: {why}"] == ["target-moved"]
    inv.artifacts_by[("a", "dir")] = {
        "x": Answer(Presence.UNKNOWN, error="cannot read out/a/x: Permission denied")
    }
    lp = plan_of(root, state, inv).layers["a"]
    assert lp.action == Action.UNKNOWN and "Permission denied" in lp.reasons[-1].message


def test_failed_boot_test_is_built_not_booted(tmp_path: Path) -> None:
    root = tmp_path / "l"
    root.mkdir()
    (root / "a.yaml").write_text(
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: a\n  publish_dir: out\n"
        "  boot_test: {enabled: true}\n"
    )
    state, inv = State(tmp_path / "s.db"), StaticInventory()
    first = plan_of(root, state, inv)
    record_all(first, state, inv, published=False)
    inv.artifacts_by[("a", "dir")] = False  # a failed boot publishes nothing under a human tag
    key = first.layers["a"].key
    state.record_event(
        run_id="r1",
        layer="a",
        key=key,
        kind="boot-test",
        location="qemu",
        detail={"outcome": "failed", "reason": "kernel panic"},
    )
    lp = plan_of(root, state, inv).layers["a"]
    assert lp.action == Action.PUBLISH
    assert lp.reasons[0].code == "boot-test-failed" and "kernel panic" in lp.reasons[0].message
    assert "never built" not in " ".join(r.message for r in lp.reasons)
    state.record_event(
        run_id="r2", layer="a", key=key, kind="boot-test", location="qemu", detail={"outcome": "booted"}
    )
    assert plan_of(root, state, inv).layers["a"].reasons[0].code != "boot-test-failed"


def test_dropping_a_tag_leaves_targets_that_hold_the_key_alone(tmp_path: Path) -> None:
    root = tmp_path / "l"
    root.mkdir()
    spec = root / "a.yaml"
    spec.write_text(
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: a\n  publish_tags: [x, y]\n"
        "  publish_s3: 'http://s3.example'\n  publish_dir: out\n"
    )
    state, inv = State(tmp_path / "s.db"), StaticInventory()
    record_all(plan_of(root, state, inv), state, inv)
    spec.write_text(spec.read_text().replace("[x, y]", "[x]"))
    assert plan_of(root, state, inv).layers["a"].action == Action.UP_TO_DATE
    # Offline, the records are all there is: their description changed, so it publishes.
    inv.reachable = False
    lp = plan_of(root, state, inv, offline=True).layers["a"]
    assert lp.action == Action.PUBLISH and lp.reasons[0].code == "targets-changed"


@pytest.fixture
def golden_site(tmp_path: Path):
    from . import golden_keys

    root = golden_keys.write_project(tmp_path / "layers")
    return root, State(tmp_path / "state.db")


def test_ansible_role_edit_is_named_and_rebuilds_only_that_layer(golden_site) -> None:
    root, state = golden_site
    inv = StaticInventory(reachable=False)
    record_all(plan_of(root, state, inv, offline=True), state, inv)
    (root / "play/roles/ntp/tasks/main.yml").write_text("- debug: {msg: changed}\n")
    plan = plan_of(root, state, inv, offline=True)
    assert {lid for lid, lp in plan.layers.items() if lp.action == Action.BUILD} == {"ansible"}
    (r,) = plan.layers["ansible"].reasons
    assert r.code == "file-changed" and r.message == "ansible project play/roles changed"


def test_backend_version_bump_and_key_format_bump_say_so(golden_site, monkeypatch) -> None:
    from imagegraph import key as key_mod
    from imagegraph.build import zypper

    root, state = golden_site
    inv = StaticInventory(reachable=False)
    record_all(plan_of(root, state, inv, offline=True), state, inv)
    monkeypatch.setattr(zypper, "VERSION", zypper.VERSION + 1)
    plan = plan_of(root, state, inv, offline=True)
    (r,) = plan.layers["zypper"].reasons
    assert r.code == "backend-changed" and "zypper build steps changed" in r.message
    monkeypatch.setattr(key_mod, "KEY_FORMAT", key_mod.KEY_FORMAT + 1)
    plan = plan_of(root, state, inv, offline=True)
    # a format bump rebuilds every layer once, and says why
    assert {lp.action for lp in plan.layers.values()} == {Action.BUILD}
    assert plan.layers["apt"].reasons[0].code == "key-format"


def test_cmds_diff_by_position() -> None:
    from imagegraph.plan import diff_inputs

    old = {"format": 1, "cmds": ["echo two", "make", "rm x"]}
    new = {"format": 1, "cmds": ["echo one", "make"]}
    assert [r.message for r in diff_inputs(old, new)] == [
        "cmds[0]: 'echo two' -> 'echo one'",
        "cmds[2]: removed 'rm x'",
    ]


_cmd = st.text(alphabet="abc xyz", min_size=1, max_size=8)


@given(st.lists(_cmd, max_size=6), st.lists(_cmd, max_size=6))
def test_cmds_diff_names_exactly_the_changed_positions(old: list[str], new: list[str]) -> None:
    from imagegraph.plan import diff_inputs

    reasons = diff_inputs({"format": 1, "cmds": old}, {"format": 1, "cmds": new})
    changed = [i for i in range(max(len(old), len(new))) if (old + [None] * 9)[i] != (new + [None] * 9)[i]]
    if not changed:
        assert [r.code for r in reasons] == ["key-changed"]
        return
    assert [r.detail["index"] for r in reasons] == changed
    for r in reasons:
        i = r.detail["index"]
        assert r.message.startswith(f"cmds[{i}]: ")
        if i < len(new):
            assert repr(new[i]) in r.message
        if i < len(old):
            assert repr(old[i]) in r.message


def test_external_parents_are_asked_once_per_reference(tmp_path: Path, registry) -> None:
    """Five layers on two external parents: two digest look-ups (in the prefetch), keys by digest."""
    from imagegraph.plan import LiveInventory

    from .publish_helpers import push_tiny_manifest
    from .specdirs import write

    host = registry.host
    d1 = push_tiny_manifest(registry.url, "vendor/os", "9", marker="one")
    d2 = push_tiny_manifest(registry.url, "vendor/os", "10", marker="two")
    root = tmp_path / "layers"
    for i in range(5):
        parent = f"{host}/vendor/os:{9 if i < 3 else 10}"
        write(
            root,
            f"l{i}.yaml",
            f"options:\n  layer_type: base\n  name: l{i}\n  pkg_manager: dnf\n  parent: '{parent}'\n"
            "  registry_opts_pull: ['--tls-verify=false']\n",
        )
    lg = build_graph(load_project(root))
    inv = LiveInventory()
    plan = make_plan(lg, State(tmp_path / "s.db"), inv)
    assert inv.registry().request_count == 2  # one HEAD per reference, none per layer
    digests = {lid: plan.keys[lid].parent.digest for lid in plan.layers}
    assert digests == {"l0": d1, "l1": d1, "l2": d1, "l3": d2, "l4": d2}
    # Pinned by the lock file: no request at all.
    inv2 = LiveInventory()
    make_plan(lg, State(tmp_path / "s.db"), inv2, locked_digest=lambda ref: "sha256:" + "0" * 64)
    assert inv2._registry is None or inv2._registry.request_count == 0
