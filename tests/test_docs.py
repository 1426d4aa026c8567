"""README.md and docs/architecture.md against the code: the options table, the module lines."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from imagegraph.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "imagegraph"


def _module_table() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for line in table.splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([^`]+\.py)`", line.split("|")[1])
    return names


def test_every_module_has_its_architecture_line_and_every_line_a_module() -> None:
    modules = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")}
    named: list[str] = []
    last_dir = ""
    for name in _module_table():  # `build/dnf.py`, `zypper.py`: a bare name after a path is beside it
        if "/" in name:
            last_dir = name.rsplit("/", 1)[0] + "/"
        elif name not in modules and last_dir + name in modules:
            name = last_dir + name
        named.append(name)
    assert sorted(set(named) - modules) == [], "lines naming no module"
    assert sorted(modules - set(named)) == [], "modules without a line"
    assert len(named) == len(set(named)), "a module with two lines"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_readme_options_table_lists_every_option_of_its_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| command | options |", 1)[1].split("\n\n", 1)[0]
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z-]+)[^`]*` \| (.*) \|$", table, flags=re.MULTILINE)
    }
    common = {"--help", "--log-format", "--verbose", "--quiet"}
    missing: dict[str, list[str]] = {}
    for name, sub in _subcommands().items():
        if name not in rows:
            continue
        for act in sub._actions:
            longs = [o for o in act.option_strings if o.startswith("--")]
            if not longs or act.help == argparse.SUPPRESS or set(longs) & common:
                continue
            if not any(re.search(re.escape(o) + r"\b", rows[name]) for o in act.option_strings):
                missing.setdefault(name, []).append(longs[0])
    assert missing == {}, "options the README's table does not list"


def test_readme_names_every_reason_code() -> None:
    from imagegraph.reasons import IndexReason, ReasonCode

    text = (ROOT / "README.md").read_text()
    missing = [str(c) for c in [*ReasonCode, *IndexReason] if f"`{c}`" not in text]
    assert not missing, f"README.md does not name these reason codes: {missing}"
