"""Locked package sets per architecture (lockfile.py, resolve.py): a multi-arch layer's `lock`
resolves every arch it builds from that arch's metadata, keys follow each arch's own set, and a
foreign arch's build installs its own locked packages.

Repositories are real rpm-md repositories of tiny generated rpms (tests/rpmrepo.py: noarch ones,
plus `ig-drv` built for both arches with `rpmbuild --target`), read through file:// URLs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegraph.arch import Arch, emulation, host_arch
from imagegraph.graph import build_graph
from imagegraph.lockfile import load_lock, lock, repo_sources
from imagegraph.plan import Action, StaticInventory, make_plan
from imagegraph.project import load_project
from imagegraph.resolve import LockedPackage, locked_nevras
from imagegraph.state import State
from tests.fixtures_build import have_buildah
from tests.needs import missing, requires
from tests.rpmrepo import make_repo
from tests.test_lockpackages import have_solv

from .specdirs import write

EXE = [sys.executable, "-m", "imagegraph.cli"]
P = "igt-la"
HOST = str(host_arch())
OTHER = "aarch64" if HOST != "aarch64" else "x86_64"

pytestmark = requires(have_solv(), "needs python3-solv (scripts/install-system-deps.sh)")


def layer(name: str, parent: str, url: str, packages: list[str], arches: str = f"[{HOST}, {OTHER}]") -> str:
    return (
        f"options:\n  layer_type: base\n  name: {P}-{name}\n  pkg_manager: dnf\n  parent: '{parent}'\n"
        f"  gpgcheck: false\n  releasever: '9'\n  publish_local: true\n  publish_tags: ['1']\n"
        f"  arches: {arches}\n"
        f"repos:\n  - alias: R\n    url: '{url}'\n"
        f"packages: [{', '.join(packages)}]\n"
    )


def need_tools() -> None:
    if subprocess.run(["which", "rpmbuild", "createrepo_c"], capture_output=True).returncode != 0:
        missing("rpmbuild and createrepo_c are needed (scripts/install-system-deps.sh)")


@pytest.fixture
def repo(tmp_path: Path):
    """One repository carrying both arches: ig-drv 1.0 for each, ig-lib (noarch) it needs."""
    need_tools()
    r = make_repo(tmp_path / "repo")
    r.add_version("ig-lib", "1.0")
    for a in (HOST, OTHER):
        r.add_version("ig-drv", "1.0", requires=("ig-lib",), arch=a)
    r.url = f"file://{r.path}"
    yield r
    r.cleanup()


@pytest.fixture
def site(tmp_path: Path, repo):
    """base (ig-hello, ig-drv) -> compute (ig-tool), both for the host's arch and OTHER."""
    root = tmp_path / "layers"
    write(root, "base.yaml", layer("base", "scratch", repo.url, ["ig-hello", "ig-drv"]))
    write(root, "compute.yaml", layer("compute", f"localhost/{P}-base:1", repo.url, ["ig-tool"]))
    return root


def graph(root: Path):
    return build_graph(load_project(root))


def entry(root: Path, file: str, arch: str) -> list[str]:
    """The locked set of (file, arch) as `name evr arch` lines."""
    lk = load_lock(root)
    return [" ".join(LockedPackage.parse(x).line().split()[:3]) for x in lk.layers[(file, arch)]["packages"]]


def plan(root: Path, tmp_path: Path, state: State | None = None, inv: StaticInventory | None = None):
    lk = load_lock(root)
    return make_plan(
        graph(root),
        state or State(tmp_path / "s.db"),
        inv or StaticInventory(reachable=False),
        offline=True,
        upstream_of=lk.upstream_of if lk else None,
    )


def keys(root: Path, tmp_path: Path) -> dict[str, str]:
    return {nid: lp.key for nid, lp in plan(root, tmp_path).layers.items()}


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "IMAGEGRAPH_RETRY_ATTEMPTS": "2"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, timeout=300)


# ---------------------------------------------------------------------------- resolving


