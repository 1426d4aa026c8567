"""The compiled schema check (jsonschema-rs) says yes exactly when jsonschema finds no error.

spec.validate_document trusts the compiled validator's "valid" and asks
jsonschema only to word the errors, so the two must agree on every document:
the fixtures, the examples and generated documents aimed at the schema's
patterns, types and unknown keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph import spec as specmod
from imagegraph import yamlload

from .test_yamlload import _fixture_specs, _spec_files

EXAMPLES = int(os.environ.get("IMAGEGRAPH_YAML_EXAMPLES", "300"))
SCHEMA = specmod.layer_schema()
OPTION_KEYS = sorted(SCHEMA["properties"]["options"]["properties"])
TOP_KEYS = sorted(SCHEMA["properties"])


def _agree(doc: Any) -> None:
    jsonschema_ok = not list(specmod._validator().iter_errors(doc))
    assert specmod._schema_valid(doc) == jsonschema_ok, doc


def test_fixtures_and_examples_agree() -> None:
    docs = [yamlload.fast_load(t) for _, t in _fixture_specs()]
    docs += [yamlload.fast_load(p.read_text()) for p in _spec_files()]
    plain = [specmod.to_plain(d) for d in docs if not isinstance(d, yamlload.Unsupported)]
    assert len(plain) > 40
    for d in plain:
        _agree(d)


# Values on the edges of the schema's patterns (tags, names, references, URLs, paths).
EDGES = st.sampled_from(
    [
        "latest", "9.5", ".hidden", "-dash", "a" * 128, "a" * 129, "UPPER", "rocky/base", "a//b",
        "a/", "x\n", "x\ny", "ok\x00", "tab\t", "é", "http://h:5000/x", "https://s3", "s3://b",
        "ftp://x", "", " ", "a b", "../up", "p/../q", "registry:5000/site/", "base", "ansible",
        "dnf", "apt", "zypper", "gzip", "zstd", "image-builder", "versioned", "auto", "kvm", "INFO",
    ]
)  # fmt: skip
SCALARS = st.one_of(EDGES, st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["alias", "url", "cmd", "src", "dest", "x"]), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    options=st.dictionaries(st.sampled_from([*OPTION_KEYS, "naem"]), VALUES, max_size=6),
    top=st.dictionaries(st.sampled_from([*TOP_KEYS, "extra"]), VALUES, max_size=3),
    layer_type=st.sampled_from(["base", "ansible", "other", None]),
)
def test_generated_documents_agree(options: dict, top: dict, layer_type: str | None) -> None:
    if layer_type is not None:
        options = {"layer_type": layer_type, **options}
    _agree({**top, "options": options})


def test_a_refused_document_still_gets_jsonschemas_words(tmp_path: Path) -> None:
    spec, diags = specmod.read_spec(tmp_path / "x.yaml", "options:\n  layer_type: base\n  naem: x\n")
    assert spec is None
    assert [(d.line, d.column, d.message) for d in diags] == [(3, 3, "unknown key 'naem' in options")]
