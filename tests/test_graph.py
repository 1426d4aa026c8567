"""imagegraph/graph.py: parent resolution, duplicates, cycles, renderings."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.errors import SpecError, UsageError
from imagegraph.graph import LayerGraph, ParentLink, build_graph, to_dot, to_json, to_mermaid
from imagegraph.project import load_project

from .specdirs import seed_dir, write


def spec(
    name: str, parent: str = "scratch", registry: str | None = None, tags="'1'", local: bool = False
) -> str:
    text = f"options:\n  layer_type: base\n  pkg_manager: dnf\n  name: {name}\n  parent: '{parent}'\n  publish_tags: {tags}\n"
    if registry:
        text += f"  publish_registry: '{registry}'\n"
    if local:
        text += "  publish_local: true\n"
    return text


def graph_of(root: Path):
    return build_graph(load_project(root))


def test_seed_registry_mismatch_is_external_with_a_warning_naming_the_alias(tmp_path: Path) -> None:
    lg = graph_of(seed_dir(tmp_path, aliases=False))
    assert lg.parents["compute"].kind == "external"
    assert lg.parents["gpu"].layer == "compute" and lg.parents["gpu"].how == "exact"
    (w,) = lg.warnings
    assert w.severity == "warning" and w.file.endswith("compute.yaml") and w.line == 8
    # both spellings are named, and the alias that would join them
    assert "registry.my.cluster/my-cluster/rocky-base:9.5" in w.message
    assert "registry.dist.si.usrc:5000/redondo/rocky-base:9.5" in w.message
    assert "registry.my.cluster/my-cluster: registry.dist.si.usrc:5000/redondo" in (w.hint or "")
    assert lg.order() == ["base", "compute", "gpu"]  # no edge: base and compute are both roots


def test_seed_with_its_registry_alias_chains(tmp_path: Path) -> None:
    lg = graph_of(seed_dir(tmp_path))
    assert lg.parents["compute"].layer == "base" and lg.parents["compute"].how == "alias"
    assert lg.warnings == []


def test_missing_port_and_doubled_slashes(tmp_path: Path) -> None:
    write(
        tmp_path,
        "base.yaml",
        spec("rocky-base", registry="registry.dist.si.usrc:5000/stratus/", tags="'8.9'"),
    )
    write(tmp_path, "a.yaml", spec("a", "registry.dist.si.usrc:5000/stratus//rocky-base:8.9", "x:5000/y"))
    write(tmp_path, "b.yaml", spec("b", "registry.dist.si.usrc/stratus/rocky-base:8.9", "x:5000/y"))
    write(tmp_path, "c.yaml", spec("c", "stratus/rocky-base:8.9", "x:5000/y"))
    lg = graph_of(tmp_path)
    assert lg.parents["a"].how == "exact" and lg.parents["a"].layer == "base"
    # another port is another registry as far as anyone can tell: the user says so with an alias
    assert lg.parents["b"].kind == "external"
    # a short name may resolve by name and tag, with a warning
    assert lg.parents["c"].how == "name-tag" and lg.parents["c"].layer == "base"
    assert sorted(Path(w.file).name for w in lg.warnings) == ["b.yaml", "c.yaml"]


def test_two_candidates_is_an_error_naming_both(tmp_path: Path) -> None:
    write(tmp_path, "r8.yaml", spec("rocky-base", registry="reg.a:5000/x", tags="'9'"))
    write(tmp_path, "r9.yaml", spec("rocky-base", registry="reg.b:5000/y", tags="'9'"))
    write(tmp_path, "child.yaml", spec("child", "z/rocky-base:9"))
    with pytest.raises(SpecError) as ei:
        graph_of(tmp_path)
    (d,) = [d for d in ei.value.diagnostics if d.severity == "error"]
    assert d.file.endswith("child.yaml") and "r8.yaml" in d.message and "r9.yaml" in d.message


def test_qualified_parent_with_two_lookalikes_is_external_and_names_both(tmp_path: Path) -> None:
    write(tmp_path, "r8.yaml", spec("rocky-base", registry="reg.a:5000/x", tags="'9'"))
    write(tmp_path, "r9.yaml", spec("rocky-base", registry="reg.b:5000/y", tags="'9'"))
    write(tmp_path, "child.yaml", spec("child", "reg.c/z/rocky-base:9"))
    lg = graph_of(tmp_path)
    assert lg.parents["child"].kind == "external"
    assert sorted(w.message.split("layer '")[1].split("'")[0] for w in lg.warnings) == ["r8", "r9"]


@pytest.mark.parametrize(
    "parent, how",
    [
        ("docker.io/library/rockylinux:9", None),
        ("index.docker.io/library/rockylinux:9", None),
        ("docker://docker.io/library/rockylinux:9", None),
        ("rockylinux:9", "short-name"),
        ("localhost/rockylinux:9", "exact"),
    ],
)
def test_docker_hub_reference_is_not_a_local_layer(tmp_path: Path, parent: str, how: str | None) -> None:
    write(tmp_path, "rockylinux.yaml", spec("rockylinux", tags="'9'", local=True))
    write(tmp_path, "child.yaml", spec("child", parent))
    lg = graph_of(tmp_path)
    link = lg.parents["child"]
    if how is None:
        assert link.kind == "external" and link.normalized == "docker.io/library/rockylinux:9"
        (w,) = lg.warnings
        assert "external image" in w.message and "localhost/rockylinux:9" in w.message
    else:
        assert (link.kind, link.layer, link.how) == ("layer", "rockylinux", how) and not lg.warnings


def test_docker_hub_reference_resolves_through_an_alias(tmp_path: Path) -> None:
    write(tmp_path, "rockylinux.yaml", spec("rockylinux", tags="'9'", local=True))
    write(tmp_path, "child.yaml", spec("child", "docker.io/library/rockylinux:9"))
    write(tmp_path, "imagegraph.yaml", "registry_aliases:\n  docker.io/library: localhost\n")
    lg = graph_of(tmp_path)
    assert (lg.parents["child"].layer, lg.parents["child"].how) == ("rockylinux", "alias")


def test_registry_aliases_in_project_settings(tmp_path: Path) -> None:
    seed_dir(tmp_path, aliases=False)
    write(
        tmp_path,
        "imagegraph.yaml",
        "registry_aliases:\n  registry.my.cluster/my-cluster: registry.dist.si.usrc:5000/redondo\n",
    )
    lg = graph_of(tmp_path)
    assert lg.parents["compute"].how == "alias" and lg.parents["compute"].layer == "base"
    assert lg.warnings == []


def test_publish_local_short_names(tmp_path: Path) -> None:
    write(tmp_path, "alma.yaml", spec("alma-base", tags="v0.0.1", local=True))
    write(tmp_path, "a.yaml", spec("a", "alma-base:v0.0.1"))
    write(tmp_path, "b.yaml", spec("b", "localhost/alma-base:v0.0.1"))
    lg = graph_of(tmp_path)
    assert lg.parents["a"].layer == "alma" and lg.parents["b"].layer == "alma"
    assert not lg.warnings


def test_external_and_scratch(tmp_path: Path) -> None:
    write(tmp_path, "suse.yaml", spec("suse-base", "registry.suse.com/bci/bci-base:15.7"))
    write(tmp_path, "s.yaml", spec("s"))
    lg = graph_of(tmp_path)
    assert lg.parents["suse"].kind == "external" and lg.parents["s"].kind == "scratch"


def test_cycle_prints_chain_of_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", spec("a", "r.io/x/c:1", "r.io/x"))
    write(tmp_path, "b.yaml", spec("b", "r.io/x/a:1", "r.io/x"))
    write(tmp_path, "c.yaml", spec("c", "r.io/x/b:1", "r.io/x"))
    write(tmp_path, "ok.yaml", spec("ok"))
    with pytest.raises(SpecError) as ei:
        graph_of(tmp_path)
    (d,) = ei.value.diagnostics
    assert "a.yaml -> c.yaml -> b.yaml -> a.yaml" in d.message or "a.yaml -> b.yaml" in d.message
    assert d.message.count(".yaml") == 4


def test_self_parent_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", spec("a", "r.io/x/a:1", "r.io/x"))
    with pytest.raises(SpecError, match="cycle"):
        graph_of(tmp_path)


def test_two_specs_publishing_one_reference(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", spec("same", registry="r.io/x"))
    write(tmp_path, "b.yaml", spec("same", registry="r.io/x/"))
    with pytest.raises(SpecError) as ei:
        graph_of(tmp_path)
    (d,) = ei.value.diagnostics
    assert "a.yaml" in d.message and "b.yaml" in d.message and "r.io/x/same:1" in d.message


def test_select_includes_ancestors_and_lookup(tmp_path: Path) -> None:
    lg = graph_of(seed_dir(tmp_path))
    assert lg.select(["compute"]) == {"base", "compute"}
    assert lg.select(["compute-gpu"]) == {"base", "compute", "gpu"}  # by image name
    assert lg.select(None) == {"base", "compute", "gpu"}
    with pytest.raises(UsageError, match="did you mean 'compute'"):
        lg.lookup("compte")


def test_renderings(tmp_path: Path) -> None:
    write(tmp_path, "suse.yaml", spec("suse-base", "registry.suse.com/bci/bci-base:15.7", "r.io/x"))
    write(tmp_path, "child.yaml", spec("child", "r.io/x/suse-base:1"))
    lg = graph_of(tmp_path)
    dot = to_dot(lg)
    assert '"suse" -> "child";' in dot and '"registry.suse.com/bci/bci-base:15.7" -> "suse";' in dot
    mer = to_mermaid(lg)
    assert mer.startswith("graph TD") and "-->" in mer
    doc = json.loads(json.dumps(to_json(lg)))
    assert doc["edges"] == [{"from": "suse", "to": "child"}]
    assert [n["name"] for n in doc["layers"]] == ["suse", "child"]
    assert doc["layers"][1]["parent"] == "suse" and doc["layers"][0]["parent_kind"] == "external"


@pytest.mark.parametrize(
    "parent, meant",
    [
        ("localhost/comptue:bookworm", "localhost/compute:bookworm"),  # a transposition
        ("comptue:bookworm", "localhost/compute:bookworm"),  # a local short name
        ("localhost/compute:bookwrm", "localhost/compute:bookworm"),  # the tag
    ],
)
def test_typo_parent_warns_with_did_you_mean(tmp_path: Path, parent: str, meant: str) -> None:
    write(tmp_path, "compute.yaml", spec("compute", tags="[bookworm]", local=True))
    write(tmp_path, "gpu.yaml", spec("gpu", parent=parent))
    lg = graph_of(tmp_path)
    assert lg.parents["gpu"].kind == "external"  # still what it says, but ...
    (w,) = lg.warnings
    assert w.file.endswith("gpu.yaml") and w.line == 5 and w.severity == "warning"
    assert f"did you mean '{meant}' (layer 'compute', compute.yaml)?" in w.message


@pytest.mark.parametrize(
    "parent",
    [
        "docker.io/library/rockylinux:9",  # far from the layer's `rocky:9`
        "registry.other:5000/site/compte:bookworm",  # close, but on another registry
        "localhost/compute-gpu-extra:bookworm",  # more than two edits
    ],
)
def test_real_external_parents_are_not_typos(tmp_path: Path, parent: str) -> None:
    write(tmp_path, "compute.yaml", spec("compute", tags="[bookworm]", local=True))
    write(tmp_path, "rocky.yaml", spec("rocky", tags="['9']", local=True))
    write(tmp_path, "gpu.yaml", spec("gpu", parent=parent))
    assert graph_of(tmp_path).warnings == []


def test_json_shows_references_as_written_and_mermaid_escapes(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", spec("rocky", "rockylinux/rockylinux:9", "docker.io/site/"))
    write(tmp_path, "child.yaml", spec("child", "docker.io/site/rocky:1"))
    lg = graph_of(tmp_path)
    doc = to_json(lg)
    base = doc["layers"][0]
    assert base["parent"] == "rockylinux/rockylinux:9" and base["parent_ref"] == "rockylinux/rockylinux:9"
    assert base["outputs"] == ["docker.io/site/rocky:1"]  # not docker.io/library/... nor index.docker.io
    assert doc["layers"][1]["parent_ref"] == "docker.io/site/rocky:1"
    mer = to_mermaid(lg)
    assert '(["rockylinux/rockylinux:9"])' in mer


@pytest.mark.parametrize(
    "text, label",
    [
        ('a"b', '"a#quot;b"'),
        ("x#y", '"x#35;y"'),
        ("<b>&", '"#lt;b#gt;#amp;"'),
        ("plain-name_1", '"plain-name_1"'),
    ],
)
def test_mermaid_label(text: str, label: str) -> None:
    from imagegraph.graph import mermaid_label

    assert mermaid_label(text) == label


@st.composite
def _forests(draw):
    """Layer ids and, for some, a parent among the ids before them (so no cycle), in random order."""
    n = draw(st.integers(1, 25))
    ids = draw(st.lists(st.text("abcxyz-", min_size=1, max_size=4), min_size=n, max_size=n, unique=True))
    parent = {lid: draw(st.sampled_from([None, *ids[:i]])) for i, lid in enumerate(ids)}
    return ids, parent, draw(st.sets(st.sampled_from(ids)))


@given(_forests())
@settings(max_examples=200, deadline=None)
def test_graph_walks_agree_with_networkx(forest) -> None:
    """order (whole and of a subset), children, descendants and ancestors are networkx's answers."""
    ids, parent, subset = forest
    layers = {lid: SimpleNamespace() for lid in ids}
    links = {
        lid: ParentLink("layer", p, p) if p else ParentLink("scratch", "scratch") for lid, p in parent.items()
    }
    lg = LayerGraph(SimpleNamespace(layers=layers), links, {lid: [] for lid in ids})  # type: ignore[arg-type]
    g = nx.DiGraph()
    g.add_nodes_from(sorted(ids))
    g.add_edges_from((p, lid) for lid, p in parent.items() if p)
    assert list(lg.graph.nodes) == list(g.nodes) and sorted(lg.graph.edges) == sorted(g.edges) == lg.edges()
    assert lg.order() == list(nx.lexicographical_topological_sort(g))
    assert lg.order(subset) == list(nx.lexicographical_topological_sort(g.subgraph(subset)))
    for lid in ids:
        assert lg.children(lid) == sorted(g.successors(lid))
        assert lg.descendants(lid) == nx.descendants(g, lid)
        assert lg.ancestors(lid) == nx.ancestors(g, lid)
    want = set().union(*({s} | nx.ancestors(g, s) for s in subset)) if subset else set(ids)  # none named: all
    assert lg.select(sorted(subset)) == want
