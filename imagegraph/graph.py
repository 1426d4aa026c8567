"""Parent resolution and the layer graph (a networkx DiGraph, edges parent -> child).

A layer's outputs are `<publish_registry>/<name>:<tag>` for each tag and, with
`publish_local`, `<name>:<tag>` (also spelled `localhost/<name>:<tag>`). A
`parent` resolves to the layer that publishes it, comparing normalised
references (Docker Hub defaults, trailing and doubled slashes, project
registry aliases). Real files often spell the parent's registry differently
from where the parent publishes (a missing port, another host name), so when
no output matches exactly, a *unique* match on the repository's last
component and tag resolves it, with a warning naming both spellings. Two
candidates is an error: imagegraph never guesses between layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from .errors import Diagnostic, SpecError, UsageError
from .project import Project
from .publish.registry import normalize_reference, parse_reference
from .spec import SCRATCH, LayerSpec


@dataclass(frozen=True)
class ParentLink:
    """How a layer's `parent` was resolved."""

    kind: str  # "scratch", "layer" or "external"
    ref: str  # as written in the spec
    layer: str | None = None  # layer id when kind == "layer"
    how: str = "exact"  # exact, alias, name-tag
    normalized: str | None = None

    def describe(self) -> str:
        if self.kind == "scratch":
            return SCRATCH
        if self.kind == "layer":
            return self.layer or ""
        return self.ref


@dataclass
class LayerGraph:
    """The resolved graph of a project."""

    project: Project
    graph: nx.DiGraph
    parents: dict[str, ParentLink]
    outputs: dict[str, list[str]]
    warnings: list[Diagnostic] = field(default_factory=list)

    def spec(self, layer: str) -> LayerSpec:
        return self.project.layers[layer]

    def order(self, layers: set[str] | None = None) -> list[str]:
        """Topological order, ties broken by layer id so output is stable."""
        g = self.graph if layers is None else self.graph.subgraph(layers)
        return list(nx.lexicographical_topological_sort(g))

    def parent_layer(self, layer: str) -> str | None:
        link = self.parents[layer]
        return link.layer if link.kind == "layer" else None

    def children(self, layer: str) -> list[str]:
        return sorted(self.graph.successors(layer))

    def descendants(self, layer: str) -> set[str]:
        return nx.descendants(self.graph, layer)

    def select(self, names: list[str] | None) -> set[str]:
        """The named layers plus every ancestor they need (all layers when none are named)."""
        if not names:
            return set(self.graph.nodes)
        chosen: set[str] = set()
        for name in names:
            layer = self.lookup(name)
            chosen.add(layer)
            chosen |= nx.ancestors(self.graph, layer)
        return chosen

    def lookup(self, name: str) -> str:
        """A layer by id (file stem), file name or image name (when unambiguous)."""
        if name in self.graph:
            return name
        stem = Path(name).stem
        if stem in self.graph and name.endswith((".yaml", ".yml")):
            return stem
        by_image = [lid for lid, s in self.project.layers.items() if s.name == name]
        if len(by_image) == 1:
            return by_image[0]
        if len(by_image) > 1:
            raise UsageError(
                f"'{name}' is the image name of several layers: {', '.join(sorted(by_image))}; use the layer id"
            )
        import difflib

        close = difflib.get_close_matches(name, list(self.graph.nodes), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"no layer named '{name}' in {self.project.root}{hint}")


def layer_outputs(spec: LayerSpec) -> list[str]:
    """Every normalised reference a layer publishes."""
    out: list[str] = []
    for tag in spec.publish_tags:
        if spec.publish_registry:
            out.append(normalize_reference(f"{spec.publish_registry}/{spec.name}:{tag}"))
        if spec.publish_local:
            out.append(normalize_reference(f"localhost/{spec.name}:{tag}"))
            out.append(normalize_reference(f"{spec.name}:{tag}"))
    return list(dict.fromkeys(out))


