"""The libyaml fast path reads every spec exactly as ruamel.yaml does, or declines.

Every spec the project knows (the test fixtures' inline specs, layers/,
examples/, ../shared/examples) and hypothesis-generated specs go through
both paths; the documents (values, types, line/column of every key, value
and item), the loaded `LayerSpec`s, their diagnostics and their key
documents must be identical.
"""

from __future__ import annotations

import ast
import io
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from imagegraph import spec as specmod
from imagegraph import yamlload
from imagegraph.key import ParentInput, build_inputs, canonical_json

from .needs import requires

REPO = Path(__file__).resolve().parent.parent
SHARED_EXAMPLES = next(
    (p for p in (REPO.parent / "shared" / "examples", Path("/work/shared/examples")) if p.is_dir()),
    REPO.parent / "shared" / "examples",
)  # as tests/test_spec.py finds them (a CI clone has them elsewhere)


def _ruamel(text: str) -> Any:
    return specmod._yaml().load(io.StringIO(text))


def _same_doc(fast: Any, slow: Any, where: str = "") -> None:
    if isinstance(slow, CommentedMap):
        assert type(fast) is yamlload.PositionedMap, where
        assert list(fast) == list(slow), where
        for k in slow:
            assert fast.lc.key(k) == slow.lc.key(k), f"{where}.{k} key position"
            assert fast.lc.value(k) == slow.lc.value(k), f"{where}.{k} value position"
            _same_doc(fast[k], slow[k], f"{where}.{k}")
    elif isinstance(slow, CommentedSeq):
        assert type(fast) is yamlload.PositionedSeq, where
        assert len(fast) == len(slow), where
        for i in range(len(slow)):
            assert fast.lc.item(i) == slow.lc.item(i), f"{where}[{i}] position"
            _same_doc(fast[i], slow[i], f"{where}[{i}]")
    elif isinstance(slow, str):
        assert type(fast) is str and fast == str(slow), where
    else:
        # bool, int, None: exactly the type ruamel gives (no ScalarInt/ScalarBoolean expected here)
        assert type(fast) is type(slow) and fast == slow, f"{where}: {fast!r} != {slow!r}"


