"""imagegraph/redact.py: secrets and URL credentials never leave imagegraph."""

import re

from hypothesis import given
from hypothesis import strategies as st

from imagegraph.redact import MASK, add_secret, mask_url_credentials, redact, redact_obj

# the credentials pattern as redact.py spells it
URL_CREDS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<creds>[^/@\s:]+(?::[^/@\s]*)?)@")


def test_url_credentials_are_masked() -> None:
    assert (
        redact("url https://user:pa55w0rd@mirror.example/repo/ ok")
        == f"url https://{MASK}@mirror.example/repo/ ok"
    )
    assert redact("http://token@host/x") == f"http://{MASK}@host/x"
    assert redact("no creds http://host/x") == "no creds http://host/x"


def test_registered_secrets_are_masked_everywhere() -> None:
    add_secret("AKIAEXAMPLESECRET42")
    doc = {"a": ["key=AKIAEXAMPLESECRET42"], "b": 3}
    assert redact_obj(doc) == {"a": [f"key={MASK}"], "b": 3}
    add_secret("ab")  # too short to mask without destroying every message
    assert redact("abc") == "abc"


@given(st.lists(st.sampled_from(["http", "://", "@", "u", ":", "p", "/", " ", "h", "x+y", "é"]), max_size=20))
def test_the_quick_precheck_masks_as_the_pattern_does(parts: list[str]) -> None:
    """Strings without "://" or "@" skip the regex; every string is masked as the pattern alone masks it."""
    text = "".join(parts)
    assert mask_url_credentials(text) == URL_CREDS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
