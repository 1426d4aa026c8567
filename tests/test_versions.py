"""rpm and dpkg version order, checked against the real rpm and dpkg of this host."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.versions import deb_version_cmp, rpm_evr_cmp, version_cmp

# Version-ish strings: digits, letters, the separators and the two special characters.
_seg = st.text(alphabet="0123456789abcz.~^_+", min_size=1, max_size=8)
_deb_upstream = st.text(alphabet="0123456789abz.~+", min_size=1, max_size=8).map(lambda s: "0" + s)
_deb_rev = st.text(alphabet="0123456789abz.~+", min_size=1, max_size=5)


@st.composite
def rpm_evr(draw) -> str:
    epoch = draw(st.sampled_from(["", "0:", "1:", "2:"]))
    return f"{epoch}{draw(_seg)}-{draw(_seg)}"


@st.composite
def deb_version(draw) -> str:
    epoch = draw(st.sampled_from(["", "1:", "2:"]))
    rev = draw(st.one_of(st.just(""), _deb_rev.map(lambda r: "-" + r)))
    return f"{epoch}{draw(_deb_upstream)}{rev}"


def rpm_order(pairs: list[tuple[str, str]]) -> list[int]:
    """rpm's own answers (its Lua rpm.vercmp compares whole EVRs), one process for all pairs."""
    calls = " ".join(f"print(rpm.vercmp({a!r}, {b!r})) print(' ')" for a, b in pairs)
    out = subprocess.run(
        ["rpm", "--eval", f"%{{lua: {calls}}}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(x) for x in out.split()]


def dpkg_order(a: str, b: str) -> int:
    def holds(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0

    return 0 if holds("eq") else (-1 if holds("lt") else 1)


@pytest.mark.skipif(shutil.which("rpm") is None, reason="needs rpm")
@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(rpm_evr(), rpm_evr()), min_size=1, max_size=40))
def test_rpm_evr_order_is_rpms(pairs: list[tuple[str, str]]) -> None:
    assert [rpm_evr_cmp(a, b) for a, b in pairs] == rpm_order(pairs)


@settings(max_examples=150, deadline=None)
@given(deb_version(), deb_version())
def test_deb_order_is_dpkgs(a: str, b: str) -> None:
    assert deb_version_cmp(a, b) == dpkg_order(a, b)


@pytest.mark.parametrize(
    ("fmt", "a", "b", "expected"),
    [
        ("rpm", "3.0.7-25.el9", "3.0.7-27.el9", -1),
        ("rpm", "1:1.0-1", "2.0-1", 1),  # the epoch wins
        ("rpm", "5.14.0-427.el9", "5.14.0-503.el9", -1),
        ("rpm", "1.0~rc1-1", "1.0-1", -1),
        ("deb", "2.36-9+deb12u4", "2.36-9+deb12u10", -1),
        ("deb", "1.0~rc1-1", "1.0-1", -1),
        ("deb", "1:0.9", "2.0", 1),
        ("deb", "1.0-1", "1.0-1", 0),
    ],
)
def test_known_orders(fmt: str, a: str, b: str, expected: int) -> None:
    assert version_cmp(fmt, a, b) == expected
    assert version_cmp(fmt, b, a) == -expected
