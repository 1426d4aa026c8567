"""What is installed in an image: its package inventory, read from the image's own database.

`read_inventory(root, runner)` looks for an rpm database (`/usr/lib/sysimage/rpm`,
then `/var/lib/rpm`, following the image's own symlinks) or a dpkg status
database (`/var/lib/dpkg`) under a mounted root and asks the HOST's rpm or
dpkg-query to read it (`rpm --dbpath COPY -qa --queryformat`, `dpkg-query --admindir COPY -W`)
on a private copy of the database's regular files, so the image is not
written to and symlinks in it lead nowhere. Nothing inside the image runs,
so a foreign-arch image (or one without rpm at all, as a scratch dnf image)
is read the same way. An image with neither database has an inventory of
status `unknown`, never an empty one.

An `Inventory` is data: `to_json` / `from_json`, and `compress` / `decompress`
(zlib'd canonical JSON) for the state, which keeps one per layer key.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zlib
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from .rootfs import read_os_release, resolve_in_root
from .runner import Runner

# Where rpm keeps its database, newest convention first (Fedora 36+/EL 10 use sysimage;
# /var/lib/rpm is then often a symlink to it).
RPM_DBPATHS = ("/usr/lib/sysimage/rpm", "/var/lib/rpm")
RPM_DB_FILES = ("rpmdb.sqlite", "Packages", "Packages.db")
DPKG_ADMINDIR = "/var/lib/dpkg"

_SEP = "\x1f"  # unit separator: no field of a package database holds it
RPM_QUERYFORMAT = (
    _SEP.join(["%{NAME}", "%{EPOCH}", "%{VERSION}", "%{RELEASE}", "%{ARCH}", "%{LICENSE}", "%{SOURCERPM}"])
    + "\\n"
)
DPKG_SHOWFORMAT = (
    _SEP.join(
        [
            "${Package}",
            "${Version}",
            "${Architecture}",
            "${source:Package}",
            "${source:Version}",
            "${db:Status-Abbrev}",
        ]
    )
    + "\\n"
)


class PackageFormat(StrEnum):
    RPM = "rpm"
    DEB = "deb"


class InventoryStatus(StrEnum):
    KNOWN = "known"
    UNKNOWN = "unknown"  # no package database found, or it could not be read


@dataclass(frozen=True)
class Package:
    name: str
    version: str  # rpm: [epoch:]version-release; deb: the Debian version
    arch: str
    license: str | None = None
    source: str | None = None  # rpm: the source rpm's file name; deb: `source-name source-version`
    epoch: str | None = None  # rpm only (also inside `version` when set)

    @property
    def ident(self) -> tuple[str, str]:
        """What identifies a package across builds: name and architecture (multilib, multiarch)."""
        return (self.name, self.arch)

    def sort_key(self) -> tuple[str, ...]:
        return (self.name, self.arch, self.version, self.license or "", self.source or "", self.epoch or "")


@dataclass
class Inventory:
    status: InventoryStatus
    format: PackageFormat | None = None
    packages: list[Package] = field(default_factory=list)
    dbpath: str | None = None  # where in the image it was read
    reason: str = ""  # why it is unknown
    os_id: str = ""  # the image's os-release ID and VERSION_ID (purl namespace and distro)
    os_version: str = ""

    def to_json(self) -> dict:
        return {
            "status": str(self.status),
            "os_id": self.os_id,
            "os_version": self.os_version,
            "format": str(self.format) if self.format else None,
            "dbpath": self.dbpath,
            "reason": self.reason,
            "packages": [asdict(p) for p in self.packages],
        }

    @classmethod
    def from_json(cls, doc: dict) -> Inventory:
        return cls(
            status=InventoryStatus(doc["status"]),
            format=PackageFormat(doc["format"]) if doc.get("format") else None,
            packages=[Package(**p) for p in doc.get("packages", [])],
            dbpath=doc.get("dbpath"),
            reason=doc.get("reason", ""),
            os_id=doc.get("os_id", ""),
            os_version=doc.get("os_version", ""),
        )

    def compress(self) -> bytes:
        return zlib.compress(json.dumps(self.to_json(), sort_keys=True).encode(), 9)

    @classmethod
    def decompress(cls, blob: bytes) -> Inventory:
        return cls.from_json(json.loads(zlib.decompress(blob)))

    @property
    def known(self) -> bool:
        return self.status == InventoryStatus.KNOWN


def _inside(root: Path, path: str) -> str | None:
    """`path` resolved inside the image (its own symlinks), as an absolute path in the image."""
    p = resolve_in_root(root, path)
    if p is None or not p.is_dir():
        return None
    return "/" + os.path.relpath(p, root).lstrip("./") if p != root else "/"


def find_database(root: Path) -> tuple[PackageFormat, str] | None:
    """The package database an image root holds: (format, its directory inside the image)."""
    root = Path(root)
    for candidate in RPM_DBPATHS:
        d = _inside(root, candidate)
        if d and any(_regular(root / d.lstrip("/") / f) for f in RPM_DB_FILES):
            return PackageFormat.RPM, d
    d = _inside(root, DPKG_ADMINDIR)
    if d and _regular(root / d.lstrip("/") / "status"):
        return PackageFormat.DEB, d
    return None


def _regular(path: Path) -> bool:
    """A regular file itself, not a symlink to one (which would point into the host)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def read_inventory(root: Path, runner: Runner, step: str = "inventory") -> Inventory:
    """The packages installed under a mounted image root, read by the host's tools (module docstring)."""
    root = Path(root)
    found = find_database(root)
    if found is None:
        return Inventory(
            InventoryStatus.UNKNOWN,
            reason="no rpm database (/usr/lib/sysimage/rpm, /var/lib/rpm) or dpkg status "
            "(/var/lib/dpkg/status) in the image",
        )
    fmt, dbpath = found
    # The tools read a private copy of the database's regular files: rpm opens even a query
    # read-write (it would add rpmdb.sqlite-shm/-wal and .rpm.lock to the image being
    # committed), and a symlink planted in the image must not lead the host's tools to the
    # host's own files.
    with tempfile.TemporaryDirectory(prefix="imagegraph-inventory-") as tmp:
        copy = Path(tmp) / "db"
        _copy_regular_files(root / dbpath.lstrip("/"), copy)
        if fmt == PackageFormat.RPM:
            # An empty HOME: Debian's rpm reads ~/.rpmmacros, which may move the database elsewhere.
            argv = ["rpm", "--dbpath", str(copy), "-qa", "--queryformat", RPM_QUERYFORMAT]
            env = {"HOME": "/nonexistent", "LC_ALL": "C"}
        else:
            _copy_regular_files(root / dbpath.lstrip("/") / "updates", copy / "updates")
            argv = ["dpkg-query", "--admindir", str(copy), "-W", "-f", DPKG_SHOWFORMAT]
            env = {"LC_ALL": "C"}
        done = runner.run(argv, step=step, capture=True, check=False, env=env)
    if done.returncode != 0:
        tail = " ".join(done.tail[-3:])
        return Inventory(
            InventoryStatus.UNKNOWN,
            fmt,
            dbpath=dbpath,
            reason=f"{argv[0]} could not read {dbpath}: exit status {done.returncode} {tail}".strip(),
        )
    parse = _parse_rpm if fmt == PackageFormat.RPM else _parse_dpkg
    packages = [p for line in done.stdout.splitlines() if (p := parse(line)) is not None]
    packages.sort(key=Package.sort_key)
    osr = read_os_release(root)
    return Inventory(
        InventoryStatus.KNOWN,
        fmt,
        packages,
        dbpath,
        os_id=osr.get("ID", ""),
        os_version=osr.get("VERSION_ID", ""),
    )


