"""Multi-arch layers: `options.arches`, one plan node per (layer, arch), per-arch builds, one index per tag.

The plan tests need no tools. The real ones build a two-arch Debian layer from
the Debian archive (mmdebstrap `--variant=extract`, busybox-static and dash:
seconds per arch, the arm64 one through binfmt_misc) and a child on it, push
both arches to a real registry and check the index there (skopeo inspect --raw).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegraph.arch import Arch, Emulation, emulation, host_arch
from imagegraph.errors import SpecError
from imagegraph.graph import build_graph
from imagegraph.key import compute_keys, key_tag
from imagegraph.plan import Action, StaticInventory, make_plan, node_id
from imagegraph.project import load_project
from imagegraph.render import plan_tree
from imagegraph.state import State
from tests.fixtures_build import buildah, fake_key, have_buildah
from tests.needs import missing, requires

HOST = host_arch()
OTHER = Arch.AARCH64 if HOST != Arch.AARCH64 else Arch.X86_64


def write(root: Path, name: str, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def site(tmp_path: Path, base_arches: str = "[x86_64, arm64]", child_arches: str | None = None) -> Path:
    root = tmp_path / "layers"
    write(
        root,
        "base.yaml",
        f"""
        options:
          layer_type: base
          name: ma-base
          pkg_manager: apt
          parent: scratch
          arches: {base_arches}
          publish_local: true
        packages: [busybox-static]
        """,
    )
    write(
        root,
        "child.yaml",
        f"""
        options:
          layer_type: base
          name: ma-child
          pkg_manager: apt
          parent: localhost/ma-base:latest
          publish_local: true
          {"arches: " + child_arches if child_arches else ""}
        cmds: ['true']
        """,
    )
    return root


def plan_of(root: Path, tmp_path: Path, **kw):
    lg = build_graph(load_project(root))
    kw.setdefault("emulation_of", lambda a: Emulation(a, native=a == HOST, usable=True))
    return make_plan(lg, State(tmp_path / "state.db"), StaticInventory(), **kw)


# ------------------------------------------------------------------------------ spec


def test_arches_are_normalised_and_come_from_defaults_too(tmp_path: Path) -> None:
    root = site(tmp_path)
    lg = build_graph(load_project(root))
    assert lg.arches("base") == (Arch.X86_64, Arch.AARCH64)  # arm64 written, aarch64 meant
    assert lg.arches("child") == (HOST,)
    (root / "imagegraph.yaml").write_text("defaults:\n  arches: [aarch64, x86_64]\n")
    lg = build_graph(load_project(root))
    assert lg.arches("child") == (Arch.AARCH64, Arch.X86_64)


@pytest.mark.parametrize(
    ("arches", "message"),
    [
        ("[x86_64, sparc]", "unknown architecture 'sparc'"),
        ("[x86_64, amd64]", "x86_64 is listed twice (as 'amd64')"),
        ("[]", "must not be empty"),
    ],
)
def test_bad_arches_name_file_and_line(tmp_path: Path, arches: str, message: str) -> None:
    root = site(tmp_path, base_arches=arches)
    with pytest.raises(SpecError) as exc:
        load_project(root)
    d = exc.value.diagnostics[0]
    assert d.file.endswith("base.yaml") and d.line == 6 and message in d.message


def test_child_asking_an_arch_its_parent_lacks_names_both_files(tmp_path: Path) -> None:
    root = site(tmp_path, base_arches="[x86_64]", child_arches="[x86_64, aarch64]")
    with pytest.raises(SpecError) as exc:
        build_graph(load_project(root))
    d = exc.value.diagnostics[0]
    assert d.file.endswith("child.yaml") and d.line == 7
    assert "builds aarch64 but its parent base" in d.message and "base.yaml" in d.message


def test_cli_spec_error_exits_2(tmp_path: Path) -> None:
    root = site(tmp_path, base_arches="[x86_64]", child_arches="[aarch64]")
    r = subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", "plan", str(root), "--state", str(tmp_path / "s")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "child.yaml:7:3: error: builds aarch64" in r.stderr


# ------------------------------------------------------------------------------ plan


def test_one_node_per_arch_each_with_its_key(tmp_path: Path) -> None:
    plan = plan_of(site(tmp_path, child_arches="[x86_64, aarch64]"), tmp_path)
    assert list(plan.layers) == ["base", "base@aarch64", "child", "child@aarch64"]
    keys = {nid: lp.key for nid, lp in plan.layers.items()}
    assert len(set(keys.values())) == 4
    arm = plan.layers["child@aarch64"]
    assert arm.spec_id == "child" and arm.arch == Arch.AARCH64 and arm.parent_layer == "base@aarch64"
    assert arm.inputs["arch"] == "aarch64" and arm.inputs["parent"]["key"] == keys["base@aarch64"]
    assert [t.id for t in arm.tasks] == ["child@aarch64:build", "child@aarch64:tag-local"]
    assert arm.tasks[0].after == ("base@aarch64:build",)
    doc = arm.to_json()
    assert doc["layer"] == "child" and doc["arch"] == "aarch64" and doc["arches"] == ["x86_64", "aarch64"]


def test_host_arch_keys_ids_and_json_are_unchanged(tmp_path: Path) -> None:
    """Adding a foreign arch leaves the host's node (id, key, document) exactly as it was."""
    one = plan_of(site(tmp_path, base_arches=f"[{HOST}]"), tmp_path)
    lg = build_graph(load_project(tmp_path / "layers"))
    assert one.layers["base"].key == compute_keys(lg, ["base"])["base"].key  # the key without arches
    (tmp_path / "layers" / "base.yaml").write_text(
        (tmp_path / "layers" / "base.yaml").read_text().replace(f"[{HOST}]", f"[{HOST}, {OTHER}]")
    )
    two = plan_of(tmp_path / "layers", tmp_path)
    assert two.layers["base"].key == one.layers["base"].key
    assert "arch" not in two.layers["child"].to_json()  # a host-only layer's document as before
    assert two.layers["child"].to_json() == one.layers["child"].to_json()


def test_arch_option_narrows_the_plan(tmp_path: Path) -> None:
    root = site(tmp_path, child_arches="[x86_64, aarch64]")
    plan = plan_of(root, tmp_path, arches=[Arch.AARCH64])
    assert list(plan.layers) == [node_id("base", Arch.AARCH64), node_id("child", Arch.AARCH64)]