def _exact(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (dict, not a dict subclass)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_exact(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_exact(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _same_plain(fast: Any) -> None:
    """The plain document fast_load made beside `fast`, when it made one, is to_plain's."""
    made = yamlload.take_plain(fast, specmod.MAX_NODES)
    if made is not None:
        assert _exact(made, specmod.to_plain(fast))
        assert yamlload.take_plain(fast, specmod.MAX_NODES) is None  # given once: the caller changes it


def _both_paths(text: str, tmp: Path, name: str = "layer.yaml") -> yamlload.Unsupported | None:
    """Assert both loaders agree on `text`; returns the fast path's refusal, if any."""
    fast = yamlload.fast_load(text)
    if not isinstance(fast, yamlload.Unsupported):
        _same_doc(fast, _ruamel(text))
        _same_plain(fast)
    path = tmp / name
    path.write_text(text)
    got = specmod.read_spec(path, text)
    yamlload.enabled = False
    try:
        want = specmod.read_spec(path, text)
    finally:
        yamlload.enabled = True
    (gs, gd), (ws, wd) = got, want
    assert gd == wd
    assert gs == ws
    if ws is not None:
        assert gs.lines == ws.lines
        assert gs.warnings == ws.warnings
        parent = ParentInput("scratch") if ws.is_scratch else ParentInput("image", ref=ws.parent)
        assert canonical_json(build_inputs(gs, parent)) == canonical_json(build_inputs(ws, parent))
    return fast if isinstance(fast, yamlload.Unsupported) else None


def _fixture_specs() -> list[tuple[str, str]]:
    """Every inline YAML document in tests/*.py that looks like a layer spec."""
    out = []
    for py in sorted((REPO / "tests").glob("*.py")):
        if py.name == Path(__file__).name:
            continue
        tree = ast.parse(py.read_text())
        fragments = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if id(node) in fragments:
                continue  # a piece of an f-string, not a document
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "options:" in node.value:
                out.append((f"{py.name}:{node.lineno}", textwrap.dedent(node.value).lstrip()))
    return out


def _spec_files() -> list[Path]:
    roots = [REPO / "layers", REPO / "examples", SHARED_EXAMPLES]
    return sorted(p for r in roots if r.is_dir() for p in r.rglob("*.y*ml") if ".imagegraph" not in p.parts)


def test_fixture_specs_load_identically(tmp_path: Path) -> None:
    specs = _fixture_specs()
    assert len(specs) > 50  # the harvest found the fixtures
    refused = [where for where, text in specs if _both_paths(text, tmp_path)]
    # Most fixtures are ordinary specs (the rest hostile input): the fast path must be taken for them.
    assert len(refused) < len(specs) / 2, refused


@requires(SHARED_EXAMPLES.is_dir(), "the shared examples are not beside this checkout")
def test_spec_files_load_identically(tmp_path: Path) -> None:
    files = _spec_files()
    assert any(SHARED_EXAMPLES in p.parents for p in files)
    for p in files:
        _both_paths(p.read_text(), p.parent if p.parent.is_dir() else tmp_path, p.name)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("options:\n  releasever: 9.5\n", "float"),
        ("options:\n  mode: 0755\n", "int"),
        ("options:\n  mode: 0x1f\n", "int"),
        ("options:\n  when: 2024-01-01\n", "timestamp"),
        ("options: &o\n  a: 1\nx: *o\n", "anchor"),
        ("base: &b {a: 1}\nchild:\n  <<: *b\n", "anchor"),
        ("options:\n  a: !!str 1\n", "tag"),
        ("%YAML 1.1\n---\noptions:\n  a: yes\n", "directive"),
        ("options:\n  a: 1\n  a: 2\n", "duplicate"),
        ("options: [\n", "syntax"),
        ("? [a, b]\n: c\n", "key"),
    ],
)
def test_declines_what_it_cannot_promise(text: str, why: str, tmp_path: Path) -> None:
    refused = yamlload.fast_load(text)
    assert isinstance(refused, yamlload.Unsupported)
    assert why in refused.reason
    _both_paths(text, tmp_path)


def test_yaml_12_words_stay_strings() -> None:
    doc = yamlload.fast_load("a: yes\nb: no\nc: on\nd: off\ne: y\nf: true\ng: ~\nh: -12\ni: '0755'\n")
    assert doc == {
        "a": "yes",
        "b": "no",
        "c": "on",
        "d": "off",
        "e": "y",
        "f": True,
        "g": None,
        "h": -12,
        "i": "0755",
    }
    assert doc.lc.value("h") == (7, 3)


def test_a_directive_does_not_leak_into_later_documents() -> None:
    # ruamel kept a %YAML 1.1 document's version on the reused loader: later `yes` became True.
    assert specmod.parse_yaml("%YAML 1.1\n---\na: yes\n", "old.yaml")[0] == {"a": True}
    yamlload.enabled = False
    try:
        assert specmod.parse_yaml("a: yes\n", "new.yaml")[0] == {"a": "yes"}
    finally:
        yamlload.enabled = True


def test_duplicate_key_diagnostic_is_ruamels(tmp_path: Path) -> None:
    text = "options:\n  layer_type: base\n  layer_type: base\n"
    spec, diags = specmod.read_spec(tmp_path / "d.yaml", text)
    assert spec is None
    assert diags[0].line == 3 and "appears twice" in diags[0].message


def test_stats_count_each_path() -> None:
    before = yamlload.stats.snapshot()
    specmod.parse_yaml("a: 1\n", "one.yaml")
    specmod.parse_yaml("a: 1.5\n", "two.yaml")
    after = yamlload.stats.snapshot()
    assert after["libyaml"] - before["libyaml"] == 1
    assert after["ruamel"] - before["ruamel"] == 1
    assert ("two.yaml", "float scalar at line 1, column 4") in yamlload.stats.fallbacks


# ------------------------------------------------------------------ generated specs

EXAMPLES = int(os.environ.get("IMAGEGRAPH_YAML_EXAMPLES", "300"))  # more for a longer hunt

# Scalars chosen to sit on the YAML 1.1 / 1.2 borders and on libyaml's quoting rules.
TRICKY = st.sampled_from(
    [
        "yes", "no", "on", "off", "Yes", "NO", "y", "n", "true", "False", "TRUE", "null", "~", "",
        "0755", "0", "-0", "+7", "12", "1_000", "0o17", "0x1F", "1e3", "9.5", ".inf", ".nan",
        "2024-01-01", "12:30:00", "<<", "a: b", "a #b", "#x", "- x", "[x]", "{x}", "'q'", '"q"',
        "tab\there", "ünïcode", "€uro", "x\\ny", "%x", "@x", "`x", "!x", "&x", "*x", "|", ">",
        "9-stream", "5.14.0-503.el9", "--tls-verify=false", "http://h:5000/a?b=c&d=e",
    ]
)  # fmt: skip
TEXT = st.one_of(TRICKY, st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12))


@st.composite
def scalar_yaml(draw: st.DrawFn, indent: int) -> str:
    """A scalar in one of YAML's styles (plain may be invalid or mean another type: fine)."""
    value = draw(TEXT)
    style = draw(st.sampled_from(["plain", "single", "double", "literal", "folded"]))
    if style == "plain":
        return value
    if style == "single":
        return "'" + value.replace("'", "''") + "'"
    if style == "double":
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    pad = " " * (indent + 2)
    body = "\n".join(pad + line for line in (value.splitlines() or ["x"]))
    return ("|" if style == "literal" else ">") + "\n" + body


