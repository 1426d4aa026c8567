"""Parent resolution and the layer graph (edges parent -> child; a networkx DiGraph on demand).

A layer's outputs are `<publish_registry>/<name>:<tag>` for each tag and, with
`publish_local`, `localhost/<name>:<tag>`. A `parent` resolves to the layer
that publishes it, comparing normalised references (Docker Hub defaults,
trailing and doubled slashes, project registry aliases).

A *fully qualified* parent (its first component is a registry host:
`docker.io/...`, `registry.example.org/...`, `host:5000/...`) names a
registry, so it resolves to a layer only through an exact output or the
project's `registry_aliases`; otherwise it is an external image, and when a
layer publishes the same name and tag elsewhere a warning names both
spellings and the alias that would join them. A short name (`name:tag`,
`org/name:tag`) is looked up as podman does, local storage first: a
`publish_local` output; failing that, a *unique* match on the repository's
last component and tag resolves it, with a warning naming both spellings.
Two candidates is an error: imagegraph never guesses between layers.

Every layer has at most one parent, so the graph is a forest once cycles are
ruled out: order, ancestors and descendants are walks over two dicts, and
networkx (0.08 s to import) is loaded only to name cycles and for `graph`
(the DiGraph itself, for callers that want it).
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .arch import Arch, host_arch
from .errors import Diagnostic, SpecError, UsageError, rel
from .project import Project
from .reference import normalize_reference, parse_reference
from .spec import SCRATCH, LayerSpec

if TYPE_CHECKING:
    import networkx as nx


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
    parents: dict[str, ParentLink]
    outputs: dict[str, list[str]]
    warnings: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        # every layer (sorted) -> its parent layer or None, and -> its child layers (sorted)
        self._up: dict[str, str | None] = {lid: None for lid in sorted(self.project.layers)}
        self._down: dict[str, list[str]] = {lid: [] for lid in self._up}
        for lid in self._up:
            link = self.parents.get(lid)
            if link is not None and link.kind == "layer" and link.layer is not None:
                self._up[lid] = link.layer
                self._down.setdefault(link.layer, []).append(lid)

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The same graph as a networkx DiGraph (nodes in layer id order)."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self._up)
        g.add_edges_from((p, lid) for lid, p in self._up.items() if p is not None)
        return g

    def spec(self, layer: str) -> LayerSpec:
        return self.project.layers[layer]

    def arches(self, layer: str) -> tuple[Arch, ...]:
        """The architectures a layer builds for: `options.arches`, else the host's."""
        return layer_arches(self.project.layers[layer])

    def edges(self) -> list[tuple[str, str]]:
        """(parent, child) for every layer with a parent layer, sorted."""
        return sorted((p, lid) for lid, p in self._up.items() if p is not None)

    def order(self, layers: set[str] | None = None) -> list[str]:
        """Topological order, ties broken by layer id so output is stable (networkx's
        lexicographical_topological_sort of the subgraph of `layers`)."""
        nodes = self._up.keys() if layers is None else {n for n in layers if n in self._up}
        ready = [n for n in nodes if self._up[n] is None or self._up[n] not in nodes]
        heapq.heapify(ready)
        out: list[str] = []
        while ready:
            lid = heapq.heappop(ready)
            out.append(lid)
            for child in self._down[lid]:
                if child in nodes:
                    heapq.heappush(ready, child)
        return out

    def parent_layer(self, layer: str) -> str | None:
        link = self.parents[layer]
        return link.layer if link.kind == "layer" else None

    def children(self, layer: str) -> list[str]:
        return list(self._down[layer])

    def descendants(self, layer: str) -> set[str]:
        out: set[str] = set()
        todo = list(self._down[layer])
        while todo:
            lid = todo.pop()
            if lid not in out:
                out.add(lid)
                todo.extend(self._down[lid])
        return out

    def ancestors(self, layer: str) -> set[str]:
        out: set[str] = set()
        up = self._up[layer]
        while up is not None and up not in out:
            out.add(up)
            up = self._up[up]
        return out

    def select(self, names: list[str] | None) -> set[str]:
        """The named layers plus every ancestor they need (all layers when none are named)."""
        if not names:
            return set(self._up)
        chosen: set[str] = set()
        for name in names:
            layer = self.lookup(name)
            chosen.add(layer)
            chosen |= self.ancestors(layer)
        return chosen

    def lookup_node(self, name: str) -> str:
        """A plan node by name: a layer (as `lookup`), or `<layer>@<arch>` for one of its arches."""
        base, at, arch = name.rpartition("@")
        if not at or name in self.graph:
            return self.lookup(name)
        layer = self.lookup(base)
        from .arch import normalize_arch

        try:
            a = normalize_arch(arch)
        except ValueError as exc:
            raise UsageError(f"'{name}': {exc}") from None
        if a not in self.arches(layer):
            have = ", ".join(self.arches(layer))
            raise UsageError(f"layer {layer} does not build {a} (it builds {have})")
        return node_id(layer, a)

    def lookup(self, name: str) -> str:
        """A layer by id (file stem), file name or image name (when unambiguous)."""
        if name in self._up:
            return name
        stem = Path(name).stem
        if stem in self._up and name.endswith((".yaml", ".yml")):
            return stem
        by_image = [lid for lid, s in self.project.layers.items() if s.name == name]
        if len(by_image) == 1:
            return by_image[0]
        if len(by_image) > 1:
            raise UsageError(
                f"'{name}' is the image name of several layers: {', '.join(sorted(by_image))}; use the layer id"
            )
        import difflib

        close = difflib.get_close_matches(name, list(self._up), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"no layer named '{name}' in {self.project.root}{hint}")


