"""`imagegraph promote LAYER TAG`: point a human tag at a key that is already built, without building.

The key is the layer's current one (what `plan` computes), or `key=` (a
prefix of a recorded build). Each of the layer's targets moves:

- registry: the tag is put on the manifest of the immutable key tag
  (`RegistryClient.put_tag`, same digest, nothing pushed);
- S3: server-side copies of the key's objects (found by `find_published`
  under any tag already holding that key) to the keys the layout gives the
  new tag; the SquashFS last, with its boot files' ETags, so the new tag is
  complete the moment it appears (image-builder's boot-file keys hold no tag
  and are shared, so only the SquashFS is copied there);
- local directory: `<publish_dir>/<name>/<TAG>/` made of hard links of a
  directory holding the key, swapped in atomically;
- local container storage (`publish_local`): `buildah tag`.

Every target is asked first whether it holds the key; when one does not,
nothing moves (a tag is never left half promoted).

When the layer has `options.boot_test.enabled`, the key must have booted
(a `boot-test` event in the state, from `up` or `boot-test`), unless forced.
Every move is recorded in the state as a `promote` event, with the package
diff from the key the tag pointed at before (`diff.tag_changes`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .diff import PackageDiff, tag_changes
from .errors import ImagegraphError, UsageError
from .key import key_tag
from .runner import Runner
from .state import State

TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class PromoteError(ImagegraphError):
    """The key cannot be promoted (not built, not tested, a target lacks it)."""


@dataclass
class Promotion:
    layer: str
    key: str
    tag: str
    targets: list[dict] = field(default_factory=list)
    changes: PackageDiff | None = None  # packages from what `tag` pointed at to `key`

    def to_json(self) -> dict:
        doc = dataclasses.asdict(dataclasses.replace(self, changes=None))
        doc["changes"] = self.changes.to_json() if self.changes else None
        return doc


def tested(state: State, layer: str, key: str) -> dict | None:
    """The newest successful boot test of `key`, or None."""
    for ev in state.events(layer, "boot-test"):
        if ev["key"] == key and ev["detail"].get("outcome") == "booted":
            return ev
    return None


def promote(
    spec: Any,
    layer: str,
    key: str,
    tag: str,
    state: State,
    *,
    run_id: str,
    force: bool = False,
    runner: Runner | None = None,
    remote: Any = None,
) -> Promotion:
    """Move `tag` of every target of the layer to `key` (module docstring). Raises PromoteError."""
    if not TAG_RE.fullmatch(tag):
        raise UsageError(f"invalid tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)")
    if tag.startswith("ig-"):
        raise UsageError(f"{tag!r}: tags starting with 'ig-' are imagegraph's immutable key tags")
    if spec.boot_test.enabled and not force and tested(state, layer, key) is None:
        raise PromoteError(
            f"{layer}: key {key[:12]} has not booted (options.boot_test is enabled): run "
            f"`imagegraph boot-test {layer}` or `imagegraph up` first, or pass --force"
        )
    runner = runner or Runner(layer)
    # What the tag held: this state's record, else (with `remote`, diff.RemoteSource) the registry's.
    out = Promotion(layer, key, tag, changes=tag_changes(state, layer, spec, tag, key, remote))
    # Every target is asked first; one that does not hold the key moves none (no half promotion).
    moves: list[Callable[[], dict]] = []
    if spec.publish_registry:
        moves.append(_registry(spec, key, tag))
    if spec.publish_local:
        moved = _local(spec, key, tag, runner)
        if moved:
            moves.append(moved)
    if spec.publish_dir:
        moves.append(_dir(spec, key, tag))
    if spec.publish_s3:
        moves.append(_s3(spec, key, tag, state, layer))
    if not moves:
        raise PromoteError(f"{layer}: nothing to promote: the layer has no registry, S3 or directory target")
    for move in moves:
        t = move()
        out.targets.append(t)
        state.record_event(
            run_id=run_id,
            layer=layer,
            key=key,
            kind="promote",
            location=json.dumps(t["locations"]),
            digest=t.get("digest"),
            detail={
                "tag": tag,
                "target": t["target"],
                "forced": force,
                "changes": out.changes.to_json() if out.changes else None,
            },
        )
    return out


def _registry(spec: Any, key: str, tag: str) -> Callable[[], dict]:
    from .publish.registry_client import RegistryClient
    from .reference import target_repository

    client = RegistryClient()
    client.configure_for(spec)
    repo = target_repository(spec).name
    digest = client.manifest_digest(f"{repo}:{key_tag(key)}")
    if digest is None:
        why = client.errors.get(f"{repo}:{key_tag(key)}", "not found")
        raise PromoteError(f"{spec.name}: {repo}:{key_tag(key)[:15]}... is not in the registry ({why})")

    def move() -> dict:
        client.put_tag(repo, digest, tag)
        return {"target": "registry", "locations": [f"{repo}:{tag}"], "digest": digest}

    return move


def _local(spec: Any, key: str, tag: str, runner: Runner) -> Callable[[], dict] | None:
    from .build import local_image_id
    from .inventory import local_key_ref

    image = local_image_id(local_key_ref(spec, key), runner)
    if image is None:
        return None  # built elsewhere: local storage is no publication target then
    ref = f"localhost/{spec.name}:{tag}"

    def move() -> dict:
        runner.run(["buildah", "tag", image, ref], step="promote")
        return {"target": "local", "locations": [ref], "digest": image}

    return move


def _dir(spec: Any, key: str, tag: str) -> Callable[[], dict]:
    from .publish import artifacts as a
    from .publish.dirlayout import dir_artifacts_present

    base = Path(spec.publish_dir) / spec.name
    source = None
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.name.startswith(".") or d.name == tag:
            continue
        try:
            doc = json.loads((d / a.MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            continue
        if doc.get("key") == key and dir_artifacts_present(spec, key, [d.name]):
            source, manifest = d, doc
            break
    if source is None:
        current = base / tag
        if dir_artifacts_present(spec, key, [tag]):
            return lambda: {"target": "dir", "locations": [str(current)], "action": "unchanged"}
        raise PromoteError(
            f"{spec.name}: no directory under {base} holds key {key[:12]}; run `imagegraph up`"
        )
    return lambda: _dir_move(spec, tag, base, source, manifest)


def _dir_move(spec: Any, tag: str, base: Path, source: Path, manifest: dict) -> dict:
    from .publish import artifacts as a

    names = {"rootfs": a.ROOTFS_NAME, "kernel": a.VMLINUZ_NAME, "initramfs": a.INITRAMFS_NAME}
    files = {}
    for role, name in names.items():
        info = manifest["files"].get(name)
        if info is not None:
            files[role] = a.ArtifactFile(source / name, info["sha256"], int(info["size"]))
    doc = {**manifest, "tag": tag}
    body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    final = base / tag
    a.write_tag_dir(final, body, files, names, {role: f.path for role, f in files.items()})
    _copy_sbom_file(source, final)
    return {"target": "dir", "locations": [str(final)], "source": str(source)}


def _copy_sbom_file(source: Path, final: Path) -> None:
    """The key's SBOM (publish/sbomfiles.py) goes with it, when the source tag has one."""
    import os
    import shutil

    from .publish.sbomfiles import SBOM_NAME

    if (source / SBOM_NAME).is_file():
        tmp = final / f".{SBOM_NAME}.tmp"
        shutil.copyfile(source / SBOM_NAME, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final / SBOM_NAME)


