"""Building one layer with buildah.

`build_layer` turns a `BuildRequest` (spec, key, parent image) into a
committed local image; `pull_image` and `local_image_id` manage parent
images; `remove_stale_containers` cleans up after runs that died. Modules:
`layer` (the step sequence), `container` (working containers and images),
`dnf`, `zypper`, `apt` (package managers), `ansible` (playbook layers),
`work` (state shared by the steps).
"""

from .container import local_image_id, pull_image, remove_stale_containers
from .layer import BuildRequest, BuildResult, ParentImage, build_layer, image_labels, local_ref

__all__ = [
    "BuildRequest",
    "BuildResult",
    "ParentImage",
    "build_layer",
    "image_labels",
    "local_image_id",
    "local_ref",
    "pull_image",
    "remove_stale_containers",
]
