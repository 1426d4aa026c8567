"""Architecture names and the host's ability to run foreign binaries (binfmt_misc)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegraph.arch import Arch, emulation, host_arch, normalize


@given(st.sampled_from(list(Arch)))
def test_every_spelling_maps_back(arch: Arch) -> None:
    for name in (arch.value, arch.oci, arch.debian, arch.value.upper()):
        assert normalize(name) is arch


def test_unknown_name_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'sparc'.*x86_64, aarch64, ppc64le"):
        normalize("sparc")


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
