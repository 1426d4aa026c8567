"""Kernel/initramfs selection (rpm version order) and os-release parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagegraph.errors import PublishError
from imagegraph.publish.bootfiles import (
    find_boot_files,
    installed_kernels,
    kernel_version_cmp,
    os_release,
    os_tag,
    rpmvercmp,
    sort_kernel_versions,
)
from imagegraph.rootfs import resolve_in_root

from .publish_helpers import DEBIAN, EL, EL_MODULES, SUSE, make_rootfs

# (a, b, expected rpmvercmp(a, b)): rpm's own test table (rpmvercmp.at) plus kernel strings.
RPMVERCMP = [
    ("1.0", "1.0", 0),
    ("1.0", "2.0", -1),
    ("2.0", "1.0", 1),
    ("2.0.1", "2.0.1", 0),
    ("2.0", "2.0.1", -1),
    ("2.0.1", "2.0", 1),
    ("2.0.1a", "2.0.1a", 0),
    ("2.0.1a", "2.0.1", 1),
    ("2.0.1", "2.0.1a", -1),
    ("5.5p1", "5.5p1", 0),
    ("5.5p1", "5.5p2", -1),
    ("5.5p2", "5.5p1", 1),
    ("5.5p10", "5.5p10", 0),
    ("5.5p1", "5.5p10", -1),
    ("5.5p10", "5.5p1", 1),
    ("10xyz", "10.1xyz", -1),
    ("10.1xyz", "10xyz", 1),
    ("xyz10", "xyz10", 0),
    ("xyz10", "xyz10.1", -1),
    ("xyz10.1", "xyz10", 1),
    ("xyz.4", "xyz.4", 0),
    ("xyz.4", "8", -1),
    ("8", "xyz.4", 1),
    ("xyz.4", "2", -1),
    ("2", "xyz.4", 1),
    ("5.5p2", "5.6p1", -1),
    ("5.6p1", "5.5p2", 1),
    ("5.6p1", "6.5p1", -1),
    ("6.5p1", "5.6p1", 1),
    ("6.0.rc1", "6.0", 1),
    ("6.0", "6.0.rc1", -1),
    ("10b2", "10a1", 1),
    ("10a2", "10b2", -1),
    ("1.0aa", "1.0aa", 0),
    ("1.0a", "1.0aa", -1),
    ("1.0aa", "1.0a", 1),
    ("10.0001", "10.0001", 0),
    ("10.0001", "10.1", 0),
    ("10.1", "10.0001", 0),
    ("10.0001", "10.0039", -1),
    ("10.0039", "10.0001", 1),
    ("4.999.9", "5.0", -1),
    ("5.0", "4.999.9", 1),
    ("20101121", "20101121", 0),
    ("20101121", "20101122", -1),
    ("20101122", "20101121", 1),
    ("2_0", "2_0", 0),
    ("2.0", "2_0", 0),
    ("2_0", "2.0", 0),
    ("a", "a", 0),
    ("a+", "a+", 0),
    ("a+", "a_", 0),
    ("a_", "a+", 0),
    ("+a", "+a", 0),
    ("+a", "_a", 0),
    ("_a", "+a", 0),
    ("+_", "+_", 0),
    ("_+", "+_", 0),
    ("_+", "_+", 0),
    ("+", "_", 0),
    ("_", "+", 0),
    ("1.0~rc1", "1.0~rc1", 0),
    ("1.0~rc1", "1.0", -1),
    ("1.0", "1.0~rc1", 1),
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~rc2", "1.0~rc1", 1),
    ("1.0~rc1~git123", "1.0~rc1~git123", 0),
    ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0~rc1", "1.0~rc1~git123", 1),
    ("1.0^", "1.0^", 0),
    ("1.0^", "1.0", 1),
    ("1.0", "1.0^", -1),
    ("1.0^git1", "1.0^git1", 0),
    ("1.0^git1", "1.0", 1),
    ("1.0", "1.0^git1", -1),
    ("1.0^git1", "1.0^git2", -1),
    ("1.0^git2", "1.0^git1", 1),
    ("1.0^git1", "1.01", -1),
    ("1.01", "1.0^git1", 1),
    ("1.0^20160101", "1.0^20160101", 0),
    ("1.0^20160101", "1.0.1", -1),
    ("1.0.1", "1.0^20160101", 1),
    ("1.0^20160101^git1", "1.0^20160101^git1", 0),
    ("1.0^20160102", "1.0^20160101^git1", 1),
    ("1.0^20160101^git1", "1.0^20160102", -1),
    ("1.0~rc1^git1", "1.0~rc1^git1", 0),
    ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0~rc1", "1.0~rc1^git1", -1),
    ("1.0^git1~pre", "1.0^git1~pre", 0),
    ("1.0^git1", "1.0^git1~pre", 1),
    ("1.0^git1~pre", "1.0^git1", -1),
    ("1b.fc17", "1b.fc17", 0),
    ("1b.fc17", "1.fc17", -1),
    ("1.fc17", "1b.fc17", 1),
    ("1g.fc17", "1g.fc17", 0),
    ("1g.fc17", "1.fc17", 1),
    ("1.fc17", "1g.fc17", -1),
    # real kernels
    ("5.14.0-427.el9", "5.14.0-70.el9", 1),
    ("6.1.0-28-amd64", "6.1.0-9-amd64", 1),
    ("4.18.0-553.el8_10.x86_64", "4.18.0-477.el8.x86_64", 1),
    ("4.18.0-553.el8_10.x86_64", "4.18.0-553.el8_9.x86_64", 1),
    ("5.14.21-150500.55.39-default", "5.14.21-150500.55.7-default", 1),
]


@pytest.mark.parametrize(("a", "b", "expected"), RPMVERCMP)
def test_rpmvercmp_matches_rpm(a: str, b: str, expected: int) -> None:
    assert rpmvercmp(a, b) == expected


def test_kernel_order_is_total_and_rpm_like() -> None:
    kernels = [
        "5.14.0-70.el9.x86_64",
        "5.14.0-427.el9.x86_64",
        "5.14.0-427.13.1.el9_4.x86_64",
        "5.14.0-503.el9.x86_64",
        "5.14.0-70.13.1.el9_0.x86_64",
    ]
    assert sort_kernel_versions(kernels) == [
        "5.14.0-70.el9.x86_64",
        "5.14.0-70.13.1.el9_0.x86_64",
        "5.14.0-427.el9.x86_64",
        "5.14.0-427.13.1.el9_4.x86_64",
        "5.14.0-503.el9.x86_64",
    ]
    # Upstream version first: a 6.x kernel beats any 5.x release number.
    assert kernel_version_cmp("6.1.0-1-amd64", "5.19.0-999-amd64") == 1
    # rpmvercmp-equal but different strings still have a fixed order.
    assert kernel_version_cmp("1.0_1", "1.0.1") != 0
    assert kernel_version_cmp("1.0_1", "1.0.1") == -kernel_version_cmp("1.0.1", "1.0_1")


def test_highest_complete_kernel_is_picked(tmp_path: Path) -> None:
    root = make_rootfs(
        tmp_path / "root",
        {
            "5.14.0-70.el9.x86_64": EL,
            "5.14.0-427.el9.x86_64": EL,  # highest: wins over 70 although it sorts lower as a string
            "5.14.0-284.el9.x86_64": EL,
        },
    )
    boot = find_boot_files(root)
    assert boot.kver == "5.14.0-427.el9.x86_64"
    assert boot.vmlinuz == root / "boot/vmlinuz-5.14.0-427.el9.x86_64"
    assert boot.initramfs.name == "initramfs-5.14.0-427.el9.x86_64.img"


def test_kernel_without_initramfs_is_skipped(tmp_path: Path) -> None:
    root = make_rootfs(
        tmp_path / "root", {"5.14.0-70.el9.x86_64": EL, "5.14.0-427.el9.x86_64": (EL[0], None)}
    )
    assert find_boot_files(root).kver == "5.14.0-70.el9.x86_64"


def test_named_version_is_honoured(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "root", {"5.14.0-70.el9.x86_64": EL, "5.14.0-427.el9.x86_64": EL})
    assert find_boot_files(root, "5.14.0-70.el9.x86_64").kver == "5.14.0-70.el9.x86_64"
    with pytest.raises(
        PublishError,
        match=r"kernel_version 6\.0: no vmlinuz .* and no initramfs .*kernels in /lib/modules: 5\.14",
    ):
        find_boot_files(root, "6.0", layer="compute")


def test_vmlinuz_in_modules_dir_and_distro_initrd_names(tmp_path: Path) -> None:
    el = make_rootfs(tmp_path / "el", {"5.14.0-427.el9.x86_64": EL_MODULES})
    assert find_boot_files(el).vmlinuz == el / "usr/lib/modules/5.14.0-427.el9.x86_64/vmlinuz"
    suse = make_rootfs(tmp_path / "suse", {"5.14.21-150500.55.39-default": SUSE})
    assert find_boot_files(suse).initramfs_name == "initrd-5.14.21-150500.55.39-default"
    deb = make_rootfs(tmp_path / "deb", {"6.1.0-9-amd64": DEBIAN, "6.1.0-28-amd64": DEBIAN})
    found = find_boot_files(deb)
    assert (found.kver, found.initramfs_name) == ("6.1.0-28-amd64", "initrd.img-6.1.0-28-amd64")


def test_missing_initramfs_is_a_clear_error(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "root", {"5.14.0-427.el9.x86_64": (EL[0], None)})
    with pytest.raises(PublishError) as err:
        find_boot_files(root, layer="compute")
    text = str(err.value)
    assert "compute" in text and "5.14.0-427.el9.x86_64 (no initramfs)" in text
    assert "dracut" in text and "rootfs_only" in text


def test_no_kernel_at_all(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "root")
    with pytest.raises(PublishError, match="the image has no kernel"):
        find_boot_files(root)


def test_symlinks_resolve_inside_the_image(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "root", {"5.14.0-427.el9.x86_64": (None, EL[1])})
    # An absolute link must point into the image, not to the host's /boot.
    real = root / "boot/real-kernel"
    real.write_bytes(b"K")
    os.symlink("/boot/real-kernel", root / "boot/vmlinuz-5.14.0-427.el9.x86_64")
    assert find_boot_files(root).vmlinuz == real
    os.symlink("/../../../../etc/passwd", root / "escape")
    assert resolve_in_root(root, "escape") is None  # /etc/passwd of the image does not exist
    os.symlink("loop", root / "loop")
    assert resolve_in_root(root, "loop") is None
    # /lib -> usr/lib and /usr/lib/modules are the same directory: each kernel counted once.
    assert installed_kernels(root) == ["5.14.0-427.el9.x86_64"]


def test_os_release(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "root")
    assert os_release(root) == ("rocky", "9.6")
    assert os_tag(root) == "rocky9.6"
    sles = make_rootfs(tmp_path / "sles", os_release='NAME="SLES"\nVERSION_ID="15.5"\nID="sles"\n')
    assert os_tag(sles) == "sles15.5"
    # Debian testing has no VERSION_ID: image-builder falls back to ID_LIKE-NAME, else nothing.
    testing = make_rootfs(
        tmp_path / "t", os_release='PRETTY_NAME="Debian trixie/sid"\nNAME="Debian"\nID=debian\n'
    )
    assert os_tag(testing) == ""
    ubuntu_like = make_rootfs(tmp_path / "u", os_release="NAME=Pop\nID=pop\nID_LIKE=ubuntu\n")
    assert os_tag(ubuntu_like) == "ubuntu-pop"
    (tmp_path / "none").mkdir()
    assert os_release(tmp_path / "none") == ("", "")
