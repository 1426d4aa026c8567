#!/usr/bin/env python3
"""Rewrite the golden key documents in tests/golden/ from tests/golden_keys.py.

Run it after a deliberate change to what goes into a key (a KEY_FORMAT bump,
a build backend's VERSION bump, a new default) and commit the documents with
the reason: every site that upgrades rebuilds the layers whose documents moved.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.golden_keys import write_golden  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="imagegraph-golden-") as tmp:
        for p in write_golden(Path(tmp)):
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
