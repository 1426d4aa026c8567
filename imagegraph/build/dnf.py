"""Installing and removing RPMs with dnf: repos, gpg keys, modules, groups, packages.

Where dnf runs:

* **From scratch**: the host's dnf with `--installroot` on the working
  container's mount, as image-builder does. The layer's repositories are
  written into a reposdir private to the build (never the host's
  /etc/yum.repos.d, never the image), so the image carries no repo files.
* **On an image parent that ships dnf (or yum)**: inside the image with
  `buildah run`, as image-builder does; the layer's repositories are written
  into the image's /etc/yum.repos.d (they stay, so children can use them).
  This uses the image's own dnf, rpm and database format (Rocky 8's rpm
  writes Berkeley DB, the host's writes sqlite).
* **On an image parent without dnf** (a minimal image): the host's dnf with
  `--installroot` on the mount and `reposdir` = the image's
  /etc/yum.repos.d (with the layer's repos added there), so the result is
  the same as if the image had dnf.

With a locked package set (imagegraph.lock, `work.locked`) groups and
packages are one `dnf install` of the exact NEVRAs; a NEVRA dnf finds no
match for fails the build naming it. `module install` then enables its
stream before that install and runs after it, when it only records the
profile (its rpms are installed at the locked versions, which it keeps).

Two Debian host pitfalls handled here: Debian's rpm keeps its database in
`$HOME/.rpmdb`, so every host rpm/dnf call gets a private HOME whose
`.rpmmacros` sets `%_dbpath` to where the image's own rpm looks
(`/var/lib/rpm`, or `/usr/lib/sysimage/rpm` when a parent already has its
database there); and Debian enables dnf's `local` plugin, which hoards
packages in the host's /var/lib/dnf, so host dnf runs with `--noplugins`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..spec import LayerSpec, Repo
from .locked import install_locked
from .work import Work

NAME = "dnf"
VERSION = 1  # bump when a change below changes what an image contains
RPM_DBPATH = "/var/lib/rpm"
DBPATH_CANDIDATES = ("/var/lib/rpm", "/usr/lib/sysimage/rpm")
IMAGE_DNF = ("/usr/bin/dnf", "/usr/bin/yum", "/bin/dnf", "/bin/yum")
IMAGE_RPM = ("/usr/bin/rpm", "/bin/rpm")


def key_inputs(spec: LayerSpec) -> dict[str, Any]:
    """What dnf builds assume where the spec is silent (see `build.backends`)."""
    return {
        # Without releasever, dnf in the image uses the image's own; the host's dnf has none.
        "releasever": spec.releasever or "from-image",
        "rpm_dbpath": RPM_DBPATH,  # where a new image's database goes (an existing one stays)
        "host_plugins": False,  # host dnf runs with --noplugins
        "repo_files": "image" if spec.parent != "scratch" else "none",
    }


def repo_file(repo: Repo, gpgcheck: bool) -> str:
    """A yum/dnf .repo file for one spec repository (`gpgcheck` from `LayerSpec.verifies`)."""
    lines = [
        f"[{repo.alias}]",
        f"name={repo.alias}",
        f"baseurl={repo.url}",
        "enabled=1",
        f"gpgcheck={1 if gpgcheck else 0}",
    ]
    if repo.gpg:
        lines.append(f"gpgkey={repo.gpg}")
    return "\n".join(lines) + "\n"


def write_repos(work: Work, reposdir: Path) -> None:
    """Write one file per repository; a `.repo` URL is downloaded as it is."""
    reposdir.mkdir(parents=True, exist_ok=True)
    for repo in work.spec.repos:
        dest = reposdir / f"{repo.alias}.repo"
        if repo.url.endswith(".repo"):
            work.download(repo.url, dest)
        else:
            dest.write_text(repo_file(repo, work.spec.verifies(repo)))


def uses_image_dnf(work: Work) -> bool:
    return not work.scratch and work.has(*IMAGE_DNF)


def image_dbpath(work: Work) -> str:
    """Where the image keeps its rpm database (default for a new image: /var/lib/rpm)."""
    for candidate in DBPATH_CANDIDATES:
        d = work.image_path(candidate)
        if d.is_dir() and any((d / f).exists() for f in ("rpmdb.sqlite", "Packages", "Packages.db")):
            return candidate
    return RPM_DBPATH


def host_env(work: Work) -> dict[str, str]:
    """Private HOME whose .rpmmacros puts the rpm database where the image's rpm looks."""
    home = work.tmp / "home"
    home.mkdir(exist_ok=True)
    (home / ".rpmmacros").write_text(f"%_dbpath {image_dbpath(work)}\n")
    return {"HOME": str(home), **work.proxy_env()}