def written_outputs(spec: LayerSpec) -> list[str]:
    """The references a layer publishes as its spec spells them (no Docker Hub normalising)."""
    out: list[str] = []
    for tag in spec.publish_tags:
        if spec.publish_registry:
            out.append(f"{spec.publish_registry.rstrip('/')}/{spec.name}:{tag}")
        if spec.publish_local:
            out.append(f"localhost/{spec.name}:{tag}")
    return list(dict.fromkeys(out))


def apply_aliases(ref: str, aliases: dict[str, str]) -> str:
    """Rewrite a reference's registry prefix by the project's registry aliases (longest first)."""
    for alias in sorted(aliases, key=len, reverse=True):
        if ref == alias or ref.startswith(alias + "/"):
            return aliases[alias] + ref[len(alias) :]
    return ref


def _name_tag(ref: str) -> tuple[str, str]:
    p = parse_reference(ref)
    return p.repository, p.tag or "latest"


def build_graph(project: Project) -> LayerGraph:
    """Resolve every parent; raise SpecError for duplicates, ambiguities and cycles."""
    diags: list[Diagnostic] = []
    warnings: list[Diagnostic] = []
    g = nx.DiGraph()
    outputs: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for lid in sorted(project.layers):
        spec = project.layers[lid]
        g.add_node(lid)
        outputs[lid] = layer_outputs(spec)
        for ref in outputs[lid]:
            other = owner.get(ref)
            if other is not None and other != lid:
                o = project.layers[other]
                diags.append(
                    Diagnostic(
                        str(spec.path),
                        spec.line_of("options.name"),
                        1,
                        f"{ref} is published by two specs: {o.path.name} and {spec.path.name}",
                        hint="give the layers different names or tags",
                    )
                )
            else:
                owner[ref] = lid

    # Index for the name:tag fallback: (repository last component(s), tag) -> layers
    by_name_tag: dict[tuple[str, str], set[str]] = {}
    for lid, refs in outputs.items():
        if not refs:
            continue  # a layer that publishes nothing cannot be anyone's parent by reference
        spec = project.layers[lid]
        for tag in spec.publish_tags:
            by_name_tag.setdefault((spec.name, tag), set()).add(lid)

    parents: dict[str, ParentLink] = {}
    for lid in sorted(project.layers):
        spec = project.layers[lid]
        line = spec.line_of("options.parent")
        if spec.parent == SCRATCH:
            parents[lid] = ParentLink("scratch", SCRATCH)
            continue
        try:
            written = normalize_reference(spec.parent)
        except ValueError as exc:
            diags.append(Diagnostic(str(spec.path), line, 3, f"options.parent: {exc}"))
            continue
        aliased = normalize_reference(apply_aliases(written, project.settings.registry_aliases))
        if written in owner:
            parents[lid] = ParentLink("layer", spec.parent, owner[written], "exact", written)
            continue
        if aliased in owner:
            parents[lid] = ParentLink("layer", spec.parent, owner[aliased], "alias", aliased)
            continue
        repo, tag = _name_tag(aliased)
        candidates: set[str] = set()
        for (name, t), lids in by_name_tag.items():
            if t == tag and (repo == name or repo.endswith("/" + name)):
                candidates |= lids
        if len(candidates) == 1:
            hit = candidates.pop()
            published = next(
                (r for r in outputs[hit] if _name_tag(r)[1] == tag and r.split("/", 1)[0] != "docker.io"),
                outputs[hit][0],
            )
            parents[lid] = ParentLink("layer", spec.parent, hit, "name-tag", aliased)
            warnings.append(
                Diagnostic(
                    str(spec.path),
                    line,
                    3,
                    f"parent '{spec.parent}' is not published by any layer as written; "
                    f"resolved by name and tag to layer '{hit}' ({project.layers[hit].path.name}), which publishes '{published}'",
                    severity="warning",
                    hint="spell the parent as the parent layer publishes it, or declare registry_aliases in imagegraph.yaml",
                )
            )
        elif len(candidates) > 1:
            files = ", ".join(sorted(project.layers[c].path.name for c in candidates))
            diags.append(
                Diagnostic(
                    str(spec.path),
                    line,
                    3,
                    f"parent '{spec.parent}' could be any of several layers ({files}); imagegraph does not guess",
                    hint="spell the parent exactly as one of them publishes it, or declare registry_aliases",
                )
            )
        else:
            parents[lid] = ParentLink("external", spec.parent, None, "exact", aliased)

    for lid, link in parents.items():
        if link.kind == "layer":
            g.add_edge(link.layer, lid)

    for cycle in _cycles(g):
        chain = " -> ".join(project.layers[n].path.name for n in [*cycle, cycle[0]])
        first = project.layers[cycle[0]]
        diags.append(
            Diagnostic(
                str(first.path),
                first.line_of("options.parent"),
                3,
                f"parent cycle: {chain}",
                hint="a layer cannot be its own ancestor; fix one of the parent references",
            )
        )
    if diags:
        raise SpecError(diags + warnings)
    return LayerGraph(project, g, parents, outputs, warnings)