def node_id(layer: str, arch: Arch, host: Arch | None = None) -> str:
    """A plan node's id: the layer id for the host's architecture, `<layer>@<arch>` for another."""
    return layer if arch == (host or host_arch()) else f"{layer}@{arch}"


def layer_arches(spec: LayerSpec) -> tuple[Arch, ...]:
    """`options.arches` as written, else the host's architecture alone."""
    return spec.arches or (host_arch(),)


def layer_outputs(spec: LayerSpec) -> list[str]:
    """Every normalised reference a layer publishes."""
    out: list[str] = []
    for tag in spec.publish_tags:
        if spec.publish_registry:
            out.append(normalize_reference(f"{spec.publish_registry}/{spec.name}:{tag}"))
        if spec.publish_local:
            # Local storage only: `name:tag` reaches it as a short name, never as docker.io/library/name.
            out.append(normalize_reference(f"localhost/{spec.name}:{tag}"))
    return list(dict.fromkeys(out))


def is_qualified(ref: str) -> bool:
    """True when a reference, as written, starts with a registry host (docker.io/..., host:5000/...)."""
    text = ref.strip().removeprefix("docker://").lstrip("/")
    first, sep, _ = text.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


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
    outputs: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for lid in sorted(project.layers):
        spec = project.layers[lid]
        outputs[lid] = layer_outputs(spec)
        for ref in outputs[lid]:
            other = owner.get(ref)
            if other is not None and other != lid:
                o = project.layers[other]
                diags.append(
                    Diagnostic(
                        rel(spec.path),
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
            diags.append(Diagnostic(rel(spec.path), line, 3, f"options.parent: {exc}"))
            continue
        aliased = normalize_reference(apply_aliases(written, project.settings.registry_aliases))
        qualified = is_qualified(spec.parent)
        if written in owner:
            parents[lid] = ParentLink("layer", spec.parent, owner[written], "exact", written)
            continue
        if aliased in owner:
            parents[lid] = ParentLink("layer", spec.parent, owner[aliased], "alias", aliased)
            continue
        local = None if qualified else normalize_reference(f"localhost/{spec.parent}")
        if local in owner:
            parents[lid] = ParentLink("layer", spec.parent, owner[local], "short-name", local)
            continue
        repo, tag = _name_tag(aliased)
        candidates: set[str] = set()
        for (name, t), lids in by_name_tag.items():
            if t == tag and (repo == name or repo.endswith("/" + name)):
                candidates |= lids
        if qualified:
            # A registry was named: only the user may say that it is another spelling of a layer's.
            parents[lid] = ParentLink("external", spec.parent, None, "exact", aliased)
            for hit in sorted(candidates):
                published = _published_as(outputs[hit], tag)
                warnings.append(
                    Diagnostic(
                        rel(spec.path),
                        line,
                        3,
                        f"parent '{spec.parent}' names a registry no layer publishes to, so it is an external image; "
                        f"layer '{hit}' ({project.layers[hit].path.name}) publishes '{published}' under the same name and tag",
                        severity="warning",
                        hint=f"if they are the same image, spell the parent '{published}' or declare "
                        f"registry_aliases: {{{_registry_of(aliased)}: {_registry_of(published)}}} in imagegraph.yaml",
                    )
                )
        elif len(candidates) == 1:
            hit = candidates.pop()
            published = _published_as(outputs[hit], tag)
            parents[lid] = ParentLink("layer", spec.parent, hit, "name-tag", aliased)
            warnings.append(
                Diagnostic(
                    rel(spec.path),
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
                    rel(spec.path),
                    line,
                    3,
                    f"parent '{spec.parent}' could be any of several layers ({files}); imagegraph does not guess",
                    hint="spell the parent exactly as one of them publishes it, or declare registry_aliases",
                )
            )
        else:
            parents[lid] = ParentLink("external", spec.parent, None, "exact", aliased)
        if parents.get(lid) is not None and parents[lid].kind == "external" and not candidates:
            # Short names are looked for in local storage, so they are compared as localhost/... there.
            typo = _near_output(local or aliased, owner)
            if typo is not None:
                ref, other = typo
                warnings.append(
                    Diagnostic(
                        rel(spec.path),
                        line,
                        3,
                        f"parent '{spec.parent}' is published by no layer and is taken as an external "
                        f"image; did you mean '{ref}' (layer '{other}', {project.layers[other].path.name})?",
                        severity="warning",
                        hint="fix the spelling, or fully qualify an image that really is external",
                    )
                )

    for lid, link in parents.items():
        if link.kind != "layer" or link.layer not in project.layers:
            continue
        spec, pspec = project.layers[lid], project.layers[link.layer]
        lacking = [a for a in layer_arches(spec) if a not in layer_arches(pspec)]
        if lacking:
            # Each arch of a child builds from the same arch of its parent.
            diags.append(
                Diagnostic(
                    rel(spec.path),
                    spec.line_of("options.arches") if spec.arches else spec.line_of("options.parent"),
                    3,
                    f"builds {', '.join(lacking)} but its parent {link.layer} ({rel(pspec.path)}) builds only "
                    f"{', '.join(layer_arches(pspec))}",
                    hint=f"add {', '.join(lacking)} to options.arches of {rel(pspec.path)}, "
                    "or drop it from this layer's",
                )
            )

    lg = LayerGraph(project, parents, outputs, warnings)
    for cycle in _cycles(lg) if len(lg.order()) < len(project.layers) else []:
        chain = " -> ".join(project.layers[n].path.name for n in [*cycle, cycle[0]])
        first = project.layers[cycle[0]]
        diags.append(
            Diagnostic(
                rel(first.path),
                first.line_of("options.parent"),
                3,
                f"parent cycle: {chain}",
                hint="a layer cannot be its own ancestor; fix one of the parent references",
            )
        )
    if diags:
        raise SpecError(diags + warnings)
    return lg


TYPO_DISTANCE = 2  # edits (a transposition is one) that make an external parent look like a typo


def _near_output(ref: str, owner: dict[str, str]) -> tuple[str, str] | None:
    """The one layer output on the same registry within TYPO_DISTANCE edits of `ref`, if any.

    A short name is passed as its local-storage spelling (localhost/...), which is how
    `publish_local` outputs are spelled.
    """
    try:
        want = parse_reference(ref)
    except ValueError:
        return None
    from rapidfuzz.distance import OSA  # only for external parents (0.01 s to import)

    near = []
    for out, lid in owner.items():
        have = parse_reference(out)
        if have.registry != want.registry:
            continue
        d = OSA.distance(f"{want.repository}:{want.tag}", f"{have.repository}:{have.tag}")
        if 0 < d <= TYPO_DISTANCE:
            near.append((d, out, lid))
    if not near:
        return None
    _d, out, lid = min(near)
    return out, lid


def _published_as(refs: list[str], tag: str) -> str:
    """The output of a layer to show beside a parent reference: one with the same tag."""
    return next((r for r in refs if _name_tag(r)[1] == tag), refs[0])


def _registry_of(ref: str) -> str:
    """The registry host and namespace of a normalised reference (what registry_aliases map)."""
    return parse_reference(ref).name.rsplit("/", 1)[0]


def _cycles(lg: LayerGraph) -> list[list[str]]:
    """Every parent cycle (only called when the topological order leaves layers out)."""
    import networkx as nx

    g = lg.graph
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
    edges = [{"from": u, "to": v} for u, v in lg.edges()]
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
    for u, v in lg.edges():
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
    for u, v in lg.edges():
        lines.append(f"  {ids[u]} --> {ids[v]}")
    return "\n".join(lines) + "\n"
