"""dnf modules in locked package sets (imagegraph/modulemd.py, resolve.py, lockfile.py, build/dnf.py).

The repository is a real rpm-md repository of tiny rpms (tests/rpmrepo.py) with a modules.yaml
added by modifyrepo_c, as EL AppStream carries one. Module ig-mod has one stream, 2, without a
default: its artifacts ig-hello 2.0 and ig-tool 2.0 are newer than the non-modular 1.0 builds.
Module ig-dflt has a default stream, a, whose artifact ig-extra 1.5 hides the non-modular
ig-extra 1.0 and 3.0. The fidelity test installs the same cases with the host's real dnf.
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

from imagegraph.arch import host_arch
from imagegraph.graph import build_graph
from imagegraph.lockfile import load_lock, lock
from imagegraph.modulemd import ModuleMetadata, apply_operations, parse_modules, parse_state, state_lines
from imagegraph.packages import Inventory
from imagegraph.plan import StaticInventory, make_plan
from imagegraph.project import load_project
from imagegraph.resolve import SYSTEM_PYTHON, LockedPackage
from imagegraph.state import State
from tests.fixtures_build import have_buildah
from tests.needs import missing, requires
from tests.rpmrepo import defaults_doc, make_repo, module_doc

from .specdirs import write

EXE = [sys.executable, "-m", "imagegraph.cli"]
P = "igt-lm"


def have_solv() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import solv"], capture_output=True).returncode == 0


pytestmark = requires(have_solv(), "needs python3-solv (scripts/install-system-deps.sh)")

MOD2 = module_doc(
    "ig-mod", "2", 1, ["ig-hello-0:2.0-1.noarch", "ig-tool-0:2.0-1.noarch"], {"default": ["ig-hello"]}
)
DFLT = module_doc("ig-dflt", "a", 1, ["ig-extra-0:1.5-1.noarch"], {"default": ["ig-extra"]}) + defaults_doc(
    "ig-dflt", "a"
)


def layer(name: str, parent: str, url: str, packages: list[str], modules: str = "") -> str:
    return (
        f"options:\n  layer_type: base\n  name: {P}-{name}\n  pkg_manager: dnf\n  parent: '{parent}'\n"
        f"  gpgcheck: false\n  releasever: '9'\n  publish_local: true\n  publish_tags: ['1']\n"
        f"repos:\n  - alias: R\n    url: '{url}'\n"
        + (f"modules:\n{modules}" if modules else "")
        + f"packages: [{', '.join(packages)}]\n"
    )


@pytest.fixture
def repo(tmp_path: Path):
    if (
        shutil.which("rpmbuild") is None
        or shutil.which("createrepo_c") is None
        or not shutil.which("modifyrepo_c")
    ):
        missing("rpmbuild, createrepo_c and modifyrepo_c are needed (scripts/install-system-deps.sh)")
    r = make_repo(tmp_path / "repo")
    for name, version in (("ig-hello", "2.0"), ("ig-tool", "2.0"), ("ig-extra", "1.5"), ("ig-extra", "3.0")):
        r.add_version(name, version)
    r.set_modules(MOD2 + DFLT)
    r.url = f"file://{r.path}"
    yield r
    r.cleanup()


@pytest.fixture
def site(tmp_path: Path, repo):
    """plain (ig-hello, no modules), mod (enables ig-mod:2, ig-hello) -> child (ig-tool)."""
    root = tmp_path / "layers"
    write(root, "plain.yaml", layer("plain", "scratch", repo.url, ["ig-hello", "ig-tool"]))
    write(root, "mod.yaml", layer("mod", "scratch", repo.url, ["ig-hello"], "  enable: ['ig-mod:2']\n"))
    write(root, "child.yaml", layer("child", f"localhost/{P}-mod:1", repo.url, ["ig-tool"]))
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


def entry(root: Path, file: str) -> dict:
    (e,) = [e for (f, _), e in load_lock(root).layers.items() if f == file]
    return e


def locked(root: Path, file: str) -> list[str]:
    return [" ".join(LockedPackage.parse(x).line().split()[:2]) for x in entry(root, file)["packages"]]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "IMAGEGRAPH_RETRY_ATTEMPTS": "2"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, timeout=300)


# ---------------------------------------------------------------------------- resolving


def test_non_default_stream_is_hidden_and_enabling_it_picks_it(site) -> None:
    r = lock(graph(site))
    assert not r.errors and r.written, r.errors
    # The newer ig-hello/ig-tool 2.0 are artifacts of a stream nobody enabled: dnf hides them.
    assert locked(site, "plain.yaml") == ["ig-hello 0:1.0-1", "ig-tool 0:1.0-1"]
    assert "modules" not in entry(site, "plain.yaml")
    # Enabling the stream: its artifact, and the non-modular 1.0 of the same name is hidden.
    assert locked(site, "mod.yaml") == ["ig-hello 0:2.0-1"]
    assert entry(site, "mod.yaml")["modules"] == ["ig-mod:2"]
    # The child's image carries its parent's modules.d: its dnf sees ig-mod:2 enabled.
    assert locked(site, "child.yaml") == ["ig-tool 0:2.0-1"]
    assert entry(site, "child.yaml")["modules"] == ["ig-mod:2"]
    again = lock(graph(site), update=True)
    assert not again.written and {c.change for c in again.changes} == {"unchanged"}


def test_new_artifact_in_the_enabled_stream_rebuilds_exactly_that_layer(site, repo, tmp_path: Path) -> None:
    lock(graph(site))
    before_text = (site / "imagegraph.lock").read_text()
    before = keys(site, tmp_path)
    repo.add_version("ig-hello", "2.1")
    repo.set_modules(
        MOD2
        + module_doc("ig-mod", "2", 2, ["ig-hello-0:2.1-1.noarch", "ig-tool-0:2.0-1.noarch"], {"default": []})
        + DFLT
    )
    r = cli("lock", str(site), "--update")
    assert r.returncode == 0, r.stderr
    assert "ig-hello 2.0-1 -> 2.1-1 (R)" in r.stdout
    after = keys(site, tmp_path)
    assert {k for k in after if after[k] != before[k]} == {"mod", "child"}  # the layer and its child
    assert locked(site, "plain.yaml") == ["ig-hello 0:1.0-1", "ig-tool 0:1.0-1"]
    diff = [
        x
        for x in difflib.unified_diff(
            before_text.splitlines(), (site / "imagegraph.lock").read_text().splitlines()
        )
        if x[:1] in "+-" and not x.startswith(("+++", "---")) and "ig-" in x
    ]
    assert [(x[0], *x[1:].split()[1:3]) for x in diff] == [
        ("-", "ig-hello", "0:2.0-1"),
        ("+", "ig-hello", "0:2.1-1"),
    ]


def test_unrelated_module_stream_changes_nothing(site, repo, tmp_path: Path) -> None:
    lock(graph(site))
    before = keys(site, tmp_path)
    before_layers = load_lock(site).layers
    # A stream of another module, with an even newer ig-hello: not enabled, so hidden.
    repo.add_version("ig-hello", "9.0")
    repo.set_modules(MOD2 + DFLT + module_doc("ig-other", "9", 1, ["ig-hello-0:9.0-1.noarch"]))
    r = lock(graph(site), update=True)
    assert not r.errors, r.errors
    assert [c.name for c in r.changes if c.change == "updated"] == ["R"]  # only the fingerprint
    assert load_lock(site).layers == before_layers
    assert keys(site, tmp_path) == before


def test_default_stream_hides_non_modular_builds_and_is_enabled_by_install(site, repo) -> None:
    write(site, "extra.yaml", layer("extra", "scratch", repo.url, ["ig-extra"]))
    write(site, "nodflt.yaml", layer("nodflt", "scratch", repo.url, ["ig-extra"], "  disable: [ig-dflt]\n"))
    write(site, "prof.yaml", layer("prof", "scratch", repo.url, [], "  install: ['ig-mod:2/default']\n"))
    r = lock(graph(site))
    assert not r.errors, r.errors
    # ig-dflt:a is the default: its ig-extra 1.5 wins over the non-modular 3.0, and installing it
    # enables the stream (dnf writes it to modules.d), which the lock records.
    assert locked(site, "extra.yaml") == ["ig-extra 0:1.5-1"]
    assert entry(site, "extra.yaml")["modules"] == ["ig-dflt:a"]
    assert locked(site, "nodflt.yaml") == ["ig-extra 0:3.0-1"]
    assert entry(site, "nodflt.yaml")["modules"] == ["ig-dflt (disabled)"]
    assert locked(site, "prof.yaml") == ["ig-hello 0:2.0-1"]  # the profile's rpms
    assert entry(site, "prof.yaml")["modules"] == ["ig-mod:2"]


def test_module_errors_and_unsupported_operations(site, repo) -> None:
    write(site, "mod.yaml", layer("mod", "scratch", repo.url, ["ig-hello"], "  enable: ['ig-mod:7']\n"))
    r = lock(graph(site))
    assert r.errors and not r.written
    assert "mod.yaml" in r.errors[0] and "module ig-mod has no stream 7" in r.errors[0]
    write(site, "mod.yaml", layer("mod", "scratch", repo.url, ["ig-hello"], "  switch-to: ['ig-mod:2']\n"))
    r = lock(graph(site))
    assert not r.errors, r.errors
    assert any("mod.yaml: packages not resolved: dnf module switch-to is not resolved" in n for n in r.notes)
    assert "upstream" not in str(load_lock(site).upstream_of(graph(site).spec("mod")).get("packages", ""))


def test_modules_yaml_is_read_with_strings_as_libmodulemd_does() -> None:
    meta = parse_modules(
        module_doc("m", "1.10", 20240101, ["m-0:1.10-1.x86_64"], {"server": ["m"]})
        + defaults_doc("m", "1.10", {"1.10": ["server"]}),
        "R",
    )
    (s,) = meta.streams
    assert (s.stream, s.version, s.artifacts) == ("1.10", "20240101", ("m-0:1.10-1.x86_64",))
    state, rpms = apply_operations([("install", ("m",))], {}, meta)
    assert state == {"m": "1.10"} and rpms == ["m"]


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
        st.one_of(st.none(), st.from_regex(r"[a-z0-9.]{1,6}", fullmatch=True)),
    )
)
def test_state_lines_round_trip(state: dict) -> None:
    assert parse_state(state_lines(state)) == state
    assert state_lines(state) == sorted(state_lines(state))


def test_reset_returns_a_module_to_its_default() -> None:
    meta = ModuleMetadata()
    parse_modules(MOD2 + DFLT, "R", meta)
    state, _ = apply_operations([("disable", ("ig-dflt",)), ("reset", ("ig-dflt",))], {}, meta)
    assert state == {}


# ------------------------------------------------------------------------- real dnf


def dnf_installs(repo, tmp_path: Path, name: str, steps: list[list[str]]) -> tuple[list[str], dict]:
    """What the host's real dnf installs into an empty --installroot for `steps` (name evr), and
    the module state it leaves in the root's /etc/dnf/modules.d."""
    root, home, reposd = tmp_path / f"root-{name}", tmp_path / f"home-{name}", tmp_path / f"repos-{name}"
    for d in (root, home, reposd):
        d.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    (reposd / "R.repo").write_text(f"[R]\nname=R\nbaseurl={repo.url}\nenabled=1\ngpgcheck=0\n")
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    base = [
        "dnf",
        f"--installroot={root}",
        f"--setopt=reposdir={reposd}",
        "--noplugins",
        "--releasever=9",
        "-y",
    ]
    for step in steps:
        r = subprocess.run([*base, *step], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    q = subprocess.run(
        ["rpm", "--root", str(root), "-qa", "--qf", "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    from imagegraph.modulemd import read_modules_d

    return sorted(q.stdout.split("\n")[:-1]), read_modules_d(root / "etc/dnf/modules.d")


@requires(shutil.which("dnf") is not None, "needs dnf")
def test_resolved_sets_match_what_real_dnf_installs(site, repo, tmp_path: Path) -> None:
    """Real dnf (libdnf with libmodulemd) installs exactly the resolved sets, module cases included."""
    cases = {
        "plain": ([], ["ig-hello", "ig-tool"]),
        "mod": ([["module", "enable", "ig-mod:2"]], ["ig-hello"]),
        "extra": ([], ["ig-extra"]),
        "nodflt": ([["module", "disable", "ig-dflt"]], ["ig-extra"]),
        "prof": ([["module", "install", "ig-mod:2/default"]], []),
    }
    for name, (ops, pkgs) in cases.items():
        mods = "".join(f"  {op[1]}: ['{op[2]}']\n" for op in ops)
        write(site, f"{name}.yaml", layer(name, "scratch", repo.url, pkgs, mods))
    # and a child of mod: its dnf starts from mod's root, with ig-mod:2 enabled there
    write(site, "child.yaml", layer("child", f"localhost/{P}-mod:1", repo.url, ["ig-tool"]))
    r = lock(graph(site))
    assert not r.errors, r.errors
    for name, (ops, pkgs) in cases.items():
        want, state = dnf_installs(repo, tmp_path, name, ops + ([["install", *pkgs]] if pkgs else []))
        assert locked(site, f"{name}.yaml") == want, name
        assert parse_state(entry(site, f"{name}.yaml").get("modules") or []) == state, name
    parent, _ = dnf_installs(
        repo, tmp_path, "parent", [["module", "enable", "ig-mod:2"], ["install", "ig-hello"]]
    )
    both, state = dnf_installs(
        repo,
        tmp_path,
        "child",
        [["module", "enable", "ig-mod:2"], ["install", "ig-hello"], ["install", "ig-tool"]],
    )
    assert locked(site, "child.yaml") == sorted(set(both) - set(parent)) == ["ig-tool 0:2.0-1"]
    assert parse_state(entry(site, "child.yaml")["modules"]) == state == {"ig-mod": "2"}


# ---------------------------------------------------------------------------- building


def remove_test_images() -> None:
    from tests.fixtures_build import buildah

    for line in buildah("images", "--format", "{{.ID}} {{.Name}}", check=False).stdout.splitlines():
        image_id, _, name = line.partition(" ")
        if f"/{P}-" in name:
            buildah("rmi", "-f", image_id, check=False)


def installed(state: Path, key: str) -> dict[str, str]:
    inv = Inventory.decompress(State(state).inventory_blob(key))
    return {p.name: p.version for p in inv.packages}


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_module_layer_build_installs_exactly_the_locked_versions(site, repo, tmp_path: Path) -> None:
    import json

    state = tmp_path / "state" / "state.db"
    (site / "plain.yaml").unlink()
    write(
        site,
        "mod.yaml",
        layer("mod", "scratch", repo.url, ["ig-busybox"], "  install: ['ig-mod:2/default']\n"),
    )
    try:
        assert cli("lock", str(site)).returncode == 0
        assert locked(site, "mod.yaml") == ["ig-busybox 0:1.0-1", "ig-hello 0:2.0-1"]
        # A newer artifact in the stream, not locked, with a new dependency: `module install` alone
        # would take both, and a downgrade to the locked version afterwards would leave ig-newdep.
        repo.add_version("ig-newdep", "1.0")
        repo.add_version("ig-hello", "2.1", requires=("ig-newdep",))
        repo.set_modules(
            MOD2
            + module_doc(
                "ig-mod",
                "2",
                2,
                ["ig-hello-0:2.1-1.noarch", "ig-tool-0:2.0-1.noarch"],
                {"default": ["ig-hello"]},
            )
            + DFLT
        )
        r = cli("up", str(site), "--state", str(state))
        assert r.returncode == 0, r.stderr[-3000:]
        doc = json.loads(cli("plan", str(site), "--state", str(state), "--offline", "--json").stdout)
        k = {x["name"]: x["key"] for x in doc["layers"]}
        assert installed(state, k["mod"]) == {"ig-busybox": "1.0-1", "ig-hello": "2.0-1"}
        assert installed(state, k["child"])["ig-tool"] == "2.0-1"  # the parent's enabled stream
        # The image records the stream and its profile as dnf module install does.
        from tests.fixtures_build import buildah

        name = f"{P}-check"
        buildah("from", "--name", name, f"localhost/{P}-mod:1")
        try:
            mnt = Path(buildah("mount", name).stdout.strip())
            text = (mnt / "etc/dnf/modules.d/ig-mod.module").read_text()
            assert "stream=2" in text and "profiles=default" in text and "state=enabled" in text
        finally:
            buildah("rm", name, check=False)
    finally:
        remove_test_images()


def test_module_hotfixes_repository_is_not_filtered(site, repo, tmp_path: Path) -> None:
    """A `.repo` section with module_hotfixes=1 keeps its build of a modular package's name visible."""
    hot = make_repo(tmp_path / "hot")
    try:
        hot.add_version("ig-hello", "2.5")
        for flag, want in (("0", "ig-hello 0:2.0-1"), ("1", "ig-hello 0:2.5-1")):
            (tmp_path / "site.repo").write_text(
                f"[R]\nbaseurl={repo.url}\ngpgcheck=0\n\n"
                f"[H]\nbaseurl=file://{hot.path}\ngpgcheck=0\nmodule_hotfixes={flag}\n"
            )
            text = layer(
                "mod", "scratch", f"file://{tmp_path}/site.repo", ["ig-hello"], "  enable: ['ig-mod:2']\n"
            )
            write(site, "mod.yaml", text)
            (site / "child.yaml").unlink(missing_ok=True)
            r = lock(graph(site), update=True)
            assert not r.errors, r.errors
            assert locked(site, "mod.yaml") == [want], flag
    finally:
        hot.cleanup()


def test_plan_names_a_module_stream_change() -> None:
    from imagegraph.plan import diff_inputs

    pk = ["ig-hello 0:2.0-1 noarch R"]
    old = {"upstream": {"packages": pk, "modules": ["ig-mod:1"]}}
    new = {"upstream": {"packages": pk, "modules": ["ig-mod:2"]}}
    assert [r.message for r in diff_inputs(old, new)] == [
        "upstream: module -ig-mod:1",
        "upstream: module +ig-mod:2",
    ]


def test_external_parent_module_state_is_read_from_its_image(site, repo, tmp_path: Path, monkeypatch) -> None:
    """An external parent's /etc/dnf/modules.d is its module state (read once per digest); its
    enabled stream then decides what the child locks."""
    import imagegraph.packages as packages_mod
    import imagegraph.resolve as resolve_mod
    from imagegraph.packages import InventoryStatus, Package, PackageFormat

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mnt = tmp_path / "mnt"
    (mnt / "etc/dnf/modules.d").mkdir(parents=True)
    (mnt / "etc/dnf/modules.d/ig-mod.module").write_text(
        "[ig-mod]\nname=ig-mod\nstream=2\nprofiles=\nstate=enabled\n"
    )
    (mnt / "etc/dnf/modules.d/ig-dflt.module").write_text(
        "[ig-dflt]\nname=ig-dflt\nstream=\nstate=disabled\n"
    )
    calls: list[list[str]] = []

    class Runner:
        def run(self, argv, **kw):
            calls.append(list(argv))

        def output(self, argv, **kw):
            calls.append(list(argv))
            return host_arch().oci if argv[1] == "inspect" else str(mnt)

    inv = packages_mod.Inventory(
        InventoryStatus.KNOWN, PackageFormat.RPM, [Package("ig-busybox", "1.0-1", "noarch")]
    )
    monkeypatch.setattr(packages_mod, "read_inventory", lambda *a, **k: inv)
    ref = "registry.example/base@sha256:" + "b" * 64
    seen = resolve_mod.image_contents(ref, runner=Runner())
    assert seen.modules == {"ig-mod": "2", "ig-dflt": None}
    n = len(calls)
    assert resolve_mod.image_contents(ref, runner=Runner()).modules == seen.modules and len(calls) == n

    class Registry:
        errors: dict = {}

        def configure_for(self, spec):
            pass

        def manifest_digest(self, ref):
            return "sha256:" + "b" * 64

    monkeypatch.setattr(resolve_mod, "image_contents", lambda *a, **k: seen)
    write(site, "child.yaml", layer("child", "registry.example/base:1", repo.url, ["ig-tool", "ig-extra"]))
    r = lock(graph(site), registry=Registry())
    assert not r.errors, r.errors
    # ig-mod:2 enabled in the parent: its ig-tool 2.0; ig-dflt disabled there: the non-modular 3.0.
    assert locked(site, "child.yaml") == ["ig-extra 0:3.0-1", "ig-tool 0:2.0-1"]
    assert entry(site, "child.yaml")["modules"] == ["ig-dflt (disabled)", "ig-mod:2"]


@requires(shutil.which("zstd") is not None, "needs zstd (scripts/install-system-deps.sh)")
def test_compressed_modules_yaml_is_read(tmp_path: Path) -> None:
    """modules.yaml.gz, .xz and .zst read alike, and parsed once per content (JSON beside it)."""
    import gzip
    import lzma

    from imagegraph.resolve import RepoData, module_metadata

    raw = (MOD2 + DFLT).encode()
    files = {
        "gz": gzip.compress(raw),
        "xz": lzma.compress(raw),
        "zst": subprocess.run(["zstd", "-c"], input=raw, capture_output=True, check=True).stdout,
    }
    for ext, data in files.items():
        path = tmp_path / f"modules.yaml.{ext}"
        path.write_bytes(data)
        meta = module_metadata([RepoData("R", [], modules=path)])
        assert meta.defaults == {"ig-dflt": "a"} and {s.stream for s in meta.streams} == {"2", "a"}, ext
        assert (tmp_path / f"modules.yaml.{ext}.json").is_file()