def _common_opts(work: Work) -> list[str]:
    spec = work.spec
    opts = ["-y"]
    if work.arch:
        opts.append(f"--forcearch={work.arch}")
    if spec.releasever:
        opts.append(f"--releasever={spec.releasever}")
    if spec.proxy:
        opts.append(f"--setopt=proxy={spec.proxy}")
    if not spec.gpgcheck:
        opts.append("--nogpgcheck")
    return opts


def import_gpg_keys(work: Work, inside: bool) -> None:
    """Import the repos' gpg keys into the image's rpm database (dnf and zypper alike)."""
    for i, repo in enumerate(r for r in work.spec.repos if r.gpg):
        if inside:
            work.buildah_run(["rpm", "--import", repo.gpg], env=work.proxy_env())
        else:
            key = work.download(repo.gpg, work.tmp / "keys" / f"{i}-{repo.alias}.key")
            work.run(
                ["rpm", "--root", str(work.mount), "--dbpath", image_dbpath(work), "--import", str(key)],
                env=host_env(work),
            )


def install(work: Work) -> None:
    """repos (+gpg keys) -> modules -> package_groups -> packages, in image-builder's order."""
    spec = work.spec
    inside = uses_image_dnf(work)
    if inside:
        reposdir = work.image_path("/etc/yum.repos.d")
    elif work.scratch:
        reposdir = work.tmp / "repos.d"
    else:
        reposdir = work.image_path("/etc/yum.repos.d")
    with work.step("repos", f"{len(spec.repos)} repositories ({'dnf in image' if inside else 'host dnf'})"):
        write_repos(work, reposdir)
        import_gpg_keys(work, inside)

    if inside:
        base = ["dnf", *_common_opts(work)]

        def dnf(args: list[str]) -> None:
            work.buildah_run([*base, *args], loglevel="WARNING", env=work.proxy_env())
    else:
        reposdir.mkdir(parents=True, exist_ok=True)
        base = [
            "dnf",
            f"--installroot={work.mount}",
            f"--setopt=reposdir={reposdir}",
            "--noplugins",
            *_common_opts(work),
        ]

        def dnf(args: list[str]) -> None:
            work.run([*base, *args], env=host_env(work), loglevel="WARNING")

    locked = work.locked is not None
    for sub, specs in spec.modules:
        # With a lock, `module install` only enables its stream here: the lock holds its profile's
        # rpms at the locked versions, which `module install` would take at the newest.
        op = "enable" if locked and sub == "install" else sub
        items = [x.split("/", 1)[0] for x in specs] if op != sub else list(specs)
        with work.step("modules", f"dnf module {op} {' '.join(items)}"):
            dnf(["module", op, *items])
    if locked:
        # imagegraph.lock resolved the modules' profiles, groups and packages: exactly those versions.
        install_locked(work, lambda pkgs: dnf(["install", *pkgs]), missing_locked)
        for specs in [specs for sub, specs in spec.modules if sub == "install"]:
            # now a no-op for the packages (installed, never upgraded): records the profile in modules.d
            with work.step("modules", f"dnf module install {' '.join(specs)} (profiles)"):
                dnf(["module", "install", *specs])
        return
    if spec.package_groups:
        with work.step("package_groups", ", ".join(spec.package_groups)):
            dnf(["groupinstall", *spec.package_groups])
    if work.packages:
        with work.step("packages", f"{len(work.packages)} packages"):
            dnf(["install", *work.packages])


def missing_locked(lines: list[str]) -> list[str]:
    """The NEVRAs dnf says it found no match for (a locked version gone from the mirror)."""
    out = []
    for line in lines:
        m = re.search(r"No match for argument: (\S+)", line)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def remove(work: Work) -> None:
    """`rpm -e --nodeps`, as image-builder does: inside when the image has rpm, else from the host."""
    pkgs = list(work.spec.remove_packages)
    if work.has(*IMAGE_RPM):
        work.buildah_run(["rpm", "-e", "--nodeps", *pkgs])
    else:
        work.run(
            ["rpm", "--root", str(work.mount), "--dbpath", image_dbpath(work), "-e", "--nodeps", *pkgs],
            env=host_env(work),
        )
