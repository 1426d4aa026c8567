"""What changed, through the real CLI: inventories, `diff`, `sbom`, `promote`, `status`, layer.json.

One scratch dnf layer is built twice from a repository made here (tests/rpmrepo.py):
the second build adds `ig-new` and picks up `ig-hello` 1.1. It publishes to a
real docker-registry, moto's S3 over HTTP and a directory.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures_build import buildah, containers, have_buildah
from tests.fixtures_servers import S3_TEST_ACCESS, S3_TEST_SECRET, _registry_server
from tests.rpmrepo import make_repo, serve

pytestmark = [
    pytest.mark.buildah,
    pytest.mark.slow,
    pytest.mark.skipif(not have_buildah(), reason="needs buildah as root"),
]

ENV = {
    "BUILDAH_ISOLATION": "chroot",
    "IMAGEGRAPH_RETRY_ATTEMPTS": "2",
    "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.2",
    "S3_ACCESS": S3_TEST_ACCESS,
    "S3_SECRET": S3_TEST_SECRET,
}


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=600,
    )


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def cleanup_images(prefix: str) -> None:
    for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
        if prefix in ref:
            buildah("rmi", "-f", ref, check=False)


def image_file(ref: str, path: str) -> str:
    """A file of a local image, read from its mount (no command runs inside)."""
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        mnt = buildah("mount", ctr).stdout.strip()
        return (Path(mnt) / path.lstrip("/")).read_text()
    finally:
        buildah("rm", ctr, check=False)


@dataclass
class Story:
    root: Path
    state: Path
    tmp: Path
    bucket: str
    s3: object
    registry: object
    keys: list[str] = field(default_factory=list)
    up: list[dict] = field(default_factory=list)
    promote: list[subprocess.CompletedProcess] = field(default_factory=list)

    def run(self, *args: object) -> subprocess.CompletedProcess:
        return cli(args[0], self.root, *args[1:], "--state", self.state)


DNF_SPEC = """
options:
  layer_type: base
  name: igt-chg-dnf
  publish_tags: ['1']
  pkg_manager: dnf
  parent: scratch
  gpgcheck: false
  releasever: '9'
  rootfs_only: true
  publish_dir: '../out'
  publish_s3: '{endpoint}'
  s3_bucket: '{bucket}'
  s3_prefix: 'chg/'
  s3_layout: versioned
  publish_registry: '{registry}/igt'
  registry_opts_push: ['--tls-verify=false']
repos:
  - alias: igtest
    url: '{repo}'
package_groups: ['IG Minimal']
packages: {packages}
cmds:
  - "printf 'ID=igtest\\nVERSION_ID=1\\n' > /etc/os-release"
