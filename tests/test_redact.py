"""imagegraph/redact.py: secrets and URL credentials never leave imagegraph."""

from imagegraph.redact import MASK, add_secret, redact, redact_obj


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
