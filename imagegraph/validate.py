"""`validate`: every problem of a layer directory in one run.

Every file's YAML, schema and source problems and the graph's (parents, duplicates, cycles)
are collected together: a file that cannot be parsed simply drops out of the graph checks,
and a spec whose copied files are missing stays in them. With `strict`, warnings count as
errors (exit status 2 like any spec error).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .errors import Diagnostic, SpecError
from .graph import build_graph
from .project import load_project


@dataclass
class Validation:
    root: Path
    layers: list[str]
    diagnostics: list[Diagnostic]  # sorted; with strict, warnings are already errors

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity != "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else SpecError.exit_status

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "layers": self.layers,
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }


def validate(root: Path | str, *, cache_dir: Path | None = None, strict: bool = False) -> Validation:
    """Check every spec of `root` and the graph they form; never raises for spec problems."""
    project = load_project(root, cache_dir=cache_dir, strict=False, sources_required=False)
    diags = [*project.errors, *project.warnings]
    try:
        diags += build_graph(project).warnings
    except SpecError as exc:
        diags += exc.diagnostics
    unique = sorted(dict.fromkeys(diags))
    if strict:
        unique = [
            dataclasses.replace(d, severity="error", message=d.message + " [--strict]")
            if d.severity != "error"
            else d
            for d in unique
        ]
    return Validation(Path(root), sorted(project.layers), unique)
