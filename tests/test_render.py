"""render: the output-format rule, plural, the plan tree (golden and property), the summary."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.graph import build_graph
from imagegraph.plan import StaticInventory, make_plan
from imagegraph.project import load_project
from imagegraph.render import (
    OutputFormat,
    choose_format,
    indented_json,
    plain_stream,
    plan_summary,
    plan_tree,
    plural,
    use_color,
)
from imagegraph.state import State

from .specdirs import write


@pytest.mark.parametrize(
    "requested, env, expected",
    [
        ("auto", {}, OutputFormat.TEXT),
        ("auto", {"JOURNAL_STREAM": "8:1234"}, OutputFormat.JSON),
        ("text", {"JOURNAL_STREAM": "8:1234"}, OutputFormat.TEXT),
        ("console", {}, OutputFormat.TEXT),
        ("json", {}, OutputFormat.JSON),
    ],
)
def test_choose_format(requested: str, env: dict, expected: OutputFormat) -> None:
    assert choose_format(requested, env) == expected


def test_colour_only_on_a_terminal_without_no_color() -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    assert use_color(Tty(), {}) is True
    assert use_color(Tty(), {"NO_COLOR": "1"}) is False
    assert use_color(tempfile.TemporaryFile("w"), {}) is False


def test_plural() -> None:
    assert [plural(n, "layer") for n in (0, 1, 2)] == ["0 layers", "1 layer", "2 layers"]


def _plan_of(parents: list[int | None], root: Path):
    """Layers l0..lN; parents[i] is the index of l<i>'s parent (always earlier) or None (scratch)."""
    for i, p in enumerate(parents):
        parent = "scratch" if p is None else f"r.io/x/l{p}:1"
        write(
            root,
            f"l{i}.yaml",
            f"options:\n  layer_type: base\n  pkg_manager: dnf\n  name: l{i}\n  parent: '{parent}'\n"
            "  publish_tags: '1'\n  publish_registry: r.io/x\npackages: [bash]\n",
        )
    lg = build_graph(load_project(root))
    return make_plan(lg, State(root / "state.db", readonly=True), StaticInventory(), offline=True)


def test_plan_tree_golden(tmp_path: Path) -> None:
    plan = _plan_of([None, 0, 1, 1, 0], tmp_path)
    assert [t.plain for t in plan_tree(plan)] == [
        "l0  build  (from scratch)",
        "│    - never built",
        "├─ l1  build",
        "│  │    - parent l0 rebuilds",
        "│  ├─ l2  build",
        "│  │       - parent l1 rebuilds",
        "│  └─ l3  build",
        "│          - parent l1 rebuilds",
        "└─ l4  build",
        "        - parent l0 rebuilds",
    ]
    assert [t.plain for t in plan_summary(plan)][:2] == ["5 layers: 5 build", "build    l0  (never built)"]


_forests = st.integers(1, 7).flatmap(
    lambda n: st.tuples(
        *[st.none() if i == 0 else st.one_of(st.none(), st.integers(0, i - 1)) for i in range(n)]
    )
)


@settings(max_examples=25, deadline=None)
@given(_forests)
def test_plan_tree_draws_the_graph(parents: tuple[int | None, ...]) -> None:
    """Reading the tree back (depth from the connector's column) gives every layer's parent."""
    with tempfile.TemporaryDirectory() as tmp:
        plan = _plan_of(list(parents), Path(tmp))
    stack: list[str] = []
    seen: dict[str, str | None] = {}
    connectors: dict[str | None, list[str]] = {}
    lines = [t.plain for t in plan_tree(plan)]
    for line in lines:
        stripped = line.lstrip("│ ")
        if stripped.startswith(("- ", "· ")):
            continue
        if stripped.startswith(("├─ ", "└─ ")):
            depth = (len(line) - len(stripped)) // 3 + 1
            name = stripped[3:].split()[0]
        else:
            depth, name = 0, stripped.split()[0]
        del stack[depth:]
        seen[name] = stack[-1] if stack else None
        if depth:
            connectors.setdefault(seen[name], []).append(stripped[:2])
        stack.append(name)
    assert seen == {f"l{i}": (None if p is None else f"l{p}") for i, p in enumerate(parents)}
    for kids in connectors.values():
        assert kids == ["├─"] * (len(kids) - 1) + ["└─"], lines
    # no │ or ├ dangles above a line that does not continue it
    for i, line in enumerate(lines):
        for col, ch in enumerate(line):
            if ch in "├│":
                below = [row[col] if col < len(row) else " " for row in lines[i + 1 : i + 2]]
                assert below and below[0] in "├│└", (line, lines)