def test_lock_resolves_every_arch_a_layer_builds(site) -> None:
    r = lock(graph(site))
    assert not r.errors and r.written, r.errors
    lk = load_lock(site)
    assert sorted(lk.layers) == sorted((f, a) for f in ("base.yaml", "compute.yaml") for a in (HOST, OTHER))
    # Each arch gets its own ig-drv build; noarch packages are the same in both.
    for a in (HOST, OTHER):
        assert entry(site, "base.yaml", a) == [
            f"ig-drv 0:1.0-1 {a}",
            "ig-hello 0:1.0-1 noarch",
            "ig-lib 0:1.0-1 noarch",
        ]
        assert entry(site, "compute.yaml", a) == ["ig-tool 0:1.0-1 noarch"]
    arches = {(c.name, c.arch) for c in r.changes if c.what == "packages" and c.change == "added"}
    assert arches == {(f, a) for f in ("base.yaml", "compute.yaml") for a in (HOST, OTHER)}


def test_each_node_key_and_install_list_is_its_own_arch(site, tmp_path: Path) -> None:
    lock(graph(site))
    p = plan(site, tmp_path)
    base, foreign = p.layers["base"], p.layers[f"base@{OTHER}"]
    assert base.inputs["upstream"] != foreign.inputs["upstream"]
    # What the build installs (BuildRequest.locked) is read from the node's key document.
    assert f"ig-drv-0:1.0-1.{HOST}" in locked_nevras(base.inputs)
    assert f"ig-drv-0:1.0-1.{OTHER}" in locked_nevras(foreign.inputs)
    assert not any(OTHER in n for n in locked_nevras(base.inputs))
    assert not any(n.endswith(f".{HOST}") for n in locked_nevras(foreign.inputs))


