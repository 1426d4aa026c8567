"""Architecture names and the host's ability to run foreign binaries (binfmt_misc)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegraph.arch import Arch, emulation, host_arch, normalize_arch


@given(st.sampled_from(list(Arch)))
def test_every_spelling_maps_back(arch: Arch) -> None:
    for name in (arch.value, arch.oci, arch.debian, arch.value.upper()):
        assert normalize_arch(name) is arch


def test_unknown_name_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'sparc'.*x86_64, aarch64, ppc64le"):
        normalize_arch("sparc")


def handler(tmp: Path, arch: str, flags: str, enabled: bool = True) -> Path:
    (tmp / "status").write_text("enabled\n")
    (tmp / f"qemu-{arch}").write_text(
        ("enabled\n" if enabled else "disabled\n")
        + f"interpreter /usr/libexec/qemu-binfmt/{arch}-binfmt-P\nflags: {flags}\noffset 0\nmagic 7f454c46\n"
    )
    return tmp


def test_native_needs_nothing(tmp_path: Path) -> None:
    e = emulation(Arch.X86_64, tmp_path, host=Arch.X86_64)
    assert e.native and e.usable


@pytest.mark.parametrize(
    ("setup", "problem", "fix"),
    [
        (lambda d: d, "binfmt_misc is not mounted", "mount -t binfmt_misc"),
        (
            lambda d: (d / "status").write_text("enabled\n") and d,
            "no binfmt_misc handler",
            "apt-get install qemu-user-static",
        ),
        (
            lambda d: handler(d, "aarch64", "P", enabled=False),
            "disabled",
            "update-binfmts --enable qemu-aarch64",
        ),
        (lambda d: handler(d, "aarch64", "P"), "lacks the F flag", "update-binfmts --enable qemu-aarch64"),
    ],
)
def test_what_is_missing_and_how_to_fix_it(tmp_path: Path, setup, problem: str, fix: str) -> None:
    setup(tmp_path)
    e = emulation(Arch.AARCH64, tmp_path, host=Arch.X86_64)
    assert not e.usable and problem in e.problem and fix in e.fix


def test_usable_handler(tmp_path: Path) -> None:
    handler(tmp_path, "aarch64", "PF")
    e = emulation(Arch.AARCH64, tmp_path, host=Arch.X86_64)
    assert e.usable and e.flags == "PF" and not e.native


def test_this_host_runs_aarch64_when_set_up() -> None:
    # .ci/run's setup (scripts/install-system-deps.sh) registers qemu-aarch64 with the F flag.
    import os

    e = emulation(Arch.AARCH64)
    if host_arch() is Arch.AARCH64:
        assert e.native
    elif os.environ.get("CI") == "true":
        assert e.usable, f"{e.problem}: {e.fix}"
    elif not e.usable:
        pytest.skip(f"{e.problem}: {e.fix}")


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (0x3e x86-64, 0xb7 aarch64), read without running it."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


@pytest.mark.buildah
def test_an_aarch64_binary_runs_in_a_build_container(tmp_path: Path) -> None:
    """What every emulated build step relies on: `buildah run` of an aarch64 binary under qemu-user."""
    import os
    import shutil
    import subprocess
    import tarfile

    from tests.fixtures_build import buildah, have_buildah

    if not (have_buildah() and shutil.which("mmdebstrap")):
        pytest.skip("needs buildah as root and mmdebstrap")
    e = emulation(Arch.AARCH64)
    if not e.usable:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{e.problem}: {e.fix}")
        pytest.skip(f"{e.problem}: {e.fix}")
    tar = tmp_path / "bb.tar"
    # variant=extract unpacks without running anything of the target arch: a static busybox only.
    subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=extract",
            "--include=busybox-static",
            "--arch=arm64",
            "bookworm",
            str(tar),
        ],
        check=True,
        timeout=600,
    )
    with tarfile.open(tar) as t:
        t.extract("./bin/busybox", tmp_path, filter="tar")
    assert elf_machine(tmp_path / "bin" / "busybox") == 0xB7
    ctr = buildah("from", "--arch", "arm64", "scratch").stdout.strip()
    try:
        buildah("add", ctr, str(tar), "/")
        got = buildah("run", ctr, "--", "/bin/busybox", "uname", "-m")
        assert got.stdout.strip() == "aarch64", got.stderr
    finally:
        buildah("rm", ctr, check=False)


@pytest.mark.parametrize(
    "name, arch",
    [("x86_64", Arch.X86_64), ("amd64", Arch.X86_64), ("AMD64", Arch.X86_64), ("arm64", Arch.AARCH64)],
)
def test_names_normalise(name: str, arch: Arch) -> None:
    assert normalize_arch(name) is arch


def test_debian_names_and_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Arch.X86_64.debian == "amd64" and Arch.AARCH64.debian == "arm64"
    monkeypatch.setattr(platform, "machine", lambda: "arm64")  # macOS and some kernels say arm64
    assert host_arch() is Arch.AARCH64


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="x86_64, aarch64"):
        normalize_arch("vax")
