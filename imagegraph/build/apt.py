"""Debian/Ubuntu layers (`pkg_manager: apt`, imagegraph's addition to the format).

* **From scratch**: `mmdebstrap --variant=minbase --include=PACKAGES SUITE
  MOUNT SOURCE...` straight into the (empty) mount of the scratch container.
  The suite is the first repo's `suite`, else `releasever`, else bookworm;
  each repo becomes a sources.list line `deb URL SUITE COMPONENTS` (default
  component main); with no repos, deb.debian.org is used. A repo's `gpg` key
  is copied into the image's /etc/apt/trusted.gpg.d before `apt update`
  (mmdebstrap's documented way), so children can use the repo too.
* **On an image parent**: the repos go to /etc/apt/sources.list.d and
  trusted.gpg.d of the image, then `apt-get update` and `apt-get install`
  run inside with `buildah run`.

With a locked package set (imagegraph.lock, `work.locked`) both install
`name=version` for every locked package; a version apt cannot find fails
the build naming it. Recommends are not installed, in both cases (mmdebstrap's default, and the
right default for boot images). `gpgcheck: false` marks the layer's repos
`[trusted=yes]`. Package lists are removed after installing, as mmdebstrap
does, to keep images small. `remove_packages` is `dpkg --purge
--force-depends`, the Debian counterpart of image-builder's `rpm -e --nodeps`.
`modules` and `package_groups` have no apt meaning and are skipped with a note.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from ..runner import CommandError
from ..spec import LayerSpec, Repo
from .locked import gone_error
from .work import Work

NAME = "apt"
VERSION = 1  # bump when a change below changes what an image contains
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def key_inputs(spec: LayerSpec) -> dict[str, Any]:
    """What apt builds assume where the spec is silent (see `build.backends`)."""
    scratch = spec.parent == "scratch"  # mmdebstrap; on a parent, apt-get in the image
    return {
        "suite": suite_of(spec),
        "mirror": DEFAULT_MIRROR if scratch and not spec.repos else None,
        "components": ["main"],  # of a repo that names none
        "variant": (spec.variant or "minbase") if scratch else None,
        "recommends": False,
        "package_lists": "removed",
    }


def suite_of(spec: LayerSpec) -> str:
    for repo in spec.repos:
        if repo.suite:
            return repo.suite
    return spec.releasever or DEFAULT_SUITE


def source_line(repo: Repo, suite: str, gpgcheck: bool) -> str:
    opts = "" if gpgcheck else "[trusted=yes] "
    components = " ".join(repo.components or ("main",))
    return f"deb {opts}{repo.url} {repo.suite or suite} {components}"


def _key_name(repo: Repo) -> str:
    ext = ".gpg" if (repo.gpg or "").endswith(".gpg") else ".asc"
    return f"imagegraph-{repo.alias}{ext}"


def _apt_opts(work: Work) -> list[str]:
    return ["-o", f"Acquire::http::Proxy={work.spec.proxy}"] if work.spec.proxy else []


def _skip_unsupported(work: Work) -> None:
    for what in ("modules", "package_groups"):
        if getattr(work.spec, what):
            with work.step(what):
                work.runner.note(what, f"{what} have no meaning for apt: skipped")


def install(work: Work) -> None:
    if work.scratch:
        bootstrap(work)
    else:
        install_inside(work)


def bootstrap(work: Work) -> None:
    spec = work.spec
    suite = suite_of(spec)
    repos = spec.repos or (Repo(alias="debian", url=DEFAULT_MIRROR),)
    argv = [
        "mmdebstrap",
        f"--mode={'root' if os.geteuid() == 0 else 'unshare'}",
        f"--variant={spec.variant or 'minbase'}",
    ]
    if work.arch:  # a foreign arch's maintainer scripts run through binfmt_misc (arch.py)
        argv.append(f"--arch={work.arch.debian}")
    if spec.proxy:
        argv.append(f'--aptopt=Acquire::http {{ Proxy "{spec.proxy}"; }}')
    with work.step("repos", f"{len(repos)} repositories, suite {suite}"):
        for repo in repos:
            if repo.gpg:
                key = work.download(repo.gpg, work.tmp / "keys" / _key_name(repo))
                argv.append('--setup-hook=mkdir -p "$1/etc/apt/trusted.gpg.d"')
                argv.append(f"--setup-hook=copy-in {key} /etc/apt/trusted.gpg.d/")
    _skip_unsupported(work)
    # imagegraph.lock resolved minbase and the packages: every one at its locked version.
    wanted = list(work.packages) if work.locked is None else list(work.locked)
    if wanted:
        argv.append("--include=" + ",".join(wanted))
    argv += [suite, str(work.mount), *(source_line(r, suite, spec.gpgcheck) for r in repos)]
    label = (
        f"{len(work.locked)} locked packages" if work.locked is not None else f"{len(work.packages)} packages"
    )
    with work.step(
        "packages",
        f"mmdebstrap {suite} {spec.variant or 'minbase'}{f' {work.arch.debian}' if work.arch else ''}"
        f" + {label}",
    ):
        try:
            work.run(argv, env=work.proxy_env(), loglevel="INFO")
        except CommandError as exc:
            gone = missing_locked(exc.tail) if work.locked is not None else []
            if not gone:
                raise
            raise gone_error(spec.name, gone) from exc


def install_inside(work: Work) -> None:
    spec = work.spec
    suite = suite_of(spec)
    with work.step("repos", f"{len(spec.repos)} repositories"):
        for repo in spec.repos:
            if repo.gpg:
                work.download(repo.gpg, work.image_path("/etc/apt/trusted.gpg.d") / _key_name(repo))
            lists = work.image_path("/etc/apt/sources.list.d")
            lists.mkdir(parents=True, exist_ok=True)
            (lists / f"imagegraph-{repo.alias}.list").write_text(
                source_line(repo, suite, spec.gpgcheck) + "\n"
            )
    _skip_unsupported(work)
    # imagegraph.lock resolved the packages: install exactly those versions (`name=version`).
    wanted = list(work.packages) if work.locked is None else list(work.locked)
    if wanted:
        label = f"{len(wanted)} {'locked ' if work.locked is not None else ''}packages"
        with work.step("packages", label):
            work.buildah_run(["apt-get", *_apt_opts(work), "update"], env=APT_ENV, loglevel="WARNING")
            try:
                work.buildah_run(
                    ["apt-get", *_apt_opts(work), "install", "-y", "--no-install-recommends", *wanted],
                    env=APT_ENV,
                    loglevel="WARNING",
                )
            except CommandError as exc:
                gone = missing_locked(exc.tail) if work.locked is not None else []
                if not gone:
                    raise
                raise gone_error(spec.name, gone) from exc
            work.buildah_run(["apt-get", "clean"], env=APT_ENV)
            lists = work.image_path("/var/lib/apt/lists")
            if lists.is_dir():
                for entry in lists.iterdir():
                    if entry.is_file() and entry.name != "lock":
                        entry.unlink()
                shutil.rmtree(lists / "partial", ignore_errors=True)


def missing_locked(lines: list[str]) -> list[str]:
    """`name=version` pins apt says it has no such version of (a locked version gone from the mirror)."""
    out = []
    for line in lines:
        m = re.search(r"Version '([^']+)' for '([^']+)' was not found", line)
        if m and f"{m.group(2)}={m.group(1)}" not in out:
            out.append(f"{m.group(2)}={m.group(1)}")
    return out


def remove(work: Work) -> None:
    work.buildah_run(["dpkg", "--purge", "--force-depends", *work.spec.remove_packages], env=APT_ENV)
