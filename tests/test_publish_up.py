"""`imagegraph up` publishing through the real CLI: a real registry, S3 over HTTP (moto), a local directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imagegraph.key import KEY_TAG_PREFIX
from imagegraph.publish.registry_client import RegistryClient
from tests.fixtures_build import buildah, containers, have_buildah
from tests.needs import requires

pytestmark = [pytest.mark.buildah, requires(have_buildah(), "needs buildah as root")]

KERNELS = (
    "mkdir -p /lib/modules/6.1.0-9 /lib/modules/6.1.0-10 /boot"
    " && echo k9 > /boot/vmlinuz-6.1.0-9 && echo i9 > /boot/initramfs-6.1.0-9.img"
    " && echo k10 > /boot/vmlinuz-6.1.0-10 && echo i10 > /boot/initramfs-6.1.0-10.img"
    " && printf 'ID=igtest\\nVERSION_ID=1\\n' > /etc/os-release"
)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {
        **os.environ,
        "BUILDAH_ISOLATION": "chroot",
        "IMAGEGRAPH_RETRY_ATTEMPTS": "3",
        "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.2",
    }
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", *args], capture_output=True, text=True, env=e, timeout=600
    )


def up(root: Path, state: Path, *args: str, env: dict | None = None) -> tuple[int, dict, str]:
    r = cli("up", str(root), "--state", str(state), "--json", *args, env=env)
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return r.returncode, doc, r.stderr


def by_name(doc: dict) -> dict[str, dict]:
    return {x["name"]: x for x in doc["layers"]}


def built(doc: dict) -> set[str]:
    return {x["name"] for x in doc["layers"] if x["action"] == "build" and x["status"] == "ok"}


def cleanup_images(prefix: str) -> None:
    for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
        if prefix in ref:
            buildah("rmi", "-f", ref, check=False)


@pytest.fixture
def reg_site(tmp_path: Path, rpm_repo, registry):
    host = registry.host
    root = tmp_path / "layers"
    root.mkdir()
    common = (
        "  pkg_manager: dnf\n  gpgcheck: false\n  releasever: '9'\n"
        f"  publish_registry: '{host}/igt'\n"
        "  registry_opts_push: ['--tls-verify=false']\n  registry_opts_pull: ['--tls-verify=false']\n"
    )
    (root / "root.yaml").write_text(
        "options:\n  layer_type: base\n  name: igt-pub-root\n  publish_tags: ['1']\n  parent: scratch\n"
        + common
        + f"repos:\n  - alias: igtest\n    url: '{rpm_repo.url}'\npackage_groups: ['IG Minimal']\n"
        + "cmds:\n  - 'echo root > /etc/role'\n"
    )
    (root / "child.yaml").write_text(
        "options:\n  layer_type: base\n  name: igt-pub-child\n  publish_tags: ['1', 'latest']\n"
        f"  parent: '{host}/igt/igt-pub-root:1'\n" + common + "cmds:\n  - 'echo child > /etc/role'\n"
    )
    yield root, registry, tmp_path
    cleanup_images("igt-pub-")


def tags(registry, repo: str) -> set[str]:
    """Human and key tags (not the SBOM referrers indexes of the OCI tag schema, `sha256-<digest>`)."""
    found = RegistryClient().tags(f"{registry.host}/igt/{repo}") or set()
    return {t for t in found if not t.startswith("sha256-")}


def test_registry_is_shared_memory(reg_site) -> None:
    root, registry, tmp = reg_site
    rc, doc, err = up(root, tmp / "a" / "state.db")
    assert rc == 0, err
    assert built(doc) == {"root", "child"}
    root_key = next(
        x
        for x in json.loads(cli("plan", str(root), "--state", str(tmp / "a/state.db"), "--json").stdout)[
            "layers"
        ]
        if x["name"] == "root"
    )["key"]
    assert tags(registry, "igt-pub-root") == {"1", KEY_TAG_PREFIX + root_key}
    assert tags(registry, "igt-pub-child") >= {"1", "latest"}

    # A second machine: its own, empty state, no local images; same registry. Nothing to build or push.
    cleanup_images("igt-pub-")
    plan = json.loads(cli("plan", str(root), "--state", str(tmp / "b/state.db"), "--json").stdout)
    assert {x["action"] for x in plan["layers"]} == {"up-to-date"}
    assert any(n["code"] == "built-elsewhere" for n in plan["layers"][0]["notes"])
    rc, doc, err = up(root, tmp / "b" / "state.db")
    assert rc == 0 and built(doc) == set() and all(x["published"] == [] for x in doc["layers"]), err

    # Without local images, a child that must build pulls its parent's exact key tag.
    child = root / "child.yaml"
    child.write_text(child.read_text().replace("echo child", "echo child2"))
    rc, doc, err = up(root, tmp / "b" / "state.db")
    assert rc == 0 and built(doc) == {"child"}, err
    log = Path(by_name(doc)["child"]["log_file"]).read_text()
    assert f"igt-pub-root:{KEY_TAG_PREFIX}{root_key}" in log

    # Adding a tag publishes without building.
    r = root / "root.yaml"
    r.write_text(r.read_text().replace("publish_tags: ['1']", "publish_tags: ['1', '2']"))
    rc, doc, err = up(root, tmp / "b" / "state.db")
    assert rc == 0 and built(doc) == set(), err
    assert by_name(doc)["root"]["action"] == "publish" and "2" in tags(registry, "igt-pub-root")


def test_a_key_tag_overwritten_outside_imagegraph_is_refused_not_built_on(reg_site) -> None:
    """The parent's `ig-<key>` tag made to hold another image (a hand `skopeo copy`): a machine
    without the images pulls it for the child's build and for re-pointing the parent's tag, finds
    another key in its labels, and builds and publishes nothing on it."""
    root, registry, tmp = reg_site
    rc, doc, err = up(root, tmp / "a" / "state.db")
    assert rc == 0 and built(doc) == {"root", "child"}, err
    plan = json.loads(cli("plan", str(root), "--state", str(tmp / "a/state.db"), "--json").stdout)
    root_key = next(x["key"] for x in plan["layers"] if x["name"] == "root")
    repo = f"{registry.host}/igt"
    client = RegistryClient()
    before = {n: client.manifest_digest(f"{repo}/igt-pub-{n}:1") for n in ("root", "child")}
    assert all(before.values()), before
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{repo}/igt-pub-child:1",
            f"docker://{repo}/igt-pub-root:{KEY_TAG_PREFIX}{root_key}",
        ],
        check=True,
        capture_output=True,
    )
    cleanup_images("igt-pub-")
    child = root / "child.yaml"
    child.write_text(child.read_text().replace("echo child", "echo child3"))
    rc, doc, err = up(root, tmp / "b" / "state.db")
    assert rc == 1, err
    res = by_name(doc)
    assert built(doc) == set() and res["child"]["status"] in ("failed", "blocked"), res
    said = " ".join(str(res[n].get("error") or "") for n in ("root", "child"))
    assert f"igt-pub-root:{KEY_TAG_PREFIX}{root_key}" in said and "the key tag was overwritten" in said, said
    after = {n: RegistryClient().manifest_digest(f"{repo}/igt-pub-{n}:1") for n in ("root", "child")}
    assert after == before  # no human tag moved onto the wrong image


def test_registry_down_then_back(reg_site) -> None:
    root, registry, tmp = reg_site
    state = tmp / "s" / "state.db"
    registry.stop()
    # The registry could hold the key (built elsewhere): unknown, not absent. Nothing is built.
    rc, doc, err = up(root, state, "root")
    assert rc == 1 and by_name(doc)["root"]["status"] == "unknown", err[-3000:]
    assert "unreachable" in by_name(doc)["root"]["error"]
    assert not state.exists() or built(doc) == set()
    # --offline says "build from what you know": it builds, and the push fails after its retries.
    rc, doc, err = up(root, state, "root", "--offline")
    assert rc == 1, err[-3000:]
    res = by_name(doc)["root"]
    assert res["status"] == "failed" and "attempts" in res["error"]
    # Built and recorded, but nothing recorded as published.
    plan = json.loads(cli("plan", str(root), "root", "--state", str(state), "--offline", "--json").stdout)
    assert plan["layers"][0]["action"] == "publish"
    registry.start()
    rc, doc, err = up(root, state)
    assert rc == 0, err
    assert by_name(doc)["root"]["action"] == "publish" and built(doc) == {"child"}
    assert "1" in tags(registry, "igt-pub-root")


@pytest.fixture
def s3_site(tmp_path: Path, rpm_repo, s3_env):
    bucket = s3_env.make_bucket()
    root = tmp_path / "layers"
    root.mkdir()
    (root / "boot.yaml").write_text(
        textwrap.dedent(
            f"""
            options:
              layer_type: base
              name: igt-pub-boot
              publish_tags: ['1', 'latest']
              pkg_manager: dnf
              parent: scratch
              gpgcheck: false
              releasever: '9'
              publish_s3: '{s3_env.endpoint}'
              s3_bucket: '{bucket}'
              s3_prefix: 'compute/'
              publish_dir: '../out'
              boot_params: 'console=ttyS0,115200'
            repos:
              - alias: igtest
                url: '{rpm_repo.url}'
            package_groups: ['IG Minimal']
            cmds:
              - {json.dumps(KERNELS)}
            """
        )
    )
    env = {"S3_ACCESS": os.environ["S3_ACCESS"], "S3_SECRET": os.environ["S3_SECRET"]}
    yield root, s3_env, bucket, tmp_path, env
    cleanup_images("igt-pub-")


def test_s3_and_directory_publishing(s3_site) -> None:
    root, s3, bucket, tmp, env = s3_site
    state = tmp / "state" / "state.db"
    rc, doc, err = up(root, state, env=env)
    assert rc == 0, err
    client = s3.client()
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    # image-builder's layout, highest kernel chosen, kernel and initramfs once for both tags
    assert keys == {
        "compute/igtest1-igt-pub-boot-1",
        "compute/igtest1-igt-pub-boot-latest",
        "efi-images/compute/vmlinuz-6.1.0-10",
        "efi-images/compute/initramfs-6.1.0-10.img",
        # each tag's SBOM beside its SquashFS (publish/sbomfiles.py)
        "compute/igtest1-igt-pub-boot-1.cdx.json",
        "compute/igtest1-igt-pub-boot-latest.cdx.json",
    }
    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json", env=env).stdout)
    key = plan["layers"][0]["key"]
    head = client.head_object(Bucket=bucket, Key="compute/igtest1-igt-pub-boot-1")
    assert head["Metadata"]["imagegraph-key"] == key
    out = tmp / "out" / "igt-pub-boot" / "1"
    assert (out / "rootfs.squashfs").read_bytes()[:4] == b"hsqs"
    assert (out / "vmlinuz").read_text() == "k10\n"
    listing = subprocess.run(
        ["unsquashfs", "-l", str(out / "rootfs.squashfs")], capture_output=True, text=True
    ).stdout
    assert "squashfs-root/etc/role" not in listing and "squashfs-root/boot/vmlinuz-6.1.0-10" in listing

    art = cli("artifacts", str(root), "boot", "--state", str(state), "--json", env=env)
    assert art.returncode == 0, art.stderr
    adoc = json.loads(art.stdout)
    assert adoc["s3"]["kver"] == "6.1.0-10"
    entry = adoc["boot_config"][0]
    assert entry["kernel"] == f"{s3.endpoint}/{bucket}/efi-images/compute/vmlinuz-6.1.0-10"
    assert f"root=live:{s3.endpoint}/{bucket}/compute/igtest1-igt-pub-boot-" in entry["params"]
    assert "console=ttyS0,115200" in entry["params"]
    yaml_out = cli("artifacts", str(root), "boot", "--state", str(state), env=env)
    assert "kernel:" in yaml_out.stdout and "initrd:" in yaml_out.stdout

    # Nothing to do now; an object deleted from S3 is published again, without a build.
    rc, doc, err = up(root, state, env=env)
    assert rc == 0 and {x["action"] for x in doc["layers"]} == {"up-to-date"}, err
    client.delete_object(Bucket=bucket, Key="compute/igtest1-igt-pub-boot-latest")
    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json", env=env).stdout)
    assert plan["layers"][0]["action"] == "publish" and plan["layers"][0]["publish"] == ["s3"]
    rc, doc, err = up(root, state, env=env)
    assert rc == 0 and by_name(doc)["boot"]["action"] == "publish", err
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert "compute/igtest1-igt-pub-boot-latest" in keys
    assert [c for c in containers() if c.startswith("imagegraph-igt-pub-")] == []
    # Secrets never reach logs or records.
    secret = env["S3_SECRET"]
    for p in (state.parent).rglob("*"):
        if p.is_file() and p.suffix in (".log", ".json"):
            assert secret not in p.read_text(errors="replace"), p


@pytest.fixture
def other_registry(tmp_path_factory: pytest.TempPathFactory):
    from tests.fixtures_servers import _registry_server

    yield from _registry_server(tmp_path_factory.mktemp("registry2"))


def test_registry_stopped_mid_run_fails_only_that_push(
    tmp_path: Path, rpm_repo, registry, other_registry
) -> None:
    """root -> registry A (stopped while root builds); child -> registry B. The child builds and pushes anyway,
    with every blob of its image, root's included (registry B never saw root)."""
    root = tmp_path / "layers"
    root.mkdir()
    opts = "  registry_opts_push: ['--tls-verify=false']\n  registry_opts_pull: ['--tls-verify=false']\n"
    common = "  pkg_manager: dnf\n  gpgcheck: false\n  releasever: '9'\n" + opts
    (root / "root.yaml").write_text(
        "options:\n  layer_type: base\n  name: igt-mid-root\n  publish_tags: ['1']\n  parent: scratch\n"
        + common
        + f"  publish_registry: '{registry.host}/igt'\n"
        + f"repos:\n  - alias: igtest\n    url: '{rpm_repo.url}'\npackage_groups: ['IG Minimal']\n"
        + "cmds:\n  - 'echo root > /etc/role; sleep 4'\n"
    )
    (root / "child.yaml").write_text(
        "options:\n  layer_type: base\n  name: igt-mid-child\n  publish_tags: ['1']\n"
        f"  parent: '{registry.host}/igt/igt-mid-root:1'\n"
        + common
        + f"  publish_registry: '{other_registry.host}/igt'\n"
        + "cmds:\n  - 'echo child > /etc/role'\n"
    )
    state = tmp_path / "s" / "state.db"
    env = {
        **os.environ,
        "BUILDAH_ISOLATION": "chroot",
        "IMAGEGRAPH_RETRY_ATTEMPTS": "2",
        "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        log = state.parent / "logs" / "root.log"
        deadline = time.time() + 300
        while not (log.exists() and "sleep 4" in log.read_text(errors="replace")):
            assert time.time() < deadline and proc.poll() is None, "root's build never started"
            time.sleep(0.2)
        registry.stop()  # planned with it up; gone before root's push
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        cleanup_images("igt-mid-")
    assert proc.returncode == 1, err[-3000:]
    doc = json.loads(out)
    t = {x["id"]: x for layer in doc["layers"] for x in layer["tasks"]}
    assert t["root:build"]["status"] == "ok" and t["root:push"]["status"] == "failed"
    assert t["child:build"]["status"] == "ok" and t["child:push"]["status"] == "ok"
    assert {x["name"]: x["status"] for x in doc["layers"]} == {"root": "failed", "child": "ok"}
    # The child's image is whole in registry B: skopeo copies every blob out of it.
    copy = subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            f"docker://{other_registry.host}/igt/igt-mid-child:1",
            f"dir:{tmp_path / 'copy'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert copy.returncode == 0, copy.stderr
    manifest = json.loads((tmp_path / "copy" / "manifest.json").read_text())
    assert len(manifest["layers"]) >= 2  # root's layer and the child's own
