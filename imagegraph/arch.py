"""CPU architectures: the names each tool uses, the host's, and whether this host can run another.

Specs name architectures as the distributions do (`x86_64`, `aarch64`,
`ppc64le`); OCI platforms and Debian use other names (`amd64`/`arm64`/`ppc64le`,
`amd64`/`arm64`/`ppc64el`). `normalize_arch` accepts any of them. A layer's
key includes the architecture it is built for, so callers pass an `Arch`
rather than asking the host themselves.

A foreign architecture builds here by emulation: the kernel hands its binaries
to qemu-user-static through a binfmt_misc handler. Builds run in a chroot, so
the handler must carry the F flag (the interpreter is opened when the handler
is registered, not looked up inside the image). `emulation` says whether that
holds and, when it does not, what to run.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


class Arch(StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"
    PPC64LE = "ppc64le"
    S390X = "s390x"
    RISCV64 = "riscv64"

    @property
    def oci(self) -> str:
        """The OCI platform architecture (image indexes, `buildah --arch`)."""
        return _OCI.get(self, self.value)

    @property
    def debian(self) -> str:
        """Debian's architecture name (mmdebstrap `--arch`, dpkg)."""
        return _DEBIAN.get(self, self.value)

    @property
    def qemu(self) -> str:
        """The qemu-user / binfmt handler suffix (`qemu-aarch64`)."""
        return self.value


_OCI = {Arch.X86_64: "amd64", Arch.AARCH64: "arm64"}
_DEBIAN = {Arch.X86_64: "amd64", Arch.AARCH64: "arm64", Arch.PPC64LE: "ppc64el"}
_ALIASES = {
    "amd64": Arch.X86_64,
    "x86-64": Arch.X86_64,
    "x64": Arch.X86_64,
    "arm64": Arch.AARCH64,
    "armv8": Arch.AARCH64,
    "ppc64el": Arch.PPC64LE,
}


# Every name `normalize_arch` takes, for schemas (`executor.arch` keys in imagegraph.yaml).
ARCH_NAMES = sorted({*(a.value for a in Arch), *_ALIASES})


def normalize_arch(name: str) -> Arch:
    """'amd64', 'x86_64', 'arm64', 'aarch64' ... -> the distribution name; ValueError if unknown."""
    n = name.strip().lower()
    try:
        return Arch(n)
    except ValueError:
        pass
    if n in _ALIASES:
        return _ALIASES[n]
    raise ValueError(f"unknown architecture {name!r} (known: {', '.join(a.value for a in Arch)})")


def host_arch() -> Arch:
    """The architecture this machine builds natively."""
    return normalize_arch(platform.machine())


@dataclass(frozen=True)
class Emulation:
    """Whether this host can run `arch` binaries in a build chroot, and why (not)."""

    arch: Arch
    native: bool
    usable: bool
    handler: str | None = None
    flags: str = ""
    problem: str = ""
    fix: str = ""

    def to_json(self) -> dict:
        return {
            "arch": str(self.arch),
            "native": self.native,
            "usable": self.usable,
            "handler": self.handler,
            "flags": self.flags,
            "problem": self.problem,
            "fix": self.fix,
        }


def _handler_fields(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        word, _, rest = line.partition(" ")
        out[word.rstrip(":")] = rest.strip() if rest else word
    return out


def emulation(arch: Arch, binfmt_dir: Path = BINFMT_DIR, host: Arch | None = None) -> Emulation:
    """Can this host run `arch` binaries inside a chroot (natively, or through qemu-user-static)?"""
    host = host or host_arch()
    if arch == host:
        return Emulation(arch, native=True, usable=True)
    enable = f"update-binfmts --enable qemu-{arch.qemu}"
    install = "apt-get install qemu-user-static binfmt-support"
    if not (binfmt_dir / "status").exists():
        return Emulation(
            arch,
            native=False,
            usable=False,
            problem="binfmt_misc is not mounted",
            fix=f"mount -t binfmt_misc binfmt_misc {binfmt_dir} && {enable}",
        )
    handler = binfmt_dir / f"qemu-{arch.qemu}"
    if not handler.is_file():
        return Emulation(
            arch,
            native=False,
            usable=False,
            problem=f"no binfmt_misc handler for {arch} (qemu-{arch.qemu})",
            fix=f"{install} && {enable}",
        )
    fields = _handler_fields(handler)
    flags = fields.get("flags", "")
    if "enabled" not in fields:
        return Emulation(
            arch, native=False, usable=False, handler=str(handler), flags=flags,
            problem=f"the qemu-{arch.qemu} handler is disabled", fix=enable,
        )  # fmt: skip
    if "F" not in flags:
        return Emulation(
            arch, native=False, usable=False, handler=str(handler), flags=flags,
            problem=f"the qemu-{arch.qemu} handler lacks the F flag (builds run in a chroot, where "
            "the interpreter path does not exist)",
            fix=f"install Debian's qemu-user-static (its handlers are registered with F) and {enable}",
        )  # fmt: skip
    return Emulation(arch, native=False, usable=True, handler=str(handler), flags=flags)
