"""Package inventories read from an image's own database by the host's rpm and dpkg-query."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegraph.packages import (
    Inventory,
    InventoryStatus,
    Package,
    PackageFormat,
    find_database,
    read_inventory,
)
from imagegraph.runner import Runner

# What the image's own tools would do if anything ran them: leave a mark and fail.
TRAP = "#!/bin/sh\necho ran > {mark}\nexit 99\n"
# An aarch64 ELF header: a foreign binary the host cannot execute.
FOREIGN_ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\xb7\x00" + b"\x00" * 44


def runner() -> Runner:
    return Runner("test", logfile=io.StringIO())


def booby_trap(root: Path, mark: Path, *names: str) -> None:
    """Replace the image's package tools by files that would fail (and leave `mark`) if run."""
    for name in names:
        for d in ("usr/bin", "bin", "usr/sbin"):
            p = root / d / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(TRAP.format(mark=mark))
            p.chmod(0o755)
    lib = root / "usr/lib/aarch64-linux-gnu/librpm.so.9"
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(FOREIGN_ELF)
    (root / "usr/bin/dpkg-query.real").write_bytes(FOREIGN_ELF)


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query")
def test_dpkg_inventory_of_a_foreign_root_runs_nothing_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg/updates").mkdir(parents=True)
    # This host's own status file: a real dpkg database, read as an image's.
    shutil.copy("/var/lib/dpkg/status", root / "var/lib/dpkg/status")
    mark = tmp_path / "ran"
    booby_trap(root, mark, "dpkg", "dpkg-query", "sh")
    inv = read_inventory(root, runner())
    assert not mark.exists()
    assert inv.status == InventoryStatus.KNOWN and inv.format == PackageFormat.DEB
    host = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {ln.split()[0] for ln in host.splitlines() if ln.split()[2][1] not in "nc"}
    assert {p.name for p in inv.packages} == installed
    dpkg = next(p for p in inv.packages if p.name == "dpkg")
    assert (
        dpkg.version
        == subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "dpkg"], capture_output=True, text=True
        ).stdout
    )


@pytest.mark.skipif(shutil.which("rpm") is None, reason="needs rpm")
def test_rpm_inventory_of_a_foreign_root_runs_nothing_inside(tmp_path: Path, rpm_repo) -> None:
    root = tmp_path / "root"
    root.mkdir()
    rpms = sorted(str(p) for p in rpm_repo.path.glob("*.rpm") if "busybox" not in p.name)
    env = {**os.environ, "HOME": "/nonexistent"}
    subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "--initdb"], check=True, env=env)
    subprocess.run(
        ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-i", "--justdb", "--nodeps"]
        + ["--noscripts", "--nosignature", *rpms],
        check=True,
        env=env,
    )
    mark = tmp_path / "ran"
    booby_trap(root, mark, "rpm", "rpmdb", "sh")
    inv = read_inventory(root, runner())
    assert not mark.exists()
    assert inv.known and inv.format == PackageFormat.RPM and inv.dbpath == "/var/lib/rpm"
    by_name = {p.name: p for p in inv.packages}
    assert set(by_name) >= {"ig-hello", "ig-extra", "ig-tool"}
    hello = by_name["ig-hello"]
    assert (hello.version, hello.arch, hello.license) == (
        f"{rpm_repo.versions['ig-hello']}-1",
        "noarch",
        "MIT",
    )
    assert hello.source and hello.source.startswith("ig-hello-") and hello.source.endswith(".src.rpm")


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.skipif(shutil.which("rpm") is None, reason="needs rpm")
def test_reading_writes_nothing_into_the_image(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, "HOME": "/nonexistent"}
    subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "--initdb"], check=True, env=env)
    for extra in root.glob("var/lib/rpm/*"):  # as a committed image may hold it: the database alone
        if extra.name != "rpmdb.sqlite":
            extra.unlink()
    before = snapshot(root)
    inv = read_inventory(root, runner())
    assert inv.known and inv.packages == []  # a database with nothing in it: known, and empty
    assert snapshot(root) == before


def test_a_planted_symlink_is_not_followed_into_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").symlink_to("/var/lib/dpkg/status")  # the HOST's, if followed
    inv = read_inventory(root, runner())
    assert inv.status == InventoryStatus.UNKNOWN and inv.packages == []


def test_rpm_database_found_through_the_images_own_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/sysimage/rpm").mkdir(parents=True)
    (root / "usr/lib/sysimage/rpm/rpmdb.sqlite").write_bytes(b"")
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/rpm").symlink_to("/usr/lib/sysimage/rpm")  # absolute: inside the image
    assert find_database(root) == (PackageFormat.RPM, "/usr/lib/sysimage/rpm")


def test_no_database_is_unknown_not_empty(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    inv = read_inventory(tmp_path, runner())
    assert inv.status == InventoryStatus.UNKNOWN and inv.packages == []
    assert "no rpm database" in inv.reason


def test_unreadable_database_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "var/lib/rpm").mkdir(parents=True)
    (tmp_path / "var/lib/rpm/rpmdb.sqlite").write_bytes(b"not a database")
    inv = read_inventory(tmp_path, runner())
    assert inv.status == InventoryStatus.UNKNOWN and inv.format == PackageFormat.RPM
    assert "could not read /var/lib/rpm" in inv.reason


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x1f"), max_size=12
)
_pkg = st.builds(
    Package,
    name=_text.filter(bool),
    version=_text.filter(bool),
    arch=_text.filter(bool),
    license=st.none() | _text,
    source=st.none() | _text,
    epoch=st.none() | st.sampled_from(["1", "2"]),
)


@given(st.lists(_pkg, max_size=30), st.sampled_from(list(PackageFormat)))
def test_inventory_round_trips_through_its_compressed_form(packages: list[Package], fmt) -> None:
    inv = Inventory(InventoryStatus.KNOWN, fmt, sorted(packages, key=Package.sort_key), dbpath="/var/lib/rpm")
    assert Inventory.decompress(inv.compress()) == inv
