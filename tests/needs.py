"""What a test needs from the machine, said one way: skipped on a workstation, a failure in CI.

`make test` on a laptop without qemu or docker-registry skips what it cannot
run; with `CI=true` (every CI service sets it) the same gap fails the run, so
a CI machine that lost a tool cannot pass by skipping whole areas. Every skip
path of the suite goes through `missing` (inside fixtures and tests) or the
`requires` marker (on modules and tests); this module is also the pytest
plugin that applies the marker.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Stop the current test for a missing tool or capability: skip, or fail when in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing tool fails the run instead of skipping)", pytrace=False)
    pytest.skip(reason)


def requires(available: bool, reason: str) -> pytest.MarkDecorator:
    """Marker: the test needs `available` to be true (see `missing`)."""
    return pytest.mark.requires(available=available, reason=reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(available, reason): a tool the test needs (tests/needs.py)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        if not mark.kwargs["available"]:
            missing(mark.kwargs["reason"])
