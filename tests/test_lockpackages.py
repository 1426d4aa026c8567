"""Locked package sets (imagegraph/resolve.py, lockfile.py): resolve, keys, plan reasons, builds.

Repositories are real rpm-md repositories of tiny generated rpms (tests/rpmrepo.py), read through
file:// URLs; the depsolve is libsolv's (python3-solv). The build tests run real buildah and dnf.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegraph.graph import build_graph
from imagegraph.lockfile import load_lock, lock, package_diff
from imagegraph.packages import Inventory
from imagegraph.plan import Action, StaticInventory, diff_inputs, make_plan
from imagegraph.project import load_project
from imagegraph.resolve import SYSTEM_PYTHON, LockedPackage
from imagegraph.state import State
from tests.fixtures_build import have_buildah
from tests.needs import missing, requires
from tests.rpmrepo import make_repo

from .specdirs import write

EXE = [sys.executable, "-m", "imagegraph.cli"]
P = "igt-lp"


def have_solv() -> bool:
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import solv"], capture_output=True)
    return r.returncode == 0


pytestmark = requires(have_solv(), "needs python3-solv (scripts/install-system-deps.sh)")


def layer(name: str, parent: str, url: str, packages: list[str], extra: str = "") -> str:
    return (
        f"options:\n  layer_type: base\n  name: {P}-{name}\n  pkg_manager: dnf\n  parent: '{parent}'\n"
        f"  gpgcheck: false\n  releasever: '9'\n  publish_local: true\n  publish_tags: ['1']\n{extra}"
        f"repos:\n  - alias: R\n    url: '{url}'\n"
        f"packages: [{', '.join(packages)}]\n"
    )


@pytest.fixture
def repo(tmp_path: Path):
    if not (subprocess.run(["which", "rpmbuild", "createrepo_c"], capture_output=True).returncode == 0):
        missing("rpmbuild and createrepo_c are needed (scripts/install-system-deps.sh)")
    r = make_repo(tmp_path / "repo")
    r.add_version("ig-lib", "1.0")
    r.add_version("ig-app", "1.0", requires=("ig-lib",))
    r.url = f"file://{r.path}"
    yield r
    r.cleanup()


@pytest.fixture
def site(tmp_path: Path, repo):
    """base (group + ig-hello + ig-lib) -> compute (ig-app, ig-hello: ig-lib and ig-hello come from base);
    other (ig-tool, scratch)."""
    root = tmp_path / "layers"
    write(
        root,
        "base.yaml",
        layer("base", "scratch", repo.url, ["ig-hello", "ig-lib"]).replace(
            "packages:", "package_groups: ['IG Minimal']\npackages:"
        ),
    )
    write(root, "compute.yaml", layer("compute", f"localhost/{P}-base:1", repo.url, ["ig-app", "ig-hello"]))
    write(root, "other.yaml", layer("other", "scratch", repo.url, ["ig-tool"]))
    return root


def graph(root: Path):
    return build_graph(load_project(root))


def keys(root: Path, tmp_path: Path) -> dict[str, str]:
    lk = load_lock(root)
    p = make_plan(
        graph(root),
        State(tmp_path / "s.db"),
        StaticInventory(reachable=False),
        offline=True,
        upstream_of=lk.upstream_of if lk else None,
    )
    return {lid: lp.key for lid, lp in p.layers.items()}


def locked(root: Path, file: str) -> list[str]:
    lk = load_lock(root)
    (entry,) = [e for (f, _), e in lk.layers.items() if f == file]
    return [" ".join(LockedPackage.parse(x).line().split()[:2]) for x in entry["packages"]]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "IMAGEGRAPH_RETRY_ATTEMPTS": "2"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, timeout=300)


# ---------------------------------------------------------------------------- resolving


def test_lock_resolves_each_layer_on_its_parents_set(site) -> None:
    r = lock(graph(site))
    assert not r.errors and r.written, r.errors
    # The group's members, the named packages; nothing the parent already has.
    assert locked(site, "base.yaml") == [
        "ig-busybox 0:1.0-1",
        "ig-extra 0:1.0-1",
        "ig-hello 0:1.0-1",
        "ig-lib 0:1.0-1",
    ]
    assert locked(site, "compute.yaml") == ["ig-app 0:1.0-1"]  # ig-lib (its dependency) is in base
    assert locked(site, "other.yaml") == ["ig-tool 0:1.0-1"]
    text = (site / "imagegraph.lock").read_text()
    line = next(x for x in text.splitlines() if "ig-app" in x)
    assert line.split() == ["-", "ig-app", "0:1.0-1", "noarch", "R", line.split()[-1]]
    assert line.split()[-1].startswith("sha256:") and len(line.split()[-1]) == 7 + 64
    # A second run changes nothing, reads no primary metadata again.
    again = lock(graph(site), update=True)
    assert not again.written and {c.change for c in again.changes} == {"unchanged"}


def test_child_resolved_from_empty_would_differ(site, repo, tmp_path: Path) -> None:
    """The parent's set really is the base: without it the child would lock its dependency too."""
    (site / "compute.yaml").write_text(layer("compute", "scratch", repo.url, ["ig-app", "ig-hello"]))
    lock(graph(site))
    assert locked(site, "compute.yaml") == ["ig-app 0:1.0-1", "ig-hello 0:1.0-1", "ig-lib 0:1.0-1"]


