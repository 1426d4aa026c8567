"""The layer graph as a picture: Graphviz `dot` lays it out, each box coloured by its state.

Graphviz was chosen over a Python layout package because its layered (Sugiyama)
layout is what a parent -> child graph wants: ranks top-down, no overlapping
boxes, few crossings, and a 200-layer graph is laid out in well under a second
(bench/README.md). `dot` runs through the Runner like every external command.

A box's state is a plan action (`build`, `publish`, `up-to-date`, `blocked`,
`unknown`) or a run result (`ok`, `failed`, `blocked`, ...); its first reason
becomes the SVG `<title>`, which browsers show as a tooltip.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from .graph import LayerGraph
from .runner import Runner

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"


class Shade(StrEnum):
    """The states a box can be drawn in (plan actions and run results)."""

    BUILD = "build"
    PUBLISH = "publish"
    UP_TO_DATE = "up-to-date"
    BLOCKED = "blocked"
    UNKNOWN = "unknown"
    OK = "ok"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NOT_STARTED = "not-started"
    BOOT_TEST_FAILED = "boot-test-failed"


# fill, border: calm for what needs nothing, loud for what needs attention.
PALETTE: dict[Shade, tuple[str, str]] = {
    Shade.BUILD: ("#fde68a", "#b45309"),
    Shade.PUBLISH: ("#bfdbfe", "#1d4ed8"),
    Shade.UP_TO_DATE: ("#e5e7eb", "#6b7280"),
    Shade.BLOCKED: ("#fed7aa", "#c2410c"),
    Shade.UNKNOWN: ("#f5d0fe", "#a21caf"),
    Shade.OK: ("#bbf7d0", "#15803d"),
    Shade.FAILED: ("#fecaca", "#b91c1c"),
    Shade.CANCELLED: ("#e9d5ff", "#7e22ce"),
    Shade.NOT_STARTED: ("#f3f4f6", "#9ca3af"),
    Shade.BOOT_TEST_FAILED: ("#fecaca", "#b91c1c"),
}


def shade_of(value: str) -> Shade:
    """A state name as the plan or a run record spells it; anything else draws as unknown."""
    try:
        return Shade(value)
    except ValueError:
        return Shade.UNKNOWN


@dataclass(frozen=True)
class NodeState:
    """How one layer is drawn: its state and the line its tooltip shows."""

    shade: Shade
    why: str = ""


@dataclass(frozen=True)
class GraphNode:
    """One layer as drawn: its id, image name and parent (a layer id, or an external reference)."""

    name: str
    image: str
    parent: str
    parent_kind: str  # layer, external, scratch


def nodes_of(lg: LayerGraph, layers: set[str] | None = None) -> list[GraphNode]:
    """The layers of a graph (topological order), optionally only `layers`."""
    out = []
    for lid in lg.order(layers):
        link = lg.parents[lid]
        out.append(GraphNode(lid, lg.spec(lid).name, link.describe(), link.kind))
    return out


def _q(text: str) -> str:
    # JSON string quoting is valid DOT string quoting for everything we emit.
    return json.dumps(text)


def to_dot(nodes: list[GraphNode], states: dict[str, NodeState] | None = None) -> str:
    """DOT source, top-down; external parents as dashed ellipses."""
    states = states or {}
    names = {n.name for n in nodes}
    lines = [
        "digraph imagegraph {",
        "  rankdir=TB; nodesep=0.25; ranksep=0.45;",
        '  node [shape=box, style="rounded,filled", fontname="DejaVu Sans", fontsize=11, penwidth=1.4];',
        '  edge [color="#6b7280", arrowsize=0.7];',
    ]
    externals: dict[str, list[str]] = {}
    edges = []
    for n in nodes:
        st = states.get(n.name)
        fill, border = PALETTE[st.shade] if st else ("#ffffff", "#374151")
        label = n.name if n.image == n.name else f"{n.name}\n{n.image}"
        if st:
            label += f"\n[{st.shade}]"
        attrs = f"id={_q('layer-' + n.name)}, label={_q(label)}, fillcolor={_q(fill)}, color={_q(border)}"
        lines.append(f"  {_q(n.name)} [{attrs}];")
        if n.parent_kind == "external":
            externals.setdefault(n.parent, []).append(n.name)
        elif n.parent_kind == "layer" and n.parent in names:
            edges.append((n.parent, n.name))
    for i, (ref, kids) in enumerate(sorted(externals.items())):
        eid = f"external-{i}"
        attrs = f'id={_q(eid)}, label={_q(ref)}, shape=ellipse, style=dashed, color="#6b7280"'
        lines.append(f"  {_q(eid)} [{attrs}];")
        lines.extend(f"  {_q(eid)} -> {_q(kid)} [style=dashed];" for kid in kids)
    lines.extend(f"  {_q(u)} -> {_q(v)};" for u, v in sorted(edges))
    lines.append("}")
    return "\n".join(lines) + "\n"


def layout(dot_source: str, runner: Runner | None = None) -> str:
    """SVG text from Graphviz `dot -Tsvg`; raises CommandError when dot fails or is missing."""
    runner = runner or Runner()
    return runner.run(["dot", "-Tsvg"], step="layout", input=dot_source, capture=True).stdout


def write_png(dot_source: str, path: Path, runner: Runner | None = None) -> None:
    """A PNG of the graph at `path` (dot writes the file itself: binary output is not captured)."""
    (runner or Runner()).run(["dot", "-Tpng", "-o", str(path)], step="layout", input=dot_source)


def draw(
    nodes: list[GraphNode], states: dict[str, NodeState] | None = None, runner: Runner | None = None
) -> str:
    """An SVG document of the graph; each layer's `<title>` is its name, state and first reason."""
    return _retitle(layout(to_dot(nodes, states), runner), states or {})


def _retitle(svg: str, states: dict[str, NodeState]) -> str:
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)
    root = ET.fromstring(svg)
    for g in root.iter(f"{{{SVG_NS}}}g"):
        gid = g.get("id", "")
        if g.get("class") != "node" or not gid.startswith("layer-"):
            continue
        lid = gid[len("layer-") :]
        title = g.find(f"{{{SVG_NS}}}title")
        st = states.get(lid)
        if title is None:
            continue
        title.text = lid
        if st:
            title.text += f": {st.shade}" + (f" — {st.why}" if st.why else "")
    return ET.tostring(root, encoding="unicode")


def inline_svg(svg: str) -> str:
    """The SVG without its XML prolog and DOCTYPE, for embedding in HTML."""
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.S)
    return re.sub(r"<!--.*?-->", "", svg, flags=re.S).strip()


def plan_states(plan: Any) -> dict[str, NodeState]:
    """Box states from a Plan: the action and its first reason."""
    return {
        lid: NodeState(shade_of(str(lp.action)), lp.reasons[0].message if lp.reasons else "")
        for lid, lp in plan.layers.items()
    }
