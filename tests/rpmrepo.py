"""A dnf repository made at test time, for real builds without a distribution mirror.

`make_repo(dir)` rpmbuilds a handful of tiny noarch packages, runs createrepo_c
with a comps file (so `package_groups` work) and returns an `RpmRepo`;
`serve(dir)` publishes a directory over HTTP on 127.0.0.1 from a thread.

Packages:
  ig-busybox  a static busybox as /usr/bin/busybox with /bin/sh, /bin/bash, cat,
              echo ... links, so `cmds` run in an image built from scratch
              (noarch on purpose: the host's busybox-static is copied in)
  ig-hello    /usr/share/ig-hello/hello.txt ("hello 1.0"); `add_version` makes newer ones
  ig-extra    /usr/share/ig-extra/extra.txt (removed again by remove_packages tests)
  ig-tool     /usr/share/ig-tool/tool.txt (installed into image parents)
Group "IG Minimal" (id ig-minimal) = ig-busybox + ig-extra.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "bash", "cat", "echo", "ls", "mkdir", "rm", "cp", "mv", "sleep", "id", "stat", "touch"]
APPLETS += ["grep", "sed", "true", "false", "test", "printf", "chmod", "chown", "ln", "readlink", "env"]

COMPS = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE comps PUBLIC "-//Red Hat, Inc.//DTD Comps info//EN" "comps.dtd">
<comps>
  <group>
    <id>ig-minimal</id>
    <name>IG Minimal</name>
    <description>Test group</description>
    <default>true</default>
    <uservisible>true</uservisible>
    <packagelist>
      <packagereq type="mandatory">ig-busybox</packagereq>
      <packagereq type="mandatory">ig-extra</packagereq>
    </packagelist>
  </group>
</comps>
"""


def _spec_simple(
    name: str,
    version: str,
    text: str,
    requires: tuple[str, ...] = (),
    arch: str = "noarch",
    provides: tuple[str, ...] = (),
) -> str:
    reqs = "".join(f"Requires: {r}\n" for r in requires) + "".join(f"Provides: {p}\n" for p in provides)
    # An arch package holds only a text file too: rpmbuild --target makes it for any arch here.
    build_arch = "BuildArch: noarch\n" if arch == "noarch" else ""
    return f"""
Name: {name}
Version: {version}
Release: 1
Summary: imagegraph test package {name}
License: MIT
{build_arch}{reqs}
%description
Test package.

%install
mkdir -p %{{buildroot}}/usr/share/{name}
echo '{text}' > %{{buildroot}}/usr/share/{name}/{name.removeprefix("ig-")}.txt

%files
/usr/share/{name}
"""


def _spec_busybox() -> str:
    # busybox has no `bash` applet: /bin/bash is a two-line script handing over to its sh
    links = "\n".join(
        f"ln -s /usr/bin/busybox %{{buildroot}}/bin/{a}" for a in APPLETS if a not in ("env", "bash")
    )
    files = "\n".join(f"/bin/{a}" for a in APPLETS if a != "env")
    return f"""
%define _binaries_in_noarch_packages_terminate_build 0
%define __strip /bin/true
%define debug_package %{{nil}}
%global __os_install_post %{{nil}}
Name: ig-busybox
Version: 1.0
Release: 1
Summary: static busybox for imagegraph tests
License: GPL-2.0
BuildArch: noarch
AutoReqProv: no
Provides: /bin/sh
Provides: /bin/bash

%description
Static busybox with shell links.

%install
mkdir -p %{{buildroot}}/usr/bin %{{buildroot}}/bin %{{buildroot}}/tmp %{{buildroot}}/etc
cp {BUSYBOX} %{{buildroot}}/usr/bin/busybox
{links}
ln -s /usr/bin/busybox %{{buildroot}}/usr/bin/env
printf '#!/bin/sh\\nexec /bin/sh "$@"\\n' > %{{buildroot}}/bin/bash
chmod 755 %{{buildroot}}/bin/bash
echo 'root:x:0:0:root:/root:/bin/sh' > %{{buildroot}}/etc/passwd
echo 'root:x:0:' > %{{buildroot}}/etc/group

%files
%dir /bin
%dir /tmp
/usr/bin/busybox
/usr/bin/env
/etc/passwd
/etc/group
{files}
"""