def test_unrelated_package_rebuilds_nothing(site, repo, tmp_path: Path) -> None:
    lock(graph(site))
    before = keys(site, tmp_path)
    repo.add_version("ig-unrelated", "1.0")
    r = lock(graph(site), update=True)
    assert r.written  # the repository fingerprint moved ...
    assert [c.name for c in r.changes if c.change == "updated"] == ["R"]
    assert keys(site, tmp_path) == before  # ... and no key did


def test_new_version_rebuilds_exactly_that_layer_and_descendants(site, repo, tmp_path: Path) -> None:
    lock(graph(site))
    before_text = (site / "imagegraph.lock").read_text()
    before = keys(site, tmp_path)
    repo.add_version("ig-tool", "1.1")
    r = cli("lock", str(site), "--update", "--dry-run")
    assert r.returncode == 0 and "ig-tool 1.0-1 -> 1.1-1 (R)" in r.stdout and "not written" in r.stdout
    assert (site / "imagegraph.lock").read_text() == before_text
    r = cli("lock", str(site), "--update")
    assert r.returncode == 0, r.stderr
    after = keys(site, tmp_path)
    assert {k for k in after if after[k] != before[k]} == {"other"}
    diff = [
        x
        for x in difflib.unified_diff(
            before_text.splitlines(), (site / "imagegraph.lock").read_text().splitlines()
        )
        if x[:1] in "+-" and not x.startswith(("+++", "---"))
    ]
    pkg_lines = [x for x in diff if "ig-" in x]
    # `git diff imagegraph.lock` reads per package: one line out, one line in.
    assert [(x[0], *x[1:].split()[1:3]) for x in pkg_lines] == [
        ("-", "ig-tool", "0:1.0-1"),
        ("+", "ig-tool", "0:1.1-1"),
    ]

    # base's package: base and compute (its child) rebuild, other does not; the plan says why.
    repo.add_version("ig-hello", "1.1")
    assert cli("lock", str(site), "--update").returncode == 0
    again = keys(site, tmp_path)
    assert {k for k in again if again[k] != after[k]} == {"base", "compute"}
    state, inv = State(tmp_path / "p.db"), StaticInventory(reachable=False)
    lk = load_lock(site)
    for lid, lp in make_plan(
        graph(site), state, inv, offline=True, upstream_of=lk.upstream_of
    ).layers.items():
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
            started=0,
            finished=1,
        )
        inv.images.add(image)
        inv.images.add(f"localhost/{P}-{lid}:1")
    repo.add_version("ig-hello", "1.2")
    assert cli("lock", str(site), "--update").returncode == 0
    lk = load_lock(site)
    plan = make_plan(graph(site), state, inv, offline=True, upstream_of=lk.upstream_of)
    (reason,) = plan.layers["base"].reasons
    assert reason.code == "upstream-package" and reason.message == "upstream: ig-hello 1.1-1 -> 1.2-1 (R)"
    assert plan.layers["compute"].reasons[0].code == "parent-rebuilds"
    assert plan.layers["other"].action == Action.UP_TO_DATE