def test_tree_shows_arches_compactly(tmp_path: Path) -> None:
    plan = plan_of(site(tmp_path, child_arches="[x86_64, aarch64]"), tmp_path)
    text = "\n".join(t.plain for t in plan_tree(plan))
    assert "base  build  [x86_64, aarch64]  (from scratch)" in text
    assert "child  build  [x86_64, aarch64]" in text
    assert text.count("parent base rebuilds") == 1


def test_counts_line_says_layers_and_nodes(tmp_path: Path) -> None:
    """Two layers, one on two arches: the counts are of three nodes; on the host's arch only, of layers."""
    from imagegraph.render import counts_line

    plan = plan_of(site(tmp_path, child_arches="[x86_64]"), tmp_path)
    assert counts_line(plan).plain == "2 layers (3 nodes): 3 build"
    one = tmp_path / "one"
    assert counts_line(plan_of(site(one, base_arches="[x86_64]"), one)).plain == "2 layers: 2 build"


def test_no_binfmt_handler_blocks_the_foreign_arch_and_says_how_to_fix(tmp_path: Path) -> None:
    def none_here(a: Arch) -> Emulation:
        return emulation(a, tmp_path / "no-binfmt", host=HOST)

    plan = plan_of(site(tmp_path, child_arches=f"[{HOST}, {OTHER}]"), tmp_path, emulation_of=none_here)
    arm = plan.layers[f"base@{OTHER}"]
    assert arm.action == Action.BLOCKED and arm.tasks == []
    assert "binfmt_misc is not mounted" in arm.reasons[0].message
    assert "update-binfmts --enable qemu-" in arm.reasons[0].message
    assert plan.layers[f"child@{OTHER}"].action == Action.BLOCKED
    assert plan.layers["base"].action == Action.BUILD  # the host's arch builds regardless


def test_index_task_waits_for_every_arch_push(tmp_path: Path) -> None:
    root = site(tmp_path)
    base = root / "base.yaml"
    base.write_text(base.read_text().replace("publish_local: true", "publish_registry: reg.example/x"))
    plan = plan_of(root, tmp_path)
    first = plan.layers["base"]
    index = [t for t in first.tasks if t.kind == "index"]
    assert index and set(index[0].after) == {"base:push", "base@aarch64:push"}
    assert all(t.gated for lp in plan.nodes_of("base") for t in lp.tasks if t.kind == "push")
    assert not any(t.kind == "tag-registry" for lp in plan.nodes_of("base") for t in lp.tasks)
    narrowed = plan_of(root, tmp_path, arches=[Arch.AARCH64])
    assert not any(t.kind == "index" for lp in narrowed.layers.values() for t in lp.tasks)
    note = narrowed.layers["base@aarch64"].notes[-1]
    assert note.code == "index-waits-for-arches" and note.detail == {"arches": ["x86_64"]}
    assert "index waits for x86_64 (--arch left it out; its key tag is not in reg.example/x/ma-base)" in str(
        note
    )


def test_arch_narrowing_writes_the_index_when_the_other_arches_are_in_the_registry(tmp_path: Path) -> None:
    from imagegraph.inventory import StaticInventory as Inv

    root = site(tmp_path)
    base = root / "base.yaml"
    base.write_text(base.read_text().replace("publish_local: true", "publish_registry: reg.example/x"))
    full = plan_of(root, tmp_path, names=["base"])
    keys = {str(lp.arch): lp.key for lp in full.nodes_of("base")}
    assert full.layers["base"].index_members == keys
    lg = build_graph(load_project(root))
    emu = lambda a: Emulation(a, native=a == HOST, usable=True)  # noqa: E731
    # The x86_64 key tag is in the registry: `--arch aarch64` builds aarch64, then writes the index
    # over both keys (its tag names both), and the human tags follow.
    inv = Inv(tags={"reg.example/x/ma-base": {key_tag(keys["x86_64"])}})
    plan = make_plan(lg, State(tmp_path / "s.db"), inv, ["base"], arches=[Arch.AARCH64], emulation_of=emu)
    node = plan.layers["base@aarch64"]
    index = [t for t in node.tasks if t.kind == "index"]
    assert index and index[0].after == ("base@aarch64:push",)
    assert node.index_members == keys  # the left-out arch's key included, in the spec's order
    assert node.to_json()["index_members"] == keys
    assert any(r.code == "index-due" for r in node.reasons)
    # Up to date everywhere (key tags, the index, human tags on it): nothing to do for the index.
    from imagegraph.keytag import index_tag

    itag = index_tag(keys)
    repo = "reg.example/x/ma-base"
    inv = Inv(
        tags={repo: {key_tag(keys["x86_64"]), key_tag(keys["aarch64"]), itag, "latest"}},
        tag_digests={f"{repo}:{itag}": "sha256:i", f"{repo}:latest": "sha256:i"},
    )
    plan = make_plan(lg, State(tmp_path / "s.db"), inv, ["base"], arches=[Arch.AARCH64], emulation_of=emu)
    assert not any(t.kind == "index" for t in plan.layers["base@aarch64"].tasks)
    # The human tag elsewhere: the narrowed run moves it back onto the index.
    inv.tag_digests[f"{repo}:latest"] = "sha256:other"
    plan = make_plan(lg, State(tmp_path / "s.db"), inv, ["base"], arches=[Arch.AARCH64], emulation_of=emu)
    assert [r.code for r in plan.layers["base@aarch64"].reasons if r.code.startswith("index")] == [
        "index-moved"
    ]
    # The registry does not answer: never treated as absent, the index waits.
    inv.reachable = False
    plan = make_plan(lg, State(tmp_path / "s.db"), inv, ["base"], arches=[Arch.AARCH64], emulation_of=emu)
    assert not any(t.kind == "index" for t in plan.layers["base@aarch64"].tasks)


# ------------------------------------------------------------------------------ real


def _debian_reachable() -> bool:
    try:
        urllib.request.urlopen("http://deb.debian.org/debian/dists/bookworm/Release", timeout=5).close()
        return True
    except OSError:
        return False


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "IMAGEGRAPH_RETRY_ATTEMPTS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", *args], capture_output=True, text=True, env=env, timeout=900
    )


def up(root: Path, state: Path, *args: str) -> tuple[int, dict, str]:
    r = cli("up", str(root), "--state", str(state), "--json", *args)
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return r.returncode, doc, r.stderr


def raw_index(ref: str) -> dict:
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def platforms(doc: dict) -> set[str]:
    return {f"{m['platform']['os']}/{m['platform']['architecture']}" for m in doc.get("manifests", [])}


