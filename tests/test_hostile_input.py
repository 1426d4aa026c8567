"""Hostile input: whatever the files hold, the loaders answer with a spec or located diagnostics.

Property-based (hypothesis): arbitrary text and bytes, YAML documents built
from nested mappings/lists/scalars, and near-valid specs with one value
mutated, fed to `read_spec`, `load_settings` and `load_project`. The answer
is a `LayerSpec` or `Diagnostic`s naming the file (line >= 1 when the problem
is inside the text); never an exception.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegraph.errors import Diagnostic, SpecError
from imagegraph.project import load_project, load_settings
from imagegraph.spec import LayerSpec, read_spec

FAST = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

VALID = {
    "options": {
        "layer_type": "base",
        "name": "compute",
        "publish_tags": ["1", "latest"],
        "pkg_manager": "dnf",
        "parent": "registry.example/site/base:1",
        "publish_registry": "registry.example/site",
        "publish_s3": "http://s3.example",
        "s3_prefix": "compute/",
        "s3_bucket": "boot-images",
        "releasever": "9",
        "squashfs": {"compression": "zstd", "level": 3},
        "labels": {"a": "b"},
    },
    "repos": [{"alias": "BaseOS", "url": "http://mirror.example/BaseOS/"}],
    "packages": ["vim", "htop"],
    "modules": {"enable": ["nodejs:18"]},
    "cmds": ["echo hi", {"cmd": "echo there", "loglevel": "warn"}],
}

# ------------------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["..", "../..", "/", "a/../../b", "\x00", "\x1b[31m", "-x", ".hidden", "scratch", ""]),
)
keys = st.one_of(
    st.text(max_size=15),
    st.sampled_from(["options", "layer_type", "name", "parent", "repos", "copyfiles", "cmds", "packages"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def near_valid(draw: st.DrawFn) -> dict:
    """The valid spec with one value replaced, one key dropped, or one key added."""
    doc = json.loads(json.dumps(VALID))
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    how = draw(st.sampled_from(["replace", "drop", "add"]))
    if how == "replace":
        parent[path[-1]] = draw(documents)
    elif how == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(keys)] = draw(documents)
    else:
        parent.append(draw(documents))
    return doc


def _yaml_text(doc: Any, style: str) -> str:
    if style == "json":  # JSON is YAML; NaN/Infinity are not, which is fine too
        return json.dumps(doc, default=str)
    import io

    from ruamel.yaml import YAML

    y = YAML(typ="safe")
    y.default_flow_style = style == "flow"
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- checks


def check_answer(spec: LayerSpec | None, diags: list[Diagnostic], file: str) -> None:
    assert isinstance(diags, list)
    for d in diags:
        assert isinstance(d, Diagnostic)
        assert d.file == file, d
        assert d.line >= 1 and d.column >= 1, d
        assert d.message and "Traceback" not in d.message
        str(d)  # renders
    if spec is None:
        assert any(d.severity == "error" for d in diags), diags
    else:
        assert isinstance(spec, LayerSpec)
        assert not any(d.severity == "error" for d in diags), diags


def read_text(text: str) -> tuple[LayerSpec | None, list[Diagnostic]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.yaml"
        return read_spec(path, text, shown="layer.yaml")


def read_bytes(raw: bytes) -> tuple[LayerSpec | None, list[Diagnostic]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.yaml"
        path.write_bytes(raw)
        return read_spec(path, shown="layer.yaml")


# ------------------------------------------------------------------------------ specs


def test_valid_spec_loads() -> None:
    spec, diags = read_text(_yaml_text(VALID, "block"))
    assert spec is not None and spec.name == "compute", diags


@FAST
@given(st.text(max_size=300))
def test_spec_arbitrary_text(text: str) -> None:
    check_answer(*read_text(text), "layer.yaml")


@FAST
@given(st.binary(max_size=300))
def test_spec_arbitrary_bytes(raw: bytes) -> None:
    check_answer(*read_bytes(raw), "layer.yaml")


@FAST
@given(documents, st.sampled_from(["block", "flow", "json"]))
def test_spec_arbitrary_documents(doc: Any, style: str) -> None:
    check_answer(*read_text(_yaml_text(doc, style)), "layer.yaml")


@FAST
@given(near_valid(), st.sampled_from(["block", "flow"]))
def test_spec_near_valid_documents(doc: dict, style: str) -> None:
    check_answer(*read_text(_yaml_text(doc, style)), "layer.yaml")


@FAST
@given(st.lists(st.sampled_from(["options:", "  ", "- ", "&a ", "*a", "!!binary ", "? ", ": ", "{", "[",
                                 "]", "}", "'", '"', "\\", "#", "\n", "\t", "---", "...", "%YAML 1.2",
                                 "%TAG ! tag:x,2000:", "!x ", "<<: ", "\x85", "\ufeff", "1e400", "0o17",
                                 "layer_type: base", "parent: scratch"]), max_size=40))
def test_spec_yaml_token_soup(parts: list[str]) -> None:
    check_answer(*read_text("".join(parts)), "layer.yaml")


@pytest.mark.parametrize(
    "text",
    [
        # recursive alias: the document contains itself
        "options: &o\n  layer_type: base\n  self: *o\n",
        "a: &a [*a]\n",
        # billion laughs: aliases that would expand exponentially
        "a: &a ['x','x','x','x','x','x','x','x','x','x']\n"
        + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
        + "options: {layer_type: base, pkg_manager: dnf}\n",
        # deep nesting
        "options: " + "[" * 1500 + "]" * 1500 + "\n",
        "options: " + "{a: " * 800 + "1" + "}" * 800 + "\n",
        # merge keys, tags, odd scalars
        "base: &b {layer_type: base, pkg_manager: dnf}\noptions:\n  <<: *b\n",
        "options: !!python/object:os.system {layer_type: base}\n",
        "options: {layer_type: base, pkg_manager: dnf, publish_tags: !!set {a, b}}\n",
        "options: {layer_type: base, pkg_manager: dnf, releasever: 2024-01-01}\n",
        "options: {layer_type: base, pkg_manager: dnf, name: !!binary aGVsbG8=}\n",
        "options: {layer_type: base, pkg_manager: dnf}\ncopyfiles: [{src: \"a\\0b\", dest: /x}]\n",
        "options: {layer_type: base, pkg_manager: dnf, publish_dir: \"a\\0b\"}\n",
        "options: {layer_type: base, pkg_manager: dnf}\n---\noptions: {}\n",
        "\ufeffoptions: {layer_type: base, pkg_manager: dnf}\n",
        "? [a, b]\n: c\noptions: {layer_type: base, pkg_manager: dnf}\n",
        "options: {layer_type: base, pkg_manager: dnf, 1: 2, null: 3, [x]: 4}\n",
    ],
)
def test_spec_nasty_yaml(text: str) -> None:
    check_answer(*read_text(text), "layer.yaml")


@FAST
@given(st.dictionaries(st.sampled_from(sorted(VALID["options"]) + ["layer_type", "parent", "publish_dir"]),
                       documents, max_size=4))
def test_spec_with_hostile_defaults(defaults: dict) -> None:
    """Project `defaults` are merged into every spec: a bad default is a diagnostic, not a crash."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, diags = read_spec(Path(tmp) / "layer.yaml", _yaml_text(VALID, "block"), defaults, shown="l.yaml")
    check_answer(spec, diags, "l.yaml")


