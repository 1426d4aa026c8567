"""Content keys: what a layer is made of, hashed.

A layer's *build key* is sha256 over a canonical JSON document: the
key-format version; the target architecture; every build-relevant field of
the spec with defaults applied (list order counts; comments, mapping order
and YAML style do not); the build backend's name, version and effective
defaults (`build.backends`: apt's suite and mirror, dnf's releasever, the
ansible project tree ...); the bytes and mode of every file and directory
that `copyfiles`, a playbook or `options.key_paths` pulls in, named as the
spec spells them (never by where the project directory is); the locked
upstream fingerprints of its repositories; and its parent: the parent
layer's key, an external image's manifest digest, or `scratch`. A change
anywhere upstream changes every key below it.

Publish targets (registry, tags, S3, local directory, SquashFS options) are
not in the build key, so adding a tag republishes without rebuilding; they
make up a separate *publish key*.

Changing what goes into a key rebuilds every site that upgrades: bump
KEY_FORMAT deliberately. The golden key documents in tests/golden/ fail on
any accidental change and name the input that moved
(scripts/regen-golden-keys.py rewrites them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arch import Arch, host_arch
from .build import backends
from .digest import canonical_json as canonical_json
from .digest import path_digest as path_digest
from .digest import sha256_hex
from .errors import Diagnostic, SpecError, rel
from .keytag import KEY_TAG_PREFIX as KEY_TAG_PREFIX
from .keytag import key_tag as key_tag
from .labels import label_inputs
from .redact import mask_url_credentials
from .spec import LayerSpec, packages_for_arch

# 2: the target architecture, each build backend's name, version and defaults (the ansible
# project tree among them), options.key_paths, and the image name and parent as written (the
# labels' values) joined the key; paths are the spec's own.
KEY_FORMAT = 2


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


def build_inputs(
    spec: LayerSpec,
    parent: ParentInput,
    upstream: dict[str, str] | None = None,
    arch: Arch | None = None,
) -> dict:
    """The canonical key document of one layer (JSON-ready), built for `arch` (default: the host's).

    A file the key must read but cannot is a `SpecError` naming the spec line that pulls it in.
    """
    try:
        return _build_inputs(spec, parent, upstream, arch)
    except OSError as exc:
        raise SpecError([_unreadable(spec, exc)]) from exc


def _unreadable(spec: LayerSpec, exc: OSError) -> Diagnostic:
    failed = Path(exc.filename) if exc.filename else None

    def pulls_in(source: Path) -> bool:
        return failed is not None and (failed == source or source in failed.parents)

    line, col, what = 1, 1, "a file the layer's key reads"
    for cf in spec.copyfiles:
        if pulls_in(cf.source):
            line, col, what = cf.line, cf.column, f"copyfiles source '{cf.src}'"
    for kp in spec.key_paths:
        if pulls_in(kp.source):
            line, col, what = kp.line, kp.column, f"key_paths entry '{kp.path}'"
    for key, paths in (("playbooks", spec.playbook_paths), ("inventory", spec.inventory_paths)):
        if any(pulls_in(p) for p in paths):
            line, col, what = spec.line_of(f"options.{key}"), 3, f"{key} path"
    return Diagnostic(
        rel(spec.path),
        line,
        col,
        f"cannot read {what}: {exc.strerror or exc} ({exc.filename})",
        hint="make it readable by the user running imagegraph, or stop pulling it in",
    )


def _build_inputs(
    spec: LayerSpec, parent: ParentInput, upstream: dict[str, str] | None, arch: Arch | None
) -> dict:
    doc: dict[str, Any] = {
        "format": KEY_FORMAT,
        "arch": str(arch or host_arch()),
        "layer_type": spec.layer_type,
        "parent": parent.to_json(),
        # The build backend's own contribution: its version and what it assumes (build/backends.py).
        "backend": backends.key_inputs(spec),
        "key_paths": [{"path": kp.path, "content": path_digest(kp.source)} for kp in spec.key_paths],
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
                # The node's own list: another arch's packages_by_arch entry is not in this key.
                "packages": list(packages_for_arch(spec, arch)),
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
    arch: Arch


def compute_keys(
    lg: Any,
    layers: list[str],
    digest_of: DigestLookup | None = None,
    upstream_of: Callable[..., dict[str, Any]] | None = None,
    arch: Arch | None = None,
) -> dict[str, LayerKey]:
    """Keys for `layers` (given in topological order, ancestors included), built for `arch`.

    `arch` defaults to the host's; one call per architecture gives a multi-arch site its keys.
    """
    arch = arch or host_arch()
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
        # The lock's package set is per architecture: a foreign arch's node asks for its own (the
        # host's is the lock's default, so one-arch callers keep one argument).
        if upstream_of is None:
            upstream = None
        elif arch is None or arch == host_arch():
            upstream = upstream_of(spec)
        else:
            upstream = upstream_of(spec, str(arch))
        inputs = build_inputs(spec, parent, upstream, arch)
        k = key_of(inputs)
        out[lid] = LayerKey(k, publish_key(k, spec), inputs, publish_targets(spec), parent, arch)
    return out
