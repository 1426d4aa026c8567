"""The labels a layer's image carries, computed from the spec alone.

image-builder puts `org.openchami.image.*` labels on its images; imagegraph
puts the same ones there (name, type, parent as written, package-manager,
repositories, packages, package-groups) plus the spec's own `labels`. The
values are key inputs (key.py hashes `label_inputs(spec)` beside the
fields it holds anyway), so one key always means one set of labels, and
nothing time- or run-dependent is in it:
image-builder's `build-date` is left out (the run record has `built_at`),
and so is its `tags` label, since publish tags are not key inputs (adding a
tag re-tags the same image; a `tags` label would be stale on it, or would
force a rebuild of every image whose tags change).
"""

from __future__ import annotations

from .arch import Arch
from .spec import LayerSpec, packages_for_arch

OPENCHAMI = "org.openchami.image."


def image_labels(spec: LayerSpec, arch: Arch | None = None) -> dict[str, str]:
    """Labels every build of `spec` gets, sorted by name.

    image-builder's labels win over same-named spec labels, as they do there.
    imagegraph's own `io.imagegraph.key` and `io.imagegraph.parent-key` are
    added at commit (build/layer.py): they are the key, not inputs to it.
    """
    labels: dict[str, str] = dict(spec.labels)
    labels.update(
        {
            OPENCHAMI + "name": spec.name,
            OPENCHAMI + "type": spec.layer_type,
            OPENCHAMI + "parent": spec.parent,
        }
    )
    if spec.layer_type != "base":
        return dict(sorted(labels.items()))  # ansible layers ignore the package sections
    labels[OPENCHAMI + "package-manager"] = spec.pkg_manager or ""
    if spec.repos:
        labels[OPENCHAMI + "repositories"] = ",".join(r.alias for r in spec.repos)
    packages = packages_for_arch(spec, arch)  # the node's own list (packages_by_arch)
    if packages:
        labels[OPENCHAMI + "packages"] = ",".join(packages)
    if spec.package_groups:
        labels[OPENCHAMI + "package-groups"] = ",".join(spec.package_groups)
    return dict(sorted(labels.items()))


def label_inputs(spec: LayerSpec) -> dict[str, str]:
    """The label values the rest of the key document does not already fix (it has the type,
    package manager, repositories, packages, groups and spec labels; not the name or the
    parent as written)."""
    return {"name": spec.name, "parent": spec.parent}