def test_transitive_dependency_bump(site, repo, tmp_path: Path) -> None:
    """other installs ig-app, which pulls in ig-lib: a new ig-lib changes other's key."""
    (site / "other.yaml").write_text(layer("other", "scratch", repo.url, ["ig-app"]))
    lock(graph(site))
    assert locked(site, "other.yaml") == ["ig-app 0:1.0-1", "ig-lib 0:1.0-1"]
    before = keys(site, tmp_path)
    repo.add_version("ig-lib", "1.1")
    r = lock(graph(site), update=True)
    (ch,) = [c for c in r.changes if c.what == "packages" and c.name == "other.yaml"]
    assert ch.change == "updated" and ch.packages == ["ig-lib 1.0-1 -> 1.1-1 (R)"]
    after = keys(site, tmp_path)
    # base installs ig-lib by name: it moves too (and compute with it); other by dependency.
    assert {k for k in after if after[k] != before[k]} == {"base", "compute", "other"}
    # compute is re-resolved on base's new set, and keeps its own set: ig-app only.
    assert locked(site, "compute.yaml") == ["ig-app 0:1.0-1"]


def test_spec_edit_re_resolves_that_layer_only(site, repo, tmp_path: Path) -> None:
    lock(graph(site))
    repo.add_version("ig-hello", "1.1")  # upstream moves, but without --update nobody looks
    (site / "other.yaml").write_text(layer("other", "scratch", repo.url, ["ig-tool", "ig-extra"]))
    lk = load_lock(site)
    assert lk.upstream_of(graph(site).spec("other")).keys() == {"repo:R"}  # stale entry: not trusted
    r = lock(graph(site))
    changed = {c.name: c.packages for c in r.changes if c.change != "unchanged"}
    assert changed == {"other.yaml": ["+ig-extra 1.0-1 (R)"]}
    assert "ig-hello 0:1.0-1" in locked(site, "base.yaml")  # still the locked version
    # Until then, plan says the lock is stale, once, rather than "repository R newly locked".
    (r,) = diff_inputs({"upstream": {"packages": ["a 0:1-1 noarch R"]}}, {"upstream": {"repo:R": "x"}})
    assert r.code == "upstream-stale" and "re-resolves it" in r.message


def test_unknown_package_is_an_error_and_nothing_is_written(site, repo) -> None:
    assert cli("lock", str(site)).returncode == 0
    before = (site / "imagegraph.lock").read_text()
    (site / "other.yaml").write_text(layer("other", "scratch", repo.url, ["ig-nosuch"]))
    r = cli("lock", str(site))
    assert r.returncode == 1 and "other.yaml" in r.stderr and "ig-nosuch" in r.stderr, r.stderr
    assert (site / "imagegraph.lock").read_text() == before


# -------------------------------------------------------------------------------- builds


def remove_test_images() -> None:
    """This module's images, tagged or not (a parent pulled by digest has no tag)."""
    from tests.fixtures_build import buildah

    for line in buildah("images", "--format", "{{.ID}} {{.Name}}", check=False).stdout.splitlines():
        image_id, _, name = line.partition(" ")
        if f"/{P}-" in name or "/igt-lp/" in name:
            buildah("rmi", "-f", image_id, check=False)


def installed(state: Path, key: str) -> dict[str, str]:
    inv = Inventory.decompress(State(state).inventory_blob(key))
    return {p.name: p.version for p in inv.packages}


