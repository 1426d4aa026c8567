"""Which lines of a failed command's output say why it failed.

A failed step's summary quotes these lines first, then the output's tail.
The last lines alone often explain nothing: dnf ends a GPG refusal with a
40-line dump of the repository's configuration (`sslverify: 1`, `timeout:
30`, ...), so the cause (`You have enabled checking of packages via GPG
keys ...`, `Problem repository: [repo_a]`) scrolls out of the tail. The
patterns are the error lines of the tools imagegraph drives: dnf/yum, rpm,
zypper, apt/dpkg/mmdebstrap, buildah (and podman-style `level=error`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

QUOTE_CAUSES = 12  # cause lines quoted at most (the last ones seen)
CONFIG_RUN = 3  # this many `key: value` lines in a row are a configuration dump

_CAUSES = re.compile(
    "|".join(
        [
            # dnf / yum / rpm
            r"^Error:",
            r"^error:",
            r"No match for argument",
            r"Unable to find a match",
            r"Problem repository",
            r"nothing provides",
            r"^\s*Problem( \d+)?:",
            r"conflicts with",
            r"GPG",
            r"[Pp]ublic key for .* is not installed",
            r"is not signed",
            r"Curl error",
            r"Cannot download",
            r"Failed to download",
            r"All mirrors were tried",
            r"Module or Group .* does not exist",
            r"No such command",
            # zypper
            r"not found in package names",
            r"No provider of",
            r"Package '.*' not found",
            r"Repository '.*' is invalid",
            r"Signature verification failed",
            r"is unsigned",
            r"Valid metadata not found",
            r"^ERROR:",
            # apt, dpkg, mmdebstrap
            r"^E: ",
            r"Unable to locate package",
            r"has no installation candidate",
            r"NO_PUBKEY",
            r"but it is not (going to be )?installable",
            r"dpkg: error",
            # buildah / containers
            r"level=(error|fatal)",
            r"^Error ",
            r"[Pp]ermission denied",
            r"No space left on device",
            r"command not found",
        ]
    )
)
# `sslverify: 1`, `enabled_metadata: ` ... : lowercase keys, no spaces, as dnf dumps a repository.
# A value with its own ': ' is a message (`cp: cannot stat 'x': No such file ...`), not a setting.
_CONFIG_LINE = re.compile(r"^[a-z][a-z0-9_]*:(?: (?!.*: ).*)?$")
_NOT_CONFIG = ("error", "warning", "fatal", "note", "hint", "e", "w")


def is_cause(line: str) -> bool:
    """True for a line that states why a package manager or buildah failed."""
    return bool(_CAUSES.search(line))


def _is_config(line: str) -> bool:
    return bool(_CONFIG_LINE.match(line)) and line.split(":", 1)[0] not in _NOT_CONFIG


def without_config_dumps(lines: Iterable[str]) -> list[str]:
    """`lines` minus runs of CONFIG_RUN or more `key: value` lines with distinct keys (dnf's
    repository dumps; three `cp: ...` messages in a row are kept)."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        keys = {r.split(":", 1)[0] for r in run}
        if len(run) < CONFIG_RUN or len(keys) < len(run):
            out.extend(run)
        run.clear()

    for line in lines:
        if _is_config(line) and line.split(":", 1)[0] not in {r.split(":", 1)[0] for r in run}:
            run.append(line)
            continue
        flush()
        if _is_config(line):
            run.append(line)
        else:
            out.append(line)
    flush()
    return out


def quote(causes: Iterable[str], tail: Iterable[str]) -> list[str]:
    """The lines a failure quotes: its cause lines first, then the tail without dumps or repeats."""
    first = list(dict.fromkeys(c for c in causes if c.strip()))[-QUOTE_CAUSES:]
    seen = set(first)
    rest = [t for t in without_config_dumps(tail) if t not in seen]
    while rest and not rest[0].strip():
        rest.pop(0)
    return first + rest
