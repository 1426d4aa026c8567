"""Target architectures, named as the RPM distributions name them (x86_64, aarch64).

A layer's key includes the architecture it is built for. Today that is the
host's; `options.arches` (a later addition) will make it per layer, so every
caller passes an `Arch` rather than asking the host itself.
"""

from __future__ import annotations

import platform
from enum import StrEnum


class Arch(StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"
    PPC64LE = "ppc64le"
    S390X = "s390x"
    RISCV64 = "riscv64"

    @property
    def debian(self) -> str:
        """The same architecture as Debian names it (mmdebstrap --arch)."""
        return _DEBIAN[self]


_DEBIAN = {
    Arch.X86_64: "amd64",
    Arch.AARCH64: "arm64",
    Arch.PPC64LE: "ppc64el",
    Arch.S390X: "s390x",
    Arch.RISCV64: "riscv64",
}
_ALIASES = {
    "amd64": Arch.X86_64,
    "x86-64": Arch.X86_64,
    "x64": Arch.X86_64,
    "arm64": Arch.AARCH64,
    "armv8": Arch.AARCH64,
    "ppc64el": Arch.PPC64LE,
}


def normalize_arch(name: str) -> Arch:
    """'amd64', 'x86_64', 'arm64', 'aarch64' ... -> the distribution name; ValueError if unknown."""
    n = name.strip().lower()
    try:
        return Arch(n)
    except ValueError:
        pass
    if n in _ALIASES:
        return _ALIASES[n]
    known = ", ".join(a.value for a in Arch)
    raise ValueError(f"unknown architecture {name!r} (known: {known})")


def host_arch() -> Arch:
    """The architecture this machine builds natively."""
    return normalize_arch(platform.machine())