def elf_machine(path: Path) -> int:
    with path.open("rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


@pytest.fixture
def real_site(tmp_path: Path, registry):
    if not _debian_reachable():
        missing("deb.debian.org is not reachable")
    if not emulation(Arch.AARCH64).usable and HOST != Arch.AARCH64:
        missing(f"no aarch64 emulation: {emulation(Arch.AARCH64).fix}")
    if shutil.which("mmdebstrap") is None or shutil.which("skopeo") is None:
        missing("mmdebstrap and skopeo are needed")
    root = tmp_path / "layers"
    reg = (
        f"  publish_registry: '{registry.host}/igma'\n"
        "  registry_opts_push: ['--tls-verify=false']\n  registry_opts_pull: ['--tls-verify=false']\n"
    )
    write(
        root,
        "base.yaml",
        "options:\n  layer_type: base\n  name: ma-base\n  publish_tags: ['1']\n  pkg_manager: apt\n"
        "  parent: scratch\n  variant: extract\n  arches: [x86_64, aarch64]\n"
        f"  publish_dir: '{root.parent / 'boot'}'\n  rootfs_only: true\n"
        + reg
        + "packages: [busybox-static, dash]\n",
    )
    write(
        root,
        "child.yaml",
        "options:\n  layer_type: base\n  name: ma-child\n  publish_tags: ['1', 'latest']\n"
        f"  pkg_manager: apt\n  parent: '{registry.host}/igma/ma-base:1'\n  arches: [x86_64, aarch64]\n"
        + reg
        + "cmds:\n  - 'busybox uname -m > /etc/built-on'\n",
    )
    yield root, registry
    for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
        if "/ma-base:" in ref or "/ma-child:" in ref:
            buildah("rmi", "-f", ref, check=False)


def _image_file(ref: str, path: str) -> Path:
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    mnt = Path(buildah("mount", ctr).stdout.strip())
    try:
        dest = Path(os.environ.get("TMPDIR", "/tmp")) / f"ig-ma-{os.getpid()}-{Path(path).name}"
        shutil.copyfile(mnt / path.lstrip("/"), dest)
        return dest
    finally:
        buildah("rm", ctr, check=False)


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_two_arch_layer_and_child_publish_one_index_per_tag(real_site, tmp_path: Path) -> None:
    root, registry = real_site
    state = tmp_path / "state"

    # --arch narrows the run: only aarch64 builds, and no index is written yet.
    rc, doc, err = up(root, state, "--arch", "aarch64")
    assert rc == 0, err
    assert {x["name"] for x in doc["layers"]} == {"base@aarch64", "child@aarch64"}
    tags = set(registry_tags(registry.host, "igma/ma-child"))
    assert "1" not in tags and any(t.startswith("ig-") for t in tags)

    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json", "--arch", "x86_64").stdout)
    assert any(n["code"] == "index-waits-for-arches" for lp in plan["layers"] for n in lp["notes"]) is False
    # aarch64's key tags are in the registry now: `--arch x86_64` builds x86_64 and writes the index.
    rc, doc, err = up(root, state, "--arch", "x86_64")
    assert rc == 0, err
    names = {x["name"]: x for x in doc["layers"]}
    assert names["base"]["action"] == "build" and names["base"]["index"]["status"] == "ok"
    for tag in ("1", "latest"):
        index = raw_index(f"{registry.host}/igma/ma-child:{tag}")
        assert platforms(index) == {"linux/amd64", "linux/arm64"}

    # SquashFS per arch: <publish_dir>/<name>/<tag>/<arch>/, each with its own key
    boot = root.parent / "boot" / "ma-base" / "1"
    manifests = {a: json.loads((boot / a / "manifest.json").read_text()) for a in ("x86_64", "aarch64")}
    assert manifests["x86_64"]["key"] != manifests["aarch64"]["key"]
    assert (boot / "aarch64" / "rootfs.squashfs").stat().st_size > 0
    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json").stdout)
    assert {lp["name"]: lp["action"] for lp in plan["layers"]} == dict.fromkeys(
        ["base", "base@aarch64", "child", "child@aarch64"], "up-to-date"
    )
    art = json.loads(cli("artifacts", str(root), "base", "--state", str(state), "--json").stdout)
    assert set(art["arches"]) == {"x86_64", "aarch64"}
    assert any(u.endswith("/ma-base/1/aarch64/rootfs.squashfs") for u in art["urls"])
    assert any(u.endswith("/ma-base/1/x86_64/rootfs.squashfs") for u in art["urls"])
    arm = next(lp for lp in plan["layers"] if lp["name"] == "child@aarch64")
    ref = f"localhost/imagegraph/ma-child:{key_tag(arm['key'])}"
    # the arm64 image's binaries are aarch64 (ELF machine 183), and it ran there under emulation
    busybox = _image_file(ref, "/bin/busybox")
    built_on = _image_file(ref, "/etc/built-on")
    try:
        assert elf_machine(busybox) == 183
        assert built_on.read_text().strip() == "aarch64"
    finally:
        busybox.unlink()
        built_on.unlink()


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_one_arch_failing_leaves_the_human_tags_list_unchanged(real_site, tmp_path: Path) -> None:
    root, registry = real_site
    state = tmp_path / "state"
    rc, _doc, err = up(root, state)
    assert rc == 0, err
    before = raw_index(f"{registry.host}/igma/ma-child:1")
    child = root / "child.yaml"
    child.write_text(
        child.read_text().replace("cmds:\n", "cmds:\n  - '[ \"$(busybox uname -m)\" != aarch64 ]'\n")
    )
    rc, doc, _err = up(root, state)
    assert rc == 1
    status = {x["name"]: x["status"] for x in doc["layers"]}
    assert status["child@aarch64"] == "failed"
    # the x86_64 node's own build and push succeeded; its index task waited for aarch64's
    host = next(x for x in doc["layers"] if x["name"] == "child")
    assert status["child"] == "ok" and host["index"]["status"] == "blocked", host
    assert host["index"]["blocked_by"].startswith("child@aarch64:")
    assert raw_index(f"{registry.host}/igma/ma-child:1") == before  # the tag did not move
    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json").stdout)
    actions = {lp["name"]: lp["action"] for lp in plan["layers"]}
    # the x86_64 key tag was pushed and is reused; only aarch64 still builds
    assert actions["child@aarch64"] == "build" and actions["child"] == "publish"


def registry_tags(host: str, repo: str) -> list[str]:
    with urllib.request.urlopen(f"http://{host}/v2/{repo}/tags/list", timeout=5) as resp:
        return json.load(resp).get("tags") or []


def test_a_node_is_named_layer_at_arch(tmp_path: Path) -> None:
    from imagegraph.errors import UsageError

    lg = build_graph(load_project(site(tmp_path)))
    assert lg.lookup_node("base@arm64") == node_id("base", Arch.AARCH64)
    assert lg.lookup_node("base") == "base"
    with pytest.raises(UsageError, match="does not build ppc64le"):
        lg.lookup_node("base@ppc64le")


def _tiny(tmp_path: Path, arch: Arch) -> str:
    """A one-file image whose config says `arch` (what an index and `pull --arch` go by)."""
    ctr = buildah("from", "scratch").stdout.strip()
    try:
        f = tmp_path / f"{arch}.txt"
        f.write_text(f"{arch}\n")
        buildah("copy", ctr, str(f), "/which.txt")
        buildah("config", "--arch", arch.oci, "--os", "linux", ctr)
        return buildah("commit", "--quiet", ctr).stdout.strip()
    finally:
        buildah("rm", ctr, check=False)


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_external_parent_gives_each_arch_its_own_platform(tmp_path: Path, registry) -> None:
    """An index parent: each node pulls its platform. A one-arch parent: the other arch fails, clearly."""
    from imagegraph.publish.manifest import publish_index
    from imagegraph.runner import Runner

    repo = f"{registry.host}/igext/parent"
    members = {}
    for arch in (Arch.X86_64, Arch.AARCH64):
        img = _tiny(tmp_path, arch)
        ref = f"{repo}:only-{arch}"
        buildah("push", "--tls-verify=false", img, f"docker://{ref}")
        members[arch] = (str(arch) * 8, ref)
    publish_index(repo, members, ["multi"], Runner(), opts=["--tls-verify=false"])
    root = tmp_path / "layers"
    for name, tag in (("onmulti", "multi"), ("onone", "only-x86_64")):
        write(
            root,
            f"{name}.yaml",
            f"""
            options:
              layer_type: base
              name: igext-{name}
              pkg_manager: apt
              parent: '{repo}:{tag}'
              arches: [x86_64, aarch64]
              publish_local: true
              registry_opts_pull: ['--tls-verify=false']
            """,
        )
    try:
        plan = json.loads(cli("plan", str(root), "--state", str(tmp_path / "state"), "--json").stdout)
        lacking = next(lp for lp in plan["layers"] if lp["name"] == "onone@aarch64")
        assert lacking["action"] == "blocked" and lacking["reasons"][0]["code"] == "parent-lacks-arch"
        assert "offers no linux/arm64 image (it has linux/amd64)" in lacking["reasons"][0]["message"]
        rc, doc, err = up(root, tmp_path / "state")
        status = {x["name"]: x["status"] for x in doc["layers"]}
        assert rc == 1 and status == {
            "onmulti": "ok",
            "onmulti@aarch64": "ok",
            "onone": "ok",
            "onone@aarch64": "blocked",
        }, err
        for tag, arch in (("latest", "amd64"), ("latest-aarch64", "arm64")):
            out = buildah("inspect", "--type", "image", f"localhost/igext-onmulti:{tag}").stdout
            assert json.loads(out)["OCIv1"]["architecture"] == arch
    finally:
        for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
            if "igext" in ref:
                buildah("rmi", "-f", ref, check=False)


def test_variant_is_apt_from_scratch_only_and_keys_stay_without_it(tmp_path: Path) -> None:
    root = site(tmp_path)
    lg = build_graph(load_project(root))
    before = compute_keys(lg, ["base"])["base"].inputs["backend"]
    assert before["variant"] == "minbase"
    base = root / "base.yaml"
    base.write_text(base.read_text().replace("parent: scratch", "parent: scratch\n  variant: extract"))
    child = root / "child.yaml"
    child.write_text(
        child.read_text().replace("publish_local: true", "publish_local: true\n  variant: extract")
    )
    project = load_project(root)
    assert project.layers["base"].variant == "extract"
    assert compute_keys(build_graph(project), ["base"])["base"].inputs["backend"]["variant"] == "extract"
    assert any(
        "variant is mmdebstrap's" in w.message and w.file.endswith("child.yaml") for w in project.warnings
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from([Arch.X86_64, Arch.AARCH64, Arch.PPC64LE]), min_size=1, max_size=3, unique=True),
    st.data(),
)
def test_nodes_follow_the_arches(tmp_path_factory, base_arches: list[Arch], data) -> None:
    """Per arch one node; a child's node of arch A sits on its parent's node of A; the host's key
    is the key the layer had with no arches at all."""
    child_arches = data.draw(st.lists(st.sampled_from(base_arches), min_size=1, unique=True))
    tmp = tmp_path_factory.mktemp("prop")
    root = site(tmp, "[" + ", ".join(base_arches) + "]", "[" + ", ".join(child_arches) + "]")
    plan = plan_of(root, tmp)
    assert [lp.arch for lp in plan.nodes_of("base")] == base_arches
    assert [lp.arch for lp in plan.nodes_of("child")] == child_arches
    plain = build_graph(load_project(site(tmp / "plain", f"[{HOST}]")))
    for lp in plan.nodes_of("child"):
        parent = plan.layers[lp.parent_layer]
        assert parent.spec_id == "base" and parent.arch == lp.arch
        assert lp.inputs["parent"]["key"] == parent.key and lp.inputs["arch"] == str(lp.arch)
    if HOST in base_arches:
        assert plan.layers["base"].key == compute_keys(plain, ["base"])["base"].key
    assert len({lp.key for lp in plan.layers.values()}) == len(plan.layers)


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_s3_image_builder_layout_per_arch_and_a_boot_config_each(tmp_path: Path, s3_env) -> None:
    if not _debian_reachable():
        missing("deb.debian.org is not reachable")
    if not emulation(Arch.AARCH64).usable and HOST != Arch.AARCH64:
        missing(f"no aarch64 emulation: {emulation(Arch.AARCH64).fix}")
    bucket = s3_env.make_bucket()
    root = tmp_path / "layers"
    # A kernel version that names its arch, as Debian's and RPM distributions' do.
    kernel = (
        "k=6.1.0-9-$(busybox uname -m) && busybox mkdir -p /lib/modules/$k /boot"
        " && echo k > /boot/vmlinuz-$k && echo i > /boot/initramfs-$k.img"
        " && printf 'ID=igtest\\nVERSION_ID=1\\n' > /etc/os-release"
    )
    write(
        root,
        "node.yaml",
        f"""
        options:
          layer_type: base
          name: ma-node
          publish_tags: ['1']
          pkg_manager: apt
          parent: scratch
          variant: extract
          arches: [x86_64, aarch64]
          publish_s3: '{s3_env.endpoint}'
          s3_bucket: '{bucket}'
          s3_prefix: 'c/'
        packages: [busybox-static, dash]
        cmds:
          - {json.dumps(kernel)}
        """,
    )
    env = {"S3_ACCESS": os.environ["S3_ACCESS"], "S3_SECRET": os.environ["S3_SECRET"]}
    state = tmp_path / "state"
    try:
        r = subprocess.run(
            [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state), "--json"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=900,
        )
        assert r.returncode == 0, r.stderr
        keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert {
            "c/igtest1-ma-node-1-x86_64",
            "c/igtest1-ma-node-1-aarch64",
            "efi-images/c/vmlinuz-6.1.0-9-x86_64",
            "efi-images/c/vmlinuz-6.1.0-9-aarch64",
        } <= keys
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "imagegraph.cli",
                "artifacts",
                str(root),
                "node",
                "--state",
                str(state),
                "--json",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        doc = json.loads(out.stdout)
        by_arch = {e["arch"]: e for e in doc["boot_config"]}
        assert set(by_arch) == {"x86_64", "aarch64"}
        assert by_arch["aarch64"]["kernel"].endswith("/efi-images/c/vmlinuz-6.1.0-9-aarch64")
        assert "ma-node-1-aarch64" in by_arch["aarch64"]["params"]
        plan = json.loads(cli("plan", str(root), "--state", str(state), "--json").stdout)
        assert {lp["action"] for lp in plan["layers"]} == {"up-to-date"}
    finally:
        for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
            if "/ma-node:" in ref:
                buildah("rmi", "-f", ref, check=False)


