"""Drop-in on image-builder sites: their spec structure builds unchanged through `imagegraph up`.

The layer is image-builder's `examples-ansible/base.yaml` (scratch dnf, three keyless repos, the
`Minimal Install` and `Development Tools` groups, packages, remove_packages, a bare-string cmd)
plus what other examples use (copyfiles with opts, dnf modules), its URLs pointing at local
stand-in repositories (tests/standin.py) that provide exactly the names it asks for. Real dnf,
real buildah, the real CLI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imagegraph.build.container import inspect_labels
from imagegraph.runner import Runner
from tests.fixtures_build import buildah, containers, have_buildah, overlay_mounts
from tests.httpproxy import RecordingProxy
from tests.rpmrepo import serve
from tests.standin import KEY_FILE, Signer, standin_repo

pytestmark = [pytest.mark.buildah, pytest.mark.skipif(not have_buildah(), reason="needs buildah as root")]

NAME = "igt-dropin-alma"

BASE = """\
options:
  layer_type: 'base'
  name: '{name}'
  pkg_manager: 'dnf'
  parent: 'scratch'
  publish_local: true
  publish_tags: v0.0.1

repos:
  - alias: 'Alma_BaseOS'
    url: '{url}baseos/'
  - alias: 'Alma_AppStream'
    url: '{url}appstream'
  - alias: 'Alma_PowerTools'
    url: '{url}powertools'

modules:
  enable:
    - 'ig-mod:1'
  install:
    - 'ig-mod:1/default'

package_groups:
  - 'Minimal Install'
  - 'Development Tools'

packages:
  - kernel
  - wget
{packages}
remove_packages:
  - alma-repos

copyfiles:
  - src: '/data/image-configs/files/motd'
    dest: '/etc/motd'
    opts:
      - '--chown 1000:1000'
      - '--chmod 0640'

cmds:
  - 'echo alma linux base > /etc/from-cmd'
