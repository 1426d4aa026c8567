"""imagegraph/labels.py: the labels an image carries are a function of its key inputs."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.key import ParentInput, build_inputs, key_of
from imagegraph.labels import image_labels
from imagegraph.spec import LayerSpec, Repo

# Small alphabets, so that two drawn specs often share a key and the property is really exercised.
specs = st.builds(
    LayerSpec,
    path=st.sampled_from([Path("a.yaml"), Path("sub/b.yaml")]),
    layer_type=st.sampled_from(["base", "ansible"]),
    name=st.sampled_from(["base", "compute"]),
    publish_tags=st.sampled_from([("latest",), ("9.5",), ("9.5", "latest")]),
    pkg_manager=st.sampled_from(["dnf", "zypper"]),
    parent=st.sampled_from(["scratch", "reg/x:1"]),
    proxy=st.sampled_from([None, "http://proxy:3128"]),
    publish_registry=st.sampled_from([None, "reg/ns"]),
    publish_local=st.booleans(),
    repos=st.sampled_from([(), (Repo("A", "http://m/a"),), (Repo("A", "http://m/a", gpg="http://m/k"),)]),
    packages=st.sampled_from([(), ("vim",), ("vim", "git")]),
    package_groups=st.sampled_from([(), ("Minimal Install",)]),
    labels=st.sampled_from([{}, {"team": "hpc"}, {"org.openchami.image.name": "spoof"}]),
    boot_params=st.sampled_from([None, "quiet"]),
)


def key(spec: LayerSpec) -> str:
    parent = ParentInput("scratch") if spec.parent == "scratch" else ParentInput("image", ref=spec.parent)
    return key_of(build_inputs(spec, parent))


@settings(max_examples=300, deadline=None)
@given(specs, specs)
def test_same_key_same_labels(a: LayerSpec, b: LayerSpec) -> None:
    if key(a) == key(b):
        assert image_labels(a) == image_labels(b)
    if image_labels(a) != image_labels(b):
        assert key(a) != key(b)


@given(specs)
def test_openchami_labels(spec: LayerSpec) -> None:
    labels = image_labels(spec)
    assert labels["org.openchami.image.name"] == spec.name  # image-builder's win over the spec's
    assert labels["org.openchami.image.parent"] == spec.parent
    assert labels["org.openchami.image.type"] == spec.layer_type
    # nothing that is not a key input: no publish tags, no clock
    assert not {"org.openchami.image.tags", "org.openchami.image.build-date"} & set(labels)
    if spec.layer_type == "base":
        assert labels["org.openchami.image.package-manager"] == spec.pkg_manager
        assert labels.get("org.openchami.image.packages", "") == ",".join(spec.packages)
        assert labels.get("org.openchami.image.repositories", "") == ",".join(r.alias for r in spec.repos)
        assert labels.get("org.openchami.image.package-groups", "") == ",".join(spec.package_groups)


def test_tags_do_not_change_labels_or_key() -> None:
    a = LayerSpec(path=Path("a.yaml"), layer_type="base", pkg_manager="dnf", publish_tags=("1",))
    b = LayerSpec(path=Path("a.yaml"), layer_type="base", pkg_manager="dnf", publish_tags=("1", "2"))
    assert image_labels(a) == image_labels(b) and key(a) == key(b)
    c = LayerSpec(path=Path("a.yaml"), layer_type="base", pkg_manager="dnf", name="other")
    assert image_labels(c) != image_labels(a) and key(c) != key(a)