@pytest.mark.parametrize(
    ("manager", "check"),
    [
        ("dnf", lambda rec, m: "--forcearch=aarch64" in rec.find("dnf", "install")),
        ("apt", lambda rec, m: "--arch=arm64" in rec.find("mmdebstrap")),
        ("zypper", None),
    ],
)
def test_each_package_manager_is_told_the_arch(tmp_path: Path, manager: str, check) -> None:
    """The argv of a foreign-arch build (zypper: the private zypp.conf it is pointed at)."""
    from imagegraph.build import BuildRequest, build_layer
    from imagegraph.build import work as work_mod
    from imagegraph.spec import load_spec
    from tests.test_build_argv import RecordingRunner

    p = write(
        tmp_path,
        "x.yaml",
        f"""
        options:
          layer_type: base
          pkg_manager: {manager}
          gpgcheck: false
        repos:
          - alias: r
            url: http://mirror/r/
        packages: [vim]
        """,
    )
    mount = tmp_path / "mnt"
    mount.mkdir()
    rec = RecordingRunner(mount)
    seen: dict[str, str] = {}
    orig = work_mod.Work.run

    def run(self, argv, *, env=None, **kw):  # keep the zypp.conf the build writes (its tmp goes)
        if env and "ZYPP_CONF" in env and "ZYPP_CONF" not in seen:
            seen["ZYPP_CONF"] = Path(env["ZYPP_CONF"]).read_text()
        return orig(self, argv, env=env, **kw)

    work_mod.Work.run = run
    try:
        build_layer(BuildRequest(load_spec(p), fake_key(manager), None, arch=Arch.AARCH64), rec)
    finally:
        work_mod.Work.run = orig
    assert rec.find("buildah", "from")[3:7] == ["--arch", "arm64", "--os", "linux"]
    if manager == "zypper":
        assert seen["ZYPP_CONF"] == "[main]\narch = aarch64\n"
        assert rec.find("zypper", "install")
    else:
        assert check(rec, None)


