"""Typed errors and diagnostics.

User mistakes (bad specs, bad arguments) are `Diagnostic`s collected into a
`SpecError` and reported all at once with exit status 2. Faults while building
or publishing are `BuildError`/`PublishError`, which quote the failing step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem (or warning) at a place in a file."""

    file: str
    line: int
    column: int
    message: str
    severity: str = "error"  # "error" or "warning"
    hint: str | None = None
    # "source": a host path the spec pulls in is missing; the layer can be drawn and planned
    # (blocked) but not built. "" for everything else.
    kind: str = field(default="", compare=False)

    def __str__(self) -> str:
        loc = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        text = f"{loc}: {self.severity}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }


class ImagegraphError(Exception):
    """Base of every error imagegraph raises on purpose."""

    exit_status = 1


class SpecError(ImagegraphError):
    """One or more user errors in the layer directory; nothing may be built."""

    exit_status = 2

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class UsageError(ImagegraphError):
    """A bad command-line argument (unknown layer, bad option value)."""

    exit_status = 2


class RegistryTLSError(ImagegraphError):
    """A registry's TLS certificate is not trusted: a setting to change, named with its files."""

    exit_status = 2

    def __init__(self, failures: list[tuple[str, str, list[str], str]]):
        # (registry host, what TLS said, the layer files that use it, the option to set)
        self.failures = failures
        parts = []
        for host, reason, files, option in failures:
            parts.append(
                f"registry {host}: TLS certificate verification failed ({reason}); used by "
                f"{', '.join(files)}. Trust its CA (system store, or `{option}: ['--cert-dir=DIR']` "
                f"with DIR/*.crt), or for a test registry set `{option}: ['--tls-verify=false']` "
                f"in those files' options"
            )
        super().__init__("\n".join(parts) + "\nnothing was built")


class NotBuiltError(ImagegraphError):
    """What was asked about has not been built (or published) yet (exit 1)."""


class LockHeldError(ImagegraphError):
    """Another imagegraph run holds the state directory."""

    exit_status = 3


@dataclass
class CommandFailure:
    """What a failed external command said, for the error message."""

    argv: list[str]
    returncode: int
    tail: list[str] = field(default_factory=list)


class BuildError(ImagegraphError):
    """A step of a layer build failed."""

    def __init__(self, layer: str, step: str, message: str, tail: list[str] | None = None):
        self.layer = layer
        self.step = step
        self.tail = tail or []
        text = f"{layer}: step {step} failed: {message}"
        if self.tail:
            text += "\n  output:\n" + "\n".join("    " + t for t in self.tail)
        super().__init__(text)


class PublishError(ImagegraphError):
    """Publishing a built layer failed."""

    def __init__(self, layer: str, target: str, message: str):
        self.layer = layer
        self.target = target
        super().__init__(f"{layer}: publishing to {target} failed: {message}")


def rel(path: Path | str, base: Path | None = None) -> str:
    """A path as the user would like to read it: relative to cwd when under it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to((base or Path.cwd()).resolve()))
    except ValueError:
        return str(p)
