"""A run's report page: one self-contained HTML file a sysadmin reads in the morning.

The page is made from the run's result document alone (`<state>/runs/<run>.json`,
which carries the plan it ran), so a report of last week's run still draws the
graph as it was then. It holds the run's status and duration, the graph
coloured by each layer's result (laid out by Graphviz, see picture.py), a
timeline with one row per layer and a bar per task, the critical path (the
chain of parent -> child builds with the most work; its length is stated next
to the run's wall time), and per layer its reasons, key, result, the quoted
cause of a failure and a relative link to its log.

Everything is inline (CSS and SVG; no scripts, fonts or styles fetched), so the
file opens from S3, a mail attachment or a file share. Jinja2 renders it, with
autoescaping on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from .errors import UsageError
from .picture import GraphNode, NodeState, draw, inline_svg, shade_of
from .runner import Runner

TIMELINE_WIDTH = 900  # px of the bar area
ROW_HEIGHT = 22
LABEL_WIDTH = 170
CAUSE_LINES = 30


@dataclass
class Bar:
    """One task of a layer on the timeline, in seconds from the run's start."""

    kind: str
    start: float
    end: float
    status: str

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "status": self.status,
        }


@dataclass
class LayerRow:
    name: str
    key: str
    action: str
    status: str
    duration: float
    parent: str | None
    reasons: list[str] = field(default_factory=list)
    cause: list[str] = field(default_factory=list)
    log: str | None = None  # relative to the report file
    bars: list[Bar] = field(default_factory=list)
    critical: bool = False
    changes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "key": self.key,
            "action": self.action,
            "status": self.status,
            "duration": round(self.duration, 3),
            "parent": self.parent,
            "reasons": self.reasons,
            "cause": self.cause,
            "log": self.log,
            "bars": [b.to_json() for b in self.bars],
            "critical": self.critical,
            "changes": self.changes,
        }


@dataclass
class RunReport:
    run_id: str
    command: str
    status: str
    exit_status: int | None
    started: float
    duration: float
    summary: dict[str, int]
    layers: list[LayerRow]
    critical_path: list[str]
    critical_seconds: float
    graph_svg: str = ""

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "status": self.status,
            "exit_status": self.exit_status,
            "started": self.started,
            "duration": round(self.duration, 3),
            "summary": self.summary,
            "critical_path": self.critical_path,
            "critical_seconds": round(self.critical_seconds, 3),
            "layers": [r.to_json() for r in self.layers],
        }


# ---------------------------------------------------------------------- reading


def run_document(state_dir: Path, run: str | None = None) -> dict:
    """The result document of run `run` (an id or a unique id prefix), default the last run."""
    if run is None:
        path = state_dir / "last-run.json"
        if not path.is_file():
            raise UsageError(f"no run recorded in {state_dir} yet: run `imagegraph up` first")
    else:
        runs = state_dir / "runs"
        matches = sorted(runs.glob(f"{run}*.json")) if runs.is_dir() else []
        if len(matches) != 1:
            known = sorted(p.stem for p in runs.glob("*.json"))[-5:] if runs.is_dir() else []
            what = "no run" if not matches else f"{len(matches)} runs"
            hint = f" (recent: {', '.join(known)})" if known else ""
            raise UsageError(f"{what} matching '{run}' in {runs}{hint}")
        path = matches[0]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read run record {path}: {exc}") from exc


def _bars(entry: dict, t0: float) -> list[Bar]:
    # Task-level detail when the run record has it, else the layer's own span.
    out = []
    for task in entry.get("tasks") or []:
        if task.get("started") is None or task.get("finished") is None:
            continue
        out.append(
            Bar(
                str(task.get("kind", "task")),
                float(task["started"]) - t0,
                float(task["finished"]) - t0,
                str(task.get("status", "")),
            )
        )
    if not out and entry.get("started") is not None and entry.get("finished") is not None:
        kind = "build" if entry.get("action") == "build" else "publish"
        out.append(
            Bar(kind, float(entry["started"]) - t0, float(entry["finished"]) - t0, entry.get("status", ""))
        )
    return out


def _cause(error: str | None) -> list[str]:
    if not error:
        return []
    lines = [ln.rstrip() for ln in error.splitlines() if ln.strip()]
    return lines[:CAUSE_LINES] + (["..."] if len(lines) > CAUSE_LINES else [])


def _changes(doc: dict, layer: str) -> list[str]:
    """The layer's package changes since its previous build (the run record's `package_changes`)."""
    d = (doc.get("package_changes") or {}).get(layer)
    return [d["brief"]] if isinstance(d, dict) and d.get("brief") else []


def _slurm_time(text: str) -> float | None:
    """Slurm's local `2026-12-01T17:50:01` (as `scontrol` prints it) in epoch seconds."""
    try:
        return dt.datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def _queued(doc: dict, t0: float) -> dict[str, Bar]:
    """Per layer built as a Slurm job: the time from submission to the job's start."""
    out = {}
    for job in doc.get("jobs") or []:
        start = _slurm_time(str(job.get("started") or ""))
        submitted = job.get("submitted")
        if start is not None and isinstance(submitted, int | float) and start > submitted:
            out[job["layer"]] = Bar("queued", submitted - t0, start - t0, str(job.get("state", "")))
    return out