def plan_keys(root: Path, state: Path) -> dict[str, str]:
    import json

    doc = json.loads(cli("plan", str(root), "--state", str(state), "--offline", "--json").stdout)
    return {x["name"]: x["key"] for x in doc["layers"]}


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_build_installs_locked_versions_and_recovers_with_update_lock(site, repo, tmp_path: Path) -> None:
    state = tmp_path / "state" / "state.db"
    (site / "other.yaml").unlink()
    try:
        assert cli("lock", str(site)).returncode == 0
        repo.add_version("ig-hello", "1.1")  # not locked: the build must still install 1.0
        repo.add_version("ig-lib", "1.1")
        r = cli("up", str(site), "--state", str(state))
        assert r.returncode == 0, r.stderr[-3000:]
        k = plan_keys(site, state)
        pk = installed(state, k["base"])
        assert pk["ig-hello"] == "1.0-1" and pk["ig-lib"] == "1.0-1" and pk["ig-busybox"] == "1.0-1"
        ck = installed(state, k["compute"])
        assert ck["ig-app"] == "1.0-1" and ck["ig-lib"] == "1.0-1"  # the parent's, not upgraded

        # The mirror drops the locked build: a clear failure, then `up --update-lock` recovers.
        repo.add_version("ig-tool", "1.0")  # (republish: a new repomd)
        repo.remove_version("ig-hello", "1.0")
        r = cli("up", str(site), "--state", str(state), "--force", "base")
        out = r.stdout + r.stderr
        assert r.returncode == 1, out[-2000:]
        assert "locked package ig-hello-0:1.0-1.noarch no longer offered" in out
        assert "imagegraph lock --update" in out
        r = cli("up", str(site), "--state", str(state), "--update-lock")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "ig-hello 1.0-1 -> 1.1-1 (R)" in r.stdout
        k = plan_keys(site, state)
        pk = installed(state, k["base"])
        assert pk["ig-hello"] == "1.1-1" and pk["ig-lib"] == "1.1-1"
    finally:
        remove_test_images()


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_external_parent_set_is_read_from_the_image(site, repo, registry, tmp_path: Path) -> None:
    """A layer on a registry image: its depsolve's base is what that image's rpm database holds."""
    from tests.fixtures_build import buildah

    state = tmp_path / "state" / "state.db"
    for f in ("compute.yaml", "other.yaml"):
        (site / f).unlink()
    ref = f"{registry.host}/igt-lp/base:1"
    child = tmp_path / "child"
    write(
        child,
        "child.yaml",
        layer("child", ref, repo.url, ["ig-app", "ig-hello"]).replace(
            "  publish_local: true\n", "  publish_local: true\n  registry_opts_pull: ['--tls-verify=false']\n"
        ),
    )
    try:
        assert cli("lock", str(site)).returncode == 0
        r = cli("up", str(site), "--state", str(state))
        assert r.returncode == 0, r.stderr[-3000:]
        buildah("push", "--tls-verify=false", f"localhost/{P}-base:1", f"docker://{ref}")
        r = cli("lock", str(child))
        assert r.returncode == 0, r.stdout + r.stderr
        assert locked(child, "child.yaml") == ["ig-app 0:1.0-1"]  # ig-lib, ig-hello: in the image
        text = (child / "imagegraph.lock").read_text()
        assert "@parent" not in text  # the parent's packages are its base, not the layer's set
        r = cli("up", str(child), "--state", str(tmp_path / "state2" / "s.db"))
        assert r.returncode == 0, r.stderr[-3000:]
        k = plan_keys(child, tmp_path / "state2" / "s.db")
        pk = installed(tmp_path / "state2" / "s.db", k["child"])
        assert pk["ig-app"] == "1.0-1" and pk["ig-lib"] == "1.0-1"
    finally:
        remove_test_images()


# ---------------------------------------------------------------------------------- apt


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_apt_layer_locks_and_installs_name_version(debian_image, registry, tmp_path: Path) -> None:
    """An apt layer on a Debian image (from a registry): resolved on the image's dpkg status,
    installed as `name=version`, a new version moves only when locked."""
    from tests.debrepo import make_deb_repo
    from tests.fixtures_build import buildah
    from tests.rpmrepo import serve

    result = debian_image[0]
    ref = f"{registry.host}/igt-lp/debian:bookworm"
    buildah("push", "--tls-verify=false", result.image_id, f"docker://{ref}")
    deb = make_deb_repo(tmp_path / "debrepo")
    deb.add("ig-deb-a", "1.0")
    server = serve(deb.path)
    root = tmp_path / "layers"
    write(
        root,
        "apt.yaml",
        f"options:\n  layer_type: base\n  name: {P}-apt\n  pkg_manager: apt\n  parent: '{ref}'\n"
        "  gpgcheck: false\n  registry_opts_pull: ['--tls-verify=false']\n"
        f"repos:\n  - alias: igdeb\n    url: '{server.url}'\n    suite: igtest\n"
        "packages: [ig-deb-a, dpkg]\n",
    )
    state = tmp_path / "state" / "s.db"
    try:
        r = cli("lock", str(root))
        assert r.returncode == 0, r.stdout + r.stderr
        assert locked(root, "apt.yaml") == ["ig-deb-a 1.0"]  # dpkg: the image has it
        deb.add("ig-deb-a", "1.1")  # not locked yet: the build still installs 1.0
        r = cli("up", str(root), "--state", str(state))
        assert r.returncode == 0, r.stderr[-3000:]
        assert installed(state, plan_keys(root, state)["apt"])["ig-deb-a"] == "1.0"
        r = cli("lock", str(root), "--update")
        assert r.returncode == 0 and "ig-deb-a 1.0 -> 1.1 (igdeb)" in r.stdout, r.stdout + r.stderr
        r = cli("up", str(root), "--state", str(state))
        assert r.returncode == 0, r.stderr[-3000:]
        assert installed(state, plan_keys(root, state)["apt"])["ig-deb-a"] == "1.1"
    finally:
        server.stop()
        remove_test_images()


