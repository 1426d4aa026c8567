"""The immutable registry tag that names a layer key (`ig-<key>`).

Its own module so that the build package can name images without importing
`key`, which reaches the build backends for their key contributions.
"""

from __future__ import annotations

KEY_TAG_PREFIX = "ig-"


def key_tag(key: str) -> str:
    """The immutable registry tag that names a layer key."""
    return KEY_TAG_PREFIX + key
