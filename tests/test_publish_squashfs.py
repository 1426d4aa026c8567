"""SquashFS making: reproducible bytes, mount points kept empty, options honoured, no partial files."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imagegraph.errors import PublishError
from imagegraph.publish.squashfs import make_squashfs, mksquashfs_args
from imagegraph.runner import Runner
from imagegraph.spec import SquashfsOptions

from .needs import missing, requires
from .publish_helpers import EL, make_rootfs

pytestmark = requires(shutil.which("mksquashfs") is not None, "squashfs-tools not installed")

FAST = SquashfsOptions(compression="gzip", level=1)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def listing(image: Path) -> list[str]:
    out = subprocess.run(
        ["unsquashfs", "-lls", "-d", "", str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def names(image: Path) -> set[str]:
    out = subprocess.run(
        ["unsquashfs", "-l", "-d", "", str(image)], capture_output=True, text=True, check=True
    )
    return {line.strip() for line in out.stdout.splitlines() if line.startswith("/")}


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "root", {"5.14.0-427.el9.x86_64": EL})


def test_same_tree_gives_identical_bytes_even_after_touching(rootfs: Path, tmp_path: Path) -> None:
    runner = Runner("test")
    a = make_squashfs(rootfs, tmp_path / "out/a.squashfs", SquashfsOptions(), runner)
    # Same content, fresh mtimes everywhere (what a rebuild of an unchanged layer produces).
    future = time.time() + 3600
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (future, future), follow_symlinks=False)
    b = make_squashfs(rootfs, tmp_path / "out/b.squashfs", SquashfsOptions(), runner)
    assert sha(a) == sha(b)
    # Overwriting an existing destination works (-noappend) and gives the same bytes again.
    c = make_squashfs(rootfs, a, SquashfsOptions(), runner)
    assert sha(c) == sha(b)
    assert oct(a.stat().st_mode & 0o777) == "0o644"
    # A different epoch is a different (but again reproducible) filesystem.
    d = make_squashfs(rootfs, tmp_path / "out/d.squashfs", SquashfsOptions(), runner, epoch=1700000000)
    assert sha(d) != sha(a)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_source_date_epoch_in_environment_is_the_default(
    rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = Runner("test")
    zero = make_squashfs(rootfs, tmp_path / "zero.sqfs", FAST, runner, epoch=0)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # mksquashfs alone would refuse this with -all-time
    env = make_squashfs(rootfs, tmp_path / "env.sqfs", FAST, runner)
    explicit = make_squashfs(rootfs, tmp_path / "explicit.sqfs", FAST, runner, epoch=1700000000)
    assert sha(env) == sha(explicit) != sha(zero)


def test_mount_points_present_but_empty(rootfs: Path, tmp_path: Path) -> None:
    image = make_squashfs(rootfs, tmp_path / "r.sqfs", FAST, Runner("test"))
    got = names(image)
    for d in ("proc", "sys", "dev", "run"):
        assert f"/{d}" in got
        assert not [n for n in got if n.startswith(f"/{d}/")], f"/{d} should be empty"
    assert {"/etc/hostname", "/usr/bin/hello", "/var/empty/deep/tree", "/lib"} <= got
    lines = "\n".join(listing(image))
    assert "/usr/bin/hi -> hello" in lines
    assert "/lib -> usr/lib" in lines
    assert "1970-01-01 00:00" in lines


def test_missing_mount_points_are_created(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    (root / "etc").mkdir(parents=True)
    (root / "etc/x").write_text("x")
    image = make_squashfs(root, tmp_path / "bare.sqfs", FAST, Runner("test"))
    got = names(image)
    assert {"/proc", "/sys", "/dev", "/run", "/etc/x"} <= got
    lines = "\n".join(listing(image))
    assert "dr-xr-xr-x root/root" in lines  # proc and sys are 555, as distributions ship them


def test_compression_options_change_the_output(rootfs: Path, tmp_path: Path) -> None:
    runner = Runner("test")
    outs = {
        "xz": make_squashfs(rootfs, tmp_path / "xz.sqfs", SquashfsOptions("xz"), runner),
        "gzip1": make_squashfs(rootfs, tmp_path / "g1.sqfs", SquashfsOptions("gzip", 1), runner),
        "gzip9": make_squashfs(rootfs, tmp_path / "g9.sqfs", SquashfsOptions("gzip", 9), runner),
        "zstd": make_squashfs(rootfs, tmp_path / "z.sqfs", SquashfsOptions("zstd", 19, "64K"), runner),
    }
    assert len({sha(p) for p in outs.values()}) == len(outs)
    info = subprocess.run(["unsquashfs", "-s", str(outs["zstd"])], capture_output=True, text=True).stdout
    assert "zstd" in info and "Block size 65536" in info


def test_bad_options_are_refused_before_running() -> None:
    with pytest.raises(PublishError, match="compression 'xz' takes no level"):
        mksquashfs_args(Path("/r"), Path("/d"), SquashfsOptions("xz", 5), 0)
    with pytest.raises(PublishError, match="gzip compression level must be 1..9"):
        mksquashfs_args(Path("/r"), Path("/d"), SquashfsOptions("gzip", 12), 0)
    argv = mksquashfs_args(Path("/r"), Path("/d"), SquashfsOptions("zstd", 3, "1M"), 0)
    assert argv[argv.index("-e") :] == ["-e", "dev/*", "proc/*", "run/*", "sys/*"]  # -e must come last
    assert "-noappend" in argv and "-no-progress" in argv and "-processors" in argv


def test_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    """mksquashfs running out of space (a 64 KiB tmpfs) -> PublishError, nothing left behind."""
    root = make_rootfs(tmp_path / "root", big_file=512 * 1024)
    small = tmp_path / "small"
    small.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True, text=True
    )
    if r.returncode != 0:
        missing(f"cannot mount a tmpfs here ({r.stderr.strip()}); needs root")
    try:
        dest = small / "rootfs.squashfs"
        with pytest.raises(PublishError) as err:
            make_squashfs(root, dest, FAST, Runner("compute"))
        assert "compute: publishing to squashfs failed: mksquashfs exited with status" in str(err.value)
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="is not a directory"):
        make_squashfs(tmp_path / "nope", tmp_path / "x.sqfs", FAST, Runner("t"))