def _cycles(g: nx.DiGraph) -> list[list[str]]:
    out = []
    for comp in nx.strongly_connected_components(g):
        if len(comp) > 1 or any(g.has_edge(n, n) for n in comp):
            start = min(comp)
            try:
                cyc = [u for u, _v in nx.find_cycle(g, start)]
            except nx.NetworkXNoCycle:
                cyc = sorted(comp)
            out.append(cyc)
    return out


# ----------------------------------------------------------------------- renderings


def to_json(lg: LayerGraph) -> dict:
    nodes = []
    for lid in lg.order():
        spec = lg.spec(lid)
        link = lg.parents[lid]
        nodes.append(
            {
                "name": lid,
                "image": spec.name,
                "file": str(spec.path),
                "parent": link.describe(),
                "parent_kind": link.kind,
                "parent_resolution": link.how if link.kind == "layer" else None,
                "parent_ref": link.ref,  # as written in the spec
                "outputs": written_outputs(spec),
                "normalized_outputs": lg.outputs[lid],
            }
        )
    edges = [{"from": u, "to": v} for u, v in sorted(lg.graph.edges)]
    return {"layers": nodes, "edges": edges}


def to_dot(lg: LayerGraph) -> str:
    lines = ["digraph imagegraph {", "  rankdir=LR;", "  node [shape=box];"]
    externals: set[str] = set()
    for lid in lg.order():
        label = json.dumps(lid + "\n" + lg.spec(lid).name)
        lines.append(f"  {json.dumps(lid)} [label={label}];")
        link = lg.parents[lid]
        if link.kind == "external":
            externals.add(link.ref)
            lines.append(f"  {json.dumps(link.ref)} -> {json.dumps(lid)};")
    for ext in sorted(externals):
        lines.append(f"  {json.dumps(ext)} [shape=ellipse, style=dashed];")
    for u, v in sorted(lg.graph.edges):
        lines.append(f"  {json.dumps(u)} -> {json.dumps(v)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def mermaid_label(text: str) -> str:
    """A Mermaid node label in quotes: quotes and markup characters as entity codes (`#quot;`)."""
    codes = {'"': "#quot;", "#": "#35;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "`": "#96;", "\n": " "}
    return '"' + "".join(codes.get(c, c) for c in text) + '"'


def to_mermaid(lg: LayerGraph) -> str:
    ids = {lid: f"L{i}" for i, lid in enumerate(lg.order())}
    lines = ["graph TD"]
    ext_ids: dict[str, str] = {}
    for lid in lg.order():
        lines.append(f"  {ids[lid]}[{mermaid_label(lid)}]")
        link = lg.parents[lid]
        if link.kind == "external":
            eid = ext_ids.setdefault(link.ref, f"E{len(ext_ids)}")
            lines.append(f"  {eid}([{mermaid_label(link.ref)}]) --> {ids[lid]}")
    for u, v in sorted(lg.graph.edges):
        lines.append(f"  {ids[u]} --> {ids[v]}")
    return "\n".join(lines) + "\n"
