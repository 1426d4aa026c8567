"""End to end with a real image: buildah commit -> mounted_image -> publish_artifacts (dir and S3)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from imagegraph.errors import PublishError
from imagegraph.publish.artifacts import boot_config, mounted_image, publish_artifacts, s3_artifacts_present
from imagegraph.publish.s3 import S3Index
from imagegraph.runner import Runner

from .fixtures_servers import S3Server
from .needs import requires
from .publish_helpers import EL, make_rootfs
from .test_publish_s3 import FAST, spec_for

pytestmark = [
    pytest.mark.buildah,
    requires(shutil.which("buildah") is not None, "buildah not installed"),
    requires(os.geteuid() == 0, "buildah mount needs root"),
]

KVER = "5.14.0-427.el9.x86_64"


def buildah(*args: str) -> str:
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
    return subprocess.run(
        ["buildah", *args], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def our_containers() -> list[str]:
    names = buildah("containers", "--format", "{{.ContainerName}}").splitlines()
    return [n for n in names if n.startswith("imagegraph-publish-")]


@pytest.fixture
def image(tmp_path: Path):
    tree = make_rootfs(tmp_path / "tree", {KVER: EL, "5.14.0-70.el9.x86_64": EL})
    ctr = buildah("from", "scratch")
    try:
        buildah("copy", ctr, f"{tree}/", "/")
        ref = f"localhost/imagegraph-test-artifacts:{secrets.token_hex(4)}"
        image_id = buildah("commit", "--quiet", ctr, ref)
    finally:
        buildah("rm", ctr)
    try:
        yield image_id
    finally:
        buildah("rmi", "-f", image_id)


def test_real_image_to_dir_and_s3(image: str, s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    spec = spec_for(s3_env.endpoint, bucket, publish_dir=tmp_path / "pub", publish_tags=("v1", "latest"))
    key = "c" * 64
    before = our_containers()
    runner = Runner("compute")
    with mounted_image(image, runner) as root:
        assert (root / "etc/os-release").is_file()
        pub = publish_artifacts(spec, key, root, runner, tmp_path / "work", s3_settings=FAST)
    assert our_containers() == before  # unmounted and removed

    assert pub.kver == KVER and pub.os == "rocky9.6"
    # The image gives the same SquashFS as the tree it was made from: content decides, not mtimes.
    # (A scratch image's / is 0555, as on EL; that is content, so the tree gets it too.)
    os.chmod(tmp_path / "tree", 0o555)
    tree_pub = publish_artifacts(
        spec_for(None, "", publish_s3=None, publish_dir=tmp_path / "tree-pub"),
        key,
        tmp_path / "tree",
        runner,
        tmp_path / "work",
    )
    assert tree_pub.squashfs_sha256 == pub.squashfs_sha256
    sq = tmp_path / "pub/compute/v1/rootfs.squashfs"
    listing = subprocess.run(
        ["unsquashfs", "-l", "-d", "", str(sq)], capture_output=True, text=True, check=True
    )
    names = set(listing.stdout.split())
    assert {
        "/etc/os-release",
        f"/usr/lib/modules/{KVER}/modules.dep",
        "/proc",
        "/dev",
        "/usr/bin/hi",
    } <= names
    assert not [n for n in names if n.startswith(("/proc/", "/dev/"))]
    manifest = json.loads((tmp_path / "pub/compute/latest/manifest.json").read_text())
    assert manifest["key"] == key and manifest["files"]["vmlinuz"]["size"] > 0

    s3_keys = {o.key for o in pub.objects if o.target == "s3"}
    assert s3_keys == {
        "compute/base/rocky9.6-compute-v1",
        "compute/base/rocky9.6-compute-latest",
        f"efi-images/compute/base/vmlinuz-{KVER}",
        f"efi-images/compute/base/initramfs-{KVER}.img",
    }
    body = s3_env.client().get_object(Bucket=bucket, Key="compute/base/rocky9.6-compute-v1")["Body"].read()
    assert body == sq.read_bytes()
    assert s3_artifacts_present(S3Index(settings=FAST), spec, key) is True
    cfg = boot_config(spec, pub, "http://10.0.0.1:9000")
    assert cfg[0]["params"].startswith(
        f"root=live:http://10.0.0.1:9000/{bucket}/compute/base/rocky9.6-compute-v1 "
    )


def test_mounted_image_cleans_up_on_error(image: str) -> None:
    before = our_containers()
    with pytest.raises(PublishError), mounted_image(image, Runner("compute")) as root:
        raise PublishError("compute", "test", f"failed while {root} was mounted")
    assert our_containers() == before
    with (
        pytest.raises(Exception, match="command exited"),
        mounted_image("localhost/imagegraph-no-such:x", Runner("c")),
    ):
        pass
    assert our_containers() == before