"""


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory):
    """BaseOS (groups, kernel, the module), AppStream (wget) and an empty PowerTools, served."""
    top = tmp_path_factory.mktemp("standins")
    standin_repo(
        top / "baseos",
        packages=["kernel"],
        groups={"Minimal Install": ["ig-busybox", "alma-repos"], "Development Tools": ["gcc", "make"]},
        modules={"ig-mod:1": ["ig-modpkg"]},
    )
    standin_repo(top / "appstream", packages=["wget"], busybox=False)
    standin_repo(top / "powertools", busybox=False)
    server = serve(top)
    yield server.url
    server.stop()


def site(root: Path, url: str, packages: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "base.yaml").write_text(BASE.format(name=NAME, url=url, packages=packages))
    (root / "files").mkdir()
    (root / "files" / "motd").write_text("welcome to alma\n")
    # image-builder's container convention: the config directory is mounted at /data/image-configs
    (root / "imagegraph.yaml").write_text("path_map:\n  /data/image-configs: .\n")
    return root


def cli(*args: str, cwd: Path, json_out: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
    argv = [sys.executable, "-m", "imagegraph.cli", "--log-format", "console", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


def run_in(ref: str, *argv: str) -> str:
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        return buildah("run", ctr, "--", *argv).stdout
    finally:
        buildah("rm", ctr, check=False)


@pytest.fixture
def cleanup_images():
    yield
    out = buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split()
    for ref in out:
        if NAME in ref:
            buildah("rmi", "-f", ref, check=False)


def test_image_builder_base_builds_through_up(standins, tmp_path: Path, cleanup_images) -> None:
    root = site(tmp_path / "image-configs", standins)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    mounts = set(overlay_mounts())
    r = cli("up", str(root), "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    # keyless scratch repos install unverified, as image-builder does, with one warning per repository
    for alias, line in (("Alma_BaseOS", 10), ("Alma_AppStream", 12), ("Alma_PowerTools", 14)):
        assert f"base.yaml:{line}:5: warning: installs unsigned packages from {alias}" in r.stderr
    doc = json.loads(r.stdout)
    (res,) = doc["layers"]
    assert res["status"] == "ok" and res["built_at"]
    # the build time is in the run record, not in the image
    record = json.loads((root / ".imagegraph" / "last-run.json").read_text())
    assert record["layers"][0]["built_at"] == res["built_at"]

    ref = f"localhost/{NAME}:v0.0.1"
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        mnt = buildah("mount", ctr).stdout.strip()
        q = subprocess.run(
            ["rpm", "--root", mnt, "--dbpath", "/var/lib/rpm", "-q", "kernel", "wget", "gcc", "make"]
            + ["ig-modpkg", "alma-repos"],
            capture_output=True,
            text=True,
            env={**os.environ, "HOME": "/nonexistent"},
        )
        installed = q.stdout.split()
        assert {"kernel-1.0-1.noarch", "wget-1.0-1.noarch", "gcc-1.0-1.noarch", "make-1.0-1.noarch"} <= set(
            installed
        )
        assert "ig-modpkg-1.0-1.noarch" in installed  # through the module's default profile
        assert "package alma-repos is not installed" in q.stdout  # remove_packages
        module_state = (Path(mnt) / "etc/dnf/modules.d/ig-mod.module").read_text()
        assert "stream=1" in module_state and "state=enabled" in module_state
    finally:
        buildah("rm", ctr, check=False)
    assert run_in(ref, "cat", "/etc/from-cmd").strip() == "alma linux base"
    assert run_in(ref, "stat", "-c", "%u:%g %a", "/etc/motd").strip() == "1000:1000 640"
    assert run_in(ref, "cat", "/etc/motd") == "welcome to alma\n"

    labels = inspect_labels(ref, Runner())
    assert labels["org.openchami.image.name"] == NAME
    assert labels["org.openchami.image.type"] == "base"
    assert labels["org.openchami.image.parent"] == "scratch"
    assert labels["org.openchami.image.package-manager"] == "dnf"
    assert labels["org.openchami.image.repositories"] == "Alma_BaseOS,Alma_AppStream,Alma_PowerTools"
    assert labels["org.openchami.image.packages"] == "kernel,wget"
    assert labels["org.openchami.image.package-groups"] == "Minimal Install,Development Tools"
    assert "org.openchami.image.build-date" not in labels and "org.openchami.image.tags" not in labels

    # nothing left behind: image-builder leaves tmp/, etc/dnf and .pkg_repos where it runs
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in root.iterdir()) == [".imagegraph", "base.yaml", "files", "imagegraph.yaml"]
    # the build's private temporary directory (seen in its commit's --iidfile) is gone
    build_tmp = re.findall(r"--iidfile (\S+)/iid", Path(res["log_file"]).read_text())
    assert build_tmp and not any(os.path.exists(t) for t in build_tmp)
    assert set(overlay_mounts()) <= mounts
    assert [c for c in containers() if NAME in c] == []


def test_missing_package_quotes_dnf_in_summary_and_json(standins, tmp_path: Path, cleanup_images) -> None:
    root = site(tmp_path / "image-configs", standins, packages="  - ig-no-such-package\n")
    r = cli("up", str(root), "--json", cwd=tmp_path)
    assert r.returncode == 1
    (res,) = json.loads(r.stdout)["layers"]
    assert res["status"] == "failed"
    assert "step packages failed" in res["error"]
    assert "No match for argument: ig-no-such-package" in res["error"]
    r = cli("up", str(root), cwd=tmp_path)
    assert r.returncode == 1
    summary = r.stdout.split("base failed:", 1)[1]
    # the cause is quoted right under the failure, before any other output
    assert summary.splitlines()[2].strip() == "No match for argument: ig-no-such-package"
    # a failed build leaves nothing behind either
    assert [c for c in containers() if NAME in c] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image-configs"]


def _signed_site(root: Path, url: str, key_url: str, gpgcheck: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "signed.yaml").write_text(
        textwrap.dedent(
            f"""\
            options:
              layer_type: base
              name: {NAME}-signed
              pkg_manager: dnf
              parent: scratch
              publish_local: true
              releasever: '9'
            {gpgcheck}
            repos:
              - alias: signed
                url: '{url}'
                gpg: '{key_url}'
            packages: [ig-busybox, kernel]
            """
        )
    )
    return root


@pytest.fixture(scope="module")
def signed_repo(tmp_path_factory: pytest.TempPathFactory):
    """A repository signed by a throwaway key, and the public key of another one."""
    top = tmp_path_factory.mktemp("signed")
    signer, other = Signer(), Signer("imagegraph other")
    standin_repo(top / "repo", packages=["kernel"], signer=signer)
    (top / "other.key").write_bytes(other.public_key())
    server = serve(top)
    yield server.url
    server.stop()
    signer.cleanup()
    other.cleanup()


def test_signed_repository_is_verified_with_its_key(signed_repo, tmp_path: Path, cleanup_images) -> None:
    root = _signed_site(tmp_path / "ok", signed_repo + "repo/", signed_repo + "repo/" + KEY_FILE)
    r = cli("up", str(root), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "installs unsigned packages" not in r.stderr
    ref = f"localhost/{NAME}-signed:latest"
    ctr = buildah("from", "--pull=never", ref).stdout.strip()
    try:
        mnt = buildah("mount", ctr).stdout.strip()
        q = subprocess.run(
            ["rpm", "--root", mnt, "--dbpath", "/var/lib/rpm", "-q", "gpg-pubkey", "--qf", "%{SUMMARY}\n"],
            capture_output=True,
            text=True,
            env={**os.environ, "HOME": "/nonexistent"},
        )
        assert "imagegraph standin" in q.stdout  # the repository's key is in the image's rpm database
    finally:
        buildah("rm", ctr, check=False)


def test_signed_repository_with_the_wrong_key_fails_saying_so(signed_repo, tmp_path: Path) -> None:
    root = _signed_site(tmp_path / "bad", signed_repo + "repo/", signed_repo + "other.key")
    r = cli("up", str(root), "--json", cwd=tmp_path)
    assert r.returncode == 1
    (res,) = json.loads(r.stdout)["layers"]
    assert "step packages failed" in res["error"]
    quoted = [t.strip() for t in res["error"].split("output:", 1)[1].splitlines()]
    # dnf's reasons lead the quote, before the download progress that ends its output
    assert "Error: GPG check FAILED" in quoted[:6]
    assert any(t.startswith("Public key for ") and "is not installed" in t for t in quoted[:6])


def test_explicit_gpgcheck_with_a_keyless_repository_is_a_spec_error(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    root.mkdir()
    (root / "base.yaml").write_text(
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  gpgcheck: true\n"
        "repos:\n  - alias: Local_BaseOS\n    url: http://127.0.0.1:9/repo\n"
    )
    for command in ("validate", "plan"):
        r = cli(command, str(root), *(["--offline"] if command == "plan" else []), cwd=tmp_path)
        assert r.returncode == 2
        assert (
            "base.yaml:6:12: error: gpgcheck is true but repository Local_BaseOS has no gpg key" in r.stderr
        )
        assert "nothing was built" in r.stderr


def test_proxy_carries_the_package_managers_requests(signed_repo, tmp_path: Path, cleanup_images) -> None:
    """`options.proxy`: dnf and the key download go through a real proxy (the repository's host
    name resolves nowhere else)."""
    proxy = RecordingProxy(signed_repo)
    try:
        root = tmp_path / "layers"
        root.mkdir()
        (root / "proxied.yaml").write_text(
            textwrap.dedent(
                f"""\
                options:
                  layer_type: base
                  name: {NAME}-proxied
                  pkg_manager: dnf
                  parent: scratch
                  publish_local: true
                  releasever: '9'
                  proxy: '{proxy.url}'
                repos:
                  - alias: behind_proxy
                    url: 'http://standin.invalid/repo/'
                    gpg: 'http://standin.invalid/repo/{KEY_FILE}'
                packages: [ig-busybox, kernel]
                """
            )
        )
        r = cli("up", str(root), "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    finally:
        proxy.stop()
    asked = [url for _method, url in proxy.requests]
    assert f"http://standin.invalid/repo/{KEY_FILE}" in asked
    assert "http://standin.invalid/repo/repodata/repomd.xml" in asked
    assert "http://standin.invalid/repo/kernel-1.0-1.noarch.rpm" in asked


def _buildable_examples() -> list[Path]:
    """Shared example specs that can build here: dnf from scratch, cmds that are only `echo`,
    no copied files (their RPMs are stood in for; their tools and files are not)."""
    from imagegraph.spec import read_spec
    from tests.test_spec import EXAMPLES

    out = []
    for path in sorted(EXAMPLES.rglob("*.yaml")) if EXAMPLES.is_dir() else []:
        spec, _ = read_spec(path)
        if (
            spec is not None
            and spec.is_scratch
            and spec.pkg_manager == "dnf"
            and not spec.copyfiles
            and all(c.cmd.startswith("echo ") for c in spec.cmds)
            and (spec.package_groups or not spec.remove_packages)
        ):
            out.append(path)
    return out


@pytest.mark.parametrize("path", _buildable_examples(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shared_example_builds_with_only_its_urls_swapped(path: Path, tmp_path: Path) -> None:
    """The real file, byte for byte but for its repository and key URLs, built by `up`."""
    from imagegraph.spec import load_spec

    spec = load_spec(path)
    signer = Signer() if any(r.gpg for r in spec.repos) else None
    top = tmp_path / "repos"
    groups = {g: [] for g in spec.package_groups}
    if groups:  # the shell, and what remove_packages removes, come with the first group
        groups[spec.package_groups[0]] = ["ig-busybox", *spec.remove_packages]
    for i, repo in enumerate(spec.repos):
        standin_repo(
            top / repo.alias,
            packages=spec.packages if i == 0 else (),
            groups=groups if i == 0 else None,
            signer=signer,
            busybox=i == 0,
        )
    server = serve(top)
    text = path.read_text()
    for repo in spec.repos:
        text = text.replace(repo.url, f"{server.url}{repo.alias}/")
        if repo.gpg:
            text = text.replace(repo.gpg, f"{server.url}{spec.repos[0].alias}/{KEY_FILE}")
    root = tmp_path / "layers"
    root.mkdir()
    (root / path.name).write_text(text)
    try:
        r = cli("up", str(root), "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        (res,) = json.loads(r.stdout)["layers"]
        ctr = buildah("from", "--pull=never", res["image_ref"]).stdout.strip()
        try:
            mnt = buildah("mount", ctr).stdout.strip()
            q = subprocess.run(
                [
                    "rpm",
                    "--root",
                    mnt,
                    "--dbpath",
                    "/var/lib/rpm",
                    "-q",
                    *spec.packages,
                    *spec.remove_packages,
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "HOME": "/nonexistent"},
            )
        finally:
            buildah("rm", ctr, check=False)
        for p in spec.packages:
            assert f"{p}-1.0-1.noarch" in q.stdout
        for p in spec.remove_packages:
            assert f"package {p} is not installed" in q.stdout
        for r_ in spec.repos:  # keyless repositories are warned about, keyed ones are not
            assert (f"installs unsigned packages from {r_.alias}" in r.stderr) == (not r_.gpg)
    finally:
        server.stop()
        if signer:
            signer.cleanup()
        for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
            if ref.startswith(f"localhost/{spec.name}:") or ref.startswith(
                f"localhost/imagegraph/{spec.name}:"
            ):
                buildah("rmi", "-f", ref, check=False)
