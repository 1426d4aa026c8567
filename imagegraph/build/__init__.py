"""Building one layer with buildah.

`build_layer` turns a `BuildRequest` (spec, key, parent image) into a
committed local image; `pull_image` and `local_image_id` manage parent
images; `remove_stale_containers` cleans up after runs that died. Modules:
`layer` (the step sequence), `container` (working containers and images),
`dnf`, `zypper`, `apt` (package managers), `ansible` (playbook layers),
`work` (state shared by the steps).
"""

# Exports load on first use (PEP 562): planning needs the backend table (`backends`, for the key
# document) but not buildah's container and layer machinery.
_EXPORTS = {
    "local_image_id": "container",
    "pull_image": "container",
    "pull_key_image": "container",
    "check_key_label": "container",
    "WrongKeyImage": "container",
    "remove_stale_containers": "container",
    "BuildRequest": "layer",
    "BuildResult": "layer",
    "ParentImage": "layer",
    "build_layer": "layer",
    "image_labels": "layer",
    "local_ref": "layer",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imagegraph.build' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BuildRequest",
    "BuildResult",
    "ParentImage",
    "build_layer",
    "check_key_label",
    "image_labels",
    "local_image_id",
    "local_ref",
    "pull_image",
    "pull_key_image",
    "remove_stale_containers",
    "WrongKeyImage",
]
