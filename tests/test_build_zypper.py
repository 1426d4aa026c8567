"""A real zypper build from scratch: the host's zypper (Debian's package) into the mount, from a local rpm-md repo."""

from __future__ import annotations

import shutil

import pytest

from imagegraph.build import BuildRequest, build_layer
from tests.fixtures_build import fake_key, have_buildah
from tests.needs import requires
from tests.test_build_dnf import mounted_rpm_q, no_leftovers, run_in

pytestmark = [
    pytest.mark.buildah,
    requires(have_buildah(), "needs buildah as root"),
]


def test_zypper_from_scratch(rpm_repo, write_spec, build_runner, images):
    assert shutil.which("zypper"), "zypper is installed by scripts/install-system-deps.sh"
    spec = write_spec(
        f"""
        options:
          layer_type: base
          name: ig-test/zypper
          publish_tags: ['15.6']
          pkg_manager: zypper
          parent: scratch
          gpgcheck: false
        repos:
          - alias: igtest
            url: '{rpm_repo.url}'
            priority: 90
        packages:
          - ig-busybox
          - ig-hello
          - ig-extra
        remove_packages:
          - ig-extra
        cmds:
          - 'cat /usr/share/ig-hello/hello.txt > /etc/from-cmd'
        """
    )
    result = build_layer(
        BuildRequest(spec=spec, key=fake_key("zypper"), parent=None, run_id="z1"), build_runner
    )
    images.add(result.image_ref)
    q = mounted_rpm_q(result.image_ref, "ig-busybox", "ig-hello", "ig-extra")
    assert "ig-hello-1.0-1.noarch" in q.stdout and "package ig-extra is not installed" in q.stdout
    assert run_in(result.image_ref, "cat", "/etc/from-cmd").strip() == "ig-hello 1.0"
    # the repository definition (with its priority) stayed private to the build
    assert "zypp" not in run_in(result.image_ref, "ls", "/etc").split()
    log = build_runner.logfile.getvalue()
    assert "--priority 90" in log
    no_leftovers(log)


def test_zypper_keyless_scratch_repo_installs_unverified_with_a_warning(
    rpm_repo, write_spec, build_runner, images
):
    """image-builder's rule: no `gpg` and no `gpgcheck` in the spec -> unverified, warned (the test
    repository is unsigned, so zypper would refuse it if it checked)."""
    spec = write_spec(
        f"""
        options:
          layer_type: base
          name: ig-test/zypper-keyless
          pkg_manager: zypper
          parent: scratch
        repos:
          - alias: igtest
            url: '{rpm_repo.url}'
        packages: [ig-busybox, ig-hello]
        """
    )
    assert [w.message for w in spec.warnings] == [
        "installs unsigned packages from igtest: add `gpg:` to verify them"
    ]
    result = build_layer(BuildRequest(spec=spec, key=fake_key("zk"), parent=None), build_runner)
    images.add(result.image_ref)
    assert "ig-hello-1.0-1.noarch" in mounted_rpm_q(result.image_ref, "ig-hello").stdout
    log = build_runner.logfile.getvalue()
    assert "addrepo --no-gpgcheck" in log and "--no-gpg-checks" not in log  # only that repository
    no_leftovers(log)


def test_zypper_signed_scratch_repo_is_verified(tmp_path, write_spec, build_runner, images):
    from tests.rpmrepo import serve
    from tests.standin import KEY_FILE, Signer, standin_repo

    signer = Signer()
    standin_repo(tmp_path / "signed", packages=["ig-hello"], signer=signer)
    server = serve(tmp_path / "signed")
    try:
        spec = write_spec(
            f"""
            options:
              layer_type: base
              name: ig-test/zypper-signed
              pkg_manager: zypper
              parent: scratch
            repos:
              - alias: signed
                url: '{server.url}'
                gpg: '{server.url}{KEY_FILE}'
            packages: [ig-busybox, ig-hello]
            """
        )
        assert spec.warnings == ()
        result = build_layer(BuildRequest(spec=spec, key=fake_key("zs"), parent=None), build_runner)
        images.add(result.image_ref)
    finally:
        server.stop()
        signer.cleanup()
    assert "ig-hello-1.0-1.noarch" in mounted_rpm_q(result.image_ref, "ig-hello").stdout
    log = build_runner.logfile.getvalue()
    assert "--no-gpgcheck" not in log and "--no-gpg-checks" not in log
    no_leftovers(log)
