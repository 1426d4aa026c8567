"""Fixtures for real buildah builds (package repositories made at test time).

* `rpm_repo` (session): tiny RPMs + comps group served on 127.0.0.1 (tests/rpmrepo.py).
* `write_spec`: write a layer YAML into a temp dir and load it as a LayerSpec.
* `build_runner`: a Runner whose layer log is kept in memory (`.logfile.getvalue()`).
* `images`: images registered there are removed after the test (`images.add(ref)`).
* `busybox_image` (session): a dnf-from-scratch image with the busybox shell, used as a parent.
* `debian_image` (session): one mmdebstrap build of Debian bookworm minbase for the session.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagegraph.runner import Runner
from imagegraph.spec import LayerSpec, load_spec
from tests.needs import missing
from tests.rpmrepo import RpmRepo, make_repo, serve

ENV = {**os.environ, "BUILDAH_ISOLATION": os.environ.get("BUILDAH_ISOLATION", "chroot")}


def have_buildah() -> bool:
    return shutil.which("buildah") is not None and os.geteuid() == 0


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, env=ENV, check=check)


def fake_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def containers() -> list[str]:
    out = buildah("containers", "--format", "{{.ContainerName}}").stdout
    return [ln.strip() for ln in out.splitlines() if ln.strip()]


def overlay_mounts() -> list[str]:
    return [ln for ln in Path("/proc/mounts").read_text().splitlines() if "containers/storage" in ln]


class Images:
    def __init__(self) -> None:
        self.refs: list[str] = []

    def add(self, *refs: str) -> None:
        self.refs.extend(refs)

    def remove(self) -> None:
        for ref in reversed(self.refs):
            buildah("rmi", "-f", ref, check=False)
        self.refs.clear()


@pytest.fixture(scope="session")
def rpm_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RpmRepo]:
    if not (shutil.which("rpmbuild") and shutil.which("createrepo_c")):
        missing("rpmbuild and createrepo_c are needed (scripts/install-system-deps.sh)")
    repo = make_repo(tmp_path_factory.mktemp("rpmrepo") / "repo")
    server = serve(repo.path)
    repo.url = server.url
    yield repo
    server.stop()
    repo.cleanup()


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., LayerSpec]:
    """write_spec(yaml_text, filename='layer.yaml', files={'files/a': 'text'}) -> LayerSpec."""

    def write(text: str, filename: str = "layer.yaml", files: dict[str, str] | None = None) -> LayerSpec:
        for rel, content in (files or {}).items():
            p = tmp_path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
        path = tmp_path / filename
        path.write_text(textwrap.dedent(text))
        return load_spec(path)

    return write


@pytest.fixture
def build_runner() -> Runner:
    return Runner(layer="test", logfile=io.StringIO())


@pytest.fixture
def images() -> Iterator[Images]:
    imgs = Images()
    yield imgs
    imgs.remove()


def busybox_spec_text(repo_url: str, name: str = "ig-busybox-base") -> str:
    return f"""
    options:
      layer_type: base
      name: {name}
      publish_tags: ['1.0']
      pkg_manager: dnf
      parent: scratch
      gpgcheck: false
      releasever: '9'
    repos:
      - alias: igtest
        url: '{repo_url}'
    package_groups:
      - 'IG Minimal'
    packages:
      - ig-hello
    """


@pytest.fixture(scope="session")
def busybox_image(rpm_repo: RpmRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """(BuildResult, LayerSpec, key) of a scratch dnf image with busybox, ig-extra and ig-hello."""
    from imagegraph.build import BuildRequest, build_layer

    d = tmp_path_factory.mktemp("busybox-spec")
    path = d / "bb.yaml"
    path.write_text(textwrap.dedent(busybox_spec_text(rpm_repo.url)))
    spec = load_spec(path)
    key = fake_key("busybox-base")
    result = build_layer(BuildRequest(spec=spec, key=key, parent=None, run_id="session"), Runner("bb"))
    yield result, spec, key
    buildah("rmi", "-f", result.image_ref, check=False)


@pytest.fixture(scope="session")
def debian_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """(BuildResult, LayerSpec, key, log text) of one Debian minbase build via mmdebstrap."""
    from imagegraph.build import BuildRequest, build_layer

    if not shutil.which("mmdebstrap"):
        missing("mmdebstrap is needed (scripts/install-system-deps.sh)")
    d = tmp_path_factory.mktemp("debian-spec")
    (d / "files").mkdir()
    (d / "files" / "motd").write_text("imagegraph test image\n")
    path = d / "deb.yaml"
    path.write_text(
        textwrap.dedent(
            """
            options:
              layer_type: base
              name: ig-test/debian
              publish_tags: [bookworm]
              pkg_manager: apt
              parent: scratch
              publish_local: true
            repos:
              - alias: debian
                url: http://deb.debian.org/debian
                suite: bookworm
                components: [main]
            packages:
              - hello
            remove_packages:
              - hello
            copyfiles:
              - src: files/motd
                dest: /etc/motd
            cmds:
              - cmd: 'echo debian-cmd-ran > /etc/ig-cmd; cat /etc/debian_version'
              - cmd: 'echo to-stderr >&2'
                loglevel: WARN
            """
        )
    )
    spec = load_spec(path)
    key = fake_key("debian")
    runner = Runner("deb", logfile=io.StringIO())
    result = build_layer(BuildRequest(spec=spec, key=key, parent=None), runner)
    yield result, spec, key, runner.logfile.getvalue()
    buildah("rmi", "-f", result.image_ref, "localhost/ig-test/debian:bookworm", check=False)
