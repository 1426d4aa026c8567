"""The immutable registry tag that names a layer key (`ig-<key>`).

Its own module so that the build package can name images without importing
`key`, which reaches the build backends for their key contributions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

KEY_TAG_PREFIX = "ig-"
INDEX_SUFFIX = "-index"  # `ig-<hash>-index`: a multi-arch layer's index (gc tells them by it)


def key_tag(key: str) -> str:
    """The immutable registry tag that names a layer key."""
    return KEY_TAG_PREFIX + key


def index_key(members: Mapping[str, str]) -> str:
    """The identity of a multi-arch index: sha256 over its architectures' build keys."""
    doc = json.dumps({"index": {str(a): k for a, k in sorted(members.items())}}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def index_tag(members: Mapping[str, str]) -> str:
    """The immutable registry tag of the index over `members` (arch -> build key)."""
    return f"{KEY_TAG_PREFIX}{index_key(members)}{INDEX_SUFFIX}"