def _copy_regular_files(src: Path, dest: Path) -> None:
    """The regular files directly in `src` (never through a symlink) into a new directory `dest`."""
    dest.mkdir(mode=0o700)
    try:
        entries = list(os.scandir(src)) if not src.is_symlink() else []
    except OSError:
        return
    for e in entries:
        if e.is_file(follow_symlinks=False) and not e.name.startswith(".rpm.lock"):
            shutil.copyfile(e.path, dest / e.name, follow_symlinks=False)


def _none(value: str) -> str | None:
    return None if value in ("", "(none)") else value


def _parse_rpm(line: str) -> Package | None:
    parts = line.split(_SEP)
    if len(parts) != 7:
        return None
    name, epoch, version, release, arch, lic, srpm = parts
    if name == "gpg-pubkey":  # imported signing keys are database entries, not packages
        return None
    ep = _none(epoch)
    evr = f"{ep + ':' if ep else ''}{version}-{release}"
    return Package(name, evr, _none(arch) or "noarch", _none(lic), _none(srpm), ep)


# dpkg's status abbreviation, second letter: n not-installed and c config-files have no files
_NOT_INSTALLED = ("n", "c")


def _parse_dpkg(line: str) -> Package | None:
    parts = line.split(_SEP)
    if len(parts) != 6:
        return None
    name, version, arch, src, src_version, status = parts
    if len(status) < 2 or status[1] in _NOT_INSTALLED or not version:
        return None
    source = f"{src} {src_version}" if src and (src != name or src_version != version) else None
    return Package(name, version, arch, None, source, None)