def _s3(spec: Any, key: str, tag: str, state: State, layer: str) -> Callable[[], dict]:
    from .publish import s3layout as layout
    from .publish.s3 import S3Index, S3Target

    known = list(spec.publish_tags) + [e["detail"].get("tag") for e in state.events(layer, "promote")]
    tags = [t for t in dict.fromkeys(known) if t and t != tag]
    found = layout.find_published(S3Index(), spec, key, tags)
    if found is None:
        raise PromoteError(f"{spec.name}: S3 at {spec.publish_s3} cannot be reached")
    src = next((k for k in found.values() if k is not None), None)
    if src is None:
        raise PromoteError(
            f"{spec.name}: no complete S3 publication of key {key[:12]} under tags {', '.join(tags)}; "
            "run `imagegraph up`"
        )
    s3 = S3Target(spec.publish_s3, spec.s3_bucket, layer=spec.name)
    head = s3.head(src.rootfs)
    if head is None:
        raise PromoteError(f"{spec.name}: {src.rootfs} vanished while promoting")
    return lambda: _s3_move(spec, key, tag, s3, src, head)


def _s3_move(spec: Any, key: str, tag: str, s3: Any, src: Any, head: dict) -> dict:
    from .publish import s3layout as layout
    from .publish.s3 import META_SHA256

    meta = head["metadata"]
    kver, os_str = meta.get("imagegraph-kver"), meta.get("imagegraph-os", "")
    initrd_name = None
    if src.initramfs and spec.s3_layout != "versioned":
        initrd_name = src.initramfs.removeprefix(f"efi-images/{spec.s3_prefix or ''}")
    dest = layout.artifact_keys(spec, tag, kver, os_str, initramfs_name=initrd_name)
    locations, recorded = [], {}
    for role, s, d in (("kernel", src.kernel, dest.kernel), ("initramfs", src.initramfs, dest.initramfs)):
        if s is None or d is None:
            continue
        h = s3.head(s)
        if h is None:
            raise PromoteError(f"{spec.name}: {s} vanished while promoting")
        if d != s:
            r = s3.copy(
                s,
                d,
                {k: v for k, v in h["metadata"].items() if k != META_SHA256},
                h["metadata"].get(META_SHA256, ""),
                h["size"],
            )
            h = {**h, "etag": r.etag}
        recorded[role] = (d, h["etag"])
        locations.append(s3.url(d))
    # The promoted copy is the same artifact: it keeps the options it was made with.
    options = meta.get(layout.META_OPTIONS) or layout.artifact_options(spec)
    rootfs_meta = layout.rootfs_metadata(key, kver, os_str, recorded, options)
    s3.copy(src.rootfs, dest.rootfs, rootfs_meta, meta.get(META_SHA256, ""), head["size"])
    locations.append(s3.url(dest.rootfs))
    from .publish.sbomfiles import s3_sbom_key

    sbom_src, sbom_dest = s3_sbom_key(spec, src.rootfs), s3_sbom_key(spec, dest.rootfs)
    sbom = s3.head(sbom_src) if sbom_src != sbom_dest else None
    if sbom is not None and sbom["metadata"].get("imagegraph-key") == key:
        s3.copy(sbom_src, sbom_dest, sbom["metadata"], sbom["metadata"].get(META_SHA256, ""), sbom["size"])
    return {"target": "s3", "locations": locations, "source": s3.url(src.rootfs)}
