"""An apt repository made at test time: tiny `Architecture: all` packages, one suite, one component.

`make_deb_repo(dir, suite)` returns a `DebRepo`; `add(name, version)` builds
`name_version_all.deb` with dpkg-deb (a file /usr/share/<name>/version.txt)
and rewrites `dists/<suite>/main/binary-amd64/Packages` (dpkg-scanpackages)
and an unsigned `Release` with SHA256 sums (layers use it with
`gpgcheck: false`, i.e. `[trusted=yes]`). Serve it with `tests.rpmrepo.serve`.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DebRepo:
    path: Path
    suite: str
    versions: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, version: str) -> Path:
        with tempfile.TemporaryDirectory(prefix="ig-deb-") as d:
            root = Path(d) / "pkg"
            (root / "DEBIAN").mkdir(parents=True)
            (root / "DEBIAN" / "control").write_text(
                f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                "Maintainer: imagegraph tests <tests@example.invalid>\n"
                f"Description: imagegraph test package {name}\n"
            )
            share = root / "usr" / "share" / name
            share.mkdir(parents=True)
            (share / "version.txt").write_text(f"{name} {version}\n")
            pool = self.path / "pool" / "main"
            pool.mkdir(parents=True, exist_ok=True)
            deb = pool / f"{name}_{version.replace(':', '%3a')}_all.deb"
            subprocess.run(
                ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                check=True,
                capture_output=True,
            )
        self.versions.setdefault(name, []).append(version)
        self._index()
        return deb

    def _index(self) -> None:
        rel = Path("main") / "binary-amd64" / "Packages"
        dist = self.path / "dists" / self.suite
        (dist / rel).parent.mkdir(parents=True, exist_ok=True)
        packages = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", "pool"],
            cwd=self.path,
            check=True,
            capture_output=True,
        ).stdout
        (dist / rel).write_bytes(packages)
        sha = hashlib.sha256(packages).hexdigest()
        (dist / "Release").write_text(
            f"Suite: {self.suite}\nCodename: {self.suite}\nArchitectures: amd64 all\nComponents: main\n"
            f"SHA256:\n {sha} {len(packages)} {rel.as_posix()}\n"
        )


def make_deb_repo(path: Path, suite: str = "igtest") -> DebRepo:
    path.mkdir(parents=True, exist_ok=True)
    return DebRepo(path, suite)
