"""An ansible layer on a built image, through the buildah connection plugin."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from imagegraph.build import BuildRequest, ParentImage, build_layer
from imagegraph.build.container import inspect_labels
from tests.fixtures_build import buildah, containers, fake_key, have_buildah
from tests.needs import requires


def have_buildah_connection() -> bool:
    if not shutil.which("ansible-doc"):
        return False
    out = subprocess.run(
        ["ansible-doc", "-t", "connection", "-l"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    ).stdout
    return "buildah" in out


pytestmark = [
    pytest.mark.buildah,
    requires(have_buildah(), "needs buildah as root"),
    requires(have_buildah_connection(), "needs the containers.podman collection"),
]


def run_in(ref: str, *argv: str) -> str:
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        return buildah("run", ctr, "--", *argv).stdout
    finally:
        buildah("rm", ctr, check=False)


def test_ansible_layer(busybox_image, write_spec, build_runner, images, tmp_path):
    parent_result, _, parent_key = busybox_image
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "site.yml").write_text(
        """
- hosts: compute
  gather_facts: false
  tasks:
    # raw needs no python in the image (this one is busybox only)
    - raw: sh -c 'echo {{ greeting }} > /etc/ig-ansible'
    - raw: sh -c 'echo {{ group_names | join(",") }} > /etc/ig-groups'
"""
    )
    spec = write_spec(
        """
        options:
          layer_type: ansible
          name: ig-test/ansible
          parent: localhost/ig-busybox-base:1.0
          groups: [compute, gpu]
          playbooks: playbooks/site.yml
          vars:
            greeting: hello-from-ansible
        """
    )
    parent = ParentImage(image=parent_result.image_id, ref="localhost/ig-busybox-base:1.0", key=parent_key)
    result = build_layer(BuildRequest(spec=spec, key=fake_key("ansible"), parent=parent), build_runner)
    images.add(result.image_ref)
    assert run_in(result.image_ref, "cat", "/etc/ig-ansible").strip() == "hello-from-ansible"
    assert run_in(result.image_ref, "cat", "/etc/ig-groups").strip() == "compute,gpu"
    assert "ansible" in [s for s, _ in result.steps]
    assert inspect_labels(result.image_ref, build_runner)["org.openchami.image.type"] == "ansible"
    # the package is still there from the parent; ansible left no temp dir in the image
    assert "ig-hello" in run_in(result.image_ref, "ls", "/usr/share")
    assert ".imagegraph-ansible" not in run_in(result.image_ref, "ls", "-a", "/tmp")
    assert [c for c in containers() if c.startswith("imagegraph-ig-test-")] == []