"""


def current_key(story: Story) -> str:
    plan = json.loads(ok(story.run("plan", "--json", "--offline")).stdout)
    return plan["layers"][0]["key"]


@pytest.fixture(scope="module")
def dnf_story(tmp_path_factory: pytest.TempPathFactory, s3_server) -> Iterator[Story]:
    tmp = tmp_path_factory.mktemp("changes-dnf")
    repo = make_repo(tmp / "repo")
    server = serve(repo.path)
    (tmp / "registry").mkdir()
    registries = _registry_server(tmp / "registry")
    registry = next(registries)
    try:
        bucket = s3_server.make_bucket("chg")
        root = tmp / "layers"
        root.mkdir()
        spec = root / "dnf.yaml"

        def write(packages: list[str]) -> None:
            spec.write_text(
                textwrap.dedent(DNF_SPEC).format(
                    endpoint=s3_server.endpoint,
                    bucket=bucket,
                    registry=registry.host,
                    repo=server.url,
                    packages=json.dumps(packages),
                )
            )

        story = Story(root, tmp / "state" / "state.db", tmp, bucket, s3_server, registry)
        write(["ig-hello", "ig-tool"])
        for second in (False, True):
            if second:  # a newer ig-hello in the repository, and a package added to the spec
                repo.add_version("ig-hello", "1.1")
                repo.add_version("ig-new", "2.0")
                write(["ig-hello", "ig-tool", "ig-new"])
            r = story.run("up", "--json")
            assert r.returncode == 0, r.stderr[-4000:]
            story.up.append(json.loads(r.stdout))
            story.keys.append(current_key(story))
            story.promote.append(ok(story.run("promote", "dnf", "prod")))
        yield story
    finally:
        cleanup_images("igt-chg-")
        server.stop()
        repo.cleanup()
        next(registries, None)


def test_diff_shows_exactly_the_two_changes(dnf_story: Story) -> None:
    s = dnf_story
    assert s.keys[0] != s.keys[1]
    text = ok(s.run("diff", "dnf")).stdout
    lines = [ln.strip() for ln in text.splitlines()]
    changed = [ln for ln in lines if ln[:1] in "+-↑↓"]
    assert changed == [
        "↑ upgraded   ig-hello 1.0-1 -> 1.1-1 (noarch)",
        "+ added      ig-new 2.0-1 (noarch)",
    ]
    assert lines[-1] == "1 added, 0 removed, 1 upgraded, 0 downgraded"
    doc = json.loads(ok(s.run("diff", "dnf", "--json")).stdout)
    assert (doc["from"], doc["to"]) == (s.keys[0], s.keys[1])
    assert doc["counts"] == {"added": 1, "removed": 0, "upgraded": 1, "downgraded": 0}
    assert doc["changes"] == [
        {"kind": "upgraded", "name": "ig-hello", "arch": "noarch", "old": "1.0-1", "new": "1.1-1"},
        {"kind": "added", "name": "ig-new", "arch": "noarch", "old": None, "new": "2.0-1"},
    ]
    # FROM and TO by key prefix, ig- key tag or human tag; reversed, it is a downgrade and a removal
    back = json.loads(ok(s.run("diff", "dnf", s.keys[1][:10], "ig-" + s.keys[0], "--json")).stdout)
    assert back["counts"] == {"added": 0, "removed": 1, "upgraded": 0, "downgraded": 1}
    same = json.loads(ok(s.run("diff", "dnf", "prod", s.keys[1][:12], "--json")).stdout)
    assert same["changes"] == [] and same["from"] == s.keys[1]
    bad = s.run("diff", "dnf", "no-such-tag")
    assert bad.returncode == 2 and "no-such-tag" in bad.stderr


def test_promote_prints_and_records_the_change(dnf_story: Story) -> None:
    first, second = (p.stdout for p in dnf_story.promote)
    assert "+ added      ig-hello 1.0-1" in first  # prod pointed at nothing before
    assert "↑ upgraded   ig-hello 1.0-1 -> 1.1-1 (noarch)" in second
    assert "+ added      ig-new 2.0-1 (noarch)" in second
    assert "1 added, 0 removed, 1 upgraded, 0 downgraded" in second
    from imagegraph.state import State

    ev = State(dnf_story.state, readonly=True).events("dnf", "promote")[0]
    assert ev["key"] == dnf_story.keys[1]
    assert ev["detail"]["changes"]["counts"] == {"added": 1, "removed": 0, "upgraded": 1, "downgraded": 0}


def test_run_record_and_status_carry_the_changes(dnf_story: Story) -> None:
    rec = dnf_story.up[1]
    run = json.loads((dnf_story.state.parent / "last-run.json").read_text())
    ch = run["package_changes"]["dnf"]
    assert ch["from"] == dnf_story.keys[0] and ch["to"] == dnf_story.keys[1]
    assert ch["brief"] == "ig-hello 1.0-1 → 1.1-1, +ig-new 2.0-1"
    assert rec["layers"][0]["action"] == "build"
    status = json.loads(ok(dnf_story.run("status", "--json")).stdout)
    assert status["changes"]["dnf"]["brief"] == "ig-hello 1.0-1 → 1.1-1, +ig-new 2.0-1"
    assert "ig-hello 1.0-1 → 1.1-1" in ok(dnf_story.run("status")).stdout


def test_the_image_holds_its_key(dnf_story: Story) -> None:
    from imagegraph import __version__

    key = dnf_story.keys[1]
    doc = json.loads(image_file(f"localhost/imagegraph/igt-chg-dnf:ig-{key}", "/etc/imagegraph/layer.json"))
    assert doc == {
        "format": 1,
        "name": "igt-chg-dnf",
        "key": key,
        "key_tag": f"ig-{key}",
        "parent": "scratch",
        "parent_key": None,
        "parent_digest": None,
        "spec": "dnf.yaml",
        "imagegraph": __version__,
    }
    listing = subprocess.run(
        ["unsquashfs", "-l", str(dnf_story.tmp / "out" / "igt-chg-dnf" / "1" / "rootfs.squashfs")],
        capture_output=True,
        text=True,
    ).stdout
    assert "squashfs-root/etc/imagegraph/layer.json" in listing
    assert [c for c in containers() if c.startswith("imagegraph-igt-chg-")] == []


def validate_cyclonedx(text: str) -> None:
    """Against CycloneDX's published 1.5 JSON schema (shipped, strict, with cyclonedx-python-lib)."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    assert error is None, error


