"""Local stand-ins for a distribution's repositories, so image-builder's example specs build here.

`standin_repo(dir, packages=..., groups=..., modules=..., signer=...)` makes an rpm-md
repository holding a tiny noarch RPM for every package name asked for (each installs
`/usr/share/standin/<name>.txt`), `ig-busybox` (a shell, so `cmds` run in a scratch image),
comps groups with the given display names (`Minimal Install`, `Development Tools`), dnf module
streams (modulemd documents added with modifyrepo_c) and, with a `Signer`, packages signed by a
throwaway gpg key made at test time whose public key is served as `RPM-GPG-KEY-standin`
(and `repodata/repomd.xml` signed by it, as SUSE repositories are).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

from tests.rpmrepo import build_rpm, busybox_spec

KEY_FILE = "RPM-GPG-KEY-standin"
GPG = shutil.which("gpg") or "/usr/bin/gpg"


class Signer:
    """A throwaway gpg signing key in its own home directory."""

    def __init__(self, name: str = "imagegraph standin") -> None:
        self.name = name
        self.home = Path(tempfile.mkdtemp(prefix="ig-gpg-"))
        self.home.chmod(0o700)
        subprocess.run(
            [GPG, "--batch", "--homedir", str(self.home), "--pinentry-mode", "loopback", "--passphrase", ""]
            + ["--quick-gen-key", f"{name} <standin@imagegraph.invalid>", "rsa2048", "sign", "never"],
            check=True,
            capture_output=True,
        )

    def public_key(self) -> bytes:
        return subprocess.run(
            [GPG, "--homedir", str(self.home), "--armor", "--export", self.name],
            check=True,
            capture_output=True,
        ).stdout

    def sign(self, rpms: Iterable[Path]) -> None:
        home = self.home / "rpmhome"  # Debian's rpm reads ~/.rpmmacros: keep the caller's out
        home.mkdir(exist_ok=True)
        subprocess.run(
            [
                "rpmsign",
                "--addsign",
                "--define",
                f"_gpg_name {self.name}",
                "--define",
                f"_gpg_path {self.home}",
            ]
            + ["--define", f"__gpg {GPG}", *map(str, rpms)],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env={"HOME": str(home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )

    def sign_file(self, path: Path) -> None:
        """A detached armored signature `<path>.asc` and the public key as `<path>.key`."""
        subprocess.run(
            [GPG, "--batch", "--homedir", str(self.home), "--pinentry-mode", "loopback", "--passphrase", ""]
            + ["--local-user", self.name, "--armor", "--detach-sign", "--output", f"{path}.asc", str(path)],
            check=True,
            capture_output=True,
        )
        Path(f"{path}.key").write_bytes(self.public_key())

    def cleanup(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def _spec(name: str, version: str = "1.0") -> str:
    return f"""
Name: {name}
Version: {version}
Release: 1
Summary: stand-in for {name}
License: MIT
BuildArch: noarch

%description
Stand-in package for imagegraph's compatibility tests.

%install
mkdir -p %{{buildroot}}/usr/share/standin
echo '{name} {version}' > %{{buildroot}}/usr/share/standin/{name}.txt

%files
/usr/share/standin/{name}.txt
"""


def _comps(groups: dict[str, list[str]]) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<comps>"]
    for display, members in groups.items():
        gid = display.lower().replace(" ", "-")
        reqs = "".join(f'<packagereq type="mandatory">{escape(m)}</packagereq>' for m in members)
        out.append(
            f"<group><id>{escape(gid)}</id><name>{escape(display)}</name><description>stand-in</description>"
            f"<default>true</default><uservisible>true</uservisible><packagelist>{reqs}</packagelist></group>"
        )
    out.append("</comps>")
    return "\n".join(out) + "\n"


def _modulemd(modules: dict[str, list[str]]) -> str:
    """One stream per `name:stream`, its `default` profile installing the listed packages."""
    docs = []
    for i, (ns, pkgs) in enumerate(modules.items()):
        name, stream = ns.split(":")
        rpms = "".join(f"\n      - {p}" for p in pkgs)
        artifacts = "".join(f"\n      - {p}-0:1.0-1.noarch" for p in pkgs)
        docs.append(
            f"""---
document: modulemd
version: 2
data:
  name: {name}
  stream: "{stream}"
  version: {i + 1}
  context: c0ffee42
  arch: noarch
  summary: stand-in module {name}
  description: stand-in module
  license:
    module: [MIT]
  profiles:
    default:
      rpms:{rpms}
  artifacts:
    rpms:{artifacts}
...
"""
        )
    return "".join(docs)


def standin_repo(
    path: Path,
    *,
    packages: Iterable[str] = (),
    groups: dict[str, list[str]] | None = None,
    modules: dict[str, list[str]] | None = None,
    signer: Signer | None = None,
    busybox: bool = True,
) -> Path:
    """Build the repository in `path` (see the module docstring) and return `path`."""
    groups = groups or {}
    modules = modules or {}
    path.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ig-standin-"))
    try:
        names = (
            set(packages)
            | {m for ms in groups.values() for m in ms}
            | {p for ps in modules.values() for p in ps}
        )
        names.discard("ig-busybox")
        rpms = [build_rpm(work, n, "1.0", _spec(n)) for n in sorted(names)]
        if busybox:
            rpms.append(build_rpm(work, "ig-busybox", "1.0", busybox_spec()))
        for rpm in rpms:
            shutil.copy(rpm, path)
        if signer:
            if rpms:
                signer.sign(path.glob("*.rpm"))
            (path / KEY_FILE).write_bytes(signer.public_key())
        argv = ["createrepo_c", "--quiet"]
        if groups:
            (path / "comps.xml").write_text(_comps(groups))
            argv += ["--groupfile", str(path / "comps.xml")]
        subprocess.run([*argv, str(path)], check=True, capture_output=True)
        if modules:
            (work / "modules.yaml").write_text(_modulemd(modules))
            subprocess.run(
                ["modifyrepo_c", "--mdtype=modules", str(work / "modules.yaml"), str(path / "repodata")],
                check=True,
                capture_output=True,
            )
        if signer:  # signed metadata too, as SUSE repositories have it (zypper checks repomd.xml)
            signer.sign_file(path / "repodata" / "repomd.xml")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
