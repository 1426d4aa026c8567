"""The image knows itself: `/etc/imagegraph/layer.json`, written into every built image.

It holds what identifies the build and nothing that is not determined by the
key (no tags, no build time), so the image stays reproducible:

    {"format": 1, "name": "compute", "key": "<64 hex>", "key_tag": "ig-<key>",
     "parent": "registry/ns/base:9", "parent_key": "<64 hex>" | null,
     "parent_digest": "sha256:..." | null, "spec": "compute.yaml",
     "imagegraph": "0.1.0"}

`parent_key` is the parent layer's key when the parent is a layer of the
graph; `parent_digest` the external parent image's manifest digest (the one
the key was computed from); both null for a scratch layer. A booted node
reads it with `cat /etc/imagegraph/layer.json` (or `jq -r .key`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from .. import __version__
from ..key import key_tag
from .work import Work

STAMP_PATH = "/etc/imagegraph/layer.json"
STAMP_FORMAT = 1


def layer_document(spec: Any, key: str, parent: Any) -> dict:
    """The content of /etc/imagegraph/layer.json for a build of `spec` at `key` on `parent`."""
    return {
        "format": STAMP_FORMAT,
        "name": spec.name,
        "key": key,
        "key_tag": key_tag(key),
        "parent": parent.ref if parent else "scratch",
        "parent_key": parent.key if parent else None,
        "parent_digest": getattr(parent, "digest", None) if parent else None,
        "spec": spec.path.name,
        "imagegraph": __version__,
    }


def write_stamp(work: Work, parent: Any) -> None:
    """Write the layer document into the mounted working container (from the host, nothing runs inside)."""
    with work.step("stamp", STAMP_PATH):
        path = work.image_path(STAMP_PATH)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        body = json.dumps(layer_document(work.spec, work.key, parent), indent=2, sort_keys=True) + "\n"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(body)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