def components(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["components"]}


def props(component: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in component.get("properties", [])}


def test_sbom_validates_and_lists_both_changes(dnf_story: Story) -> None:
    s = dnf_story
    text = ok(s.run("sbom", "dnf")).stdout
    validate_cyclonedx(text)
    doc = json.loads(text)
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.5")
    comps = components(doc)
    assert comps["ig-hello"]["version"] == "1.1-1" and comps["ig-new"]["version"] == "2.0-1"
    assert comps["ig-hello"]["purl"] == "pkg:rpm/igtest/ig-hello@1.1-1?arch=noarch&distro=igtest-1"
    assert comps["ig-hello"]["licenses"] == [{"license": {"id": "MIT"}}]
    image = props(doc["metadata"]["component"])
    assert image["imagegraph:key"] == s.keys[1] and image["imagegraph:layer"] == "dnf"
    assert image["imagegraph:image-digest"].startswith("sha256:")
    assert "imagegraph:parent-key" not in image  # scratch
    # --key names an older build: its SBOM has the old versions and no ig-new
    old = json.loads(ok(s.run("sbom", "dnf", "--key", s.keys[0][:12])).stdout)
    assert components(old)["ig-hello"]["version"] == "1.0-1" and "ig-new" not in components(old)
    # the document is a function of the key: printed twice, the same bytes
    assert ok(s.run("sbom", "dnf")).stdout == text


def test_sbom_is_published_beside_the_squashfs(dnf_story: Story) -> None:
    s = dnf_story
    key = s.keys[1]
    local = s.tmp / "out" / "igt-chg-dnf" / "1"
    assert (local / "rootfs.squashfs").exists()
    printed = json.loads(ok(s.run("sbom", "dnf")).stdout)
    assert json.loads((local / "sbom.cdx.json").read_text()) == printed
    client = s.s3.client()
    obj = client.get_object(Bucket=s.bucket, Key="chg/igt-chg-dnf/1/sbom.cdx.json")
    assert obj["Metadata"]["imagegraph-key"] == key
    assert json.loads(obj["Body"].read()) == printed
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s.bucket, Prefix="chg/").get("Contents", [])}
    assert {"chg/igt-chg-dnf/1/rootfs.squashfs", "chg/igt-chg-dnf/1/sbom.cdx.json"} <= keys
    # promote carries it to the promoted tag, in the directory and on S3
    assert json.loads((local.parent / "prod" / "sbom.cdx.json").read_text()) == printed
    prod = client.get_object(Bucket=s.bucket, Key="chg/igt-chg-dnf/prod/sbom.cdx.json")
    assert prod["Metadata"]["imagegraph-key"] == key and json.loads(prod["Body"].read()) == printed


