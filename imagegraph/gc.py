"""Retention: `imagegraph gc --keep N` removes what old builds left behind.

For every layer of the project, the newest N distinct keys among its
successful builds (the state's `builds` table, newest first) are kept, and
so are the key its spec gives today (computed by the caller, not read from
the last build: after a revert they differ), the last build's key, and the
keys of its current publications. For every other key the layer was built
with, gc removes:

- its key tag `ig-<key>` from the layer's registry repository, through the
  registry API. The API deletes manifests, not tags: every tag on that
  manifest goes with it. So a key tag whose manifest digest is also the
  digest of any tag gc keeps (a human tag, a kept key tag, a tag gc knows
  nothing of) is left alone, and so is one an index that gc keeps lists
  (a multi-arch layer's arches are members of its index). Human tags are
  never deleted;
- a multi-arch layer's index tags `ig-<hash>-index` (keytag.py) that list
  a key tag gc removes, unless a tag gc keeps (a human tag) is on the index:
  then the index stays, and so do the key tags it lists;
- S3 objects under the layer's prefixes whose `imagegraph-key` metadata is
  that key and that no current publication (of any layer) lists. Objects
  imagegraph did not write carry no such metadata and are never touched;
- its local image `localhost/imagegraph/<name>:ig-<key>` (`buildah rmi` of
  that name only: other names of the same image stay);

and, once, the working containers left by runs that died.

Keys gc does not know (built by another host sharing the registry) are left
alone: each host cleans up what it built. The core returns a `GcReport`;
the CLI renders it. With `dry_run` nothing is removed and the report says
what would be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .inventory import Inventory, LiveInventory, local_key_ref
from .key import KEY_TAG_PREFIX, key_tag
from .keytag import INDEX_SUFFIX
from .log import get_logger
from .redact import redact
from .runner import Runner
from .spec import LayerSpec
from .state import State


class GcKind(StrEnum):
    """What gc looks at."""

    KEY_TAG = "key-tag"
    S3_OBJECT = "s3-object"
    LOCAL_IMAGE = "local-image"
    CONTAINER = "container"
    REFERRERS = "referrers"  # an image's SBOM index under the OCI tag schema
    INDEX_TAG = "index-tag"  # a multi-arch layer's index over its arches' key tags


class GcAction(StrEnum):
    """What gc did with one item."""

    REMOVED = "removed"
    WOULD_REMOVE = "would-remove"  # --dry-run
    KEPT = "kept"
    FAILED = "failed"


@dataclass
class GcItem:
    """One thing gc removed, kept or failed to remove, and why."""

    kind: GcKind
    location: str  # repo:tag, s3 URL, image reference, container name
    action: GcAction
    layer: str | None = None
    key: str | None = None
    reason: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


@dataclass
class GcReport:
    keep: int
    dry_run: bool
    run_id: str = ""
    kept_keys: dict[str, list[str]] = field(default_factory=dict)  # layer -> keys kept, newest first
    items: list[GcItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def of(self, kind: GcKind, action: GcAction | None = None) -> list[GcItem]:
        return [i for i in self.items if i.kind == kind and (action is None or i.action == action)]

    @property
    def removed(self) -> list[GcItem]:
        return [i for i in self.items if i.action in (GcAction.REMOVED, GcAction.WOULD_REMOVE)]

    @property
    def exit_status(self) -> int:
        return 1 if self.errors else 0

    def to_json(self) -> dict:
        return {
            "command": "gc",
            "run_id": self.run_id,
            "keep": self.keep,
            "dry_run": self.dry_run,
            "kept_keys": self.kept_keys,
            "items": [i.to_json() for i in self.items],
            "errors": self.errors,
        }


# ------------------------------------------------------------------------- keys


def layer_keys(
    state: State, layer: str, keep: int, current: str | None = None
) -> tuple[list[str], list[str]]:
    """(kept, old) keys of a layer, newest first, from its successful builds.

    `current` is the key today's spec gives (computed, not the last build's:
    after a revert they differ, and the reverted-to key is the one in use).
    """
    rows = state.builds(layer, limit=1_000_000)  # newest first
    distinct = list(dict.fromkeys(r["key"] for r in rows if r["status"] == "ok"))
    kept = distinct[: max(0, keep)]
    if current is not None and current not in kept:
        kept.insert(0, current)  # what the specs want now, always
    rec = state.layer(layer)
    if rec is not None and rec.key not in kept:
        kept.insert(0, rec.key)  # the last build's key too: a key computed offline may differ
    for pub in state.published(layer).values():
        if pub.key not in kept:
            kept.append(pub.key)  # what a target currently serves
    promoted: dict[tuple[str, str], str] = {}
    for ev in state.events(layer, "promote"):  # newest first: the first per (tag, target) is current
        promoted.setdefault((ev["detail"].get("tag", ""), ev["detail"].get("target", "")), ev["key"])
    for key in promoted.values():
        if key not in kept:
            kept.append(key)  # what a promoted tag points at (`imagegraph promote`)
    return kept, [k for k in distinct if k not in kept]


# ------------------------------------------------------------------------ the run


class _Gc:
    def __init__(self, report: GcReport, registry: Any, s3_index: Any, runner: Runner):
        self.report = report
        self.registry = registry
        self.s3_index = s3_index
        self.runner = runner
        self.log = get_logger()
        self.seen: set[tuple[GcKind, str]] = set()  # an index is one layer's, met once per node

    def add(
        self, kind: GcKind, location: str, layer: str | None, key: str | None, reason: str, fn=None
    ) -> None:
        """Record one removal and, unless dry-run, do it (`fn`); a failure is an error, not fatal."""
        action = GcAction.WOULD_REMOVE if self.report.dry_run else GcAction.REMOVED
        if not self.report.dry_run and fn is not None:
            try:
                fn()
            except Exception as exc:  # one stuck object must not stop the rest of the clean-up
                msg = redact(f"{kind} {location}: {exc}")
                self.report.errors.append(msg)
                self.report.items.append(
                    GcItem(kind, location, GcAction.FAILED, layer, key, redact(str(exc)))
                )
                self.log.error("gc could not remove", kind=kind, location=redact(location), error=msg)
                return
        self.report.items.append(GcItem(kind, location, action, layer, key, reason))
        self.log.info("gc " + action, kind=kind, location=redact(location), layer=layer)

    def keep(self, kind: GcKind, location: str, layer: str, key: str, reason: str) -> None:
        self.report.items.append(GcItem(kind, location, GcAction.KEPT, layer, key, reason))

    # -- registry

    def registry_tags(self, lid: str, spec: LayerSpec, kept: list[str], old: list[str]) -> None:
        from .reference import target_repository

        client = self.registry
        client.configure_for(spec)
        repo = target_repository(spec).name
        try:
            tags = client.tags(repo)
        except Exception as exc:
            self.report.errors.append(redact(f"registry {repo}: {exc}"))
            return
        if tags is None:
            why = client.errors.get(repo) or "unreachable"
            self.report.errors.append(redact(f"registry {repo}: {why}; its key tags were not collected"))
            return
        candidates = [key_tag(k) for k in old if key_tag(k) in tags]
        if not candidates:
            return
        indexes = sorted(t for t in tags if t.startswith(KEY_TAG_PREFIX) and t.endswith(INDEX_SUFFIX))
        # Every tag gc keeps protects its manifest: deleting a manifest deletes all its tags.
        digest_of: dict[str, str] = {}
        for t in sorted(tags):
            d = client.manifest_digest(f"{repo}:{t}")
            if d is None and t not in candidates:
                self.report.errors.append(
                    redact(f"registry {repo}: cannot get the digest of tag {t}; no key tag deleted there")
                )
                return
            if d is not None:
                digest_of[t] = d
        old_digests = {digest_of[t] for t in candidates if t in digest_of}
        holders: dict[str, str] = {}  # digest -> a tag gc keeps that is neither a candidate nor an index
        for t in sorted(tags - set(candidates) - set(indexes)):
            holders.setdefault(digest_of[t], t)
        protected = dict(holders)
        listed: dict[str, str] = {}  # digest -> the kept index that lists it
        drop: list[str] = []
        for t in indexes:
            try:
                members = _index_members(client, f"{repo}:{t}")
            except Exception as exc:  # unreadable: it might list anything, so nothing is deleted
                self.report.errors.append(
                    redact(f"registry {repo}: index {t}: {exc}; no key tag deleted there")
                )
                return
            d = digest_of[t]
            if d not in holders and members & old_digests:
                drop.append(t)  # lists a key tag going now, and no human tag is on it
                continue
            protected.setdefault(d, t)
            for m in members:  # an index kept keeps the images it lists
                listed.setdefault(m, f"{t} (tag {holders[d]})" if d in holders else t)
        for t in drop:
            if (GcKind.INDEX_TAG, f"{repo}:{t}") in self.seen:
                continue
            self.seen.add((GcKind.INDEX_TAG, f"{repo}:{t}"))
            self.add(
                GcKind.INDEX_TAG,
                f"{repo}:{t}",
                lid,
                None,
                "an index listing a removed key tag, no human tag on it",
                lambda t=t: client.delete_tag(repo, t),
            )
        for t in candidates:
            key = t[len(KEY_TAG_PREFIX) :]
            d = digest_of.get(t)
            if d is None:
                continue  # gone meanwhile
            if d in protected:
                self.keep(GcKind.KEY_TAG, f"{repo}:{t}", lid, key, f"same manifest as tag {protected[d]}")
                continue
            if d in listed:
                self.keep(GcKind.KEY_TAG, f"{repo}:{t}", lid, key, f"listed by index {listed[d]}")
                continue

            def delete(t: str = t) -> None:
                client.delete_tag(repo, t)

            self.add(GcKind.KEY_TAG, f"{repo}:{t}", lid, key, "older than the newest kept builds", delete)
            # The image's SBOM index under the OCI tag schema (publish/referrers.py) goes with it.
            index_tag = d.replace(":", "-", 1)
            if index_tag in tags:
                self.add(
                    GcKind.REFERRERS,
                    f"{repo}:{index_tag}",
                    lid,
                    key,
                    "artifacts (SBOM) referring to a removed key tag's image",
                    lambda t=index_tag: client.delete_tag(repo, t),
                )

    # -- S3

    def s3_objects(self, lid: str, spec: LayerSpec, old: set[str], in_use: set[tuple[str, str]]) -> None:
        from .publish.s3 import META_KEY, object_url

        index = self.s3_index
        endpoint, bucket, prefix = spec.publish_s3, spec.s3_bucket, spec.s3_prefix or ""
        prefixes = (
            [f"{prefix}{spec.name}/"] if spec.s3_layout == "versioned" else [prefix, f"efi-images/{prefix}"]
        )
        seen: set[str] = set()
        for p in prefixes:
            listing = index.objects(endpoint, bucket, p)
            if listing is None:
                why = index.unreachable(endpoint) or "unreachable"
                self.report.errors.append(redact(f"S3 {endpoint} bucket {bucket}: {why}"))
                return
            for obj_key in sorted(listing):
                if obj_key in seen or (bucket, obj_key) in in_use:
                    continue
                seen.add(obj_key)
                if spec.s3_layout != "versioned" and p == prefix and "/" in obj_key[len(prefix) :]:
                    continue  # image-builder rootfs keys sit right under the prefix
                meta = index.metadata(endpoint, bucket, obj_key) or {}
                key = meta.get(META_KEY)
                if key not in old:
                    continue

                def delete(k: str = obj_key) -> None:
                    index.client(endpoint).delete_object(Bucket=bucket, Key=k)

                self.add(
                    GcKind.S3_OBJECT,
                    object_url(endpoint, bucket, obj_key),
                    lid,
                    key,
                    "written for an old key; no current publication uses it",
                    delete,
                )

    # -- local images and containers

    def local_images(self, lid: str, spec: LayerSpec, old: list[str], inventory: Inventory) -> None:
        for k in old:
            ref = local_key_ref(spec, k)
            found = inventory.local_image(None, ref)
            if found.unknown:
                msg = f"local images: {found.error}; no local image removed"
                if msg not in self.report.errors:
                    self.report.errors.append(msg)
                return
            if not found.present:
                continue

            def rmi(ref: str = ref) -> None:
                self.runner.run(["buildah", "rmi", ref], step="gc")

            self.add(GcKind.LOCAL_IMAGE, ref, lid, k, "older than the newest kept builds", rmi)

    def containers(self) -> None:
        from .build.container import remove_container, stale_containers

        try:
            stale = stale_containers(self.runner)
        except Exception as exc:
            self.report.errors.append(f"cannot list working containers: {exc}")
            return
        for name, _owner in stale:

            def rm(name: str = name) -> None:
                remove_container(name, self.runner, step="gc")

            self.add(GcKind.CONTAINER, name, None, None, "left by a run that died", rm)


def _index_members(client: Any, ref: str) -> set[str]:
    """The manifest digests an OCI index (or Docker manifest list) at `ref` lists; empty for an image."""
    got = client.manifest(ref)
    if got is None:
        return set()
    body, _media_type = got
    doc = json.loads(body)
    return {m["digest"] for m in doc.get("manifests", []) if isinstance(m, dict) and m.get("digest")}


def _in_use_s3(state: State) -> set[tuple[str, str]]:
    """(bucket, key) of every object a current publication of any layer lists."""
    out = set()
    for targets in state.all_published().values():
        rec = targets.get("s3")
        for loc in rec.locations if rec else []:
            if isinstance(loc, dict) and loc.get("bucket") and loc.get("key"):
                out.add((loc["bucket"], loc["key"]))
    return out


def _nodes(lg: Any, layer: str) -> list[str]:
    from .graph import node_id

    return [node_id(layer, a) for a in lg.arches(layer)]


def gc(
    lg: Any,
    state: State,
    *,
    keep: int,
    dry_run: bool = False,
    registry: Any = None,
    s3_index: Any = None,
    runner: Runner | None = None,
    containers: bool = True,
    current: dict[str, str] | None = None,
    inventory: Inventory | None = None,
) -> GcReport:
    """Remove what builds older than the newest `keep` of each layer left behind (module docstring).

    `current` maps layers to the keys today's specs give (`plan.current_keys`); they are kept.
    """
    if keep < 1:
        raise ValueError("--keep must be at least 1")
    report = GcReport(keep, dry_run)
    runner = runner or Runner()
    if registry is None:
        from .publish.registry_client import RegistryClient

        registry = RegistryClient()
    if s3_index is None:
        from .publish.s3 import S3Index

        s3_index = S3Index()
    work = _Gc(report, registry, s3_index, runner)
    inventory = inventory or LiveInventory(offline=True, runner=runner)
    in_use = _in_use_s3(state)
    # Per node: a multi-arch layer's arches each have their builds (`compute`, `compute@aarch64`).
    for lid, spec in ((n, lg.spec(layer)) for layer in lg.order() for n in _nodes(lg, layer)):
        kept, old = layer_keys(state, lid, keep, (current or {}).get(lid))
        report.kept_keys[lid] = kept
        if not old:
            continue
        if spec.publish_registry:
            work.registry_tags(lid, spec, kept, old)
        if spec.publish_s3:
            work.s3_objects(lid, spec, set(old), in_use)
        work.local_images(lid, spec, old, inventory)
    if containers:
        work.containers()
    return report


def run_gc(
    lg: Any,
    state: State,
    *,
    state_dir: Any,
    keep: int,
    dry_run: bool = False,
    wait_lock: bool = False,
    **kw: Any,
) -> GcReport:
    """`gc` under the state lock (no `up` may build meanwhile), recorded as a run unless dry-run."""
    from .log import bind_run
    from .state import default_run_id
    from .statelock import StateLock, atomic_write

    run_id = default_run_id()
    bind_run(run_id)
    with StateLock(state_dir, "gc", wait=wait_lock):
        if not dry_run:
            state.start_run(run_id, "gc")
        report = gc(lg, state, keep=keep, dry_run=dry_run, **kw)
        report.run_id = run_id
        if not dry_run:
            doc = report.to_json()
            state.finish_run(run_id, "failed" if report.errors else "ok", doc)
            runs = state_dir / "runs"
            runs.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(runs / f"{run_id}.json", json.dumps(doc, indent=2, sort_keys=True))
        get_logger().info(
            "gc finished", removed=len(report.removed), errors=len(report.errors), dry_run=dry_run
        )
    return report
