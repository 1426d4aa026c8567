"""imagegraph/arch.py: architecture names as the distributions spell them."""

from __future__ import annotations

import platform

import pytest

from imagegraph.arch import Arch, host_arch, normalize_arch


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
