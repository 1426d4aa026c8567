"""The commands build_layer would run, recorded without running them.

zypper is not installed on the development host, and dnf inside an image
needs an EL image we cannot fetch here: both are checked by their argv.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegraph.build import BuildRequest, ParentImage, build_layer, image_labels
from imagegraph.build.ansible import inventory
from imagegraph.errors import BuildError
from imagegraph.runner import Cancelled, CommandError, Completed, Runner
from tests.fixtures_build import fake_key

IMAGE_ID = "a" * 64


class RecordingRunner(Runner):
    """Records argv; `buildah mount` returns a directory standing in for the image."""

    def __init__(self, mount: Path, fail_on: str | None = None, cancel_on: str | None = None):
        super().__init__("rec")
        self.mount = mount
        self.calls: list[tuple[list[str], str, dict]] = []
        self.fail_on = fail_on
        self.cancel_on = cancel_on

    def run(self, argv, *, step, env=None, cleanup=False, **kw):  # type: ignore[override]
        argv = [str(a) for a in argv]
        self.calls.append((argv, step, dict(env or {})))
        joined = " ".join(argv)
        if self.cancel_on and self.cancel_on in joined and not cleanup:
            raise Cancelled("cancelled")
        if self.fail_on and self.fail_on in joined:
            raise CommandError(argv, 1, ["it broke"], step)
        out = ""
        if argv[:2] == ["buildah", "mount"]:
            out = str(self.mount) + "\n"
        if argv[:2] == ["buildah", "commit"]:
            Path(argv[argv.index("--iidfile") + 1]).write_text("sha256:" + IMAGE_ID)
        return Completed(argv, 0, out)

    def argvs(self) -> list[list[str]]:
        return [a for a, _, _ in self.calls]

    def find(self, *words: str) -> list[str]:
        hits = [a for a in self.argvs() if all(w in a for w in words)]
        assert hits, f"no command with {words}: {self.argvs()}"
        return hits[0]


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    m = tmp_path / "mnt"
    m.mkdir()
    return m


def test_zypper_from_scratch(write_spec, mount):
    spec = write_spec(
        """
        options:
          layer_type: base
          name: sles-base
          pkg_manager: zypper
          releasever: '15.6'
          proxy: http://proxy:3128
        repos:
          - alias: oss
            url: http://mirror/oss/
            gpg: http://mirror/key.asc
            priority: 90
          - alias: extra
            url: http://mirror/extra.repo
        package_groups: [base]
        packages: [vim, kernel-default]
        remove_packages: [vim]
        """
    )
    rec = RecordingRunner(mount)
    spec_key = fake_key("sles")
    # the gpg key download is the one non-command: stub it
    from imagegraph.build import work as work_mod

    orig = work_mod.Work.download
    work_mod.Work.download = lambda self, url, dest: (
        dest.parent.mkdir(parents=True, exist_ok=True),
        dest.write_text("k"),
        dest,
    )[2]
    try:
        build_layer(BuildRequest(spec=spec, key=spec_key, parent=None), rec)
    finally:
        work_mod.Work.download = orig
    addrepo = rec.find("zypper", "addrepo", "oss")
    assert addrepo[addrepo.index("addrepo") :] == ["addrepo", "--priority", "90", "http://mirror/oss/", "oss"]
    assert "--root" in addrepo and str(mount) in addrepo
    assert "--reposd-dir" in addrepo and "--gpg-auto-import-keys" in addrepo
    assert addrepo[addrepo.index("--releasever") + 1] == "15.6"
    assert rec.find("zypper", "addrepo", "http://mirror/extra.repo")[-1] == "http://mirror/extra.repo"
    assert rec.find("zypper", "refresh")
    pattern = rec.find("zypper", "install", "pattern")
    assert pattern[-3:] == ["-t", "pattern", "base"]
    pkgs = rec.find("zypper", "install", "vim")
    assert pkgs[-2:] == ["vim", "kernel-default"]
    imp = rec.find("rpm", "--import")
    assert imp[:5] == ["rpm", "--root", str(mount), "--dbpath", "/var/lib/rpm"]
    rm = rec.find("rpm", "-e")
    assert rm[-3:] == ["-e", "--nodeps", "vim"]
    # host package manager calls get a private HOME with the rpm dbpath macro, and the proxy
    env = next(e for a, _, e in rec.calls if a[0] == "zypper")
    assert env["HOME"] != "/root" and env["https_proxy"] == "http://proxy:3128"
    order = [s for _, s, _ in rec.calls]
    assert order.index("repos") < order.index("package_groups") < order.index("packages")
    assert order.index("packages") < order.index("remove_packages")


def test_zypper_in_image_parent(write_spec, mount):
    (mount / "usr" / "bin").mkdir(parents=True)
    (mount / "usr" / "bin" / "zypper").write_text("")
    spec = write_spec(
        """
        options:
          layer_type: base
          name: sles-compute
          pkg_manager: zypper
          parent: registry/sles-base:1
          gpgcheck: false
        repos:
          - alias: hpc
            url: http://mirror/hpc/
        packages: [slurm]
        """
    )
    rec = RecordingRunner(mount)
    parent = ParentImage(image="b" * 64, ref="registry/sles-base:1", key=None)
    build_layer(BuildRequest(spec=spec, key=fake_key("sc"), parent=parent), rec)
    assert rec.find("buildah", "from")[-1] == "b" * 64
    assert "--pull=never" in rec.find("buildah", "from")
    add = rec.find("addrepo")
    assert add[:3] == ["buildah", "run", add[2]] and add[3] == "--"
    assert add[4:] == [
        "zypper", "--non-interactive", "--no-gpg-checks", "addrepo", "--no-gpgcheck", "http://mirror/hpc/", "hpc"
    ]  # fmt: skip
    assert "--root" not in add


def test_dnf_in_image_parent_runs_inside(write_spec, mount):
    # an EL image: /bin -> usr/bin, dnf in /usr/bin, rpm db at /var/lib/rpm
    (mount / "usr" / "bin").mkdir(parents=True)
    (mount / "bin").symlink_to("usr/bin")
    (mount / "usr" / "bin" / "dnf").write_text("")
    (mount / "usr" / "bin" / "rpm").write_text("")
    (mount / "usr" / "bin" / "bash").write_text("")
    spec = write_spec(
        """
        options:
          layer_type: base
          name: compute
          pkg_manager: dnf
          parent: registry/rocky-base:9
          releasever: '9'
        repos:
          - alias: epel
            url: https://mirror/epel/9/
            gpg: https://mirror/RPM-GPG-KEY-EPEL-9
        modules:
          enable: ['nodejs:18']
          install: ['nodejs']
        package_groups: ['Development Tools']
        packages: [vim]
        remove_packages: [vim-minimal]
        cmds: ['echo hi']
        """
    )
    rec = RecordingRunner(mount)
    parent = ParentImage(image="c" * 64, ref="registry/rocky-base:9", key=fake_key("base"))
    build_layer(BuildRequest(spec=spec, key=fake_key("compute"), parent=parent), rec)
    repo = (mount / "etc" / "yum.repos.d" / "epel.repo").read_text()
    assert "baseurl=https://mirror/epel/9/" in repo and "gpgcheck=1" in repo
    inside = [a[a.index("--") + 1 :] for a in rec.argvs() if a[:2] == ["buildah", "run"]]
    assert ["rpm", "--import", "https://mirror/RPM-GPG-KEY-EPEL-9"] in inside
    assert ["dnf", "-y", "--releasever=9", "module", "enable", "nodejs:18"] in inside
    assert ["dnf", "-y", "--releasever=9", "module", "install", "nodejs"] in inside
    assert ["dnf", "-y", "--releasever=9", "groupinstall", "Development Tools"] in inside
    assert ["dnf", "-y", "--releasever=9", "install", "vim"] in inside
    assert ["rpm", "-e", "--nodeps", "vim-minimal"] in inside
    assert ["bash", "-c", "echo hi"] in inside
    assert not any(a[0] == "dnf" for a in rec.argvs())  # no host dnf


def test_dnf_scratch_argv(write_spec, mount):
    spec = write_spec(
        """
        options:
          layer_type: base
          name: rocky-base
          pkg_manager: dnf
          proxy: http://proxy:3128
        repos:
          - alias: baseos
            url: https://mirror/baseos/
        packages: [kernel]
        """
    )
    rec = RecordingRunner(mount)
    build_layer(BuildRequest(spec=spec, key=fake_key("rb"), parent=None), rec)
    dnf = rec.find("dnf", "install")
    assert dnf[1] == f"--installroot={mount}"
    assert "--noplugins" in dnf and "--setopt=proxy=http://proxy:3128" in dnf
    reposdir = next(a for a in dnf if a.startswith("--setopt=reposdir="))
    assert str(mount) not in reposdir and "/etc/yum.repos.d" not in reposdir
    assert rec.find("buildah", "from")[-1] == "scratch"
    # no bash in this (empty) image: cmds would use /bin/sh
    env = next(e for a, _, e in rec.calls if a[0] == "dnf")
    assert Path(env["HOME"]).name == "home"


def test_apt_scratch_argv(write_spec, mount):
    spec = write_spec(
        """
        options:
          layer_type: base
          name: deb
          pkg_manager: apt
          releasever: trixie
          gpgcheck: false
        repos:
          - alias: main
            url: http://deb.debian.org/debian
            components: [main, contrib]
          - alias: sec
            url: http://security.debian.org/debian-security
            suite: trixie-security
        packages: [systemd, linux-image-amd64]
        cmds: ['true']
        """
    )
    rec = RecordingRunner(mount)
    build_layer(BuildRequest(spec=spec, key=fake_key("deb"), parent=None), rec)
    mm = rec.find("mmdebstrap")
    assert "--variant=minbase" in mm and "--include=systemd,linux-image-amd64" in mm
    i = mm.index(str(mount))
    assert mm[i - 1] == "trixie-security"  # the first repo with a suite names the bootstrap suite
    assert mm[i + 1 :] == [
        "deb [trusted=yes] http://deb.debian.org/debian trixie-security main contrib",
        "deb [trusted=yes] http://security.debian.org/debian-security trixie-security main",
    ]
    assert rec.find("buildah", "run")[-3:] == ["/bin/sh", "-c", "true"]


def test_failure_names_step_and_cleans_up(write_spec, mount):
    spec = write_spec(
        """
        options:
          layer_type: base
          name: x
          pkg_manager: dnf
          parent: scratch
        copyfiles:
          - src: layer.yaml
            dest: /etc/x
            opts: ['--chown 0:0', '--chmod 0644']
        """
    )
    rec = RecordingRunner(mount, fail_on="buildah copy")
    with pytest.raises(BuildError) as info:
        build_layer(BuildRequest(spec=spec, key=fake_key("x"), parent=None), rec)
    assert info.value.step == "copyfiles[0]"
    assert info.value.tail == ["it broke"]
    copy = rec.find("buildah", "copy")
    assert copy[2:6] == ["--chown", "0:0", "--chmod", "0644"]
    assert rec.argvs()[-2][:2] == ["buildah", "umount"] and rec.argvs()[-1][:2] == ["buildah", "rm"]


def test_cancel_reraised_after_cleanup(write_spec, mount):
    spec = write_spec(
        """
        options:
          layer_type: base
          name: x
          pkg_manager: dnf
        packages: [a]
        """
    )
    rec = RecordingRunner(mount, cancel_on="install")
    with pytest.raises(Cancelled):
        build_layer(BuildRequest(spec=spec, key=fake_key("x"), parent=None), rec)
    assert rec.argvs()[-1][:2] == ["buildah", "rm"]


def test_labels(write_spec, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    spec = write_spec(
        """
        options:
          layer_type: base
          name: compute
          publish_tags: ['9.5', latest]
          pkg_manager: dnf
          parent: registry/rocky-base:9.5
          labels:
            org.openchami.image.name: overridden
            io.imagegraph.key: forged
            team: hpc
        packages: [vim]
        """
    )
    parent = ParentImage(image="d" * 64, ref="registry/rocky-base:9.5", key="e" * 64)
    labels = image_labels(spec, "f" * 64, parent)
    assert labels["org.openchami.image.name"] == "compute"
    assert labels["org.openchami.image.parent"] == "registry/rocky-base:9.5"
    assert labels["org.openchami.image.packages"] == "vim"
    # publish tags and the clock are not key inputs, so they are not labels (labels.py)
    assert "org.openchami.image.tags" not in labels and "org.openchami.image.build-date" not in labels
    assert labels["io.imagegraph.key"] == "f" * 64
    assert labels["io.imagegraph.parent-key"] == "e" * 64
    assert labels["team"] == "hpc"


def test_ansible_inventory():
    inv = inventory("ctr", ("compute", "gpu"), {"x": 1})
    assert inv["all"]["hosts"]["ctr"]["ansible_connection"] == "buildah"
    assert inv["all"]["hosts"]["ctr"]["x"] == 1
    assert inv["all"]["children"]["gpu"]["hosts"] == {"ctr": None}
