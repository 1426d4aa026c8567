"""graph pictures: Graphviz lays out the real graph; boxes coloured by the plan; a browser shows them."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imagegraph.graph import build_graph
from imagegraph.picture import PALETTE, NodeState, Shade, draw, nodes_of, to_dot
from imagegraph.project import load_project
from tests.browser import ink, render

SVG = "{http://www.w3.org/2000/svg}"


def dot_available() -> None:
    import os
    import shutil

    if shutil.which("dot") is None:
        why = "graphviz is not installed (scripts/install-system-deps.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def spec(name: str, parent: str) -> str:
    return (
        f"options:\n  layer_type: base\n  name: {name}\n  pkg_manager: dnf\n  parent: '{parent}'\n"
        f"  publish_local: true\n  publish_tags: ['1']\npackages: [vim]\n"
    )


def synthetic(root: Path, n: int, seed: int = 7) -> Path:
    """n layers: a few scratch roots, one external parent, the rest children of earlier layers."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i < 3:
            parent = "scratch"
        elif i == 3:
            parent = "docker.io/library/rockylinux:9"
        else:
            parent = f"l{rng.randrange(0, i):03d}:1"
        (root / f"l{i:03d}.yaml").write_text(spec(f"l{i:03d}", parent))
    return root


def boxes(svg: str) -> dict[str, tuple[float, float, float, float]]:
    """Each layer box's bounding box (x0, y0, x1, y1) from Graphviz's SVG paths."""
    out = {}
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        if g.get("class") != "node" or not g.get("id", "").startswith("layer-"):
            continue
        shape = g.find(f"{SVG}path")
        d = shape.get("d") if shape is not None else g.find(f"{SVG}polygon").get("points")
        nums = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", d)]
        xs, ys = nums[0::2], nums[1::2]
        out[g.get("id")[len("layer-") :]] = (min(xs), min(ys), max(xs), max(ys))
    return out


def test_dot_source_has_every_layer_edge_and_external(tmp_path: Path) -> None:
    lg = build_graph(load_project(synthetic(tmp_path / "layers", 12)))
    text = to_dot(nodes_of(lg), {"l005": NodeState(Shade.BUILD, "packages: +vim")})
    for lid in lg.graph.nodes:
        assert f'"{lid}" [id="layer-{lid}"' in text
    for u, v in lg.graph.edges:
        assert f'"{u}" -> "{v}";' in text
    assert '"docker.io/library/rockylinux:9", shape=ellipse, style=dashed' in text
    assert PALETTE[Shade.BUILD][0] in text


def test_svg_colours_titles_and_shapes(tmp_path: Path) -> None:
    dot_available()
    lg = build_graph(load_project(synthetic(tmp_path / "layers", 8)))
    states = {lid: NodeState(Shade.UP_TO_DATE) for lid in lg.graph.nodes}
    states["l004"] = NodeState(Shade.BUILD, "packages: +vim")
    states["l002"] = NodeState(Shade.BLOCKED, "parent unavailable")
    svg = draw(nodes_of(lg), states)
    root = ET.fromstring(svg)
    titles = {
        g.get("id"): g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g") if g.get("class") == "node"
    }
    assert titles["layer-l004"] == "l004: build — packages: +vim"
    assert titles["layer-l002"] == "l002: blocked — parent unavailable"
    assert titles["layer-l000"] == "l000: up-to-date"
    fills = {
        g.get("id"): g.find(f"{SVG}path").get("fill")
        for g in root.iter(f"{SVG}g")
        if g.get("id", "").startswith("layer-")
    }
    assert fills["layer-l004"] == PALETTE[Shade.BUILD][0] and fills["layer-l002"] == PALETTE[Shade.BLOCKED][0]
    external = next(g for g in root.iter(f"{SVG}g") if g.get("id") == "external-0")
    assert external.find(f"{SVG}ellipse") is not None
    # Top-down: every parent's box lies above its child's.
    b = boxes(svg)
    for u, v in lg.graph.edges:
        assert b[u][3] < b[v][1], (u, v)


def test_200_layers_no_overlapping_boxes(tmp_path: Path) -> None:
    dot_available()
    lg = build_graph(load_project(synthetic(tmp_path / "layers", 200)))
    b = boxes(draw(nodes_of(lg)))
    assert len(b) == 200
    items = sorted(b.items(), key=lambda kv: kv[1][0])
    for i, (n1, (_x0, y0, x1, y1)) in enumerate(items):
        for n2, (a0, b0, _a1, b1) in items[i + 1 :]:
            if a0 >= x1:
                break  # sorted by left edge: nothing further right can overlap
            assert y1 <= b0 or b1 <= y0, f"{n1} and {n2} overlap"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_svg_and_png_of_the_bundled_layers(tmp_path: Path) -> None:
    dot_available()
    layers = Path(__file__).resolve().parent.parent / "layers"
    r = run_cli(
        "graph", str(layers), "--format", "svg", "--offline", "--state", str(tmp_path / "s" / "state.db")
    )
    assert r.returncode == 0, r.stderr
    root = ET.fromstring(r.stdout)
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    for name in ("base", "compute", "debug", "login", "boot"):
        assert f"layer-{name}" in ids
    # Every box says what the plan says (same state, same storage), with its first reason.
    plan = json.loads(
        run_cli(
            "plan", str(layers), "--offline", "--json", "--state", str(tmp_path / "s" / "state.db")
        ).stdout
    )
    titles = {
        g.get("id"): g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g") if g.get("class") == "node"
    }
    for lp in plan["layers"]:
        want = f"{lp['name']}: {lp['action']}" + (
            f" — {lp['reasons'][0]['message']}" if lp["reasons"] else ""
        )
        assert titles[f"layer-{lp['name']}"] == want
    png = tmp_path / "g.png"
    r = run_cli(
        "graph",
        str(layers),
        "--format",
        "png",
        "-o",
        str(png),
        "--offline",
        "--state",
        str(tmp_path / "s" / "state.db"),
    )
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_cli("graph", str(layers), "--format", "png", "--offline")
    assert r.returncode == 2 and "-o FILE" in r.stderr


def test_svg_in_a_browser(tmp_path: Path) -> None:
    dot_available()
    lg = build_graph(load_project(synthetic(tmp_path / "layers", 30)))
    page = tmp_path / "graph.svg"
    page.write_text(draw(nodes_of(lg), {lid: NodeState(Shade.BUILD, "x") for lid in lg.graph.nodes}))
    shown = render(page, tmp_path)
    assert ink(shown.screenshot) > 0.02, "the screenshot is blank"
    for lid in lg.graph.nodes:
        assert f">{lid}<" in shown.dom, lid
