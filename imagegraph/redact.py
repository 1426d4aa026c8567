"""Keeping secrets out of logs, plans, result documents and error messages.

Two kinds of secret are masked everywhere text leaves imagegraph: values
registered at run time (S3 keys, registry passwords taken from the
environment) and credentials embedded in URLs (`https://user:pass@host`).
"""

from __future__ import annotations

import json
import os
import re
import threading

MASK = "***"
_URL_CREDS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<creds>[^/@\s:]+(?::[^/@\s]*)?)@")
_CREDS_AFTER = re.compile(r"[^/@\s:]+(?::[^/@\s]*)?@")  # _URL_CREDS after its "://"
_lock = threading.Lock()
_secrets: set[str] = set()

# Environment variables whose values are secrets wherever they appear.
SECRET_ENV = (
    "S3_ACCESS",
    "S3_SECRET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "REGISTRY_PASSWORD",
    "IMAGEGRAPH_REGISTRY_PASSWORD",
)


def add_secret(value: str | None) -> None:
    """Mask `value` from now on (ignored when too short to be meaningful)."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def register_environment() -> None:
    for name in SECRET_ENV:
        add_secret(os.environ.get(name))


def mask_url_credentials(text: str) -> str:
    """`scheme://user:pass@host` -> `scheme://***@host`; deterministic (no registered secrets)."""
    # The pattern needs "://" and "@": most strings (keys, names, paths) have neither.
    if not text or "@" not in text or "://" not in text:
        return text
    return _URL_CREDS.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def _secrets_longest_first() -> list[str]:
    with _lock:
        return sorted(_secrets, key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    if not text:
        return text
    text = mask_url_credentials(text)
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    return text


def redact(text: str) -> str:
    return _redact(text, _secrets_longest_first()) if text else text


def json_may_change(text: str) -> bool:
    """Whether `redact_obj` could change any string of the document whose `json.dumps`
    (ensure_ascii) text is `text`. False is certain: JSON escapes each character on its own, so a
    string's secret or URL credentials appear in its encoded form; keys and other text only make
    a True more likely."""
    if "@" in text:
        # Credentials after any "://" (the scheme not required: a True too many is only slower).
        i = text.find("://")
        while i >= 0:
            if _CREDS_AFTER.match(text, i + 3):
                return True
            i = text.find("://", i + 3)
    return any(json.encoder.encode_basestring_ascii(s)[1:-1] in text for s in _secrets_longest_first())


def redact_obj(obj):
    """Redact every string inside a JSON-like structure."""
    return _redact_obj(obj, _secrets_longest_first())


def _redact_obj(obj, secrets: list[str]):
    # The secrets are taken once per document (a plan holds thousands of strings), not per string.
    if isinstance(obj, str):
        return _redact(obj, secrets)
    if isinstance(obj, dict):
        return {k: _redact_obj(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_redact_obj(v, secrets) for v in obj]
    return obj