@given(st.text(max_size=80), st.sampled_from(["yellow", "red", "bold red"]))
@settings(max_examples=300, deadline=None)
def test_plain_lines_are_what_rich_prints_to_a_pipe(text: str, style: str) -> None:
    """Where Output writes a warning or error line itself (not a terminal), rich would have printed
    the same characters; where the text holds anything rich changes, plain_stream says no."""
    import io

    from rich.console import Console
    from rich.text import Text

    buf = io.StringIO()
    Console(file=buf, highlight=False, soft_wrap=True, no_color=True, _environ={}).print(
        Text(text, style=style)
    )
    if plain_stream(io.StringIO(), text, environ={}):
        assert buf.getvalue() == text + "\n"
        if "[" not in text and ":" not in text:  # Output.info: a str goes through rich's markup
            buf = io.StringIO()
            Console(file=buf, highlight=False, soft_wrap=True, no_color=True, _environ={}).print(text)
            assert buf.getvalue() == text + "\n"
    assert not plain_stream(io.StringIO(), "x", environ={"FORCE_COLOR": "1"})
    assert not plain_stream(io.StringIO(), "a\tb", environ={})


def test_plan_json_to_a_pipe_prints_warnings_without_rich(tmp_path: Path) -> None:
    """The warning lines of `plan --json` on stderr (a pipe) are the diagnostics, one a line."""
    import subprocess
    import sys

    write(
        tmp_path,
        "base.yaml",
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: b\n  parent: scratch\n"
        "  publish_tags: ['1']\nrepos:\n  - alias: r\n    url: http://m.example.org/os/\npackages: [p]\n",
    )
    r = subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", "plan", "--offline", "--json", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() and all(
        line.startswith("base.yaml:") or line.startswith(str(tmp_path)) for line in r.stderr.splitlines()
    ), r.stderr
    assert "unsigned packages" in r.stderr


_json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.builds(Path, st.text("ab/", max_size=5))  # default=str
)
_json_docs = st.recursive(
    _json_leaves,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.tuples(kids, kids)
        | st.dictionaries(st.text(max_size=5) | st.integers() | st.booleans() | st.none(), kids, max_size=4)
    ),
    max_leaves=30,
)


@given(_json_docs)
@settings(max_examples=500, deadline=None)
def test_indented_json_is_json_dumps_indent_2(doc) -> None:
    import json

    assert indented_json(doc) == json.dumps(doc, indent=2, default=str)


def test_indented_json_of_a_real_plan(tmp_path: Path) -> None:
    import json

    from .specdirs import seed_dir

    lg = build_graph(load_project(seed_dir(tmp_path / "l")))
    plan = make_plan(lg, State(tmp_path / "s.db"), StaticInventory(), [])
    doc = plan.to_json()
    assert indented_json(doc) == json.dumps(doc, indent=2, default=str)


def test_file_change_summary_counts_in_words() -> None:
    from imagegraph.render import file_change_lines
    from imagegraph.rootdiff import FileChange, FileChangeKind

    one = [FileChange(FileChangeKind.ADDED, "/etc/motd", None, 12)]
    assert file_change_lines(one)[-1].plain == "1 path added, 0 removed, 0 changed"
    two = [*one, FileChange(FileChangeKind.ADDED, "/etc/issue", None, 3)]
    two.append(FileChange(FileChangeKind.CHANGED, "/etc/hosts", 10, 11, "content"))
    assert file_change_lines(two)[-1].plain == "2 paths added, 0 removed, 1 changed"