def test_sbom_is_attached_to_the_registry_image(dnf_story: Story) -> None:
    from imagegraph.publish.referrers import fallback_tag, referring
    from imagegraph.publish.registry_client import RegistryClient
    from imagegraph.sbom import SBOM_MEDIA_TYPE

    s = dnf_story
    repo = f"{s.registry.host}/igt/igt-chg-dnf"
    client = RegistryClient()
    digest = client.manifest_digest(f"{repo}:ig-{s.keys[1]}")
    found = referring(client, repo, digest)
    assert [m["artifactType"] for m in found] == [SBOM_MEDIA_TYPE]
    assert found[0]["annotations"]["io.imagegraph.key"] == s.keys[1]
    if client.referrers(repo, digest) is None:
        # Debian 12's distribution registry (2.8) has no referrers API: the OCI tag schema holds it
        assert fallback_tag(digest) in (client.tags(repo) or set())
    manifest = json.loads(client.manifest(f"{repo}@{found[0]['digest']}")[0])
    assert manifest["subject"]["digest"] == digest
    layer = manifest["layers"][0]
    blob = client.session.get(f"{s.registry.url}/v2/igt/igt-chg-dnf/blobs/{layer['digest']}").content
    assert json.loads(blob) == json.loads(ok(s.run("sbom", "dnf")).stdout)
    # the build of the first key has its own SBOM, on its own image
    first = client.manifest_digest(f"{repo}:ig-{s.keys[0]}")
    assert [m["annotations"]["io.imagegraph.key"] for m in referring(client, repo, first)] == [s.keys[0]]


# ----------------------------------------------------------------------------- Debian

DEB_SPEC = """
options:
  layer_type: base
  name: igt-chg-deb
  publish_tags: ['bookworm']
  pkg_manager: apt
  parent: localhost/ig-test/debian:bookworm
  gpgcheck: false
  rootfs_only: true
  publish_dir: '../out'
  publish_s3: '{endpoint}'
  s3_bucket: '{bucket}'
  s3_prefix: 'chgdeb/'
  s3_layout: versioned
  publish_registry: '{registry}/igt'
  registry_opts_push: ['--tls-verify=false']
repos:
  - alias: igdeb
    url: '{repo}'
    suite: igtest
    components: [main]
packages: {packages}
"""


@dataclass
class DebStory:
    root: Path
    state: Path
    tmp: Path
    bucket: str
    s3: object
    registry: object
    parent_id: str
    keys: list[str] = field(default_factory=list)
    up: list[dict] = field(default_factory=list)
    promote: list[subprocess.CompletedProcess] = field(default_factory=list)

    def run(self, *args: object) -> subprocess.CompletedProcess:
        return cli(args[0], self.root, *args[1:], "--state", self.state)

    @property
    def refs(self) -> list[str]:
        return [f"localhost/imagegraph/igt-chg-deb:ig-{k}" for k in self.keys]