# ----------------------------------------------------------------------------- properties

_names = st.sampled_from(["openssl", "glibc", "bash", "ig-a", "lib.x"])
_evrs = st.sampled_from(["0:3.0.7-25.el9", "0:3.0.7-27.el9", "1:2.34-100.el9", "0:1.0-1"])
_pkg = st.builds(
    LockedPackage,
    _names,
    _evrs,
    st.sampled_from(["x86_64", "noarch"]),
    st.sampled_from(["BaseOS", "AppStream"]),
    st.sampled_from(["sha256:" + "a" * 64, "sha256:" + "b" * 64]),
)
_set = st.lists(_pkg, max_size=6).map(lambda ps: sorted({p.ident: p for p in ps}.values()))


@given(_set, _set)
def test_package_diff_names_each_changed_package_once(old: list, new: list) -> None:
    diff = package_diff(old, new)
    assert (diff == []) == (old == new)
    a, b = {p.ident: p for p in old}, {p.ident: p for p in new}
    changed = {i for i in set(a) | set(b) if a.get(i) != b.get(i)}
    assert len(diff) == len(changed)
    for line in diff:
        assert any(line.lstrip("+-").startswith(f"{n} ") for n, _ in changed)
    for p in old + new:
        assert LockedPackage.parse(p.line()) == p  # one lock line per package, read back the same


def test_locked_mismatches_names_other_versions() -> None:
    from imagegraph.build.layer import locked_mismatches
    from imagegraph.packages import InventoryStatus, Package, PackageFormat

    inv = Inventory(
        InventoryStatus.KNOWN,
        PackageFormat.RPM,
        [Package("ig-hello", "1.1-1", "noarch"), Package("bash", "1:5.1-2", "x86_64")],
    )
    assert locked_mismatches(("ig-hello-0:1.1-1.noarch", "bash-1:5.1-2.x86_64"), inv) == []
    assert locked_mismatches(("ig-hello-0:1.0-1.noarch", "gone-0:1-1.noarch"), inv) == [
        "ig-hello 0:1.1-1 (locked 0:1.0-1)"
    ]
    deb = Inventory(InventoryStatus.KNOWN, PackageFormat.DEB, [Package("ig-deb-a", "1.1", "all")])
    assert locked_mismatches(("ig-deb-a=1.0",), deb) == ["ig-deb-a 1.1 (locked 1.0)"]
    assert locked_mismatches(("ig-deb-a=1.0",), deb, ("ig-deb-a",)) == []


def test_child_resolves_from_the_repositories_its_parent_image_carries(site, repo) -> None:
    """grand (no repos) on compute (dnf on an image: its repo file stays there) resolves from R;
    a dnf layer on a scratch dnf build, which keeps no repo files, is not resolved and says why."""
    write(site, "grand.yaml", layer("grand", f"localhost/{P}-compute:1", repo.url, ["ig-tool"]).split("repos:")[0]
          + "packages: [ig-tool]\n")  # fmt: skip
    text = (
        layer("norepo", f"localhost/{P}-base:1", repo.url, ["ig-tool"]).split("repos:")[0]
        + "packages: [ig-tool]\n"
    )
    write(site, "norepo.yaml", text)
    r = lock(graph(site))
    assert not r.errors, r.errors
    assert locked(site, "grand.yaml") == ["ig-tool 0:1.0-1"]
    assert any(
        n.startswith("norepo.yaml: packages not resolved: it installs from repository files") for n in r.notes
    )


