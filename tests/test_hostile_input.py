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
from imagegraph.project import Project, load_project, load_settings
from imagegraph.spec import LayerSpec, read_spec

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

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
        # a sound spec comes back with its missing sources only (drawn and planned, never built)
        assert all(d.kind == "source" for d in diags if d.severity == "error"), diags


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
@given(
    st.lists(
        st.sampled_from(
            [
                "options:",
                "  ",
                "- ",
                "&a ",
                "*a",
                "!!binary ",
                "? ",
                ": ",
                "{",
                "[",
                "]",
                "}",
                "'",
                '"',
                "\\",
                "#",
                "\n",
                "\t",
                "---",
                "...",
                "%YAML 1.2",
                "%TAG ! tag:x,2000:",
                "!x ",
                "<<: ",
                "\x85",
                "\ufeff",
                "1e400",
                "0o17",
                "layer_type: base",
                "parent: scratch",
            ]
        ),
        max_size=40,
    )
)
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
        + "".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
        )
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
        'options: {layer_type: base, pkg_manager: dnf}\ncopyfiles: [{src: "a\\0b", dest: /x}]\n',
        'options: {layer_type: base, pkg_manager: dnf, publish_dir: "a\\0b"}\n',
        "options: {layer_type: base, pkg_manager: dnf}\n---\noptions: {}\n",
        "\ufeffoptions: {layer_type: base, pkg_manager: dnf}\n",
        "? [a, b]\n: c\noptions: {layer_type: base, pkg_manager: dnf}\n",
        "options: {layer_type: base, pkg_manager: dnf, 1: 2, null: 3, [x]: 4}\n",
    ],
)
def test_spec_nasty_yaml(text: str) -> None:
    check_answer(*read_text(text), "layer.yaml")