KEYS = st.sampled_from(
    ["name", "parent", "publish_tags", "gpgcheck", "releasever", "proxy", "labels", "vars", "layer_type"]
)


@st.composite
def spec_text(draw: st.DrawFn) -> str:
    layer_type = draw(st.sampled_from(["base", "ansible", "'base'", "yes"]))
    lines = ["options:", f"  layer_type: {layer_type}"]
    lines.append(f"  pkg_manager: {draw(st.sampled_from(['dnf', 'apt', 'zypper']))}")
    for key in draw(st.lists(KEYS, max_size=4, unique=True)):
        if key in ("labels", "vars"):
            lines.append(f"  {key}:")
            for sub in draw(st.lists(st.sampled_from(["a", "b", "on", "1", "x y"]), max_size=3, unique=True)):
                lines.append(f"    {sub}: {draw(scalar_yaml(4))}")
        elif key == "publish_tags" and draw(st.booleans()):
            items = draw(st.lists(scalar_yaml(4), min_size=1, max_size=3))
            if draw(st.booleans()):
                lines.append(f"  {key}: [{', '.join(i.replace(chr(10), ' ') for i in items)}]")
            else:
                lines.append(f"  {key}:")
                lines += [f"    - {i}" for i in items]
        else:
            lines.append(f"  {key}: {draw(scalar_yaml(2))}")
    if draw(st.booleans()):
        lines.append("packages:")
        lines += [f"  - {draw(scalar_yaml(4))}" for _ in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()):
        lines.append("cmds:")
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.booleans()):
                lines.append(f"  - {draw(scalar_yaml(4))}")
            else:
                lines.append(f"  - cmd: {draw(scalar_yaml(4))}")
                lines.append(f"    loglevel: {draw(st.sampled_from(['INFO', 'warn', 'on', 'DEBUG']))}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["# c", "", "---", "  # x"])))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\n...\n"]))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=spec_text())
def test_generated_specs_load_identically(text: str, tmp_path: Path) -> None:
    _both_paths(text, tmp_path)


@settings(max_examples=EXAMPLES, deadline=None)
@given(value=TEXT)
def test_generated_scalars_load_identically(value: str) -> None:
    for text in (f"k: {value}\n", f"- {value}\n", f"k: [{value}]\n", f"{value}: v\n"):
        fast = yamlload.fast_load(text)
        if isinstance(fast, yamlload.Unsupported):
            continue
        try:
            slow = _ruamel(text)
        except Exception as exc:  # ruamel refuses what libyaml read: a difference
            raise AssertionError(f"ruamel refuses {text!r} ({exc}) but libyaml read {fast!r}") from exc
        _same_doc(fast, slow)
        _same_plain(fast)


@pytest.mark.parametrize(
    "text",
    [
        "2: a\n'2': b\ntrue: c\nnull: d\n-3: [x, {7: y}]\n",  # keys to_plain turns into strings
        "options: {name: caf\u00e9}\n",  # non-ASCII: to_plain checks each string itself
        'options: {name: "caf\\u00e9"}\n',  # an escape: to_plain checks what it makes
        "a: " + "[" * 150 + "]" * 150 + "\n",  # deep: to_plain's own RecursionError stays its own
        "a: [" + ", ".join(["x"] * 1000) + "]\n",
    ],
)
def test_the_plain_document_is_to_plains(text: str) -> None:
    fast = yamlload.fast_load(text)
    assert not isinstance(fast, yamlload.Unsupported)
    made = yamlload.take_plain(fast, specmod.MAX_NODES)
    if made is None:
        assert not text.isascii() or "\\" in text or "[[" in text
        return
    assert _exact(made, specmod.to_plain(fast))
    fast = yamlload.fast_load(text)
    assert yamlload.take_plain(fast, 2) is None  # more values than allowed: to_plain raises


def test_a_spec_past_the_value_limit_is_refused_as_before(tmp_path: Path) -> None:
    text = "options: {layer_type: base, pkg_manager: dnf}\npackages: [" + ", ".join(["p"] * 2000) + "]\n"
    path = tmp_path / "big.yaml"
    path.write_text(text)
    old = specmod.MAX_NODES
    specmod.MAX_NODES = 1000
    try:
        got = specmod.read_spec(path, text)
        yamlload.enabled = False
        want = specmod.read_spec(path, text)
    finally:
        specmod.MAX_NODES = old
        yamlload.enabled = True
    assert got == want and got[0] is None and "too large" in got[1][0].message
