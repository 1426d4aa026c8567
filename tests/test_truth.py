"""Plans that never lie, through the real CLI: a real registry, S3 over HTTP (moto), a directory target.

- A revert: every target (registry human tags, S3 objects, directory tags,
  local tags) still holds the edited build; `plan` says which tag points at
  which key, `up` moves them all without building, children follow.
- gc right after the revert keeps the reverted-to key (computed from the
  specs, not the last build), so nothing is rebuilt.
- Unknown is not absent: a failing `buildah images` and a registry that went
  away make `plan` exit 1 naming the failure; `up` builds nothing and exits 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures_build import buildah, have_buildah
from tests.truth_site import Site, actions_of, keys_of

pytestmark = [pytest.mark.buildah, pytest.mark.skipif(not have_buildah(), reason="needs buildah as root")]


@pytest.fixture
def site(tmp_path: Path, rpm_repo, registry, s3_env):
    s = Site(tmp_path, registry.host, s3_env.endpoint, s3_env.make_bucket(), rpm_repo.url, prefix="igt-tr")
    yield s
    s.cleanup()


def _all_hold(site: Site, s3, keys: dict[str, str]) -> None:
    for layer in ("base", "child"):
        held = site.holdings(layer, s3)
        assert held and all(v == keys[layer] for v in held.values()), (layer, held, keys[layer])


def test_revert_moves_every_target_back_without_building(site: Site, s3_env) -> None:
    rc, doc, err = site.up()
    assert rc == 0, err[-3000:]
    _, p1, _ = site.plan()
    k1 = keys_of(p1)
    _all_hold(site, s3_env, k1)

    site.rev["base"] = 1
    site.write()
    rc, doc, err = site.up()
    assert rc == 0 and actions_of(doc) == {"base": "build", "child": "build"}, err[-3000:]
    _, p2, _ = site.plan()
    k2 = keys_of(p2)
    assert k2["base"] != k1["base"] and k2["child"] != k1["child"]
    _all_hold(site, s3_env, k2)

    # The revert: same keys as the first build, and every target still holds the second.
    site.rev["base"] = 0
    site.write()
    rc, p3, err = site.plan()
    assert rc == 0, err
    assert keys_of(p3) == k1
    base, child = (next(x for x in p3["layers"] if x["name"] == n) for n in ("base", "child"))
    assert base["action"] == "publish" and sorted(base["publish"]) == ["dir", "registry", "s3"], base
    msgs = [r["message"] for r in base["reasons"]]
    want = f"-> {k2['base'][:12]}… (a later build), wants {k1['base'][:12]}…"
    assert f"1 {want}" in msgs and f"s3 1 {want}" in msgs and f"dir 1 {want}" in msgs, msgs
    assert child["action"] == "publish" and sorted(child["publish"]) == ["dir", "local", "registry"], child
    human = site.cli("plan", str(site.layers), "--state", str(site.state))
    assert f"latest -> {k2['child'][:12]}… (a later build)" in human.stdout, human.stdout

    # gc right after the revert keeps the key the specs give now: still nothing to build.
    builds = site.builds()
    r = site.gc(1)
    assert r.returncode == 0, r.stderr[-2000:]
    _, p4, _ = site.plan()
    assert actions_of(p4) == {"base": "publish", "child": "publish"}, p4

    rc, doc, err = site.up()
    assert rc == 0 and actions_of(doc) == {"base": "publish", "child": "publish"}, err[-3000:]
    assert site.builds() == builds
    _all_hold(site, s3_env, k1)
    rc, p5, _ = site.plan("--check")
    assert rc == 0 and set(actions_of(p5).values()) == {"up-to-date"}, p5

    # The child's image only in the registry (local storage lost): its local tags come back from the
    # pulled key tag, and that image is then known as the key's, not republished on every run.
    iid = site.local_id(f"localhost/imagegraph/{site.name('child')}:ig-{k1['child']}")
    assert iid
    buildah("rmi", "-f", iid)
    _, p6, _ = site.plan()
    assert actions_of(p6) == {"base": "up-to-date", "child": "publish"}, p6
    rc, doc, err = site.up()
    assert rc == 0 and site.builds() == builds, err[-3000:]
    _all_hold(site, s3_env, k1)
    rc, p7, _ = site.plan("--check")
    assert rc == 0 and set(actions_of(p7).values()) == {"up-to-date"}, p7

    # The base's manifest deleted from the registry (its key tag and `1` with it): the image is only
    # local now, and `up` pushes it again, without building.
    from imagegraph.publish.registry_client import RegistryClient

    assert RegistryClient().delete_tag(site.repository("base"), f"ig-{k1['base']}")
    _, p8, _ = site.plan()
    assert actions_of(p8)["base"] == "publish", p8
    rc, doc, err = site.up()
    assert rc == 0 and site.builds() == builds, err[-3000:]
    _all_hold(site, s3_env, k1)


def test_unknown_local_store_and_registry_are_not_absent(site: Site, registry, tmp_path: Path) -> None:
    rc, doc, err = site.up()
    assert rc == 0, err[-3000:]
    builds = site.builds()

    # A `buildah images` that fails (a locked storage database): unknown, never "build everything".
    real = os.popen("command -v buildah").read().strip()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "buildah").write_text(
        '#!/bin/sh\nif [ "$1" = images ]; then echo "Error: database is locked" >&2; exit 125; fi\n'
        f'exec {real} "$@"\n'
    )
    (bindir / "buildah").chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    rc, plan, err = site.plan(env=env)
    assert rc == 1 and set(actions_of(plan).values()) == {"unknown"}, (plan, err)
    assert "database is locked" in err, err
    rc, doc, err = site.up(env=env)
    assert rc == 1, err[-3000:]
    assert {x["status"] for x in doc["layers"]} <= {"unknown", "blocked"}, doc
    assert any("database is locked" in (x["error"] or "") for x in doc["layers"]), doc
    assert site.builds() == builds

    # A registry that went away: unknown too, naming it; --offline is the explicit way round.
    registry.stop()
    rc, plan, err = site.plan()
    assert rc == 1 and actions_of(plan)["base"] == "unknown", plan
    assert f"registry {registry.host}" in err, err
    rc, doc, err = site.up()
    assert rc == 1 and site.builds() == builds, err[-3000:]
    rc, plan, err = site.plan("--offline")
    assert rc == 0 and set(actions_of(plan).values()) == {"up-to-date"}, (plan, err)
    registry.start()
    rc, plan, err = site.plan("--check")
    assert rc == 0, (plan, err)
