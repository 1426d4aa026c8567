"""Image indexes on a real registry: one list per tag with every architecture's manifest."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from imagegraph.arch import Arch
from imagegraph.key import key_tag
from imagegraph.publish.manifest import INDEX_MEDIA_TYPES, index_tag, publish_index
from imagegraph.publish.registry_client import RegistryClient
from imagegraph.runner import Runner
from tests.fixtures_build import buildah, have_buildah

pytestmark = [pytest.mark.buildah, pytest.mark.skipif(not have_buildah(), reason="needs buildah as root")]

ACCEPT = ", ".join(INDEX_MEDIA_TYPES + ("application/vnd.oci.image.manifest.v1+json",))


def tiny_image(tmp_path, arch: Arch, text: str) -> str:
    """A one-file image that says it is `arch` (what matters to an index is the config's platform)."""
    ctr = buildah("from", "scratch").stdout.strip()
    try:
        f = tmp_path / f"{arch}.txt"
        f.write_text(text)
        buildah("copy", ctr, str(f), "/hello.txt")
        buildah("config", "--arch", arch.oci, "--os", "linux", ctr)
        return buildah("commit", "--quiet", ctr).stdout.strip()
    finally:
        buildah("rm", ctr, check=False)


def push(image: str, dest: str) -> str:
    out = subprocess.run(
        ["buildah", "push", "--tls-verify=false", "--digestfile", "/dev/stdout", image, f"docker://{dest}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[-1]


def test_index_lists_every_arch_and_tags_follow(registry, tmp_path) -> None:
    repo = f"{registry.host}/igt/multi"
    keys = {Arch.X86_64: "a" * 64, Arch.AARCH64: "b" * 64}
    members, digests, images = {}, {}, []
    for arch, key in keys.items():
        img = tiny_image(tmp_path, arch, f"hello {arch}\n")
        images.append(img)
        ref = f"{repo}:{key_tag(key)}"
        digests[arch] = push(img, ref)
        members[arch] = (key, ref)
    try:
        runner = Runner()
        pub = publish_index(repo, members, ["latest", "1.0"], runner, opts=["--tls-verify=false"])
        assert set(pub.tags) == {"latest", "1.0", index_tag(keys)}
        for tag in pub.tags:
            r = requests.get(
                f"http://{registry.host}/v2/igt/multi/manifests/{tag}", headers={"Accept": ACCEPT}
            )
            assert r.status_code == 200 and r.headers["Content-Type"] in INDEX_MEDIA_TYPES
            assert r.headers["Docker-Content-Digest"] == pub.digest
            doc = r.json()
            got = {m["platform"]["architecture"]: m["digest"] for m in doc["manifests"]}
            assert got == {"amd64": digests[Arch.X86_64], "arm64": digests[Arch.AARCH64]}
        assert pub.platforms == {"linux/amd64": digests[Arch.X86_64], "linux/arm64": digests[Arch.AARCH64]}
        # The same builds give the same index: republishing moves nothing.
        again = publish_index(repo, members, ["latest"], runner, opts=["--tls-verify=false"])
        assert again.digest == pub.digest
        # Nothing is left in local storage.
        assert (
            buildah(
                "manifest", "exists", f"localhost/imagegraph-index/multi:{index_tag(keys)}", check=False
            ).returncode
            != 0
        )
        # A client picking its platform from the tag gets that arch's image.
        assert RegistryClient().manifest_digest(f"{repo}:latest") == pub.digest
        arm = json.loads(
            subprocess.run(
                [
                    "skopeo",
                    "inspect",
                    "--tls-verify=false",
                    "--override-arch",
                    "arm64",
                    f"docker://{repo}:latest",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert arm["Architecture"] == "arm64"
    finally:
        for img in images:
            buildah("rmi", "-f", img, check=False)


def test_index_tag_is_a_function_of_the_member_keys() -> None:
    a = index_tag({Arch.X86_64: "1" * 64, Arch.AARCH64: "2" * 64})
    assert a == index_tag({Arch.AARCH64: "2" * 64, Arch.X86_64: "1" * 64})
    assert a != index_tag({Arch.X86_64: "1" * 64, Arch.AARCH64: "3" * 64})
    assert a != index_tag({Arch.X86_64: "1" * 64})