@dataclass
class RpmRepo:
    path: Path  # the repository directory (served over HTTP)
    work: Path  # rpmbuild topdir
    url: str = ""  # set once served
    versions: dict[str, str] = field(default_factory=dict)
    modules: str = ""  # modules.yaml added to the metadata by modifyrepo_c (`set_modules`)

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def add_version(
        self,
        name: str,
        version: str,
        text: str | None = None,
        requires: tuple[str, ...] = (),
        arch: str = "noarch",
        provides: tuple[str, ...] = (),
    ) -> Path:
        """Build `name-version` for `arch` (with `requires`, `provides`) into the repository and
        refresh its metadata. A zypper pattern is a package providing `pattern() = <name>`."""
        spec = _spec_simple(name, version, text or f"{name} {version}", requires, arch, provides)
        rpm = _rpmbuild(self.work, name, version, spec, arch)
        shutil.copy(rpm, self.path)
        self.versions[name] = version
        self.refresh()
        return self.path / rpm.name

    def set_modules(self, text: str) -> None:
        """Make `text` (modulemd documents, `module_doc` / `defaults_doc`) the repository's
        modules.yaml, as a modular repository (EL AppStream) carries one."""
        self.modules = text
        self.refresh()

    def refresh(self) -> None:
        _createrepo(self.path)
        if self.modules:  # createrepo_c --update drops it: added again after every refresh
            (self.work / "modules.yaml").write_text(self.modules)
            subprocess.run(
                [
                    "modifyrepo_c",
                    "--mdtype=modules",
                    str(self.work / "modules.yaml"),
                    str(self.path / "repodata"),
                ],
                check=True,
                capture_output=True,
            )

    def remove_version(self, name: str, version: str, arch: str = "*") -> None:
        """Drop `name-version` (of `arch`, default every arch) from the repository (a mirror pruning an old build)."""
        for f in self.path.glob(f"{name}-{version}-1.{arch}.rpm"):
            f.unlink()
        self.refresh()


def _rpmbuild(work: Path, name: str, version: str, spec_text: str, arch: str = "noarch") -> Path:
    spec = work / f"{name}-{version}-{arch}.spec"
    spec.write_text(spec_text)
    home = work / "home"  # Debian's rpm reads ~/.rpmmacros: keep the caller's home out of it
    home.mkdir(exist_ok=True)
    subprocess.run(
        [
            "rpmbuild",
            "-bb",
            *([] if arch == "noarch" else ["--target", arch]),
            "--define",
            f"_topdir {work}",
            "--define",
            "_build_id_links none",
            str(spec),
        ],
        check=True,
        capture_output=True,
        env={"HOME": str(home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    found = list((work / "RPMS" / arch).glob(f"{name}-{version}-1*.{arch}.rpm"))
    assert found, f"rpmbuild made no package for {name}-{version}"
    return found[0]


def _createrepo(path: Path) -> None:
    subprocess.run(
        ["createrepo_c", "--quiet", "--update", "--groupfile", str(path / "comps.xml"), str(path)],
        check=True,
        capture_output=True,
    )


def make_repo(path: Path) -> RpmRepo:
    path.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ig-rpmbuild-"))
    (path / "comps.xml").write_text(COMPS)
    repo = RpmRepo(path=path, work=work)
    shutil.copy(_rpmbuild(work, "ig-busybox", "1.0", _spec_busybox()), path)
    for name in ("ig-hello", "ig-extra", "ig-tool"):
        shutil.copy(_rpmbuild(work, name, "1.0", _spec_simple(name, "1.0", f"{name} 1.0")), path)
        repo.versions[name] = "1.0"
    _createrepo(path)
    return repo


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Server:
    url: str
    httpd: http.server.ThreadingHTTPServer
    thread: threading.Thread

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve(directory: Path) -> Server:
    """Serve `directory` on 127.0.0.1 on a free port from a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return Server(f"http://127.0.0.1:{httpd.server_address[1]}/", httpd, thread)


def module_doc(
    name: str, stream: str, version: int, artifacts: list[str], profiles: dict[str, list[str]] | None = None
) -> str:
    """A modulemd v2 document; `artifacts` as `name-epoch:version-release.arch`."""
    prof = "".join(
        f"    {p}:\n      rpms: [{', '.join(rpms)}]\n" for p, rpms in (profiles or {"default": []}).items()
    )
    arts = "".join(f"      - {a}\n" for a in artifacts)
    return (
        f'---\ndocument: modulemd\nversion: 2\ndata:\n  name: {name}\n  stream: "{stream}"\n'
        f"  version: {version}\n  context: c0ffee42\n  arch: noarch\n  summary: {name} {stream}\n"
        f"  description: test module\n  license:\n    module: [MIT]\n  profiles:\n{prof}"
        f"  artifacts:\n    rpms:\n{arts}...\n"
    )


def defaults_doc(name: str, stream: str, profiles: dict[str, list[str]] | None = None) -> str:
    """A modulemd-defaults v1 document: `name`'s default stream (and default profiles per stream)."""
    prof = "".join(f'    "{s}": [{", ".join(p)}]\n' for s, p in (profiles or {stream: ["default"]}).items())
    return (
        f'---\ndocument: modulemd-defaults\nversion: 1\ndata:\n  module: {name}\n  stream: "{stream}"\n'
        f"  profiles:\n{prof}...\n"
    )


# Public names for other repository builders (tests/standin.py).
build_rpm = _rpmbuild
simple_spec = _spec_simple
busybox_spec = _spec_busybox