_NAMES = st.text(alphabet="abcxyz019-_.@[]: é\t", min_size=1, max_size=30)


@given(
    st.lists(
        st.tuples(
            _NAMES,
            st.sampled_from(["up-to-date", "build", "publish", "blocked", "unknown", "re[d]", "x:y:"]),
            st.sampled_from(["ok", "up-to-date", "failed", "blocked", "not-started", "cancelled"]),
            st.floats(min_value=0, max_value=1e6, allow_nan=False),
        ),
        min_size=0,
        max_size=6,
    ),
    st.text(alphabet="0123456789TZ-x", min_size=1, max_size=40),
    st.integers(min_value=10, max_value=130),
)
@settings(max_examples=400, deadline=None)
def test_plain_result_table_is_what_rich_prints_to_a_pipe(rows: list, run_id: str, width: int) -> None:
    """`up`'s table to a pipe, written without rich, is rich's table character for character; where
    rich would draw it otherwise (markup, wide or control characters, too narrow), None."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from imagegraph.render import plain_result_table, result_table

    result = SimpleNamespace(
        run_id=run_id,
        results={
            f"{i}": SimpleNamespace(layer=n, action=a, status=s, duration=d)
            for i, (n, a, s, d) in enumerate(rows)
        },
    )
    env = {"COLUMNS": str(width)}
    text = plain_result_table(result, io.StringIO(), env)
    if text is not None:
        buf = io.StringIO()
        Console(file=buf, highlight=False, soft_wrap=True, no_color=True, _environ=env).print(
            result_table(result)
        )
        assert text == buf.getvalue()
    assert plain_result_table(result, io.StringIO(), {"FORCE_COLOR": "1", **env}) is None


def test_plain_result_table_is_taken_for_an_ordinary_run() -> None:
    """The usual table (short names, 80 columns) is written without rich: the property above is not vacuous."""
    import io
    from types import SimpleNamespace

    from imagegraph.render import plain_result_table

    row = SimpleNamespace(layer="compute", action="up-to-date", status="up-to-date", duration=0.0)
    result = SimpleNamespace(run_id="20261201T224534Z-17435", results={"compute": row})
    text = plain_result_table(result, io.StringIO(), {})
    assert text is not None and text.splitlines()[4] == "│ compute │ up-to-date │ up-to-date │ 0.0s │"
    narrow = plain_result_table(result, io.StringIO(), {"COLUMNS": "30"})
    assert narrow is None  # rich wraps the cells then


def test_boot_config_yaml_keeps_urls_and_params_on_one_line() -> None:
    """What `artifacts` prints for `ochami boot config add -f yaml`: ruamel's default folds long plain
    scalars at 80 columns, leaving `kernel: ` and the URL on the next line."""
    from ruamel.yaml import YAML

    from imagegraph.render import boot_config_yaml

    base = "http://s3.cluster.example.org:9000/boot-images/" + "x" * 120
    entries = [
        {
            "name": "compute-1",
            "kernel": f"{base}/efi-images/vmlinuz-5.14.0-427.el9.x86_64",
            "initrd": f"{base}/efi-images/initramfs-5.14.0-427.el9.x86_64.img",
            "params": f"root=live:{base}/rocky9.6-compute-1 ip=dhcp overlayroot=tmpfs "
            + " ".join(["quiet"] * 30),
        }
    ]
    text = boot_config_yaml(entries)
    assert YAML(typ="safe").load(text) == entries
    lines = text.splitlines()
    for field in ("kernel", "initrd", "params"):
        assert any(line.strip() == f"{field}: {entries[0][field]}" for line in lines), text
    assert not any(line.endswith(" ") for line in lines), text