def test_foreign_arch_package_moves_rebuilds_only_that_arch(site, repo, tmp_path: Path) -> None:
    lock(graph(site))
    before = keys(site, tmp_path)
    assert set(before) == {"base", "compute", f"base@{OTHER}", f"compute@{OTHER}"}
    repo.add_version("ig-drv", "1.1", requires=("ig-lib",), arch=OTHER)
    r = cli("lock", str(site), "--update", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "ig-drv 1.0-1 -> 1.1-1 (R)" in r.stdout, r.stdout
    r = lock(graph(site), update=True)
    assert not r.errors, r.errors
    changed = [
        (c.name, c.arch, c.packages) for c in r.changes if c.what == "packages" and c.change != "unchanged"
    ]
    assert changed == [("base.yaml", OTHER, ["ig-drv 1.0-1 -> 1.1-1 (R)"])]
    after = keys(site, tmp_path)
    # The foreign base moved and its child with it (a new parent key); the host's nodes did not.
    assert {n for n in after if after[n] != before[n]} == {f"base@{OTHER}", f"compute@{OTHER}"}

    # The plan says why, per node.
    state, inv = State(tmp_path / "p.db"), StaticInventory(reachable=False)
    repo.add_version("ig-drv", "1.2", requires=("ig-lib",), arch=OTHER)
    for lp in plan(site, tmp_path, state, inv).layers.values():
        image = f"sha256:{lp.key[:12]}"
        state.record_build(
            run_id="r",
            layer=lp.layer,
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
    assert not lock(graph(site), update=True).errors
    p = plan(site, tmp_path, state, inv)
    # (publish: the test records builds, not the images' local tags)
    assert {n: lp.action for n, lp in p.layers.items() if lp.action == Action.BUILD} == {
        f"base@{OTHER}": Action.BUILD,
        f"compute@{OTHER}": Action.BUILD,
    }
    reasons = p.layers[f"base@{OTHER}"].reasons
    assert [(x.code, x.message) for x in reasons] == [
        ("upstream-package", "upstream: ig-drv 1.1-1 -> 1.2-1 (R)")
    ]


def test_basearch_urls_lock_one_repository_per_arch(tmp_path: Path) -> None:
    """`$basearch` in a URL: each arch fingerprints and resolves its own repository."""
    need_tools()
    repos = {}
    for a in (HOST, OTHER):
        r = make_repo(tmp_path / "mirror" / a)
        r.add_version("ig-drv", "1.0", arch=a)
        repos[a] = r
    repos[OTHER].add_version("ig-only-there", "1.0", arch=OTHER)
    try:
        root = tmp_path / "layers"
        url = f"file://{tmp_path}/mirror/$basearch"
        write(root, "base.yaml", layer("base", "scratch", url, ["ig-drv"]))
        spec = graph(root).spec("base")
        assert [s.url for s in repo_sources(spec, OTHER)] == [f"file://{tmp_path}/mirror/{OTHER}"]
        r = lock(graph(root))
        assert not r.errors, r.errors
        lk = load_lock(root)
        assert sorted(u for _a, u, _s in lk.repositories) == sorted(
            f"file://{tmp_path}/mirror/{a}" for a in (HOST, OTHER)
        )
        for a in (HOST, OTHER):
            assert entry(root, "base.yaml", a) == [f"ig-drv 0:1.0-1 {a}"]
        before = keys(root, tmp_path)
        # A new package in the foreign mirror that base does not install: the foreign repository's
        # fingerprint moves, nothing is rebuilt.
        repos[OTHER].add_version("ig-tool", "1.1")
        r = lock(graph(root), update=True)
        moved = [c.name for c in r.changes if c.what == "repository" and c.change == "updated"]
        assert moved == ["R"]
        assert keys(root, tmp_path) == before
        # Asking for a package only the foreign mirror has fails for the host's arch, naming it.
        write(root, "base.yaml", layer("base", "scratch", url, ["ig-drv", "ig-only-there"]))
        r = lock(graph(root))
        assert len(r.errors) == 1 and f"base.yaml ({HOST})" in r.errors[0] and "ig-only-there" in r.errors[0]
        write(root, "base.yaml", layer("base", "scratch", url, ["ig-drv", "ig-only-there"], f"[{OTHER}]"))
        r = lock(graph(root))
        assert not r.errors, r.errors
        assert sorted(load_lock(root).layers) == [("base.yaml", OTHER)]
        assert entry(root, "base.yaml", OTHER) == [
            f"ig-drv 0:1.0-1 {OTHER}",
            f"ig-only-there 0:1.0-1 {OTHER}",
        ]
    finally:
        for r in repos.values():
            r.cleanup()


def apt_index(root: Path, packages: dict[str, str]) -> None:
    """An apt repository's metadata only: one `binary-<arch>/Packages` per Debian arch, and Release."""
    import hashlib

    dist = root / "dists" / "igtest"
    sums = []
    for deb_arch, text in packages.items():
        rel = f"main/binary-{deb_arch}/Packages"
        (dist / rel).parent.mkdir(parents=True, exist_ok=True)
        (dist / rel).write_text(text)
        sums.append(f" {hashlib.sha256(text.encode()).hexdigest()} {len(text)} {rel}")
    (dist / "Release").write_text(
        "Suite: igtest\nComponents: main\nDate: Tue, 01 Dec 2026 00:00:00 UTC\nSHA256:\n"
        + "\n".join(sums)
        + "\n"
    )


def test_apt_layer_resolves_each_debian_arch_index(tmp_path: Path) -> None:
    """An apt layer for two arches: each set comes from that arch's Packages (amd64, arm64), and a
    new version in the arm64 index moves only the foreign node."""

    def stanza(name: str, arch: str, version: str = "1.0", extra: str = "") -> str:
        return f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n{extra}SHA256: {'c' * 64}\n\n"

    def index(deb_arch: str, drv: str = "1.0") -> str:
        return (
            stanza("base-files", deb_arch, extra="Essential: yes\nPriority: required\n")
            + stanza("apt", deb_arch)
            + stanza("tzdata", "all", extra="Priority: required\n")
            + stanza("drv", deb_arch, drv, "Depends: tzdata\n")
        )

    host_deb, other_deb = Arch(HOST).debian, Arch(OTHER).debian
    mirror = tmp_path / "mirror"
    apt_index(mirror, {host_deb: index(host_deb), other_deb: index(other_deb)})
    root = tmp_path / "layers"
    write(
        root,
        "deb.yaml",
        f"options:\n  layer_type: base\n  name: {P}-deb\n  pkg_manager: apt\n  parent: scratch\n"
        f"  gpgcheck: false\n  publish_local: true\n  arches: [{HOST}, {OTHER}]\n"
        f"repos:\n  - alias: D\n    url: 'file://{mirror}'\n    suite: igtest\n"
        "packages: [drv]\n",
    )
    r = lock(graph(root))
    assert not r.errors, r.errors
    for a, d in ((HOST, host_deb), (OTHER, other_deb)):
        assert entry(root, "deb.yaml", a) == [
            f"apt 1.0 {d}",
            f"base-files 1.0 {d}",
            f"drv 1.0 {d}",
            "tzdata 1.0 all",
        ]
    before = keys(root, tmp_path)
    apt_index(mirror, {host_deb: index(host_deb), other_deb: index(other_deb, "1.1")})
    r = lock(graph(root), update=True)
    changed = [(c.arch, c.packages) for c in r.changes if c.what == "packages" and c.change == "updated"]
    assert changed == [(OTHER, ["drv 1.0 -> 1.1 (D)"])]
    after = keys(root, tmp_path)
    assert {n for n in after if after[n] != before[n]} == {f"deb@{OTHER}"}
    assert "drv=1.1" in locked_nevras(plan(root, tmp_path).layers[f"deb@{OTHER}"].inputs)
    assert "drv=1.0" in locked_nevras(plan(root, tmp_path).layers["deb"].inputs)


# -------------------------------------------------------------------------------- builds


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_foreign_arch_build_installs_its_locked_packages(repo, tmp_path: Path) -> None:
    """A one-layer foreign-arch build: dnf --forcearch installs the locked OTHER-arch ig-drv 1.0,
    not the newer 1.1 the mirror now offers, and the image's rpm database says so."""
    from imagegraph.packages import Inventory
    from tests.fixtures_build import buildah

    if not emulation(Arch(OTHER)).usable:
        missing(f"{OTHER} emulation (qemu-user-static, binfmt_misc) is needed")
    root = tmp_path / "layers"
    write(root, "tiny.yaml", layer("tiny", "scratch", repo.url, ["ig-drv"], f"[{OTHER}]"))
    state = tmp_path / "state" / "state.db"
    try:
        assert cli("lock", str(root)).returncode == 0
        repo.add_version("ig-drv", "1.1", requires=("ig-lib",), arch=OTHER)
        r = cli("up", str(root), "--state", str(state))
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        key = plan(root, tmp_path).layers[f"tiny@{OTHER}"].key
        inv = Inventory.decompress(State(state).inventory_blob(key))
        got = {(p.name, p.version, p.arch) for p in inv.packages}
        assert got == {("ig-drv", "1.0-1", OTHER), ("ig-lib", "1.0-1", "noarch")}
    finally:
        for line in buildah("images", "--format", "{{.ID}} {{.Name}}", check=False).stdout.splitlines():
            image_id, _, name = line.partition(" ")
            if f"/{P}-" in name:
                buildah("rmi", "-f", image_id, check=False)


# ----------------------------------------------------------------------- zypper patterns


def test_zypper_pattern_resolves_to_its_package_and_requires(tmp_path: Path) -> None:
    """A zypper `package_groups` entry is a pattern: the package providing `pattern() = name`,
    with what it requires. A new version of a required package moves the key."""
    need_tools()
    r = make_repo(tmp_path / "repo")
    try:
        r.add_version(
            "patterns-ig-base",
            "1.0",
            requires=("ig-hello", "ig-extra"),
            provides=("pattern() = ig_base", "pattern-visible()"),
        )
        root = tmp_path / "layers"
        text = layer("zyp", "scratch", f"file://{r.path}", ["ig-tool"], f"[{HOST}]")
        text = text.replace("pkg_manager: dnf", "pkg_manager: zypper").replace(
            "packages:", "package_groups: [ig_base]\npackages:"
        )
        write(root, "zyp.yaml", text)
        rep = lock(graph(root))
        assert not rep.errors and not rep.notes, (rep.errors, rep.notes)
        assert entry(root, "zyp.yaml", HOST) == [
            "ig-extra 0:1.0-1 noarch",
            "ig-hello 0:1.0-1 noarch",
            "ig-tool 0:1.0-1 noarch",
            "patterns-ig-base 0:1.0-1 noarch",
        ]
        before = keys(root, tmp_path)
        r.add_version("ig-hello", "1.1")
        rep = lock(graph(root), update=True)
        assert [c.packages for c in rep.changes if c.change == "updated" and c.what == "packages"] == [
            ["ig-hello 1.0-1 -> 1.1-1 (R)"]
        ]
        assert keys(root, tmp_path) != before
        # An unknown pattern is an error naming it, and nothing is written.
        write(root, "zyp.yaml", text.replace("[ig_base]", "[ig_nosuch]"))
        rep = lock(graph(root))
        assert rep.errors and "ig_nosuch" in rep.errors[0] and not rep.written
    finally:
        r.cleanup()


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_zypper_pattern_build_installs_the_locked_set(tmp_path: Path) -> None:
    """The build installs the locked set (the pattern's package among it), not whatever is newest."""
    import shutil

    from imagegraph.packages import Inventory
    from tests.fixtures_build import buildah

    need_tools()
    if not shutil.which("zypper"):
        missing("zypper is installed by scripts/install-system-deps.sh")
    r = make_repo(tmp_path / "repo")
    root = tmp_path / "layers"
    state = tmp_path / "state" / "s.db"
    try:
        r.add_version(
            "patterns-ig-base",
            "1.0",
            requires=("ig-hello",),
            provides=("pattern() = ig_base", "pattern-visible()"),
        )
        text = layer("zpat", "scratch", f"file://{r.path}", ["ig-busybox"], f"[{HOST}]")
        text = text.replace("pkg_manager: dnf", "pkg_manager: zypper").replace(
            "packages:", "package_groups: [ig_base]\npackages:"
        )
        write(root, "zpat.yaml", text)
        assert cli("lock", str(root)).returncode == 0
        r.add_version("ig-hello", "1.1")  # not locked: 1.0 stays
        res = cli("up", str(root), "--state", str(state))
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        key = plan(root, tmp_path).layers["zpat"].key
        got = {p.name: p.version for p in Inventory.decompress(State(state).inventory_blob(key)).packages}
        assert got == {"patterns-ig-base": "1.0-1", "ig-hello": "1.0-1", "ig-busybox": "1.0-1"}
    finally:
        r.cleanup()
        for line in buildah("images", "--format", "{{.ID}} {{.Name}}", check=False).stdout.splitlines():
            image_id, _, name = line.partition(" ")
            if f"/{P}-" in name:
                buildah("rmi", "-f", image_id, check=False)


# ----------------------------------------------------------------------- .repo files


def test_repo_file_repositories_are_read_and_resolved(repo, tmp_path: Path) -> None:
    """A `.repo` URL: lock downloads it and resolves from the enabled sections' baseurls (per arch:
    `$basearch` is each arch's), fingerprinting them too, so a new version there is seen."""
    mirror = tmp_path / "m"
    mirror.mkdir()
    (mirror / "ig.repo").write_text(
        f"[igbase]\nname=IG\nbaseurl={repo.url}\nenabled=1\ngpgcheck=0\n\n"
        "[igoff]\nname=off\nbaseurl=file:///nonexistent/$basearch\nenabled=0\n"
    )
    root = tmp_path / "layers"
    write(root, "base.yaml", layer("base", "scratch", f"file://{mirror}/ig.repo", ["ig-drv"]))
    r = lock(graph(root))
    assert not r.errors and not r.notes, (r.errors, r.notes)
    lk = load_lock(root)
    for a in (HOST, OTHER):
        lines = lk.layers[("base.yaml", a)]["packages"]
        assert [x.split()[:4] for x in lines] == [
            ["ig-drv", "0:1.0-1", a, "igbase"],
            ["ig-lib", "0:1.0-1", "noarch", "igbase"],
        ]
    assert sorted(k[0] for k in lk.repositories) == ["R", "igbase"]
    before = keys(root, tmp_path)
    repo.add_version("ig-lib", "1.1")
    r = lock(graph(root), update=True)
    assert not r.errors, r.errors
    assert {c.arch: c.packages for c in r.changes if c.what == "packages"} == {
        a: ["ig-lib 1.0-1 -> 1.1-1 (igbase)"] for a in (HOST, OTHER)
    }
    after = keys(root, tmp_path)
    assert all(after[n] != before[n] for n in before)

    # Only a mirrorlist: not resolved, and lock says why; the key keeps the fingerprints.
    (mirror / "ig.repo").write_text("[igbase]\nname=IG\nmirrorlist=https://example.invalid/ml\n")
    r = lock(graph(root), update=True)
    assert not r.errors, r.errors
    assert any("igbase" in n and "no baseurl" in n for n in r.notes), r.notes
    assert load_lock(root).upstream_of(graph(root).spec("base")).keys() == {"repo:R"}


def test_repo_file_that_cannot_be_downloaded_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    write(root, "base.yaml", layer("base", "scratch", f"file://{tmp_path}/nosuch.repo", ["x"], f"[{HOST}]"))
    r = lock(graph(root))
    assert r.errors and any("nosuch.repo" in e for e in r.errors) and not r.written


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_repo_file_layer_builds_its_locked_set(repo, tmp_path: Path) -> None:
    """dnf reads the same .repo file: the build installs the locked versions from its section."""
    from imagegraph.packages import Inventory
    from tests.fixtures_build import buildah

    mirror = tmp_path / "m"
    mirror.mkdir()
    (mirror / "ig.repo").write_text(f"[igbase]\nname=IG\nbaseurl={repo.url}\nenabled=1\ngpgcheck=0\n")
    root = tmp_path / "layers"
    write(root, "rf.yaml", layer("rf", "scratch", f"file://{mirror}/ig.repo", ["ig-drv"], f"[{HOST}]"))
    state = tmp_path / "state" / "s.db"
    try:
        assert cli("lock", str(root)).returncode == 0
        repo.add_version("ig-lib", "1.1")  # not locked
        r = cli("up", str(root), "--state", str(state))
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        key = plan(root, tmp_path).layers["rf"].key
        got = {p.name: p.version for p in Inventory.decompress(State(state).inventory_blob(key)).packages}
        assert got == {"ig-drv": "1.0-1", "ig-lib": "1.0-1"}
    finally:
        for line in buildah("images", "--format", "{{.ID}} {{.Name}}", check=False).stdout.splitlines():
            image_id, _, name = line.partition(" ")
            if f"/{P}-" in name:
                buildah("rmi", "-f", image_id, check=False)


def test_external_parent_is_read_for_the_nodes_arch(tmp_path: Path, monkeypatch) -> None:
    """A foreign arch's base is the parent index's image of that arch (`buildah from --arch`), cached
    apart from the host's. (The pull fails here on purpose: the argv is what is checked.)"""
    from imagegraph.resolve import ResolveError, image_installed
    from imagegraph.runner import CommandError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[list[str]] = []

    class Runner:
        def run(self, argv, **kw):
            calls.append(list(argv))
            if argv[1] == "from":
                raise CommandError(argv, 125, ["no such image"])

        def output(self, argv, **kw):
            raise AssertionError("not reached")

    ref = "registry.example/p@sha256:" + "a" * 64
    for arch in (OTHER, HOST):
        with pytest.raises(ResolveError, match="cannot read the installed packages"):
            image_installed(ref, runner=Runner(), arch=arch)
    froms = [c for c in calls if c[1] == "from"]
    # every arch is named, the host's too (the real-index test below shows why)
    assert ["--arch", Arch(OTHER).oci] == froms[0][3:5]
    assert ["--arch", Arch(HOST).oci] == froms[1][3:5]
    assert froms[0][froms[0].index("--name") + 1] != froms[1][froms[1].index("--name") + 1]


def test_repo_file_section_priority_is_followed(repo, tmp_path: Path) -> None:
    """dnf prefers the repository of lower `priority` over a newer version elsewhere."""
    other = make_repo(tmp_path / "newer")
    try:
        other.add_version("ig-lib", "2.0")
        mirror = tmp_path / "m"
        mirror.mkdir()
        text = f"[old]\nbaseurl={repo.url}\npriority=1\n\n[new]\nbaseurl=file://{other.path}\n"
        (mirror / "ig.repo").write_text(text)
        root = tmp_path / "layers"
        write(root, "b.yaml", layer("b", "scratch", f"file://{mirror}/ig.repo", ["ig-lib"], f"[{HOST}]"))
        assert not lock(graph(root)).errors
        assert entry(root, "b.yaml", HOST) == ["ig-lib 0:1.0-1 noarch"]
        (mirror / "ig.repo").write_text(text.replace("priority=1\n", ""))
        assert not lock(graph(root), update=True).errors
        assert entry(root, "b.yaml", HOST) == ["ig-lib 0:2.0-1 noarch"]
    finally:
        other.cleanup()


def _arch_image(tmp_path: Path, arch: str, rpms: list[Path], name: str) -> None:
    """A scratch image for `arch` whose rpm database holds `rpms` (installed by the host's rpm
    into a directory: noarch packages without scriptlets, so nothing runs)."""
    from tests.fixtures_build import buildah

    root = tmp_path / f"root-{arch}"
    subprocess.run(
        # Debian's rpm keeps its own database in ~/.rpmdb: name the distributions' place
        ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts"]
        + ["--ignorearch", *map(str, rpms)],
        check=True,
        capture_output=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    ctr = buildah("from", "scratch").stdout.strip()
    try:
        buildah("copy", ctr, f"{root}/", "/")
        buildah("config", "--arch", Arch(arch).oci, "--os", "linux", ctr)
        buildah("commit", "-q", ctr, name)
    finally:
        buildah("rm", ctr, check=False)


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_a_multi_arch_external_parent_is_read_per_arch_from_a_real_index(
    repo, registry, tmp_path: Path, monkeypatch
) -> None:
    """An external parent published as a two-arch index: each arch's lock entry is resolved on
    that arch's image of the index (pulled by the locked digest), not on the host's."""
    from tests.fixtures_build import buildah

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lib = next(repo.path.glob("ig-lib-1.0-1.noarch.rpm"))
    hello = next(repo.path.glob("ig-hello-1.0-1.noarch.rpm"))
    ref = f"{registry.host}/ext/{P}-vendor:1"
    local = {HOST: f"localhost/{P}-vendor:{HOST}", OTHER: f"localhost/{P}-vendor:{OTHER}"}
    index = f"{P}-vendor-index"
    try:
        _arch_image(tmp_path, HOST, [lib, hello], local[HOST])  # the host's image has ig-hello
        _arch_image(tmp_path, OTHER, [lib], local[OTHER])
        buildah("manifest", "create", index)
        for a in (HOST, OTHER):
            buildah("manifest", "add", index, f"containers-storage:{local[a]}")
        buildah("manifest", "push", "--all", "--tls-verify=false", index, f"docker://{ref}")
        buildah("manifest", "rm", index, check=False)
        buildah("rmi", "-f", *local.values(), check=False)

        root = tmp_path / "layers"
        spec = layer("child", ref, repo.url, ["ig-drv", "ig-hello"])
        spec = spec.replace("options:\n", "options:\n  registry_opts_pull: ['--tls-verify=false']\n")
        write(root, "child.yaml", spec)
        r = lock(graph(root))
        assert not r.errors and r.written, (r.errors, r.notes)
        # ig-lib is in both arches' parent images; ig-hello only in the host's.
        assert entry(root, "child.yaml", HOST) == [f"ig-drv 0:1.0-1 {HOST}"]
        assert entry(root, "child.yaml", OTHER) == [f"ig-drv 0:1.0-1 {OTHER}", "ig-hello 0:1.0-1 noarch"]

        # Again with both arches' images now in local storage and nothing cached: each arch is
        # still read from its own image (a pull-if-missing that took whichever image is local
        # would give both arches the same base).
        import shutil

        shutil.rmtree(tmp_path / "cache")
        (root / "imagegraph.lock").unlink()
        r = lock(graph(root))
        assert not r.errors and r.written, (r.errors, r.notes)
        assert entry(root, "child.yaml", HOST) == [f"ig-drv 0:1.0-1 {HOST}"]
        assert entry(root, "child.yaml", OTHER) == [f"ig-drv 0:1.0-1 {OTHER}", "ig-hello 0:1.0-1 noarch"]
    finally:
        buildah("manifest", "rm", index, check=False)
        for line in buildah("images", "--format", "{{.ID}} {{.Name}}", check=False).stdout.splitlines():
            image_id, _, name = line.partition(" ")
            if f"{P}-vendor" in name:
                buildah("rmi", "-f", image_id, check=False)
