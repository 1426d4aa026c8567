"""A real Debian layer from scratch with mmdebstrap (one bootstrap per session, ~15 s)."""

from __future__ import annotations

import pytest

from imagegraph.build import BuildRequest, ParentImage, build_layer, local_image_id
from imagegraph.build.container import inspect_labels
from tests.fixtures_build import buildah, containers, fake_key, have_buildah
from tests.needs import requires

pytestmark = [
    pytest.mark.buildah,
    pytest.mark.slow,
    requires(have_buildah(), "needs buildah as root"),
]


def run_in(ref: str, *argv: str) -> str:
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        return buildah("run", ctr, "--", *argv).stdout
    finally:
        buildah("rm", ctr, check=False)


def test_apt_from_scratch(debian_image, build_runner):
    result, spec, key, log = debian_image
    assert run_in(result.image_ref, "cat", "/etc/ig-cmd").strip() == "debian-cmd-ran"
    assert run_in(result.image_ref, "cat", "/etc/motd").strip() == "imagegraph test image"
    status = run_in(result.image_ref, "dpkg-query", "-W", "-f", "${Package} ${Status}\\n")
    assert "apt install ok installed" in status
    assert "hello install ok installed" not in status  # installed, then purged by remove_packages
    sources = run_in(result.image_ref, "cat", "/etc/apt/sources.list")
    assert "deb http://deb.debian.org/debian bookworm main" in sources
    assert local_image_id("localhost/ig-test/debian:bookworm") == result.image_id
    labels = inspect_labels(result.image_ref, build_runner)
    assert labels["org.openchami.image.package-manager"] == "apt"
    assert labels["io.imagegraph.key"] == key
    assert "mmdebstrap" in log and "to-stderr" in log
    assert [c for c in containers() if c.startswith("imagegraph-ig-test-")] == []


def test_apt_on_image_parent(debian_image, write_spec, build_runner, images):
    parent_result, _, parent_key, _ = debian_image
    spec = write_spec(
        """
        options:
          layer_type: base
          name: ig-test/debian-child
          pkg_manager: apt
          parent: localhost/ig-test/debian:bookworm
        packages:
          - hello
        cmds:
          - 'hello -g child-greets > /etc/greeting'
        """
    )
    parent = ParentImage(
        image=parent_result.image_id, ref="localhost/ig-test/debian:bookworm", key=parent_key
    )
    result = build_layer(BuildRequest(spec=spec, key=fake_key("debchild"), parent=parent), build_runner)
    images.add(result.image_ref)
    assert run_in(result.image_ref, "cat", "/etc/greeting").strip() == "child-greets"
    # package lists are not kept in the image
    assert (
        run_in(result.image_ref, "sh", "-c", "ls /var/lib/apt/lists | grep -c Packages || true").strip()
        == "0"
    )