@pytest.fixture(scope="module")
def deb_story(debian_image, s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebStory]:
    """A child of the session's one Debian minbase image (an external parent in local storage),
    built twice by `imagegraph up` from an apt repository made here, published to a real
    registry, moto's S3 and a directory, and promoted to `prod` after each build."""
    from tests.debrepo import make_deb_repo

    parent_result = debian_image[0]
    tmp = tmp_path_factory.mktemp("changes-deb")
    repo = make_deb_repo(tmp / "debrepo")
    repo.add("ig-deb-a", "1.0~rc1")
    server = serve(repo.path)
    (tmp / "registry").mkdir()
    registries = _registry_server(tmp / "registry")
    registry = next(registries)
    root = tmp / "layers"
    root.mkdir()
    bucket = s3_server.make_bucket("chgdeb")
    story = DebStory(
        root, tmp / "state" / "state.db", tmp, bucket, s3_server, registry, parent_result.image_id
    )
    try:
        for i, packages in enumerate((["ig-deb-a"], ["ig-deb-a", "ig-deb-new"])):
            if i == 1:  # 1.0 is newer than 1.0~rc1 in dpkg's order (not in a string order)
                repo.add("ig-deb-a", "1.0")
                repo.add("ig-deb-new", "1:0.5-1")
            (root / "deb.yaml").write_text(
                textwrap.dedent(DEB_SPEC).format(
                    endpoint=s3_server.endpoint,
                    bucket=bucket,
                    registry=registry.host,
                    repo=server.url,
                    packages=json.dumps(packages),
                )
            )
            r = story.run("up", "--json")
            assert r.returncode == 0, r.stderr[-4000:]
            story.up.append(json.loads(r.stdout))
            story.keys.append(current_key(story))
            story.promote.append(ok(story.run("promote", "deb", "prod")))
        yield story
    finally:
        cleanup_images("igt-chg-deb")
        server.stop()
        next(registries, None)


def inventory(story, key: str):
    from imagegraph.diff import inventory_of
    from imagegraph.state import State

    return inventory_of(State(story.state, readonly=True), key)


def test_deb_diff_uses_dpkgs_order(deb_story: DebStory) -> None:
    s = deb_story
    assert s.keys[0] != s.keys[1]
    assert [r["layers"][0]["action"] for r in s.up] == ["build", "build"]
    inv = inventory(s, s.keys[0])
    assert inv.format == "deb" and len(inv.packages) > 50  # minbase + ours
    text = ok(s.run("diff", "deb")).stdout
    changed = [ln.strip() for ln in text.splitlines() if ln.strip()[:1] in "+-↑↓"]
    assert changed == [
        "↑ upgraded   ig-deb-a 1.0~rc1 -> 1.0 (all)",
        "+ added      ig-deb-new 1:0.5-1 (all)",
    ]
    assert text.splitlines()[-1] == "1 added, 0 removed, 1 upgraded, 0 downgraded"
    doc = json.loads(ok(s.run("diff", "deb", s.keys[1][:8], s.keys[0][:8], "--json")).stdout)
    assert doc["format"] == "deb"
    assert doc["changes"] == [
        {"kind": "downgraded", "name": "ig-deb-a", "arch": "all", "old": "1.0", "new": "1.0~rc1"},
        {"kind": "removed", "name": "ig-deb-new", "arch": "all", "old": "1:0.5-1", "new": None},
    ]


def test_deb_promote_and_run_record_carry_the_change(deb_story: DebStory) -> None:
    s = deb_story
    first, second = (p.stdout for p in s.promote)
    assert "+ added      ig-deb-a 1.0~rc1 (all)" in first  # prod pointed at nothing before
    assert "↑ upgraded   ig-deb-a 1.0~rc1 -> 1.0 (all)" in second
    assert "+ added      ig-deb-new 1:0.5-1 (all)" in second
    assert "1 added, 0 removed, 1 upgraded, 0 downgraded" in second
    run = json.loads((s.state.parent / "last-run.json").read_text())
    assert run["package_changes"]["deb"]["brief"] == "ig-deb-a 1.0~rc1 → 1.0, +ig-deb-new 1:0.5-1"
    status = json.loads(ok(s.run("status", "--json")).stdout)
    assert status["changes"]["deb"]["brief"] == "ig-deb-a 1.0~rc1 → 1.0, +ig-deb-new 1:0.5-1"


