"""Which kernel and initramfs a root filesystem boots with, and what OS it is.

image-builder takes the first directory `os.listdir` returns from
`/lib/modules`, which is arbitrary when an image has several kernels. Here the
choice is deterministic: the highest version by rpm's version comparison
(`versions.rpmvercmp`) among the kernels that have BOTH a vmlinuz and an
initramfs, unless the spec names a version.

All lookups happen inside the image's root: symlinks are resolved against the
rootfs, never against the host (an image's `/lib -> usr/lib` or an absolute
`/boot/vmlinuz -> /boot/vmlinuz-K` must not lead into the build host's files).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from ..errors import PublishError
from ..rootfs import read_os_release, resolve_in_root
from ..versions import rpmvercmp

MODULE_DIRS = ("lib/modules", "usr/lib/modules")
# Where distributions put the kernel and the initramfs, in order of preference.
VMLINUZ_CANDIDATES = ("boot/vmlinuz-{k}", "lib/modules/{k}/vmlinuz", "usr/lib/modules/{k}/vmlinuz")
INITRAMFS_CANDIDATES = (
    "boot/initramfs-{k}.img",  # dracut on EL / Fedora
    "boot/initrd-{k}",  # SUSE
    "boot/initrd.img-{k}",  # Debian / Ubuntu (initramfs-tools or dracut)
)


@dataclass(frozen=True)
class BootFiles:
    """The kernel an image boots: its version and the two files (host paths into the rootfs)."""

    kver: str
    vmlinuz: Path
    initramfs: Path

    @property
    def initramfs_name(self) -> str:
        """The file name in the image, e.g. `initramfs-K.img` or `initrd-K` (image-builder keys use it)."""
        return self.initramfs.name


def kernel_version_cmp(a: str, b: str) -> int:
    """Order kernel release strings (`uname -r` / `/lib/modules` names).

    The upstream version before the first '-' is compared first, then the rest
    (release, ABI number, flavour, arch) — as rpm compares version then release.
    A plain string comparison breaks the remaining ties so the order is total.
    """
    va, _, ra = a.partition("-")
    vb, _, rb = b.partition("-")
    return rpmvercmp(va, vb) or rpmvercmp(ra, rb) or ((a > b) - (a < b))


def sort_kernel_versions(versions: list[str] | set[str]) -> list[str]:
    """Ascending by `kernel_version_cmp` (the last is the newest)."""
    return sorted(versions, key=cmp_to_key(kernel_version_cmp))


# -------------------------------------------------------------------- paths in the image


def _regular_file(root: Path, path: str) -> Path | None:
    p = resolve_in_root(root, path)
    if p is None:
        return None
    try:
        return p if stat.S_ISREG(p.lstat().st_mode) else None
    except OSError:
        return None


def installed_kernels(rootfs: Path) -> list[str]:
    """Names of the directories under /lib/modules and /usr/lib/modules, newest last."""
    found: set[str] = set()
    for d in MODULE_DIRS:
        p = resolve_in_root(rootfs, d)
        if p is None or not p.is_dir():
            continue
        for entry in p.iterdir():
            if resolve_in_root(rootfs, f"{d}/{entry.name}") is not None and (p / entry.name).is_dir():
                found.add(entry.name)
    return sort_kernel_versions(found)


def _files_for(rootfs: Path, kver: str) -> tuple[Path | None, Path | None]:
    vmlinuz = next((f for c in VMLINUZ_CANDIDATES if (f := _regular_file(rootfs, c.format(k=kver)))), None)
    initrd = next((f for c in INITRAMFS_CANDIDATES if (f := _regular_file(rootfs, c.format(k=kver)))), None)
    return vmlinuz, initrd


def find_boot_files(rootfs: Path, kernel_version: str | None = None, *, layer: str = "") -> BootFiles:
    """The kernel to publish: `kernel_version` if given, else the newest complete one.

    Raises PublishError naming what was looked at when nothing (or not the
    named version) has both a vmlinuz and an initramfs. Callers that publish
    only a root filesystem (`rootfs_only`) do not call this.
    """
    rootfs = Path(rootfs)
    kernels = installed_kernels(rootfs)
    target = "boot files"
    if kernel_version is not None:
        vmlinuz, initrd = _files_for(rootfs, kernel_version)
        if vmlinuz and initrd:
            return BootFiles(kernel_version, vmlinuz, initrd)
        missing = []
        if vmlinuz is None:
            missing.append(
                "no vmlinuz (looked at "
                + ", ".join("/" + c.format(k=kernel_version) for c in VMLINUZ_CANDIDATES)
                + ")"
            )
        if initrd is None:
            missing.append(
                "no initramfs (looked at "
                + ", ".join("/" + c.format(k=kernel_version) for c in INITRAMFS_CANDIDATES)
                + ")"
            )
        have = ", ".join(kernels) or "none"
        raise PublishError(
            layer,
            target,
            f"kernel_version {kernel_version}: {' and '.join(missing)} in the image "
            f"(kernels in /lib/modules: {have})",
        )
    incomplete: list[str] = []
    for kver in reversed(kernels):
        vmlinuz, initrd = _files_for(rootfs, kver)
        if vmlinuz and initrd:
            return BootFiles(kver, vmlinuz, initrd)
        incomplete.append(f"{kver} (no {'vmlinuz' if not vmlinuz else 'initramfs'})")
    if not kernels:
        why = "the image has no kernel: /lib/modules and /usr/lib/modules are empty or missing"
    else:
        why = "no installed kernel has both a vmlinuz and an initramfs: " + "; ".join(incomplete)
    raise PublishError(
        layer,
        target,
        why
        + ". Install a kernel and run dracut in cmds, or set rootfs_only: true to publish only the rootfs",
    )


# ----------------------------------------------------------------------------- os-release


def os_release(rootfs: Path) -> tuple[str, str]:
    """(ID, VERSION_ID) of the image, e.g. ('rocky', '9.6'); '' for what is missing."""
    info = read_os_release(rootfs)
    return info.get("ID", ""), info.get("VERSION_ID", "")


def os_tag(rootfs: Path) -> str:
    """The OS part of image-builder's rootfs key: lower(ID + VERSION_ID), e.g. `rocky9.6`.

    Falls back as image-builder does: `ID_LIKE-NAME` when ID or VERSION_ID is
    missing (Debian testing has no VERSION_ID), then '' .
    """
    info = read_os_release(rootfs)
    if info.get("ID") and "VERSION_ID" in info:
        return (info["ID"] + info["VERSION_ID"]).lower()
    if "ID_LIKE" in info and "NAME" in info:
        return (info["ID_LIKE"] + "-" + info["NAME"]).lower()
    return ""