@FAST
@given(
    st.dictionaries(
        st.sampled_from(sorted(VALID["options"]) + ["layer_type", "parent", "publish_dir"]),
        documents,
        max_size=4,
    )
)
def test_spec_with_hostile_defaults(defaults: dict) -> None:
    """Project `defaults` are merged into every spec: a bad default is a diagnostic, not a crash."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, diags = read_spec(
            Path(tmp) / "layer.yaml", _yaml_text(VALID, "block"), defaults, shown="l.yaml"
        )
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


SETTINGS_KEYS = st.sampled_from(
    ["registry_aliases", "defaults", "state_dir", "jobs", "allow_outside_sources"]
)


@FAST
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_settings_arbitrary(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings_answer(Path(tmp), text)


@FAST
@given(
    st.dictionaries(st.one_of(SETTINGS_KEYS, keys), documents, max_size=5), st.sampled_from(["block", "flow"])
)
def test_settings_documents(doc: dict, style: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings_answer(Path(tmp), _yaml_text(doc, style))


# ---------------------------------------------------------------------------- project


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.text(max_size=120), near_valid().map(lambda d: _yaml_text(d, "block"))), max_size=4
    ),
    st.one_of(
        st.none(), st.dictionaries(SETTINGS_KEYS, documents, max_size=3).map(lambda d: _yaml_text(d, "block"))
    ),
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


@pytest.mark.parametrize(
    "text",
    [
        "options: &o {layer_type: base, pkg_manager: dnf, vars: {x: *o}}\n",
        "options: &o {layer_type: ansible, playbooks: p.yaml, vars: {x: *o}}\n",
        "x: &x [*x, *x]\noptions: {layer_type: base, pkg_manager: dnf}\n",
    ],
)
def test_spec_recursive_aliases(text: str) -> None:
    check_answer(*read_text(text), "layer.yaml")


def test_billion_laughs_is_refused_quickly() -> None:
    import time

    text = (
        "a: &a ['x','x','x','x','x','x','x','x','x','x']\n"
        + "".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
        )
        + "options: {layer_type: base, pkg_manager: dnf}\n"
    )
    t0 = time.monotonic()
    spec, diags = read_text(text)
    assert spec is None and "too large" in diags[0].message
    assert time.monotonic() - t0 < 5


# ----------------------------------------------------------------------- names and paths

MIN = "options:\n  layer_type: base\n  pkg_manager: dnf\n"


@pytest.mark.parametrize(
    "snippet, where",
    [
        ('  name: "base\\n"\n', "name"),  # '$' in a Python regex matches before a final newline
        ('  name: "a/../b"\n', "name"),
        ('  name: "/abs"\n', "name"),
        ('  name: "a//b"\n', "name"),
        ('  name: "A\\x1b[31m"\n', "name"),
        ('  publish_tags: "v1\\n"\n', "publish_tags"),
        ('  publish_tags: ["ok", "v1\\n"]\n', "publish_tags"),
        ('  publish_tags: ["a/b"]\n', "publish_tags"),
        ('  publish_tags: [".."]\n', "publish_tags"),
        ('  publish_tags: ["-rm"]\n', "publish_tags"),
        ('  publish_s3: http://s3\n  s3_prefix: "a/../../b/"\n', "s3_prefix"),
        ('  publish_s3: http://s3\n  s3_prefix: "..\\n"\n', "s3_prefix"),
        ('  publish_s3: http://s3\n  s3_prefix: "a/\\x00/"\n', "s3_prefix"),
        ('  publish_s3: http://s3\n  s3_prefix: "a\\rb/"\n', "s3_prefix"),
        ('  publish_s3: http://s3\n  s3_bucket: "boot\\n"\n', "s3_bucket"),
        ('  publish_s3: http://s3\n  s3_bucket: "../x"\n', "s3_bucket"),
        ('  publish_s3: "http://s3\\n"\n', "publish_s3"),
        ('  publish_registry: "reg.example/ns\\n"\n', "publish_registry"),
        ('  parent: "reg.example/a:1\\x00"\n', "parent"),
        ('  publish_dir: "out\\x00"\n', "publish_dir"),
        ('  publish_dir: "out\\n"\n', "publish_dir"),
    ],
)
def test_unsafe_names_tags_prefixes_are_rejected(snippet: str, where: str) -> None:
    spec, diags = read_text(MIN + snippet)
    assert spec is None, diags
    assert any(where in d.message and d.line >= 4 for d in diags), [str(d) for d in diags]


@pytest.mark.parametrize(
    "snippet",
    [
        "  name: site/compute-v2.1_x\n  publish_tags: ['9.4', 'latest', '2024_01']\n",
        "  publish_s3: http://s3\n  s3_prefix: 'compute/..hidden/a..b/'\n",
        "  publish_s3: http://s3\n  s3_prefix: ''\n",
    ],
)
def test_safe_names_are_accepted(snippet: str) -> None:
    spec, diags = read_text(MIN + snippet)
    assert spec is not None, [str(d) for d in diags]


@pytest.mark.parametrize(
    "item", ['{src: "f\\0", dest: /x}', '{src: f, dest: "/x\\n"}', '{src: f, dst: "/\\x07"}']
)
def test_copyfiles_paths_with_control_characters(item: str, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    spec, diags = read_spec(tmp_path / "l.yaml", MIN + f"copyfiles:\n  - {item}\n", shown="l.yaml")
    assert spec is None and any("control characters" in d.message for d in diags), diags


def test_layer_file_names_with_control_characters(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(MIN)
    (tmp_path / "bad\nname.yaml").write_text(MIN)
    with pytest.raises(SpecError) as ei:
        load_project(tmp_path)
    assert any("control characters" in d.message for d in ei.value.diagnostics)


def _project(root: Path, specs: dict[str, str], settings_text: str | None = None) -> Project | SpecError:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in specs.items():
        (root / name).write_text(text)
    if settings_text is not None:
        (root / "imagegraph.yaml").write_text(settings_text)
    try:
        return load_project(root)
    except SpecError as exc:
        return exc


def test_copyfiles_escapes_through_dotdot_and_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    root = tmp_path / "layers"
    (root / "files" / "sub").mkdir(parents=True)
    (root / "files" / "motd").write_text("m")
    (root / "files" / "link-out").symlink_to(outside / "secret")  # file symlink leaving
    (root / "files" / "dir-out").symlink_to(outside)  # directory symlink leaving, used mid-path
    (root / "files" / "link-in").symlink_to(root / "files" / "motd")  # stays inside: fine
    specs = {
        "dotdot.yaml": MIN + "copyfiles:\n  - {src: '../outside/secret', dest: /x}\n",
        "deep.yaml": MIN + "copyfiles:\n  - {src: 'files/sub/../../../outside/secret', dest: /x}\n",
        "link.yaml": MIN + "copyfiles:\n  - {src: 'files/link-out', dest: /x}\n",
        "dirlink.yaml": MIN + "copyfiles:\n  - {src: 'files/dir-out/secret', dest: /x}\n",
        "inside.yaml": MIN
        + "copyfiles:\n  - {src: 'files/sub/../motd', dest: /x}\n  - {src: files/link-in, dest: /y}\n",
        "absolute.yaml": MIN + f"copyfiles:\n  - {{src: '{outside / 'secret'}', dest: /x}}\n",
    }
    result = _project(root, specs)
    assert isinstance(result, SpecError)
    bad = {Path(d.file).stem for d in result.diagnostics if "leaves the layer directory" in d.message}
    assert bad == {"dotdot", "deep", "link", "dirlink"}
    assert all(d.line == 5 for d in result.diagnostics), [str(d) for d in result.diagnostics]

    # The settings switch allows them all; an explicit false is the default.
    result = _project(root, {}, "allow_outside_sources: false\n")
    assert isinstance(result, SpecError)
    project = _project(root, {}, "allow_outside_sources: true\n")
    assert isinstance(project, Project), project
    assert set(project.layers) == {Path(n).stem for n in specs}
    assert project.layers["dirlink"].copyfiles[0].source == root / "files" / "dir-out" / "secret"
    # A string "yes" is not a boolean switch.
    result = _project(root, {}, "allow_outside_sources: 'yes'\n")
    assert isinstance(result, SpecError) and any(d.line == 1 for d in result.diagnostics)


def test_publish_dir_is_relative_to_the_spec_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "layers"
    result = _project(
        root, {"a.yaml": MIN + "  publish_dir: ../out\n", "b.yaml": MIN + "  publish_dir: /srv/boot\n"}
    )
    assert isinstance(result, Project), result
    monkeypatch.chdir(tmp_path / "layers")
    # stored canonically: one spelling, whatever the working directory or DIR's spelling
    assert result.layers["a"].publish_dir == (tmp_path / "out").resolve()
    assert result.layers["b"].publish_dir == Path("/srv/boot")
    # <publish_dir>/<name>/<tag>/: name and tag cannot climb out of it (see the rejections above).


@pytest.mark.parametrize(
    "text, fragment, line",
    [
        ("defaults:\n  name: '../x'\n", "image names", 2),
        ("defaults:\n  parent: 5\n", "parent", 2),
        ("defaults:\n  publish_dir: [a]\n", "publish_dir", 2),
        ("defaults:\n  pakages: [a]\n", "not a spec option", 2),
        ('state_dir: "st\\0ate"\n', "state_dir", 1),
        ('state_dir: "state\\n"\n', "state_dir", 1),
        ("jobs: 0\n", "jobs", 1),
        ("jobs: true\n", "jobs", 1),
        ("registry_aliases: {a: [b]}\n", "registry_aliases", 1),
    ],
)
def test_bad_settings_are_located(tmp_path: Path, text: str, fragment: str, line: int) -> None:
    (tmp_path / "imagegraph.yaml").write_text(text)
    _settings, diags = load_settings(tmp_path)
    assert diags and all(d.file.endswith("imagegraph.yaml") for d in diags)
    assert any(fragment in d.message and d.line == line for d in diags), [str(d) for d in diags]


# --------------------------------------------------------------------------- lock file

LOCK_VALID = {
    "version": 1,
    "repositories": [{"alias": "BaseOS", "url": "http://mirror.example/BaseOS/", "sha256": "ab" * 32}],
    "parents": [{"reference": "registry.example/site/base:1", "digest": "sha256:" + "cd" * 32}],
}


def lock_answer(raw: bytes) -> None:
    from imagegraph.lockfile import LockFile, load_lock

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "imagegraph.lock").write_bytes(raw)
        try:
            lock = load_lock(Path(tmp))
        except SpecError as exc:
            assert exc.diagnostics and all(d.file.endswith("imagegraph.lock") for d in exc.diagnostics)
            return
        assert isinstance(lock, LockFile)
        for (alias, url, _suite), entry in lock.repositories.items():
            assert isinstance(alias, str) and isinstance(url, str) and isinstance(entry["sha256"], str)
        for ref, entry in lock.parents.items():
            assert isinstance(ref, str) and isinstance(entry["digest"], str)


@FAST
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_lockfile_arbitrary(raw: bytes) -> None:
    lock_answer(raw)


@st.composite
def near_valid_lock(draw: st.DrawFn) -> dict:
    doc = json.loads(json.dumps(LOCK_VALID))
    path = draw(st.sampled_from([p for p in _paths(doc) if p]))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = draw(documents)
    return doc


@FAST
@given(st.one_of(near_valid_lock(), documents), st.sampled_from(["block", "flow"]))
def test_lockfile_documents(doc: Any, style: str) -> None:
    lock_answer(_yaml_text(doc, style).encode())