def test_deb_sbom_validates_and_is_published(deb_story: DebStory) -> None:
    from imagegraph.publish.referrers import referring
    from imagegraph.publish.registry_client import RegistryClient

    s = deb_story
    text = ok(s.run("sbom", "deb")).stdout
    validate_cyclonedx(text)
    doc = json.loads(text)
    comps = components(doc)
    assert comps["ig-deb-a"]["purl"] == "pkg:deb/debian/ig-deb-a@1.0?arch=all&distro=debian-12"
    assert comps["ig-deb-new"]["version"] == "1:0.5-1"
    assert comps["dpkg"]["purl"].startswith("pkg:deb/debian/dpkg@1.21")
    image = props(doc["metadata"]["component"])
    # an external parent, in local storage only: no layer key, and no registry digest in the key
    assert "imagegraph:parent-key" not in image and "imagegraph:parent-digest" not in image
    assert image["imagegraph:key"] == s.keys[1]
    # beside the SquashFS in the directory and on S3, and on the registry image
    local = s.tmp / "out" / "igt-chg-deb"
    assert json.loads((local / "bookworm" / "sbom.cdx.json").read_text()) == doc
    assert json.loads((local / "prod" / "sbom.cdx.json").read_text()) == doc
    client = s.s3.client()
    for tag in ("bookworm", "prod"):
        obj = client.get_object(Bucket=s.bucket, Key=f"chgdeb/igt-chg-deb/{tag}/sbom.cdx.json")
        assert obj["Metadata"]["imagegraph-key"] == s.keys[1] and json.loads(obj["Body"].read()) == doc
    reg = RegistryClient()
    repo = f"{s.registry.host}/igt/igt-chg-deb"
    for key in s.keys:
        digest = reg.manifest_digest(f"{repo}:ig-{key}")
        assert [m["annotations"]["io.imagegraph.key"] for m in referring(reg, repo, digest)] == [key]


def test_deb_image_holds_its_key_and_inventory_runs_nothing_inside(deb_story: DebStory, tmp_path) -> None:
    from imagegraph.packages import read_inventory
    from imagegraph.runner import Runner
    from tests.test_packages import booby_trap

    doc = json.loads(image_file(deb_story.refs[1], "/etc/imagegraph/layer.json"))
    assert (doc["key"], doc["parent_key"], doc["parent_digest"], doc["spec"]) == (
        deb_story.keys[1],
        None,
        None,
        "deb.yaml",
    )
    assert doc["parent"] == "localhost/ig-test/debian:bookworm" and "tags" not in doc
    # the image's own dpkg, dpkg-query and sh replaced by traps: the inventory reads the same
    ctr = buildah("from", "--pull=never", deb_story.refs[1]).stdout.strip()
    try:
        mnt = Path(buildah("mount", ctr).stdout.strip())
        mark = tmp_path / "ran"
        booby_trap(mnt, mark, "dpkg", "dpkg-query", "sh", "dash")
        inv = read_inventory(mnt, Runner("t", logfile=io.StringIO()))
        assert not mark.exists()
        assert inv == inventory(deb_story, deb_story.keys[1])
    finally:
        buildah("rm", ctr, check=False)


def test_diff_files_compares_the_two_root_filesystems(dnf_story: Story) -> None:
    s = dnf_story
    doc = json.loads(ok(s.run("diff", "dnf", "--files", "--json")).stdout)
    files = {(f["kind"], f["path"]): f for f in doc["files"]}
    assert ("added", "/usr/share/ig-new") in files and ("added", "/usr/share/ig-new/new.txt") in files
    hello = files[("changed", "/usr/share/ig-hello/hello.txt")]  # "ig-hello 1.0" -> "ig-hello 1.1"
    assert (hello["what"], hello["old_size"], hello["new_size"]) == ("content", 13, 13)
    assert ("changed", "/etc/imagegraph/layer.json") in files
    # only dnf's metadata cache of the old repository state (scratch builds keep /var/cache/dnf)
    assert all(k[1].startswith("/var/cache/dnf/") for k in files if k[0] == "removed")
    text = ok(s.run("diff", "dnf", "--files")).stdout
    assert "~ /usr/share/ig-hello/hello.txt content (13 B -> 13 B)" in text
    assert [c for c in containers() if c.startswith("imagegraph-publish-")] == []


