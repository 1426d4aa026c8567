"""Layer keys (placeholder; the full module is written by the core work)."""

KEY_TAG_PREFIX = "ig-"


def key_tag(key: str) -> str:
    """The immutable registry tag that names a layer key."""
    return KEY_TAG_PREFIX + key