def critical_path(rows: dict[str, LayerRow]) -> tuple[list[str], float]:
    """The parent -> child chain with the most work (seconds of its layers' tasks)."""
    best: dict[str, tuple[float, list[str]]] = {}

    def work(r: LayerRow) -> float:
        ran = [b for b in r.bars if b.kind != "queued"]
        return sum(b.end - b.start for b in ran) if ran else r.duration

    def chain(name: str) -> tuple[float, list[str]]:
        if name not in best:
            r = rows[name]
            up = chain(r.parent) if r.parent in rows else (0.0, [])
            best[name] = (up[0] + work(r), [*up[1], name])
        return best[name]

    # Layers form a forest (one parent each), so walking up from each layer is linear overall.
    candidates = [chain(n) for n in rows if work(rows[n]) > 0]
    if not candidates:
        return [], 0.0
    seconds, path = max(candidates, key=lambda c: (c[0], c[1]))
    return path, seconds


def build_report(doc: dict, *, log_base: Path | None = None) -> RunReport:
    """A RunReport from a run's result document; log links relative to `log_base` (the report's directory)."""
    plan_layers = {p["name"]: p for p in (doc.get("plan") or {}).get("layers", [])}
    t0 = float(doc.get("started") or 0.0)
    queued = _queued(doc, t0)
    rows: dict[str, LayerRow] = {}
    for entry in doc.get("layers", []):
        name = entry["name"]
        p = plan_layers.get(name, {})
        log = entry.get("log_file")
        if log and log_base is not None:
            log = os.path.relpath(log, log_base)
        rows[name] = LayerRow(
            name=name,
            key=p.get("key", ""),
            action=str(entry.get("action") or p.get("action", "")),
            status=str(entry.get("status", "")),
            duration=float(entry.get("duration") or 0.0),
            parent=p.get("parent") if p.get("parent_kind") == "layer" else None,
            reasons=[r.get("message", "") for r in p.get("reasons", [])],
            cause=_cause(entry.get("error")),
            log=log,
            bars=([queued[name]] if name in queued else []) + _bars(entry, t0),
            changes=_changes(doc, name),
        )
    path, seconds = critical_path(rows)
    for name in path:
        rows[name].critical = True
    status = "cancelled" if doc.get("cancelled") else ("failed" if doc.get("exit_status") else "ok")
    return RunReport(
        run_id=str(doc.get("run_id", "")),
        command=str(doc.get("command", "up")),
        status=status,
        exit_status=doc.get("exit_status"),
        started=t0,
        duration=float(doc.get("duration") or 0.0),
        summary=dict(doc.get("summary") or {}),
        layers=list(rows.values()),
        critical_path=path,
        critical_seconds=seconds,
    )


def run_graph_nodes(doc: dict) -> list[GraphNode]:
    """The graph of the run's plan, as the picture module draws it."""
    out = []
    for p in (doc.get("plan") or {}).get("layers", []):
        out.append(
            GraphNode(p["name"], p.get("image", p["name"]), p.get("parent", ""), p.get("parent_kind", ""))
        )
    return out


# --------------------------------------------------------------------- rendering


def _timeline(report: RunReport) -> dict[str, Any]:
    """Geometry of the timeline SVG: bars in px, ticks at round seconds."""
    span = max([report.duration] + [b.end for r in report.layers for b in r.bars] + [1e-9])
    scale = TIMELINE_WIDTH / span
    rows = []
    for i, r in enumerate(report.layers):
        bars = [
            {
                "kind": b.kind,
                "status": b.status,
                "x": LABEL_WIDTH + max(0.0, b.start) * scale,
                "w": max(1.0, (b.end - b.start) * scale),
                "title": f"{r.name} {b.kind}: {b.end - b.start:.1f} s ({b.status})",
            }
            for b in r.bars
        ]
        rows.append({"name": r.name, "y": 24 + i * ROW_HEIGHT, "critical": r.critical, "bars": bars})
    step = next(
        (s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if span / s <= 10), 7200
    )
    ticks = [{"x": LABEL_WIDTH + t * scale, "label": _seconds(t)} for t in range(0, int(span) + 1, step)]
    return {
        "width": LABEL_WIDTH + TIMELINE_WIDTH + 20,
        "height": 24 + len(rows) * ROW_HEIGHT + 8,
        "rows": rows,
        "ticks": ticks,
        "label_width": LABEL_WIDTH,
    }


def _seconds(s: float) -> str:
    if s < 10:
        return f"{s:.1f}s"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("imagegraph", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["seconds"] = _seconds
    env.filters["when"] = lambda t: dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return env


def render_html(report: RunReport) -> str:
    """The report page as one HTML document."""
    from .picture import PALETTE

    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            r=report,
            timeline=_timeline(report),
            graph_svg=jinja2_markup(report.graph_svg),
            palette={str(k): v for k, v in PALETTE.items()},
        )
    )


def jinja2_markup(svg: str) -> Any:
    # The SVG is Graphviz's output from our own escaped DOT: safe to embed as markup.
    return jinja2.utils.markupsafe.Markup(svg)


def make_report(doc: dict, *, log_base: Path | None = None, runner: Runner | None = None) -> RunReport:
    """A RunReport with the run's graph drawn (each box coloured by the layer's result)."""
    report = build_report(doc, log_base=log_base)
    states = {r.name: NodeState(shade_of(r.status), (r.cause or r.reasons or [""])[0]) for r in report.layers}
    nodes = run_graph_nodes(doc)
    if nodes:
        report.graph_svg = inline_svg(draw(nodes, states, runner=runner))
    return report