# --------------------------------------------------------------------------- settings


def settings_answer(root: Path, text: str | bytes) -> None:
    path = root / "imagegraph.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    result, diags = load_settings(root)
    for d in diags:
        assert d.file == str(path) and d.line >= 1 and d.column >= 1 and d.message, d
    if diags:
        return
    # Accepted settings are usable: every field has the documented type.
    assert isinstance(result.registry_aliases, dict) and isinstance(result.defaults, dict)
    assert result.state_dir is None or (isinstance(result.state_dir, str) and "\0" not in result.state_dir)
    assert result.jobs is None or (isinstance(result.jobs, int) and result.jobs >= 1)
    assert isinstance(result.allow_outside_sources, bool)


SETTINGS_KEYS = st.sampled_from(["registry_aliases", "defaults", "state_dir", "jobs", "allow_outside_sources"])


@FAST
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_settings_arbitrary(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings_answer(Path(tmp), text)


@FAST
@given(st.dictionaries(st.one_of(SETTINGS_KEYS, keys), documents, max_size=5), st.sampled_from(["block", "flow"]))
def test_settings_documents(doc: dict, style: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings_answer(Path(tmp), _yaml_text(doc, style))


# ---------------------------------------------------------------------------- project


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.text(max_size=120), near_valid().map(lambda d: _yaml_text(d, "block"))), max_size=4),
    st.one_of(st.none(), st.dictionaries(SETTINGS_KEYS, documents, max_size=3).map(lambda d: _yaml_text(d, "block"))),
)
def test_project_never_crashes(specs: list[str], settings_text: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, text in enumerate(specs):
            (root / f"l{i}.yaml").write_text(text, encoding="utf-8")
        if settings_text is not None:
            (root / "imagegraph.yaml").write_text(settings_text, encoding="utf-8")
        cwd = os.getcwd()
        os.chdir(root)  # file names are shown relative to the working directory
        try:
            try:
                project = load_project(root)
            except SpecError as exc:
                assert any(d.severity == "error" for d in exc.diagnostics)
                for d in exc.diagnostics:
                    assert d.file and d.message
                    # Only "no specs here" / "cannot read" are about a whole file or directory.
                    assert d.line >= 1 or "no layer specs" in d.message or "cannot read" in d.message, d
                return
            assert set(project.layers) <= {f"l{i}" for i in range(len(specs))}
        finally:
            os.chdir(cwd)
