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


# ------------------------------------------------ a rendered document redacted without being copied

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import settings  # noqa: E402

from imagegraph import redact as redact_mod  # noqa: E402
from imagegraph.render import write_indented_json, write_redacted_json  # noqa: E402

# Secrets with characters JSON escapes: quotes, backslashes, control and non-ASCII characters.
_SECRETS = ["s3cr3t-k3y", 'qu"ot\\e', "t\tab\nnl", "Ünïcødé", "\U0001d11e-astral", "\x7fdel-"]
_fragments = st.sampled_from(
    [*_SECRETS, "https://", "://", "@", "user", ":", "pw", "/", " ", "host", "é", "\\", '"', "\n", "x"]
)
_texts = st.lists(_fragments, max_size=8).map("".join) | st.text(max_size=8)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | _texts
    | st.builds(Path, st.sampled_from(["a/b", "https://u:p@h/x", "s3cr3t-k3y"]))  # default=str, not redacted
)
_docs = st.recursive(
    _leaves,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.tuples(kids, kids)
        | st.dictionaries(_texts | st.integers() | st.booleans() | st.none(), kids, max_size=4)
    ),
    max_leaves=30,
)


@contextlib.contextmanager
def _registered(secrets: list[str]):
    saved = set(redact_mod._secrets)
    for s in secrets:
        add_secret(s)
    try:
        yield
    finally:
        redact_mod._secrets.clear()
        redact_mod._secrets.update(saved)


def _render(write, doc) -> str:
    buf = io.StringIO()
    write(doc, buf)
    return buf.getvalue()


@given(_docs, st.lists(st.sampled_from(_SECRETS), max_size=3, unique=True))
@settings(max_examples=800, deadline=None)
def test_redacted_json_is_the_redacted_copy_rendered(doc, secrets: list[str]) -> None:
    """The same characters as rendering `redact_obj(doc)` (the implementation before), secrets
    registered or not, in strings, keys, URLs and objects rendered with str()."""
    with _registered(secrets):
        assert _render(write_redacted_json, doc) == _render(write_indented_json, redact_obj(doc))
        assert _render(write_redacted_json, doc) == json.dumps(redact_obj(doc), indent=2, default=str)


@given(st.lists(_texts, max_size=6), st.lists(st.sampled_from(_SECRETS), max_size=3, unique=True))
@settings(max_examples=500, deadline=None)
def test_a_document_redaction_would_change_is_always_noticed(strings: list[str], secrets: list[str]) -> None:
    with _registered(secrets):
        if redact_obj(strings) != strings:
            assert redact_mod.json_may_change(json.dumps(strings, indent=2))


def test_no_spec_field_reaches_a_plan_document_unredacted(tmp_path: Path, capsys, monkeypatch) -> None:
    """A secret in every string field of a spec (and credentials in its repository URL): the
    plan's --json document and its diagnostics show none of them once the secret is registered;
    unregistered, the same value does reach the output (so the check can fail)."""
    from imagegraph import cli

    from .specdirs import write

    secret = "s3cr3tvalue42"
    layers = tmp_path / "layers"
    write(
        layers,
        f"{secret}.yaml",
        f"""
        options:
          layer_type: 'base'
          name: '{secret}'
          publish_tags: ['{secret}', '9.5']
          pkg_manager: 'dnf'
          parent: 'registry.example.org/{secret}/base:{secret}'
          publish_registry: 'registry.example.org/{secret}'
          registry_opts_push: ['--creds={secret}']
        repos:
          - alias: '{secret}'
            url: 'https://user:pw-{secret}@mirror.example/{secret}/'
        packages: ['{secret}']
        package_groups: ['{secret} group']
        cmds:
          - cmd: 'echo {secret}'
        """,
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("IMAGEGRAPH_NO_PLAN_CACHE", "1")

    def plan_output() -> tuple[str, str]:
        with contextlib.suppress(SystemExit):
            cli.main(["plan", "--offline", "--json", "layers"])
        captured = capsys.readouterr()
        json.loads(captured.out)
        return captured.out, captured.err

    doc, err = plan_output()
    assert secret in doc
    assert "pw-" not in doc + err  # URL credentials are masked without registering anything
    with _registered([secret]):
        doc, err = plan_output()
    assert secret not in doc + err and "pw-" not in doc + err
    assert MASK in doc
