"""Installing RPMs with zypper (SUSE): repos with priorities, gpg keys, patterns, packages.

The same placement rules as `dnf`: from scratch the host's zypper works on
the mount (`--root`) with a reposd-dir and cache private to the build; on an
image parent zypper runs inside the image when it ships zypper (repos are
added to the image), else the host's zypper with `--root` on the mount.
`package_groups` are zypper patterns (`install -t pattern`); `modules` are
a dnf feature and are skipped with a note. `remove_packages` is `rpm -e
--nodeps` (see `dnf.remove`).

Tested by a real scratch build with Debian's zypper against a local rpm-md
repository (tests/test_build_zypper.py) and by the argv it produces for the
image-parent paths (tests/test_build_argv.py).
"""

from __future__ import annotations

import re
from typing import Any

from ..spec import LayerSpec
from .dnf import RPM_DBPATH, host_env, import_gpg_keys
from .dnf import remove as remove  # rpm -e --nodeps, as image-builder does for zypper too
from .locked import install_locked
from .work import Work

NAME = "zypper"
VERSION = 1  # bump when a change below changes what an image contains
IMAGE_ZYPPER = ("/usr/bin/zypper", "/bin/zypper")


def key_inputs(spec: LayerSpec) -> dict[str, Any]:
    """What zypper builds assume where the spec is silent (see `build.backends`)."""
    return {
        "releasever": spec.releasever or "from-image",
        "rpm_dbpath": RPM_DBPATH,
        "gpg_keys": "auto-import" if spec.gpgcheck else "unchecked",
        "licenses": "auto-agree",
        "package_groups": "patterns",
    }


def uses_image_zypper(work: Work) -> bool:
    return not work.scratch and work.has(*IMAGE_ZYPPER)


def install(work: Work) -> None:
    spec = work.spec
    inside = uses_image_zypper(work)
    glob = ["zypper", "--non-interactive"]
    if not spec.gpgcheck:
        glob.append("--no-gpg-checks")
    else:
        glob.append("--gpg-auto-import-keys")
    if spec.releasever:
        glob += ["--releasever", spec.releasever]
    if not inside:
        glob += ["--root", str(work.mount)]
        if work.scratch:
            glob += ["--reposd-dir", str(work.tmp / "repos.d"), "--cache-dir", str(work.tmp / "zypp-cache")]

    env = host_env(work)
    if work.arch and not inside:
        # libzypp takes the architecture from zypp.conf's `arch`; ZYPP_CONF names a private one.
        conf = work.tmp / "zypp.conf"
        conf.write_text(f"[main]\narch = {work.arch}\n")
        env = {**env, "ZYPP_CONF": str(conf)}

    def zypper(args: list[str]) -> None:
        if inside:
            work.buildah_run([*glob, *args], env=work.proxy_env(), loglevel="WARNING")
        else:
            work.run([*glob, *args], env=env, loglevel="WARNING")

    with work.step(
        "repos", f"{len(spec.repos)} repositories ({'zypper in image' if inside else 'host zypper'})"
    ):
        import_gpg_keys(work, inside)
        for repo in spec.repos:
            args = ["addrepo"]
            if repo.priority is not None:
                args += ["--priority", str(repo.priority)]
            if not spec.verifies(repo):
                args.append("--no-gpgcheck")
            if repo.url.endswith(".repo"):
                args.append(repo.url)  # a .repo file names its own alias
            else:
                args += [repo.url, repo.alias]
            zypper(args)
        if spec.repos:
            zypper(["refresh"])
    if spec.modules:
        with work.step("modules"):
            work.runner.note("modules", "modules are a dnf feature; zypper has none: skipped")
    if spec.package_groups and work.locked is None:  # locked: the patterns' packages are in the set
        with work.step("package_groups", ", ".join(spec.package_groups)):
            zypper(["install", "--auto-agree-with-licenses", "-t", "pattern", *spec.package_groups])
    if work.locked is not None:
        # imagegraph.lock resolved the packages: exactly those versions.
        install_locked(
            work, lambda pkgs: zypper(["install", "--auto-agree-with-licenses", *pkgs]), missing_locked
        )
        return
    if work.packages:
        with work.step("packages", f"{len(work.packages)} packages"):
            zypper(["install", "--auto-agree-with-licenses", *work.packages])


def missing_locked(lines: list[str]) -> list[str]:
    """The capabilities zypper found no provider of (a locked version gone from the mirror)."""
    out = []
    for line in lines:
        m = re.search(r"No provider of '([^']+)' found", line)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out