def _newc(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A gzip'd cpio (newc) archive of `files` (path -> (content, mode)): an initramfs, no cpio(1)."""
    import gzip

    out = b""
    for ino, (name, (data, mode)) in enumerate([*files.items(), ("TRAILER!!!", (b"", 0))], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        out += head + b"\0" * (-len(head) % 4) + data + b"\0" * (-len(data) % 4)
    return gzip.compress(out)


@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap")
def test_an_aarch64_kernel_boots_on_the_virt_board(tmp_path: Path) -> None:
    """boottest's aarch64 machine: Debian's arm64 kernel and a busybox initramfs, under TCG, to a marker."""
    from imagegraph.boottest import boot, kernel_params, machine_of

    if shutil.which("qemu-system-aarch64") is None:
        missing("qemu-system-aarch64 is not installed (scripts/install-system-deps.sh)")
    if not _debian_reachable():
        missing("deb.debian.org is not reachable")
    root = tmp_path / "root"
    subprocess.run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=extract",
            "--arch=arm64",
            "--include=linux-image-cloud-arm64,busybox-static",
            "--dpkgopt=path-exclude=/usr/lib/modules/*",
            "--dpkgopt=path-exclude=/lib/modules/*",
            "bookworm",
            str(root),
            "http://deb.debian.org/debian",
        ],
        check=True,
        capture_output=True,
    )
    kernel = next((root / "boot").glob("vmlinuz-*"))
    init = b'#!/bin/busybox sh\n/bin/busybox echo "login: ig-$(/bin/busybox uname -m)"\n/bin/busybox poweroff -f\n'
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(
        _newc({"bin": (b"", 0o40755), "bin/busybox": ((root / "bin/busybox").read_bytes(), 0o100755),
               "init": (init, 0o100755)})
    )  # fmt: skip
    assert machine_of(Arch.AARCH64).console == "ttyAMA0"
    res = boot(
        kernel,
        initrd,
        "console=ttyAMA0 panic=-1",
        serve={},
        log_path=tmp_path / "serial.log",
        marker="login: ig-aarch64",
        timeout=240,
        arch=Arch.AARCH64,
    )
    assert res.ok, (res.reason, res.tail)
    assert res.accel == "tcg" or HOST == Arch.AARCH64
    assert "console=ttyAMA0" in kernel_params(
        type("S", (), {"boot_params": None})(), "http://x/r", machine_of(Arch.AARCH64).console
    )