def test_a_key_without_an_inventory_gets_it_from_its_local_image(dnf_story: Story, tmp_path: Path) -> None:
    from imagegraph.diff import inventory_of
    from imagegraph.publish.sbomfiles import ensure_inventory
    from imagegraph.runner import Runner
    from imagegraph.spec import load_spec
    from imagegraph.state import State

    state = State(tmp_path / "fresh.db")  # as on a host whose state predates inventories
    spec = load_spec(dnf_story.root / "dnf.yaml")
    assert ensure_inventory(state, "dnf", spec, dnf_story.keys[0], Runner("dnf", logfile=io.StringIO()))
    inv = inventory_of(state, dnf_story.keys[0])
    assert {p.name: p.version for p in inv.packages}["ig-hello"] == "1.0-1"
    assert not ensure_inventory(state, "dnf", spec, "f" * 64, Runner("dnf", logfile=io.StringIO()))
    assert [c for c in containers() if c.startswith("imagegraph-publish-")] == []


# ----------------------------------------------------------------- a second host

# Last in the file: these add a tag (`canary`) to the dnf story, which the tests above do not look at.


def fresh_state(path: Path) -> Path:
    """The state of a host that never built the layer (it exists: `status` wants one)."""
    from imagegraph.state import State

    State(path).close()
    return path


