"""Version order of rpm and dpkg packages.

`rpmvercmp` is rpm's segment comparison (written here because rpm's Python
bindings are not installable from PyPI); `rpm_evr_cmp` orders whole
epoch:version-release triples as rpm does. `deb_version_cmp` is dpkg's order
(Debian policy 5.6.12), from python-debian. `version_cmp` picks by package
format.
"""

from __future__ import annotations

from debian.debian_support import Version as _DebVersion


def _isdigit(c: str) -> bool:
    return "0" <= c <= "9"


def _isalpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _isalnum(c: str) -> bool:
    return _isdigit(c) or _isalpha(c)


def rpmvercmp(a: str, b: str) -> int:
    """Compare two version strings exactly as rpm's `rpmvercmp()` does: -1, 0 or 1.

    Segments of digits compare numerically (leading zeros ignored), segments
    of letters compare as strings, a numeric segment is newer than an alpha
    one, separators only separate, `~` sorts before anything (even the end of
    the string: 1.0~rc1 < 1.0), `^` sorts after the end but before anything
    else (1.0 < 1.0^git1 < 1.0.1).
    """
    if a == b:
        return 0
    i = j = 0
    la, lb = len(a), len(b)
    while i < la or j < lb:
        while i < la and not _isalnum(a[i]) and a[i] not in "~^":
            i += 1
        while j < lb and not _isalnum(b[j]) and b[j] not in "~^":
            j += 1
        ca = a[i] if i < la else ""
        cb = b[j] if j < lb else ""
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i += 1
            j += 1
            continue
        if ca == "^" or cb == "^":
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i += 1
            j += 1
            continue
        if not (ca and cb):
            break
        si, sj = i, j
        isnum = _isdigit(ca)
        same_kind = _isdigit if isnum else _isalpha
        while i < la and same_kind(a[i]):
            i += 1
        while j < lb and same_kind(b[j]):
            j += 1
        seg1, seg2 = a[si:i], b[sj:j]
        if not seg1:  # cannot happen: ca was alnum
            return -1
        if not seg2:  # different kinds: numeric is newer than alpha
            return 1 if isnum else -1
        if isnum:
            seg1, seg2 = seg1.lstrip("0"), seg2.lstrip("0")
            if len(seg1) != len(seg2):
                return 1 if len(seg1) > len(seg2) else -1
        if seg1 != seg2:
            return 1 if seg1 > seg2 else -1
    if i >= la and j >= lb:
        return 0
    return -1 if i >= la else 1


def _split_evr(evr: str) -> tuple[str, str, str]:
    """`[epoch:]version[-release]` -> (epoch, version, release); a missing epoch is 0."""
    epoch, sep, rest = evr.partition(":")
    if not sep or not epoch.isdigit():
        epoch, rest = "0", evr
    version, _, release = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return epoch or "0", version, release


def rpm_evr_cmp(a: str, b: str) -> int:
    """Order two `[epoch:]version-release` strings as rpm does (epoch, then version, then release)."""
    ea, va, ra = _split_evr(a)
    eb, vb, rb = _split_evr(b)
    return rpmvercmp(ea, eb) or rpmvercmp(va, vb) or rpmvercmp(ra, rb)


def deb_version_cmp(a: str, b: str) -> int:
    """Order two Debian versions as `dpkg --compare-versions` does: -1, 0 or 1."""
    va, vb = _DebVersion(a), _DebVersion(b)
    return (va > vb) - (va < vb)


def version_cmp(fmt: str, a: str, b: str) -> int:
    """Order two versions of a package of format `fmt` (`rpm` or `deb`)."""
    return deb_version_cmp(a, b) if fmt == "deb" else rpm_evr_cmp(a, b)