def test_boot_test_arches_choose_which_nodes_are_gated(tmp_path: Path) -> None:
    root = site(tmp_path)
    base = root / "base.yaml"
    base.write_text(
        base.read_text().replace(
            "publish_local: true",
            "publish_dir: ../out\n  boot_test: {enabled: true, arches: [arm64]}",
        )
    )
    plan = plan_of(root, tmp_path)
    kinds = {lp.layer: [t.kind for t in lp.tasks] for lp in plan.nodes_of("base")}
    assert "boot-test" in kinds["base@aarch64"] and "boot-test" not in kinds["base"]
    base.write_text(base.read_text().replace(", arches: [arm64]", ""))
    plan = plan_of(root, tmp_path)
    assert all("boot-test" in [t.kind for t in lp.tasks] for lp in plan.nodes_of("base"))


def test_gc_collects_every_arch_and_keeps_todays_keys(tmp_path: Path) -> None:
    """Each arch's node has its own build history: gc keeps its current key and removes older ones."""
    from imagegraph.gc import gc
    from imagegraph.inventory import local_key_ref
    from imagegraph.plan import current_keys

    root = site(tmp_path)
    lg = build_graph(load_project(root))
    state = State(tmp_path / "state.db")
    today = current_keys(lg, StaticInventory())
    assert set(today) == {"base", "base@aarch64", "child"}
    spec = lg.spec("base")
    inv = StaticInventory()
    for node in ("base", "base@aarch64"):
        for i, key in enumerate([fake_key(f"{node}-old"), today[node]]):
            state.record_build(
                run_id=f"r{i}", layer=node, key=key, inputs={}, image_id=f"sha256:{i}", image_ref=None,
                spec_file="base.yaml", parent_key=None, started=i, finished=i + 1,
            )  # fmt: skip
            inv.images.add(local_key_ref(spec, key))
    report = gc(lg, state, keep=1, dry_run=True, current=today, inventory=inv, containers=False)
    assert report.kept_keys["base@aarch64"] == [today["base@aarch64"]]
    removed = {i.location for i in report.removed if i.kind == "local-image"}
    assert removed == {
        local_key_ref(spec, fake_key("base-old")),
        local_key_ref(spec, fake_key("base@aarch64-old")),
    }


# ------------------------------------------------------------------ run results


class _FailOne:
    """An executor that fails the build of one node and does every other task (scheduling only)."""

    build_slots = None

    def __init__(self, fail: str):
        self.fail = fail

    def prepare(self, plan, tasks) -> None:
        pass

    def cancel(self) -> None:
        pass

    def run_task(self, task, needs):
        from imagegraph.errors import BuildError
        from imagegraph.scheduler import TaskResult

        if task.kind == "build" and task.layer == self.fail:
            raise BuildError(task.layer, "cmds[0]", "exit 1", ["boom"])
        return TaskResult(task.id, task.layer, task.kind)


def test_a_node_whose_own_tasks_succeeded_is_ok_and_its_index_says_blocked(tmp_path: Path) -> None:
    from imagegraph.render import result_lines
    from imagegraph.scheduler import run_plan

    root = site(tmp_path)
    base = root / "base.yaml"
    base.write_text(base.read_text().replace("publish_local: true", "publish_registry: reg.example/x"))
    plan = plan_of(root, tmp_path, names=["base"])
    other = node_id("base", OTHER)
    result = run_plan(plan, _FailOne(other))
    host, foreign = result.results["base"], result.results[other]
    assert foreign.status == "failed"  # the failed arch is not hidden ...
    assert host.status == "ok"  # ... and the host's node says what its own build and push did
    assert host.index == {"status": "blocked", "error": host.index["error"], "blocked_by": f"{other}:build"}
    assert host.to_json()["index"]["status"] == "blocked"
    assert result.exit_status == 1 and result.failed == [other]
    text = [str(line) for line in result_lines(result)]
    assert f"base index blocked: blocked by {other}:build; its human tags stay" in text
    assert any(line.startswith(f"{other} failed:") for line in text)
    # Every arch succeeding: the index ran, and says so.
    ok = run_plan(plan_of(root, tmp_path, names=["base"]), _FailOne("nothing"))
    assert ok.results["base"].index["status"] == "ok" and ok.exit_status == 0
    # A host-only layer's result carries no index.
    assert "index" not in ok.results[other].to_json()


def _tiny_image(tmp_path: Path, arch: Arch, label: str) -> str:
    """A one-file image for `arch` whose content (`label`) makes its digest its own."""
    ctr = buildah("from", "scratch").stdout.strip()
    try:
        f = tmp_path / f"{arch}-{label}.txt"
        f.write_text(f"{arch} {label}\n")
        buildah("copy", ctr, str(f), "/which.txt")
        buildah("config", "--arch", arch.oci, "--os", "linux", ctr)
        return buildah("commit", "--quiet", ctr).stdout.strip()
    finally:
        buildah("rm", ctr, check=False)


