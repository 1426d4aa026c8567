"""Content keys: what a layer is made of, hashed.

A layer's *build key* is sha256 over a canonical JSON document (`KeyInputs`):
the key-format version, every build-relevant field of the spec with defaults
applied (list order counts; comments, mapping order and YAML style do not),
the bytes and mode of every file and directory that `copyfiles` or a playbook
pulls in, the locked upstream fingerprints of its repositories, and its
parent: the parent layer's key, an external image's manifest digest, or
`scratch`. A change anywhere upstream changes every key below it.

Publish targets (registry, tags, S3, local directory, SquashFS options) are
not in the build key, so adding a tag republishes without rebuilding; they
make up a separate *publish key*.

Changing what goes into a key rebuilds every site that upgrades: bump
KEY_FORMAT deliberately, and the golden tests in tests/test_key.py fail on
any accidental change.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .labels import label_inputs
from .redact import mask_url_credentials
from .spec import LayerSpec

KEY_FORMAT = 2  # 2: the image name and parent as written (in labels) are key inputs
KEY_TAG_PREFIX = "ig-"


def key_tag(key: str) -> str:
    """The immutable registry tag that names a layer key."""
    return KEY_TAG_PREFIX + key


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ file digests

_file_cache: dict[tuple, str] = {}


def _file_digest(path: Path, st: os.stat_result) -> str:
    # Re-hash only when the file changed; planning a directory twice in one process is cheap.
    ident = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    hit = _file_cache.get(ident)
    if hit is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        hit = h.hexdigest()
        _file_cache[ident] = hit
    return hit


def path_digest(path: Path) -> str | None:
    """sha256 over a file's bytes and mode, or a whole tree's names, modes, bytes and links.

    None for a missing path: such a layer is planned as blocked (project.unbuildable), never built.
    """
    if not os.path.lexists(path):
        return None
    entries: list[list] = []

    def add(p: Path, rel: str) -> None:
        st = p.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entries.append([rel, "link", os.readlink(p)])
        elif stat.S_ISDIR(st.st_mode):
            entries.append([rel, "dir", mode])
            for child in sorted(os.listdir(p)):
                add(p / child, f"{rel}/{child}" if rel else child)
        elif stat.S_ISREG(st.st_mode):
            entries.append([rel, "file", mode, _file_digest(p, st)])
        else:
            entries.append([rel, "special", mode])

    if path.is_symlink() and path.exists():
        # A symlinked source is copied as what it points to (buildah copy follows it).
        path = path.resolve()
    add(path, "")
    return sha256_hex(canonical_json(entries).encode())


# ------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class ParentInput:
    """The parent as it enters a key."""

    kind: str  # scratch, layer, image
    ref: str | None = None
    key: str | None = None  # parent layer's key
    digest: str | None = None  # external image's manifest digest (None: unknown)

    def to_json(self) -> dict:
        if self.kind == "scratch":
            return {"kind": "scratch"}
        if self.kind == "layer":
            return {"kind": "layer", "key": self.key}
        # Unknown digest (offline, registry down): the reference stands in, and the plan says so.
        return {"kind": "image", "digest": self.digest} if self.digest else {"kind": "image", "ref": self.ref}


def build_inputs(spec: LayerSpec, parent: ParentInput, upstream: dict[str, str] | None = None) -> dict:
    """The canonical key document of one layer (JSON-ready)."""
    doc: dict[str, Any] = {
        "format": KEY_FORMAT,
        "layer_type": spec.layer_type,
        "parent": parent.to_json(),
    }
    if spec.layer_type == "ansible":
        doc["ansible"] = {
            "groups": list(spec.groups),
            "playbooks": [
                {"path": p, "content": path_digest(pp)}
                for p, pp in zip(spec.playbooks, spec.playbook_paths, strict=True)
            ],
            "inventory": [
                {"path": p, "content": path_digest(pp)}
                for p, pp in zip(spec.inventory, spec.inventory_paths, strict=True)
            ],
            "vars": spec.vars,
        }
    else:
        doc.update(
            {
                "pkg_manager": spec.pkg_manager,
                "gpgcheck": spec.gpgcheck,
                "releasever": spec.releasever,
                "repos": [
                    {
                        "alias": r.alias,
                        # Credentials are not content (and must not reach the state): masked.
                        "url": mask_url_credentials(r.url),
                        "gpg": mask_url_credentials(r.gpg) if r.gpg else r.gpg,
                        "priority": r.priority,
                        "suite": r.suite,
                        "components": list(r.components),
                    }
                    for r in spec.repos
                ],
                "modules": [[sub, list(items)] for sub, items in spec.modules],
                "package_groups": list(spec.package_groups),
                "packages": list(spec.packages),
                "remove_packages": list(spec.remove_packages),
                "copyfiles": [
                    {"src": c.src, "dest": c.dest, "opts": list(c.opts), "content": path_digest(c.source)}
                    for c in spec.copyfiles
                ],
                "cmds": [c.cmd for c in spec.cmds],
            }
        )
    doc["labels"] = dict(sorted(spec.labels.items()))
    doc["image"] = label_inputs(spec)  # the label values no other field of this document fixes
    doc["upstream"] = dict(sorted((upstream or {}).items()))
    return doc


def key_of(inputs: dict) -> str:
    return sha256_hex(canonical_json(inputs).encode())


def publish_targets(spec: LayerSpec) -> dict:
    """Where a layer goes once built; the publish key hashes this with the build key."""
    targets: dict[str, Any] = {}
    if spec.publish_registry:
        targets["registry"] = {
            "repository": f"{spec.publish_registry}/{spec.name}",
            "tags": list(spec.publish_tags),
        }
    if spec.publish_local:
        targets["local"] = {"name": spec.name, "tags": list(spec.publish_tags)}
    artifacts = {
        "squashfs": {
            "compression": spec.squashfs.compression,
            "level": spec.squashfs.level,
            "block_size": spec.squashfs.block_size,
        },
        "kernel_version": spec.kernel_version,
        "rootfs_only": spec.rootfs_only,
        "tags": list(spec.publish_tags),
        "name": spec.name,
    }
    if spec.publish_s3:
        targets["s3"] = {
            "endpoint": spec.publish_s3,
            "bucket": spec.s3_bucket,
            "prefix": spec.s3_prefix,
            "layout": spec.s3_layout,
            **artifacts,
        }
    if spec.publish_dir:
        targets["dir"] = {"path": str(spec.publish_dir), **artifacts}
    return targets


def publish_key(build_key: str, spec: LayerSpec) -> str:
    return key_of({"format": KEY_FORMAT, "build": build_key, "targets": publish_targets(spec)})


# ------------------------------------------------------------------ whole graph

DigestLookup = Callable[[str, LayerSpec], str | None]


@dataclass(frozen=True)
class LayerKey:
    key: str
    publish_key: str
    inputs: dict
    targets: dict
    parent: ParentInput


def compute_keys(
    lg: Any,
    layers: list[str],
    digest_of: DigestLookup | None = None,
    upstream_of: Callable[[LayerSpec], dict[str, str]] | None = None,
) -> dict[str, LayerKey]:
    """Keys for `layers` (given in topological order, ancestors included)."""
    out: dict[str, LayerKey] = {}
    for lid in layers:
        spec = lg.spec(lid)
        link = lg.parents[lid]
        if link.kind == "scratch":
            parent = ParentInput("scratch")
        elif link.kind == "layer":
            parent = ParentInput("layer", ref=link.ref, key=out[link.layer].key)
        else:
            digest = digest_of(link.ref, spec) if digest_of else None
            parent = ParentInput("image", ref=link.normalized or link.ref, digest=digest)
        inputs = build_inputs(spec, parent, upstream_of(spec) if upstream_of else None)
        k = key_of(inputs)
        out[lid] = LayerKey(k, publish_key(k, spec), inputs, publish_targets(spec), parent)
    return out