def test_a_second_host_answers_from_the_published_sboms(dnf_story: Story, tmp_path: Path) -> None:
    from imagegraph.diff import inventory_of
    from imagegraph.publish.sbomfetch import RemoteBuilds
    from imagegraph.spec import load_spec
    from imagegraph.state import State

    s = dnf_story
    host2 = fresh_state(tmp_path / "host2" / "state.db")

    def run2(*args: object) -> subprocess.CompletedProcess:
        return cli(args[0], s.root, *args[1:], "--state", host2)

    # FROM by key prefix (the registry's key tags), TO by human tag (the registry's image label)
    doc = json.loads(ok(run2("diff", "dnf", s.keys[0][:10], "1", "--json")).stdout)
    assert (doc["from"], doc["to"]) == (s.keys[0], s.keys[1])
    assert doc["counts"] == {"added": 1, "removed": 0, "upgraded": 1, "downgraded": 0}
    assert [(c["kind"], c["name"]) for c in doc["changes"]] == [("upgraded", "ig-hello"), ("added", "ig-new")]
    # fetched once per key, kept in the state: asking again sends nothing anywhere
    state = State(host2)
    first = inventory_of(State(s.state, readonly=True), s.keys[1])
    assert inventory_of(state, s.keys[1]).packages == first.packages
    again = RemoteBuilds(state)
    assert again.inventory("dnf", load_spec(s.root / "dnf.yaml"), s.keys[0]).known
    assert again.client is None and again.s3 is None and again.fetched == {}
    # status counts the current build's packages; sbom prints the published document
    status = json.loads(ok(run2("status", "--json")).stdout)
    assert status["layers"]["dnf"]["packages"] == len(first.packages)
    assert status["layers"]["dnf"]["packages_unknown"] is None
    assert ok(run2("sbom", "dnf")).stdout == ok(s.run("sbom", "dnf")).stdout
    # someone moved `canary` to the old build on the registry only; this host's promote of the
    # current build says what that changes, from what the registry's canary held
    from imagegraph.publish.registry_client import RegistryClient

    reg, repo = RegistryClient(), f"{s.registry.host}/igt/igt-chg-dnf"
    reg.put_tag(repo, reg.manifest_digest(f"{repo}:ig-{s.keys[0]}"), "canary")
    assert json.loads(ok(run2("diff", "dnf", "canary", "1", "--json")).stdout)["from"] == s.keys[0]
    moved = ok(run2("promote", "dnf", "canary")).stdout
    assert f"canary -> key {s.keys[1][:12]}" in moved
    assert "↑ upgraded   ig-hello 1.0-1 -> 1.1-1 (noarch)" in moved
    assert "+ added      ig-new 2.0-1 (noarch)" in moved
    ev = State(host2, readonly=True).events("dnf", "promote")[0]
    assert (ev["key"], ev["detail"]["changes"]["from"]) == (s.keys[1], s.keys[0])
    assert reg.manifest_digest(f"{repo}:canary") == reg.manifest_digest(f"{repo}:ig-{s.keys[1]}")
    # a tag on a multi-arch index (publish/manifest.py) holds the key of this host's member
    import hashlib

    from imagegraph.arch import host_arch
    from imagegraph.publish.referrers import OCI_INDEX

    other = "arm64" if host_arch().oci != "arm64" else "amd64"
    members = []
    for key, arch in ((s.keys[0], other), (s.keys[1], host_arch().oci)):
        body, media_type = reg.manifest(f"{repo}:ig-{key}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        members.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": len(body),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": members}).encode()
    reg.put_manifest(repo, "multi", index, OCI_INDEX)
    spec = load_spec(s.root / "dnf.yaml")
    assert RemoteBuilds().tag_key(spec, "multi").value == s.keys[1]


def test_a_second_host_with_the_registry_unreachable_says_unknown(dnf_story: Story, tmp_path: Path) -> None:
    import socket

    s = dnf_story
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path / "layers"
    root.mkdir()
    text = (s.root / "dnf.yaml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith(("publish_dir", "publish_s3"))]
    body = "\n".join(lines).replace(s.registry.host, f"127.0.0.1:{port}")
    (root / "dnf.yaml").write_text(body + "\n")
    host2 = fresh_state(tmp_path / "host2" / "state.db")

    def run2(*args: object) -> subprocess.CompletedProcess:
        return cli(args[0], root, *args[1:], "--state", host2)

    assert json.loads(ok(run2("plan", "--json", "--offline")).stdout)["layers"][0]["key"] == s.keys[1]
    r = run2("diff", "dnf", s.keys[0], s.keys[1], "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "unknown" and doc["changes"] == []
    assert "unreachable" in doc["reason"] and doc["summary"].startswith("package changes unknown")
    text = run2("diff", "dnf", s.keys[0], s.keys[1]).stdout
    assert "0 added" not in text and "package changes unknown" in text
    # a tag cannot be resolved: unknown (exit 1), not "no such tag" (exit 2)
    bad = run2("diff", "dnf", "prod")
    assert bad.returncode == 1 and "cannot tell which build 'prod' names" in bad.stderr
    status = json.loads(run2("status", "--json").stdout)
    assert status["layers"]["dnf"]["packages"] is None
    assert "unreachable" in status["layers"]["dnf"]["packages_unknown"]
    from imagegraph.state import State

    assert State(host2, readonly=True).inventory_blob(s.keys[0]) is None  # nothing cached


def test_promote_moves_nothing_when_one_target_lacks_the_key(dnf_story: Story) -> None:
    """The directory holds no build of the key: neither the registry nor S3 gets `staging`."""
    from imagegraph.publish.registry_client import RegistryClient

    s = dnf_story
    out = s.root.parent / "out"
    aside = s.tmp / "out-aside"
    out.rename(aside)
    try:
        r = s.run("promote", "dnf", "staging")
    finally:
        aside.rename(out)
    assert r.returncode == 1 and "no directory under" in r.stderr, r.stderr
    assert RegistryClient().manifest_digest(f"{s.registry.host}/igt/igt-chg-dnf:staging") is None
    assert RegistryClient().manifest_digest(f"{s.registry.host}/igt/igt-chg-dnf:prod") is not None
    objects = s.s3.client().list_objects_v2(Bucket=s.bucket, Prefix="chg/igt-chg-dnf/staging/")
    assert objects.get("KeyCount", 0) == 0
    from imagegraph.state import State

    events = State(s.state, readonly=True).events("dnf", "promote")
    assert all(e["detail"]["tag"] != "staging" for e in events)