def test_apt_choices_follow_apt_minbase_and_named_packages(tmp_path: Path) -> None:
    """mmdebstrap's minbase (Essential:yes, Priority:required, apt) heads a scratch apt layer's set,
    and a dependency is met by the package it names, not by a substitute that provides the name."""
    from imagegraph.resolve import RepoData, minbase, solve

    def stanza(name: str, extra: str = "") -> str:
        return f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\n{extra}SHA256: {'c' * 64}\n\n"

    packages = tmp_path / "Packages"
    packages.write_text(
        stanza("base-files", "Essential: yes\nPriority: required\n")
        + stanza("mawk", "Priority: required\n")
        + stanza("apt")
        + stanza("libsystemd0")
        + stanza("libelogind0", "Provides: libsystemd0 (= 1.0)\nConflicts: systemd\n")
        + stanza("app", "Depends: libsystemd0 (>= 1.0)\n")
        + stanza("unrelated", "Priority: optional\n")
    )
    repo = RepoData("debian", [packages])
    assert minbase([repo]) == ["apt", "base-files", "mawk"]
    res = solve([repo], [], [], ["app"], "amd64", deb=True, recommends=False)
    assert [p.name for p in res.packages] == ["app", "libsystemd0"]
    assert res.packages[0].checksum == "sha256:" + "c" * 64


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_zypper_layer_installs_the_locked_versions(repo, tmp_path: Path) -> None:

    if not shutil.which("zypper"):
        missing("zypper is installed by scripts/install-system-deps.sh")
    root = tmp_path / "layers"
    text = layer("zyp", "scratch", repo.url, ["ig-busybox", "ig-app"]).replace(
        "pkg_manager: dnf", "pkg_manager: zypper"
    )
    write(root, "zyp.yaml", text)
    state = tmp_path / "state" / "s.db"
    try:
        assert cli("lock", str(root)).returncode == 0
        assert locked(root, "zyp.yaml") == ["ig-app 0:1.0-1", "ig-busybox 0:1.0-1", "ig-lib 0:1.0-1"]
        repo.add_version("ig-lib", "1.1")
        r = cli("up", str(root), "--state", str(state))
        assert r.returncode == 0, r.stderr[-3000:]
        assert installed(state, plan_keys(root, state)["zyp"])["ig-lib"] == "1.0-1"
        repo.remove_version("ig-lib", "1.0")
        r = cli("up", str(root), "--state", str(state), "--force", "zyp")
        assert (
            r.returncode == 1
            and "locked package ig-lib.noarch=1.0-1 no longer offered" in r.stdout + r.stderr
        )
        r = cli("up", str(root), "--state", str(state), "--update-lock")
        assert r.returncode == 0, r.stderr[-3000:]
        assert installed(state, plan_keys(root, state)["zyp"])["ig-lib"] == "1.1-1"
    finally:
        remove_test_images()


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_plan_after_a_reverted_package_edit_says_what_up_does(site, repo, tmp_path: Path) -> None:
    """An edit of a package list, `up` (re-resolved, built), then its revert: the lock entry is for
    the edit, and `up` re-resolves before planning, finds the first build's key and only moves the
    tag. `plan` (and `up --dry-run`) re-resolve the same way in memory, so they say the same."""
    import json

    state = tmp_path / "state" / "state.db"
    (site / "base.yaml").unlink()
    (site / "compute.yaml").unlink()
    spec = site / "other.yaml"
    first = spec.read_text()
    try:
        assert cli("lock", str(site)).returncode == 0
        r = cli("up", str(site), "--state", str(state))
        assert r.returncode == 0, r.stderr[-3000:]
        k1 = plan_keys(site, state)["other"]
        spec.write_text(first.replace("[ig-tool]", "[ig-tool, ig-hello]"))
        r = cli("up", str(site), "--state", str(state))
        assert r.returncode == 0, r.stderr[-3000:]
        assert "ig-hello" in (site / "imagegraph.lock").read_text()
        spec.write_text(first)  # the revert; the lock still holds the edit's set
        lock_text = (site / "imagegraph.lock").read_text()

        for argv in (("plan",), ("up", "--dry-run")):
            r = cli(*argv, str(site), "--state", str(state), "--json")
            assert r.returncode in (0, 1), r.stderr[-3000:]
            (lp,) = json.loads(r.stdout)["layers"]
            assert (lp["action"], lp["key"]) == ("publish", k1), (argv, lp)
        assert (site / "imagegraph.lock").read_text() == lock_text  # a preview writes nothing

        r = cli("up", str(site), "--state", str(state), "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        (done,) = json.loads(r.stdout)["layers"]
        assert done["action"] == "publish" and [t["kind"] for t in done["tasks"]] == ["tag-local"], done
        assert plan_keys(site, state)["other"] == k1
        r = cli("plan", str(site), "--state", str(state), "--json")
        assert json.loads(r.stdout)["layers"][0]["action"] == "up-to-date"
    finally:
        remove_test_images()
