"""Shared pytest setup. Fixture modules live in tests/fixtures_*.py."""

import os

os.environ.setdefault("BUILDAH_ISOLATION", "chroot")

pytest_plugins = [
    "tests.fixtures_build",
    "tests.fixtures_servers",
    "tests.fixtures_slurm",
]
