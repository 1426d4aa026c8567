"""Shared pytest setup. Fixture modules live in tests/fixtures_*.py."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("BUILDAH_ISOLATION", "chroot")
# The parsed-spec cache falls back to $XDG_CACHE_HOME/imagegraph: keep the tests' out of the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="imagegraph-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

pytest_plugins = [
    "tests.needs",
    "tests.fixtures_build",
    "tests.fixtures_servers",
    "tests.fixtures_slurm",
]
