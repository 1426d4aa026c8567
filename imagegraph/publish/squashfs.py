"""A root filesystem -> one reproducible SquashFS file.

Nodes boot the SquashFS through dracut's `dmsquash-live` (`root=live:URL`),
so this is the artifact that matters most. Choices, and why:

- **Reproducible.** The same tree gives the same bytes, so a sha256 identifies
  the content and a rebuild of an unchanged layer publishes nothing new.
  squashfs-tools >= 4.5 is reproducible by default (fixed fragment/inode
  order even with several processors); we add a fixed filesystem time
  (`-mkfs-time`) and a fixed time for every file (`-all-time`): a rebuilt
  layer has the same content but fresh mtimes (dnf, cmds and copyfiles write
  files at build time), and those must not change the artifact.
  `SOURCE_DATE_EPOCH` is only a clamp in mksquashfs, and mksquashfs refuses it
  together with the options, so it is removed from the child's environment;
  its value, when set, is used as the default epoch (the reproducible-builds
  convention).
- **Extended attributes are kept.** File capabilities (`security.capability`
  on ping, newuidmap, ...) and SELinux labels live there; they come from the
  image's content and are as deterministic as the files.
- **Mount points stay, their contents do not.** `proc sys dev run` are
  mounted over at boot; whatever a build left inside them is junk. The
  directories are created (as pseudo files) when an image lacks them, since
  dracut's switch_root needs them in the new root.
- **Failures leave nothing behind.** mksquashfs writes a temporary file in
  the destination directory that is renamed over `dest` only after success
  (and fsync); on any failure (ENOSPC, a bad option, cancellation) it is
  removed and `PublishError` quotes mksquashfs's last lines.
- `-exit-on-error`: by default mksquashfs skips unreadable files with a
  warning; a boot image missing files silently is worse than a failed run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from ..errors import PublishError
from ..runner import CommandError, Runner
from ..spec import SquashfsOptions

MOUNT_POINTS = {"proc": "555", "sys": "555", "dev": "755", "run": "755"}
COMPRESSORS = ("gzip", "lzo", "lz4", "xz", "zstd", "lzma")
# Compressors that take `-Xcompression-level`, and its range (squashfs-tools 4.5/4.6).
LEVELS = {"gzip": (1, 9), "zstd": (1, 22), "lzo": (1, 9)}


def default_epoch() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible-builds convention), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return int(value) if value.isdigit() else 0


def processors() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def mksquashfs_args(
    rootfs: Path,
    dest: Path,
    opts: SquashfsOptions,
    epoch: int,
    layer: str = "",
    missing: tuple[str, ...] = (),
) -> list[str]:
    """The full mksquashfs command line (without the env wrapper).

    `missing`: mount points the image lacks, added as empty directories.
    """
    comp = opts.compression or "gzip"
    if comp not in COMPRESSORS:
        raise PublishError(
            layer, "squashfs", f"unknown compression '{comp}' (one of {', '.join(COMPRESSORS)})"
        )
    argv = [
        "mksquashfs",
        str(rootfs),
        str(dest),
        "-noappend",
        "-no-progress",
        "-exit-on-error",
        "-processors",
        str(processors()),
        "-comp",
        comp,
        "-mkfs-time",
        str(epoch),
        "-all-time",
        str(epoch),
    ]
    if opts.level is not None:
        if comp not in LEVELS:
            raise PublishError(
                layer,
                "squashfs",
                f"compression '{comp}' takes no level (levels exist for {', '.join(sorted(LEVELS))}); "
                "remove squashfs.level",
            )
        lo, hi = LEVELS[comp]
        if not lo <= opts.level <= hi:
            raise PublishError(
                layer, "squashfs", f"{comp} compression level must be {lo}..{hi}, not {opts.level}"
            )
        argv += ["-Xcompression-level", str(opts.level)]
    if opts.block_size is not None:
        argv += ["-b", str(opts.block_size)]
    for d in missing:
        argv += ["-p", f"{d} d {MOUNT_POINTS[d]} 0 0"]
    # Directory contents of the mount points are left out; the directories stay.
    # `-e` must come last: mksquashfs reads every later argument as an exclude.
    argv += ["-wildcards", "-e", *(f"{d}/*" for d in sorted(MOUNT_POINTS))]
    return argv


def _missing_mount_points(rootfs: Path) -> list[str]:
    return [d for d in sorted(MOUNT_POINTS) if not (rootfs / d).is_dir() and not (rootfs / d).is_symlink()]


def make_squashfs(
    rootfs: Path,
    dest: Path,
    opts: SquashfsOptions,
    runner: Runner,
    epoch: int | None = None,
    *,
    while_writing: Callable[[Path], AbstractContextManager[object]] | None = None,
) -> Path:
    """Write a SquashFS of `rootfs` to `dest` (replacing it atomically) and return `dest`.

    `epoch` is the time given to the filesystem and to every file in it
    (default: SOURCE_DATE_EPOCH or 0). `while_writing(path)`, when given, is
    entered around mksquashfs with the file being written (s3stream.py
    follows it); it reads only, so the bytes are mksquashfs's.
    """
    rootfs, dest = Path(rootfs), Path(dest)
    layer = runner.layer
    if not rootfs.is_dir():
        raise PublishError(layer, "squashfs", f"root filesystem {rootfs} is not a directory")
    epoch = default_epoch() if epoch is None else int(epoch)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        argv = mksquashfs_args(rootfs, tmp, opts, epoch, layer, tuple(_missing_mount_points(rootfs)))
        # `env -u`: mksquashfs refuses SOURCE_DATE_EPOCH together with -mkfs-time/-all-time.
        try:
            with while_writing(tmp) if while_writing is not None else nullcontext():
                runner.run(["env", "-u", "SOURCE_DATE_EPOCH", *argv], step="squashfs", loglevel="WARNING")
        except CommandError as exc:
            tail = "\n".join("    " + t for t in exc.tail)
            raise PublishError(
                layer,
                "squashfs",
                f"mksquashfs exited with status {exc.returncode}" + (f":\n{tail}" if tail else ""),
            ) from exc
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        fsync_path(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def fsync_path(path: Path) -> None:
    """Flush a file or directory to disk, best effort (an atomic rename is durable only then)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def squashfs_tools_version() -> str:
    """e.g. '4.5.1' ('' when mksquashfs is missing); for the doctor/--version output."""
    exe = shutil.which("mksquashfs")
    if not exe:
        return ""
    import subprocess

    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    first = out.splitlines()[0] if out else ""
    parts = first.split()
    return parts[2] if len(parts) >= 3 and parts[1] == "version" else ""