@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_gc_deletes_old_indexes_and_keeps_what_a_human_tags_index_lists(tmp_path: Path, registry) -> None:
    """Real registry: an old index behind a human tag keeps its arches' key tags; unneeded, it goes."""
    from imagegraph.gc import gc
    from imagegraph.keytag import index_tag
    from imagegraph.plan import current_keys
    from imagegraph.publish.manifest import publish_index
    from imagegraph.publish.registry_client import RegistryClient
    from imagegraph.runner import Runner

    root = site(tmp_path)
    base = root / "base.yaml"
    base.write_text(
        base.read_text().replace("publish_local: true", f"publish_registry: {registry.host}/iggc")
    )
    lg = build_graph(load_project(root))
    today = current_keys(lg, StaticInventory())
    repo = f"{registry.host}/iggc/ma-base"
    nodes = {Arch.X86_64: node_id("base", Arch.X86_64), Arch.AARCH64: node_id("base", Arch.AARCH64)}
    old = {a: fake_key(f"{n}-old") for a, n in nodes.items()}
    new = {a: today[n] for a, n in nodes.items()}
    state = State(tmp_path / "state.db")
    images = []
    try:
        for label, keys in (("old", old), ("new", new)):
            for a, k in keys.items():
                images.append(_tiny_image(tmp_path, a, label))
                buildah("push", "--tls-verify=false", images[-1], f"docker://{repo}:{key_tag(k)}")
    finally:
        for img in images:
            buildah("rmi", img, check=False)
    for i, keys in enumerate((old, new)):
        for a, k in keys.items():
            state.record_build(
                run_id=f"r{i}", layer=nodes[a], key=k, inputs={}, image_id=f"sha256:{i}", image_ref=None,
                spec_file="base.yaml", parent_key=None, started=i, finished=i + 1,
            )  # fmt: skip
    members = {
        label: {a: (k, f"{repo}:{key_tag(k)}") for a, k in keys.items()}
        for label, keys in (("old", old), ("new", new))
    }
    publish_index(
        repo, members["old"], ["1"], Runner(), opts=["--tls-verify=false"]
    )  # a human tag on the old
    publish_index(repo, members["new"], ["latest"], Runner(), opts=["--tls-verify=false"])
    old_index, new_index = index_tag(old), index_tag(new)

    def run_gc():
        return gc(
            lg,
            state,
            keep=1,
            current=today,
            inventory=StaticInventory(),
            containers=False,
            registry=RegistryClient(),
        )

    # Tag 1 is on the old index: it and the key tags it lists stay.
    report = run_gc()
    assert report.errors == []
    assert not report.removed, [i.location for i in report.removed]
    kept = {i.location: i.reason for i in report.items if i.action == "kept"}
    assert set(kept) == {f"{repo}:{key_tag(k)}" for k in old.values()}
    assert all(r.startswith(f"listed by index {old_index} (tag 1)") for r in kept.values()), kept
    tags = set(registry_tags(registry.host, "iggc/ma-base"))
    assert {old_index, "1", *(key_tag(k) for k in old.values())} <= tags
    # Tag 1 moves to today's index: the old index and its key tags are collected, today's stay.
    client = RegistryClient()
    client.put_tag(repo, client.manifest_digest(f"{repo}:{new_index}"), "1")
    report = run_gc()
    assert report.errors == []
    removed = {(i.kind, i.location) for i in report.removed}
    assert removed == {("index-tag", f"{repo}:{old_index}")} | {
        ("key-tag", f"{repo}:{key_tag(k)}") for k in old.values()
    }
    tags = set(registry_tags(registry.host, "iggc/ma-base"))
    assert tags == {"1", "latest", new_index, *(key_tag(k) for k in new.values())}
    for m in raw_index(f"{registry.host}/iggc/ma-base:1")["manifests"]:  # every image it lists is there
        assert RegistryClient().manifest_digest(f"{repo}@{m['digest']}") == m["digest"]
        assert RegistryClient().manifest(f"{repo}@{m['digest']}") is not None


# ------------------------------------------------------------------ Slurm placement


def _slurm_site(tmp_path: Path, settings: str) -> Path:
    root = site(tmp_path)
    for name in ("base.yaml", "child.yaml"):
        p = root / name
        text = p.read_text().replace("publish_local: true", "publish_registry: r.io/x")
        p.write_text(text.replace("localhost/ma-base:latest", "r.io/x/ma-base:latest"))
    (root / "child.yaml").write_text(
        (root / "child.yaml")
        .read_text()
        .replace("cmds:", "  arches: [x86_64, aarch64]\ncmds:", 1)
        .replace("\n    arches", "\n  arches")
    )
    (root / "imagegraph.yaml").write_text(settings)
    return root


def test_slurm_submits_each_arch_to_its_partition_after_its_parent_of_the_same_arch(tmp_path: Path) -> None:
    from imagegraph.project import ExecutorKind
    from imagegraph.slurm import SlurmBuildService, check_plan, emulation_for, place_plan
    from tests import fakeslurm
    from tests.test_slurm import opt, sbatches

    settings = "executor:\n  kind: slurm\n  partition: batch\n  arch:\n    arm64: {partition: grace, constraint: neoverse}\n"
    root = _slurm_site(tmp_path, settings)
    project = load_project(root)
    ex = project.settings.executor
    assert ex.kind == ExecutorKind.SLURM and ex.arches == {
        "aarch64": {"partition": "grace", "constraint": "neoverse"}
    }
    lg = build_graph(project)
    never = lambda a: Emulation(a, native=False, usable=False, problem="no handler", fix="enable it")  # noqa: E731
    # Without Slurm placement this host's missing binfmt handler blocks aarch64 ...
    assert (
        make_plan(lg, State(tmp_path / "s.db"), StaticInventory(), emulation_of=never)
        .layers["base@aarch64"]
        .action
        == Action.BLOCKED
    )
    # ... placed natively on grace, it builds (no emulation needed here).
    plan = make_plan(lg, State(tmp_path / "s.db"), StaticInventory(), emulation_of=emulation_for(ex))
    assert {n: lp.action for n, lp in plan.layers.items()} == dict.fromkeys(
        ["base", "base@aarch64", "child", "child@aarch64"], Action.BUILD
    )
    assert check_plan(plan) == []  # multi-arch layers run through Slurm now
    place_plan(plan, ex)
    note = next(n for n in plan.layers["child@aarch64"].notes if n.code == "slurm-placement")
    assert note.detail == {
        "arch": "aarch64",
        "placement": "native",
        "partition": "grace",
        "constraint": "neoverse",
    }
    assert str(note) == "builds natively as Slurm jobs on partition grace, constraint neoverse"
    host_note = next(n for n in plan.layers["base"].notes if n.code == "slurm-placement")
    assert host_note.detail["placement"] == "native" and host_note.detail["partition"] == "batch"
    assert "slurm-placement" in json.dumps(plan.layers["base@aarch64"].to_json())

    d = tmp_path / "fake"
    bin_dir = fakeslurm.install(d)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    svc = SlurmBuildService(ex, project_root=root, log_dir=tmp_path / "logs", run_id="r1", env=env)
    svc.prepare(plan, [lp for lp in plan.layers.values() if lp.action == Action.BUILD])
    svc.cancel()
    subs = {opt(a, "--job-name").rsplit("-", 1)[0]: a for a in sbatches(d)}
    assert set(subs) == {"ig-base", "ig-base@aarch64", "ig-child", "ig-child@aarch64"}
    arm, x86 = subs["ig-child@aarch64"], subs["ig-child"]
    assert opt(arm, "--partition") == "grace" and opt(arm, "--constraint") == "neoverse"
    assert opt(x86, "--partition") == "batch" and opt(x86, "--constraint") is None
    assert opt(arm, "--dependency") == f"afterok:{svc.jobs['base@aarch64'].job_id}"
    assert opt(x86, "--dependency") == f"afterok:{svc.jobs['base'].job_id}"
    assert (
        "child@aarch64 --key " + plan.layers["child@aarch64"].key in arm[-1]
        and arm[-1].count("--arch aarch64") == 1
    )
    assert "--arch" in x86[-1]  # a multi-arch layer's host node names its arch too


def test_slurm_without_an_arch_entry_emulates_on_the_default_partition(tmp_path: Path) -> None:
    from imagegraph.slurm import Placement, arch_placement, place_plan

    root = _slurm_site(tmp_path, "executor:\n  kind: slurm\n  partition: batch\n")
    ex = load_project(root).settings.executor
    assert arch_placement(ex, OTHER).how == Placement.EMULATED
    assert arch_placement(ex, HOST).how == Placement.NATIVE
    plan = plan_of(root, tmp_path, names=["base"])
    place_plan(plan, ex)
    (note,) = [n for n in plan.layers[node_id("base", OTHER)].notes if n.code == "slurm-placement"]
    assert note.detail["placement"] == "emulated" and note.detail["partition"] == "batch"
    assert (
        str(note)
        == f"builds under emulation (qemu-user) as Slurm jobs on partition batch: no executor.arch.{OTHER}"
    )


def test_slurm_arch_settings_name_a_known_arch(tmp_path: Path) -> None:
    root = _slurm_site(tmp_path, "executor:\n  kind: slurm\n  arch:\n    sparc: {partition: old}\n")
    r = cli("plan", str(root), "--offline")
    assert r.returncode == 2
    assert "imagegraph.yaml:4:5" in r.stderr and "'sparc' is not one of" in r.stderr, r.stderr


@pytest.mark.buildah
@pytest.mark.slurm
@requires(have_buildah(), "needs buildah as root")
def test_up_through_real_slurm_puts_each_arch_on_its_partition(real_site, slurm, tmp_path: Path) -> None:
    """A two-arch layer through a real one-node Slurm: aarch64's job on partition grace, x86_64's on
    the default one, each pushing its key tag from node-local storage; the index names both."""
    root, registry = real_site
    (root / "child.yaml").unlink()
    graphroot = Path("/var/tmp") / f"ig-ma-slurm-{os.getpid()}-{tmp_path.name}"
    (root / "imagegraph.yaml").write_text(
        "executor:\n  kind: slurm\n  partition: build\n  poll_interval: 0.5\n"
        f"  graphroot: '{graphroot}'\n  arch:\n    aarch64: {{partition: grace}}\n"
    )
    env = {**os.environ, **slurm.env, "BUILDAH_ISOLATION": "chroot", "IMAGEGRAPH_RETRY_ATTEMPTS": "2"}
    state = tmp_path / "state"
    try:
        plan = subprocess.run(
            [sys.executable, "-m", "imagegraph.cli", "plan", str(root), "--state", str(state), "--json"],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        placed = {
            lp["name"]: n["detail"]
            for lp in json.loads(plan.stdout)["layers"]
            for n in lp["notes"]
            if n["code"] == "slurm-placement"
        }
        assert placed["base@aarch64"] == {"arch": "aarch64", "placement": "native", "partition": "grace"}
        assert placed["base"]["partition"] == "build"
        r = subprocess.run(
            [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state), "--json"],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        doc = json.loads(r.stdout)
        result = {x["name"]: x for x in doc["layers"]}
        assert result["base"]["status"] == "ok" and result["base@aarch64"]["status"] == "ok"
        assert result["base"]["index"]["status"] == "ok"
        assert platforms(raw_index(f"{registry.host}/igma/ma-base:1")) == {"linux/amd64", "linux/arm64"}
        comp = (slurm.root / "log" / "jobcomp.log").read_text()
        lines = {ln.split("Name=", 1)[1].split()[0]: ln for ln in comp.splitlines() if "Name=ig-base" in ln}
        arm = next(v for k, v in lines.items() if k.startswith("ig-base@aarch64-"))
        x86 = next(v for k, v in lines.items() if not k.startswith("ig-base@aarch64-"))
        assert "Partition=grace" in arm and "JobState=COMPLETED" in arm, arm
        assert "Partition=build" in x86 and "JobState=COMPLETED" in x86, x86
        # The arm64 image the job pushed is an aarch64 one.
        cfg = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--override-arch", "arm64",
             f"docker://{registry.host}/igma/ma-base:1"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(cfg.stdout)["Architecture"] == "arm64"
    finally:
        conf = Path(str(graphroot) + "-run") / "storage.conf"
        if conf.exists():
            node = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "BUILDAH_ISOLATION": "chroot"}
            subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True, env=node, check=False)
        subprocess.run(["rm", "-rf", str(graphroot), str(graphroot) + "-run"], check=False)


_THREE = [Arch.X86_64, Arch.AARCH64, Arch.PPC64LE]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    narrowed=st.lists(st.sampled_from(_THREE), min_size=1, max_size=3, unique=True),
    in_registry=st.sets(st.sampled_from(_THREE)),
)
def test_a_narrowed_plan_writes_the_index_iff_every_left_out_arch_is_in_the_registry(
    tmp_path: Path, narrowed: list[Arch], in_registry: set[Arch]
) -> None:
    from imagegraph.inventory import StaticInventory as Inv

    root = site(tmp_path, base_arches="[x86_64, aarch64, ppc64le]")
    base = root / "base.yaml"
    base.write_text(base.read_text().replace("publish_local: true", "publish_registry: reg.example/x"))
    lg = build_graph(load_project(root))
    emu = lambda a: Emulation(a, native=a == HOST, usable=True)  # noqa: E731
    full = make_plan(lg, State(tmp_path / "p.db"), Inv(), ["base"], emulation_of=emu)
    keys = {lp.arch: lp.key for lp in full.nodes_of("base")}
    inv = Inv(tags={"reg.example/x/ma-base": {key_tag(keys[a]) for a in in_registry}})
    plan = make_plan(lg, State(tmp_path / "p.db"), inv, ["base"], arches=narrowed, emulation_of=emu)
    nodes = plan.nodes_of("base")
    assert {lp.arch for lp in nodes} == set(narrowed)
    lacking = [a for a in _THREE if a not in narrowed and a not in in_registry]
    index = [lp for lp in nodes if any(t.kind == "index" for t in lp.tasks)]
    waits = [n for lp in nodes for n in lp.notes if n.code == "index-waits-for-arches"]
    if lacking:
        assert not index and [w.detail["arches"] for w in waits] == [[str(a) for a in lacking]]
    else:
        (node,) = index
        assert not waits and node.index_members == {str(a): keys[a] for a in _THREE}
        assert node.to_json()["index_members"] == {str(a): keys[a] for a in _THREE}
