"""Project + state + what exists out there -> `Plan`: an action with reasons per layer.

Each selected layer gets one action:

- `build`: its key has no image (never built, inputs changed, parent
  rebuilds, image lost, forced);
- `publish`: the image for its key exists, but a publish target does not
  hold it (a new tag or target, an artifact deleted remotely, a tag that
  points at another key's image: `latest -> 3f2a… (an older build), wants 9c1d…`);
- `up-to-date`: nothing to do;
- `blocked`: it must build but cannot (its parent is blocked or unknown, its
  external parent is unobtainable; in run results also: an ancestor failed);
- `unknown`: what exists could not be read (a failing `buildah images`, a
  registry or S3 endpoint that did not answer); the reasons quote the error,
  and `up` does nothing for the layer.

Reasons are typed (`Reason.code`) and computed by comparing the key inputs
stored with the last build against today's, so the plan can say
"packages: +vim" rather than "changed". The same Plan drives `plan`, `up`,
the JSON document and the logs, so the preview cannot disagree with the run.

What exists comes from an `Inventory` (inventory.py): present, absent or
unknown, and for pointers what they hold. Every target is compared by what
it holds (`_TargetCheck`); the state's records decide only with `--offline`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .arch import Arch, Emulation, emulation, host_arch
from .duration import format_age, format_duration
from .graph import LayerGraph, node_id
from .inventory import (
    ABSENT,
    Answer,
    Inventory,
    LiveInventory,
    StaticInventory,
    TagList,
    local_key_ref,
    local_tag_ref,
)
from .key import KEY_TAG_PREFIX, LayerKey, compute_keys, key_tag
from .keytag import index_tag
from .reasons import IndexReason, Reason, ReasonCode
from .redact import redact
from .reference import target_repository
from .spec import LayerSpec
from .state import PublishedRecord, State
from .tasks import Task, TaskKind, layer_tasks, task_id

# LiveInventory, StaticInventory and local_key_ref moved to inventory.py; still importable from here.
__all__ = [
    "Action",
    "LayerPlan",
    "LiveInventory",
    "Plan",
    "Reason",
    "StaticInventory",
    "diff_inputs",
    "local_key_ref",
    "current_keys",
    "make_plan",
]


class Action(StrEnum):
    BUILD = "build"
    PUBLISH = "publish"
    UP_TO_DATE = "up-to-date"
    BLOCKED = "blocked"
    UNKNOWN = "unknown"  # what exists could not be read: nothing is done for it


@dataclass
class LayerPlan:
    layer: str
    image_name: str
    file: str
    parent: str
    parent_kind: str
    key: str
    publish_key: str
    action: Action
    reasons: list[Reason]
    inputs: dict
    targets: dict
    publish: list[str] = field(default_factory=list)  # targets to fill: registry, local, s3, dir
    image_id: str | None = None  # a known image for this key (local storage)
    image_source: str | None = None  # local, registry (where the image for this key can be had)
    notes: list[Reason] = field(default_factory=list)
    parent_layer: str | None = None  # the parent's node id (its layer id for a host-arch layer)
    tasks: list[Task] = field(default_factory=list)  # the work `up` schedules (tasks.py)
    # Multi-arch: `layer` is the node id (`compute` for the host's arch, `compute@aarch64` for
    # another); `spec_id` the layer id, `arch` the node's architecture, `arches` the layer's.
    spec_id: str = ""
    arch: Arch | None = None
    arches: tuple[Arch, ...] = ()
    # The node carrying a layer's `index` task: every arch's build key the index lists (arch -> key),
    # those of arches `--arch` left out included (their key tags are in the registry already).
    index_members: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spec_id = self.spec_id or self.layer

    @property
    def multiarch(self) -> bool:
        """Whether this node is one architecture of a layer built for several (or for a foreign one)."""
        return len(self.arches) > 1 or (bool(self.arches) and self.arches[0] != host_arch())

    @property
    def pending(self) -> bool:
        return self.action in (Action.BUILD, Action.PUBLISH)

    def to_json(self) -> dict:
        return {
            "name": self.layer,
            "image": self.image_name,
            "file": self.file,
            "parent": self.parent,
            "parent_kind": self.parent_kind,
            "key": self.key,
            "key_tag": key_tag(self.key),
            "publish_key": self.publish_key,
            "action": str(self.action),
            "reasons": [r.to_json() for r in self.reasons],
            "publish": self.publish,
            "notes": [r.to_json() for r in self.notes],
            "tasks": [t.to_json() for t in self.tasks],
            # Only for multi-arch layers: a host-arch layer's document is as it always was.
            **(
                {"layer": self.spec_id, "arch": str(self.arch), "arches": [str(a) for a in self.arches]}
                if self.multiarch
                else {}
            ),
            **({"index_members": self.index_members} if self.index_members else {}),
        }


def action_of(tasks: list[Task]) -> Action:
    """A layer's action, from its tasks: `build` when one builds, `publish` when some publish."""
    if any(t.kind == TaskKind.BUILD for t in tasks):
        return Action.BUILD
    return Action.PUBLISH if tasks else Action.UP_TO_DATE


def boot_test_due(spec: LayerSpec, key: str, state: State, layer: str) -> bool:
    """Whether `options.boot_test.enabled` makes this key boot before its human tags move.

    A key that already booted (a `boot-test` event in the state) is not
    booted again; a rootfs-only layer has no kernel to boot.
    """
    if not spec.boot_test.enabled or spec.rootfs_only:
        return False
    return not any(
        ev["key"] == key and ev["detail"].get("outcome") == "booted"
        for ev in state.events(layer, "boot-test")
    )


@dataclass
class Plan:
    root: Path
    graph: LayerGraph
    layers: dict[str, LayerPlan]  # node id -> plan, topological order
    keys: dict[str, LayerKey]  # node id -> key
    offline: bool = False

    def spec(self, node: str) -> LayerSpec:
        """The spec of a node (a layer, or one architecture of a multi-arch layer)."""
        lp = self.layers.get(node)
        return self.graph.spec(lp.spec_id if lp is not None else node)

    def nodes_of(self, layer: str) -> list[LayerPlan]:
        """Every architecture's node of a layer in this plan, in the spec's order."""
        return [lp for lp in self.layers.values() if lp.spec_id == layer]

    @property
    def pending(self) -> bool:
        return any(lp.pending for lp in self.layers.values())

    @property
    def unknown(self) -> list[LayerPlan]:
        """Layers whose inventory could not be read (their reasons name the failure)."""
        return [lp for lp in self.layers.values() if lp.action == Action.UNKNOWN]

    def counts(self) -> dict[str, int]:
        out = {a.value: 0 for a in Action}
        for lp in self.layers.values():
            out[lp.action.value] += 1
        return out

    def to_json(self) -> dict:
        return {
            "version": 1,
            "root": str(self.root),
            "offline": self.offline,
            "summary": self.counts(),
            "layers": [lp.to_json() for lp in self.layers.values()],
            "warnings": [d.to_dict() for d in self.graph.warnings + self.graph.project.warnings],
        }


# ---------------------------------------------------------------------- planning


def make_plan(
    lg: LayerGraph,
    state: State,
    inventory: Inventory,
    names: list[str] | None = None,
    *,
    force: set[str] | None = None,
    force_all: bool = False,
    upstream_of: Any = None,
    offline: bool = False,
    locked_digest: Callable[[str], str | None] | None = None,
    max_age: float | None = None,
    now: float | None = None,
    arches: list[Arch] | None = None,
    emulation_of: Callable[[Arch], Emulation] = emulation,
) -> Plan:
    """Decide, for every selected layer and its ancestors, what must happen and why.

    `upstream_of(spec)` gives the locked upstream fingerprints of a layer (the
    lock file), `locked_digest(ref)` an external parent's locked digest (asked
    before the registry: reproducible and offline), `max_age` (seconds) also
    rebuilds layers whose last build is older than that, `arches` narrows
    the plan to those architectures' nodes (`--arch`), `emulation_of(arch)`
    says whether this host can run a foreign arch's binaries (binfmt_misc):
    when not, that arch's builds are blocked with the command that fixes it.

    A layer builds one node per architecture (`options.arches`, else the
    host's): the host's keeps the layer id, another is `<layer>@<arch>`
    (`node_id`), each with its own key, reasons and tasks; a child's node
    builds from its parent's node of the same architecture.
    """
    forced = {lg.lookup(n) for n in (force or set())}
    # A forced layer is wanted even when the selection names only others.
    selected = lg.select([*names, *sorted(forced)] if names else None)
    order = lg.order(selected)
    now = time.time() if now is None else now

    def digest_of(ref: str, spec: LayerSpec) -> str | None:
        pinned = locked_digest(ref) if locked_digest else None
        return pinned or inventory.external_digest(ref, spec)

    prefetch = getattr(inventory, "prefetch", None)
    external = [
        (lg.parents[lid].ref, lg.spec(lid))
        for lid in order
        if lg.parents[lid].kind == "external" and not (locked_digest and locked_digest(lg.parents[lid].ref))
    ]
    if prefetch is not None and external:
        # External parents the lock file does not pin: their digests (key inputs) asked in parallel,
        # once per reference, before the keys are computed.
        prefetch([], external=external)
    host = host_arch()
    nodes, keys = node_keys(lg, order, digest_of, upstream_of, arches)
    digests = state.registry_digests()  # layer -> {digest: key}, from every registry publication
    if prefetch is not None:
        # Key tags are immutable: asked only where no publication recorded this key's digest.
        unrecorded = [
            (lg.spec(lid), key_tag(keys[nid].key))
            for nid, lid, _a in nodes
            if lg.spec(lid).publish_registry and keys[nid].key not in digests.get(nid, {}).values()
        ]
        prefetch([lg.spec(lid) for lid in order], unrecorded)
    records = state.layers()
    published = state.all_published()
    can_run = {a: emulation_of(a) for a in dict.fromkeys(a for _n, _l, a in nodes) if a != host}
    plans: dict[str, LayerPlan] = {}
    for nid, lid, arch in nodes:
        spec = lg.spec(lid)
        lk = keys[nid]
        link = lg.parents[lid]
        parent_node = node_id(link.layer, arch, host) if link.layer else None
        parent_plan = plans.get(parent_node) if parent_node else None
        rec = records.get(nid)
        layer_arches = lg.arches(lid)
        member = len(layer_arches) > 1  # one arch of an index: human registry tags are the index's
        reasons: list[Reason] = []
        notes: list[Reason] = []
        image_id: str | None = None
        source: str | None = None
        if link.kind == "external" and lk.parent.digest is None:
            notes.append(
                Reason(
                    ReasonCode.PARENT_DIGEST_UNKNOWN,
                    f"external parent {link.ref}: digest unknown ({'offline' if offline else 'registry did not answer'}); keyed by reference",
                )
            )
        elif link.kind == "external" and locked_digest and locked_digest(link.ref):
            notes.append(
                Reason(
                    ReasonCode.PARENT_LOCKED,
                    f"external parent {link.ref} pinned by the lock file to {lk.parent.digest}",
                )
            )
        if link.kind == "layer" and link.how == "name-tag":
            notes.append(
                Reason(
                    ReasonCode.PARENT_RESOLVED_BY_NAME,
                    f"parent '{link.ref}' resolved by name and tag to layer {link.layer}",
                )
            )

        tags = inventory.registry_tags(spec) if spec.publish_registry else None
        in_registry = tags is not None and tags.tags is not None and key_tag(lk.key) in tags.tags
        registry_unknown = tags is not None and tags.unknown and not offline

        build = False
        unknown: list[Reason] = []
        if force_all or lid in forced:
            build = True
            reasons.append(Reason(ReasonCode.FORCED, "forced rebuild"))
        elif parent_plan is not None and parent_plan.action == Action.BUILD:
            build = True
            reasons.append(
                Reason(
                    ReasonCode.PARENT_REBUILDS,
                    f"parent {parent_plan.spec_id} rebuilds",
                    {"parent": parent_plan.layer},
                )
            )
        elif (
            max_age is not None
            and rec is not None
            and rec.key == lk.key
            and rec.built_at is not None
            and now - rec.built_at > max_age
        ):
            # Same inputs, but old: packages from unlocked repositories may have moved on since.
            build = True
            reasons.append(
                Reason(
                    ReasonCode.TOO_OLD,
                    f"last built {format_age(now - rec.built_at)} ago, older than --max-age "
                    f"{format_duration(max_age)}",
                    {"built_at": rec.built_at, "max_age": max_age},
                )
            )
        else:
            by_rec = (
                inventory.local_image(rec.image_id, rec.image_ref)
                if rec is not None and rec.key == lk.key
                else ABSENT
            )
            by_key = inventory.local_image(None, local_key_ref(spec, lk.key))
            if by_rec.present:
                image_id, source = rec.image_id, "local"  # type: ignore[union-attr]
            elif by_key.present:
                # The state is only a cache: an image committed under this key is this key's image.
                image_id, source = local_key_ref(spec, lk.key), "local"
                if rec is None or rec.key != lk.key:
                    notes.append(
                        Reason(ReasonCode.FOUND_LOCALLY, "local storage already holds an image for this key")
                    )
            elif by_key.unknown or by_rec.unknown:
                unknown.append(_unknown("local storage", by_key.error or by_rec.error))
            elif in_registry:
                source = "registry"
                if rec is None or rec.key != lk.key:
                    notes.append(
                        Reason(
                            ReasonCode.BUILT_ELSEWHERE,
                            f"the registry already holds this key ({key_tag(lk.key)[:15]}...) in {spec.publish_registry}/{spec.name}",
                        )
                    )
            elif registry_unknown:
                # The registry may hold this key's image (built elsewhere): building now could be waste.
                unknown.append(_unknown(f"registry {spec.publish_registry}", tags.error))  # type: ignore[union-attr]
            elif rec is None:
                build = True
                reasons.append(Reason(ReasonCode.NEVER_BUILT, "never built"))
            elif rec.key != lk.key:
                build = True
                reasons.extend(diff_inputs(rec.inputs, lk.inputs, parent_plan))
            else:
                build = True
                reasons.append(
                    Reason(
                        ReasonCode.IMAGE_MISSING,
                        "image missing from local storage"
                        + (" and registry" if spec.publish_registry else ""),
                        {"image_id": rec.image_id},
                    )
                )

        publish: list[str] = []
        blocker = _blocker(link, lk, parent_plan, inventory, offline) if build else None
        if build and blocker is None and link.kind == "external" and len(layer_arches) > 1:
            blocker = _parent_lacks(link, spec, arch, inventory, offline)
        emu = can_run.get(arch)
        if build and blocker is None and emu is not None and not emu.usable:
            blocker = Reason(
                ReasonCode.NO_EMULATION,
                f"this {host} host cannot run {arch} binaries: {emu.problem}; run `{emu.fix}`",
                {"arch": str(arch), "fix": emu.fix},
            )
        missing = lg.project.unbuildable.get(lid)
        if missing:  # its spec pulls in files that do not exist (the errors say which)
            first = f"{missing[0].file}:{missing[0].line}"
            blocker = Reason(
                ReasonCode.SOURCE_MISSING,
                f"{len(missing)} file(s) it copies or runs do not exist (first at {first})",
                {"diagnostics": [d.to_dict() for d in missing]},
            )
        if unknown:
            reasons = unknown
            action = Action.UNKNOWN
        elif blocker is not None:
            # Say so now rather than fail at `buildah pull` in the night.
            reasons.insert(0, blocker)
            action = Action.BLOCKED
        elif build:
            publish = list(lk.targets)
            action = Action.BUILD
        else:
            check = _TargetCheck(spec, lk, nid, state, inventory, offline, image_id, digests.get(nid, {}))
            check.member, check.arch_suffix = member, local_tag_suffix(arch, host)
            check.artifact_spec = artifact_spec(spec, arch, layer_arches)
            pub_reasons, publish, pub_unknown = check.run(published.get(nid, {}), tags)
            if pub_unknown:
                reasons, publish, action = pub_unknown, [], Action.UNKNOWN
            else:
                reasons.extend(pub_reasons)
                action = Action.PUBLISH if publish else Action.UP_TO_DATE
                failed_boot = _failed_boot(spec, nid, lk.key, state) if publish else None
                if failed_boot is not None:
                    reasons.insert(0, failed_boot)
        tasks: list[Task] = []
        if action in (Action.BUILD, Action.PUBLISH):
            # The action's work as tasks (tasks.py): a child's build waits only for its parent's build.
            parent_builds = parent_plan is not None and parent_plan.action in (Action.BUILD, Action.BLOCKED)
            tasks = layer_tasks(
                nid,
                build=action == Action.BUILD,
                publish=publish,
                # boot_test.arches: which arches' nodes boot (default every one; a foreign one under TCG)
                boot_test=bool(publish)
                and (not spec.boot_test.arches or arch in spec.boot_test.arches)
                and boot_test_due(spec, lk.key, state, nid),
                parent_build=task_id(parent_node, TaskKind.BUILD) if parent_builds and parent_node else None,
                member=member,
                parent_push=_parent_push(spec, lg, link, parent_plan),
            )
            action = action_of(tasks)
        plans[nid] = LayerPlan(
            layer=nid,
            image_name=spec.name,
            file=str(spec.path),
            parent=link.describe(),
            parent_kind=link.kind,
            key=lk.key,
            publish_key=lk.publish_key,
            action=action,
            reasons=reasons,
            inputs=lk.inputs,
            targets=lk.targets,
            publish=publish,
            image_id=image_id,
            image_source=source,
            notes=notes,
            parent_layer=parent_node,
            tasks=tasks,
            spec_id=lid,
            arch=arch,
            arches=layer_arches,
        )
    multi = [lid for lid in order if len(lg.arches(lid)) > 1 and lg.spec(lid).publish_registry]
    left_out: dict[str, LayerKey] = {}
    if arches and multi:
        # `--arch` narrowed the run: the keys of the arches it left out, so that the index can still
        # be written when their key tags are in the registry already (built earlier or elsewhere).
        rest = [a for a in dict.fromkeys(a for lid in multi for a in lg.arches(lid)) if a not in arches]
        if rest:
            left_out = node_keys(lg, order, digest_of, upstream_of, rest)[1]
    for lid in multi:
        members = [lp for lp in plans.values() if lp.spec_id == lid]
        _plan_index(lid, members, lg, inventory, offline, left_out)
    return Plan(lg.project.root, lg, plans, keys, offline)


def _parent_push(spec: LayerSpec, lg: LayerGraph, link: Any, parent_plan: LayerPlan | None) -> str | None:
    """The parent's push task when it pushes in this run to the registry this layer pushes to."""
    if parent_plan is None or not spec.publish_registry or link.kind != "layer":
        return None
    push = next((t for t in parent_plan.tasks if t.kind == TaskKind.PUSH), None)
    if push is None:
        return None
    mine, theirs = target_repository(spec), target_repository(lg.spec(link.layer))
    return push.id if mine.registry == theirs.registry else None


def node_keys(
    lg: LayerGraph,
    order: list[str],
    digest_of: Any,
    upstream_of: Any,
    arches: list[Arch] | None = None,
) -> tuple[list[tuple[str, str, Arch]], dict[str, LayerKey]]:
    """The (node id, layer, arch) of `order`'s layers (narrowed to `arches`), and each node's key."""
    host = host_arch()
    wanted = set(arches) if arches else None
    nodes = [
        (node_id(lid, a, host), lid, a)
        for lid in order
        for a in lg.arches(lid)
        if wanted is None or a in wanted
    ]
    keys: dict[str, LayerKey] = {}
    for a in dict.fromkeys(a for _n, _l, a in nodes):
        # One pass per architecture: a child's arches are its parent's (graph.py), so ancestors are in.
        with_a = [lid for _n, lid, na in nodes if na == a]
        for lid, lk in compute_keys(lg, with_a, digest_of, upstream_of, arch=a).items():
            keys[node_id(lid, a, host)] = lk
    return nodes, keys


def artifact_spec(spec: LayerSpec, arch: Arch | None, arches: tuple[Arch, ...]) -> LayerSpec:
    """The spec as a multi-arch node's SquashFS, kernel and initramfs are published: per arch.

    Each tag gets an arch level: `<tag>/<arch>` (the `versioned` layout's
    `<prefix><name>/<tag>/<arch>/...`, the directory's `<name>/<tag>/<arch>/`),
    or `<tag>-<arch>` when the layer publishes to S3 in the `image-builder`
    layout (`<prefix><ID><VERSION_ID>-<name>-<tag>-<arch>`; a `publish_dir` of
    the same layer follows it). A single-arch layer's spec (`arches`) is returned as is.
    """
    if len(arches) < 2 or arch is None:
        return spec
    sep = "-" if spec.publish_s3 and spec.s3_layout == "image-builder" else "/"
    return dataclasses.replace(spec, publish_tags=tuple(f"{t}{sep}{arch}" for t in spec.publish_tags))


def local_tag_suffix(arch: Arch, host: Arch | None = None) -> str:
    """`publish_local` tags: `name:tag` for the host's architecture, `name:tag-<arch>` for another."""
    return "" if arch == (host or host_arch()) else f"-{arch}"


def _plan_index(
    lid: str,
    members: list[LayerPlan],
    lg: LayerGraph,
    inventory: Inventory,
    offline: bool,
    left_out: dict[str, LayerKey] | None = None,
) -> None:
    """The fan-in of a multi-arch layer: one `index` task on its first node, after every arch's push.

    Due when the index over today's member keys is not in the registry or a human
    tag points elsewhere; written only when no arch is blocked or unknown (a failed
    arch, at run time, blocks it too). An arch `--arch` left out (`left_out`: its
    node's key) counts when its key tag is in the registry; otherwise the index
    waits for it (`index-waits-for-arches`) and the human tags stay.
    """
    spec = lg.spec(lid)
    first = members[0]
    repo = f"{spec.publish_registry}/{spec.name}"
    keys = {str(m.arch): m.key for m in members if m.arch is not None}
    missing = [a for a in lg.arches(lid) if a not in {m.arch for m in members}]
    if missing:
        lacking = []
        tags = None if offline else inventory.registry_tags(spec)
        for a in missing:
            lk = (left_out or {}).get(node_id(lid, a))
            if lk is None or tags is None or tags.unknown or key_tag(lk.key) not in (tags.tags or ()):
                lacking.append(a)
            else:
                keys[str(a)] = lk.key
        if lacking:
            why = "unknown" if tags is None or tags.unknown else f"not in {repo}"
            first.notes.append(
                Reason(
                    IndexReason.WAITS_FOR_ARCHES,
                    f"index waits for {', '.join(lacking)} (--arch left it out; its key tag is {why}); human tags stay",
                    {"arches": [str(a) for a in lacking]},
                )
            )
            return
    stuck = [m for m in members if m.action in (Action.BLOCKED, Action.UNKNOWN)]
    if stuck:
        first.notes.append(
            Reason(
                IndexReason.WAITS,
                f"index not written: {', '.join(f'{m.arch} is {m.action}' for m in stuck)}; human tags stay",
            )
        )
        return
    keys = {a: keys[a] for a in map(str, lg.arches(lid))}  # the spec's order
    itag = index_tag(keys)
    pushes = [t.id for m in members for t in m.tasks if t.kind in (TaskKind.PUSH, TaskKind.BOOT_TEST)]
    reason: Reason | None = None
    if pushes:
        reason = Reason(IndexReason.DUE, f"index of {', '.join(keys)} follows the builds")
    elif not offline:
        tags = inventory.registry_tags(spec)
        if tags.unknown:
            first.reasons.insert(0, _unknown(f"registry {spec.publish_registry}", tags.error))
            return
        if itag not in (tags.tags or frozenset()):
            reason = Reason(IndexReason.MISSING, f"registry lacks the index of today's keys in {repo}")
        else:
            at = inventory.tag_digest(spec, itag)
            moved = []
            for t in spec.publish_tags:
                ans = inventory.tag_digest(spec, t)
                if ans.unknown or at.unknown:
                    first.reasons.insert(0, _unknown(f"registry tag {repo}:{t}", ans.error or at.error))
                    return
                if not ans.present or ans.holds != at.holds:
                    moved.append(t)
            if moved:
                reason = Reason(
                    IndexReason.MOVED, f"{', '.join(moved)} in {repo} not on the index of today's keys"
                )
    if reason is None:
        return
    first.tasks.append(Task(first.layer, TaskKind.INDEX, tuple(pushes), ("registry",)))
    first.index_members = keys
    first.reasons.append(reason)
    if "registry" not in first.publish:
        first.publish.append("registry")
    first.action = action_of(first.tasks)


def current_keys(
    lg: LayerGraph,
    inventory: Inventory,
    *,
    upstream_of: Any = None,
    locked_digest: Callable[[str], str | None] | None = None,
) -> dict[str, str]:
    """The key each node's spec gives today (what gc protects), computed as `make_plan` does."""

    def digest_of(ref: str, spec: LayerSpec) -> str | None:
        pinned = locked_digest(ref) if locked_digest else None
        return pinned or inventory.external_digest(ref, spec)

    return {nid: lk.key for nid, lk in node_keys(lg, lg.order(), digest_of, upstream_of)[1].items()}


def _unknown(what: str, error: str | None) -> Reason:
    return Reason(
        ReasonCode.INVENTORY_UNKNOWN,
        f"cannot tell what {what} holds: {error or 'no answer'}",
        {"inventory": what, "error": error or ""},
    )


def _failed_boot(spec: LayerSpec, lid: str, key: str, state: State) -> Reason | None:
    """Built but not booted: the newest boot test of this key failed (its human tags wait)."""
    if not spec.boot_test.enabled or spec.rootfs_only:
        return None
    for ev in state.events(lid, "boot-test"):
        if ev["key"] != key:
            continue
        if ev["detail"].get("outcome") == "booted":
            return None
        why = ev["detail"].get("reason") or ev["detail"].get("outcome") or "failed"
        return Reason(
            ReasonCode.BOOT_TEST_FAILED,
            f"boot-test failed (run {ev['run_id']}): {why}; built, not booted",
            {"run_id": ev["run_id"]},
        )
    return None


def _blocker(
    link: Any, lk: LayerKey, parent_plan: LayerPlan | None, inventory: Inventory, offline: bool
) -> Reason | None:
    """Why a layer that must build cannot: its parent is blocked or unknown, or its external parent is unobtainable."""
    if parent_plan is not None and parent_plan.action in (Action.BLOCKED, Action.UNKNOWN):
        return Reason(
            ReasonCode.PARENT_BLOCKED,
            f"parent {parent_plan.spec_id} is {parent_plan.action}",
            {"parent": parent_plan.layer},
        )
    if (
        link.kind == "external"
        and lk.parent.digest is None
        and not offline
        and not inventory.local_image(None, link.normalized or link.ref).present
    ):
        return Reason(
            ReasonCode.PARENT_UNAVAILABLE,
            f"external parent {link.ref} is not in local storage and its registry did not answer",
            {"parent": link.ref},
        )
    return None


def _parent_lacks(
    link: Any, spec: LayerSpec, arch: Arch, inventory: Inventory, offline: bool
) -> Reason | None:
    """A multi-arch layer's external parent must offer each arch (from its manifest list)."""
    ask = getattr(inventory, "external_platforms", None)
    offered = ask(link.normalized or link.ref, spec) if ask is not None and not offline else None
    if offered is None or f"linux/{arch.oci}" in offered:
        return None
    return Reason(
        ReasonCode.PARENT_LACKS_ARCH,
        f"external parent {link.ref} offers no linux/{arch.oci} image (it has {', '.join(sorted(offered))})",
        {"parent": link.ref, "arch": str(arch), "offered": sorted(offered)},
    )


def _short_key(key: str) -> str:
    return key[:12] + "…"


class _TargetCheck:
    """Every target of a layer whose image exists, compared by what it holds with the current key.

    Registry human tags by manifest digest (the key tag's digest comes from
    the state's publication records, else one HEAD), `publish_local` tags by
    image ID, S3 objects by the key in their metadata, directory tags by their
    manifest (key and SquashFS options). The state's records decide only what
    was not asked: registries and S3 with `--offline`.
    """

    def __init__(
        self,
        spec: LayerSpec,
        lk: LayerKey,
        lid: str,
        state: State,
        inventory: Inventory,
        offline: bool,
        image_id: str | None,
        digests: dict[str, str],
    ):
        self.spec, self.lk, self.lid, self.state = spec, lk, lid, state
        self.inventory, self.offline, self.image_id = inventory, offline, image_id
        self.digests = digests  # registry digest -> the key it was published for
        self.member = False  # one arch of a multi-arch layer: its human registry tags are the index's
        self.arch_suffix = ""  # publish_local tags of a foreign arch: name:tag-<arch>
        self.artifact_spec = spec  # S3 and directory tags of a multi-arch node (artifact_spec)
        self.unknown: list[Reason] = []
        self._built: dict[str, float] | None = None  # key -> when it was last built

    def describe_key(self, key: str | None) -> str:
        """`3f2a… (an older build)`: which build a target holds, as far as this state knows."""
        if not key:
            return "something imagegraph did not write"
        if self._built is None:
            self._built = {}
            for b in reversed(self.state.builds(self.lid, limit=100_000)):  # oldest first: newest wins
                self._built[b["key"]] = b["finished"] or 0.0
        if key not in self._built:
            return f"{_short_key(key)} (a build this state does not know)"
        mine = self._built.get(self.lk.key)
        if mine is None:  # this key was built elsewhere: no order to tell
            return f"{_short_key(key)} (another build)"
        return f"{_short_key(key)} ({'a later build' if self._built[key] > mine else 'an older build'})"

    def moved(self, target: str, where: str, held: str | None) -> Reason:
        return Reason(
            ReasonCode.TARGET_MOVED,
            f"{where} -> {self.describe_key(held)}, wants {_short_key(self.lk.key)}",
            {"target": target, "holds": held, "wants": self.lk.key},
        )

    def run(
        self, published: dict[str, PublishedRecord], tags: TagList | None
    ) -> tuple[list[Reason], list[str], list[Reason]]:
        reasons: list[Reason] = []
        todo: list[str] = []
        for target in self.lk.targets:
            rec = published.get(target)
            found = self.ask(target, tags)
            if found is None:  # not asked (offline): the records are all there is
                found = self.from_records(target, rec)
            if found:
                reasons.extend(found)
                todo.append(target)
        return reasons, todo, self.unknown

    def ask(self, target: str, tags: TagList | None) -> list[Reason] | None:
        """Why `target` does not hold the current key ([] when it does); None when not asked."""
        spec, key = self.spec, self.lk.key
        if target == "registry":
            if tags is None or (tags.unknown and self.offline):
                return None
            if tags.unknown:
                self.unknown.append(_unknown(f"registry {spec.publish_registry}", tags.error))
                return []
            return self.registry(tags.tags or frozenset())
        if target == "local":
            return self.local()
        if target == "s3" and self.offline:
            return None
        out: list[Reason] = []
        aspec = self.artifact_spec
        for tag, ans in self.inventory.artifacts(aspec, key, target).items():
            if ans.unknown:
                # S3 answers for a whole endpoint at once: one reason per bucket, not one per tag.
                what = (
                    f"s3 {redact(aspec.publish_s3 or '')}/{aspec.s3_bucket}"
                    if target == "s3"
                    else f"{target} {tag}"
                )
                if not any(u.detail.get("inventory") == what for u in self.unknown):
                    self.unknown.append(_unknown(what, ans.error))
            elif not ans.present:
                where = f"{target} {tag}"
                if ans.why:  # something is there, and it is not this key's publication
                    out.append(
                        Reason(
                            ReasonCode.TARGET_MOVED,
                            f"{where}: {ans.why}",
                            {"target": target, "holds": ans.holds, "wants": key},
                        )
                    )
                elif ans.holds:
                    out.append(self.moved(target, where, ans.holds))
                else:
                    out.append(Reason(ReasonCode.MISSING_REMOTE, f"published artifact missing from {where}"))
        return out

    def registry(self, tags: frozenset[str]) -> list[Reason]:
        spec, key = self.spec, self.lk.key
        repo = f"{spec.publish_registry}/{spec.name}"
        if self.member:  # the index (fan-in task) carries the human tags
            return (
                []
                if key_tag(key) in tags
                else [Reason(ReasonCode.MISSING_REMOTE, f"registry lacks key tag in {repo}")]
            )
        absent = [t for t in [*spec.publish_tags, key_tag(key)] if t not in tags]
        if absent:
            shown = ", ".join(a if not a.startswith("ig-") else "key tag" for a in absent)
            return [Reason(ReasonCode.MISSING_REMOTE, f"registry lacks {shown} in {repo}")]
        by_digest = self.digests
        mine = {d for d, k in by_digest.items() if k == key}
        out: list[Reason] = []
        kt: Answer | None = None
        for tag in spec.publish_tags:
            ans = self.inventory.tag_digest(spec, tag)
            if ans.unknown:
                self.unknown.append(_unknown(f"registry tag {repo}:{tag}", ans.error))
                continue
            if ans.holds in mine:
                continue
            # Not a digest recorded for this key: the key tag itself decides (one HEAD, only here).
            kt = kt or self.inventory.tag_digest(spec, key_tag(key))
            if kt.unknown:
                self.unknown.append(_unknown(f"registry tag {repo}:{key_tag(key)}", kt.error))
                continue
            if kt.present and kt.holds == ans.holds:
                mine.add(ans.holds or "")
                continue
            held = by_digest.get(ans.holds or "")
            where = f"{tag}"
            if held:
                out.append(self.moved("registry", where, held))
            else:
                out.append(
                    Reason(
                        ReasonCode.TARGET_MOVED,
                        f"{where} -> {(ans.holds or '')[:19]}… (not a digest this state recorded), "
                        f"wants {_short_key(key)}",
                        {"target": "registry", "holds": ans.holds, "wants": key},
                    )
                )
        return out

    def local(self) -> list[Reason]:
        spec, key = self.spec, self.lk.key
        inv = self.inventory
        # This key's image: committed here, or pulled from its registry key tag, or as recorded.
        mine = inv.local_image(None, local_key_ref(spec, key))
        if not mine.present and spec.publish_registry:
            mine = inv.local_image(None, f"{spec.publish_registry}/{spec.name}:{key_tag(key)}")
        if not mine.present and self.image_id:
            mine = inv.local_image(self.image_id)
        out: list[Reason] = []
        for tag in spec.publish_tags:
            ref = local_tag_ref(spec, tag + self.arch_suffix)
            ans = inv.local_image(None, ref)
            if ans.unknown:
                self.unknown.append(_unknown("local storage", ans.error))
            elif not ans.present:
                out.append(Reason(ReasonCode.MISSING_REMOTE, f"local storage lacks {ref}"))
            elif ans.holds is not None and (not mine.present or ans.holds != mine.holds):
                out.append(self.moved("local", ref, _key_of_image(inv, spec, ans.holds)))
        return out

    def from_records(self, target: str, rec: PublishedRecord | None) -> list[Reason]:
        want = self.lk.targets[target]
        if rec is None:
            return [Reason(ReasonCode.NOT_PUBLISHED, f"not yet published to {target}")]
        if rec.key != self.lk.key:
            return [self.moved(target, f"{target} (as recorded)", rec.key)]
        if rec.spec != want:
            return [
                Reason(
                    ReasonCode.TARGETS_CHANGED, f"{target} target changed: {_describe_change(rec.spec, want)}"
                )
            ]
        return []


def _key_of_image(inv: Inventory, spec: LayerSpec, image_id: str | None) -> str | None:
    """The layer key an image was committed under (its `localhost/imagegraph/<name>:ig-<key>` name)."""
    prefixes = [f"localhost/imagegraph/{spec.name}:{KEY_TAG_PREFIX}"]
    if spec.publish_registry:
        prefixes.append(f"{spec.publish_registry}/{spec.name}:{KEY_TAG_PREFIX}")  # pulled key tags
    for name in inv.local_names(image_id or ""):
        for prefix in prefixes:
            if name.startswith(prefix):
                return name[len(prefix) :]
    return None


def _describe_change(old: dict, new: dict) -> str:
    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            parts.append(f"{k} {_list_delta(a, b)}")
        else:
            parts.append(f"{k}: {a!r} -> {b!r}")
    return "; ".join(parts) or "changed"


def _list_delta(old: list, new: list) -> str:
    def show(x: Any) -> str:
        return x if isinstance(x, str) else json.dumps(x, sort_keys=True)

    olds, news = [show(x) for x in old], [show(x) for x in new]
    added = [x for x in news if x not in olds]
    removed = [x for x in olds if x not in news]
    bits = [f"+{x}" for x in added] + [f"-{x}" for x in removed]
    if not bits:
        return "reordered"
    return " ".join(bits)


# Inputs whose order matters (commands run in sequence): diffed position by position.
_ORDERED = {"cmds"}


def _indexed_delta(name: str, old: list, new: list) -> list[Reason]:
    """`cmds[0]: 'echo two' -> 'echo one'`, `cmds[2]: added 'x'`, `cmds[3]: removed 'y'`."""

    def show(x: Any) -> str:
        return repr(_short(x))

    out = []
    for i in range(max(len(old), len(new))):
        a = old[i] if i < len(old) else None
        b = new[i] if i < len(new) else None
        if a == b:
            continue
        if a is None:
            text = f"{name}[{i}]: added {show(b)}"
        elif b is None:
            text = f"{name}[{i}]: removed {show(a)}"
        else:
            text = f"{name}[{i}]: {show(a)} -> {show(b)}"
        out.append(Reason(ReasonCode.FIELD_CHANGED, text, {"field": name, "index": i}))
    return out


def diff_inputs(old: dict, new: dict, parent_plan: LayerPlan | None = None) -> list[Reason]:
    """Why a key changed: one reason per changed input, in words."""
    out: list[Reason] = []
    if old.get("format") != new.get("format"):
        return [
            Reason(
                ReasonCode.KEY_FORMAT,
                f"imagegraph key format changed ({old.get('format')} -> {new.get('format')})",
            )
        ]
    for field_name in sorted(set(old) | set(new)):
        a, b = old.get(field_name), new.get(field_name)
        if a == b or field_name == "format":
            continue
        if field_name == "parent":
            out.append(_parent_reason(a or {}, b or {}, parent_plan))
        elif field_name == "copyfiles":
            out.extend(_copyfiles_reasons(a or [], b or []))
        elif field_name == "repos":
            out.extend(_repos_reasons(a or [], b or []))
        elif field_name == "upstream" and ("packages" in (a or {})) != ("packages" in (b or {})):
            # A package set locked where fingerprints were, or the other way: one reason, not one per repo.
            if "packages" in (b or {}):
                out.append(Reason(ReasonCode.UPSTREAM_PACKAGE, "upstream: package set newly locked"))
            else:
                msg = "imagegraph.lock's package set no longer matches the spec: `up` or `imagegraph lock` re-resolves it"
                out.append(Reason(ReasonCode.UPSTREAM_STALE, msg))
        elif field_name == "upstream":
            for name in sorted(set(a or {}) | set(b or {})):
                if (
                    name == "packages"
                    and isinstance((a or {}).get(name), list)
                    and isinstance(b.get(name), list)
                ):
                    if a[name] == b[name]:
                        continue  # the set is the same: another upstream entry moved (modules)
                    out.extend(_package_reasons(a[name], b[name]))
                elif name == "modules" and (a or {}).get(name) != (b or {}).get(name):
                    from .lockfile import module_diff  # the dnf module streams its image has enabled

                    for d in module_diff((a or {}).get(name) or [], (b or {}).get(name) or []):
                        out.append(Reason(ReasonCode.UPSTREAM_PACKAGE, f"upstream: {d}", {"change": d}))
                elif (a or {}).get(name) != (b or {}).get(name):
                    out.append(_upstream_reason(name, (a or {}).get(name), (b or {}).get(name)))
        elif field_name == "backend":
            out.extend(_backend_reasons(a or {}, b or {}))
        elif field_name == "key_paths":
            out.extend(_path_reasons("key_paths", a or [], b or []))
        elif field_name == "ansible":
            for sub in sorted(set(a or {}) | set(b or {})):
                if (a or {}).get(sub) != (b or {}).get(sub):
                    out.append(
                        Reason(
                            ReasonCode.FIELD_CHANGED, f"ansible {sub} changed", {"field": f"ansible.{sub}"}
                        )
                    )
        elif field_name in _ORDERED and isinstance(a, list) and isinstance(b, list):
            out.extend(_indexed_delta(field_name, a, b))
        elif isinstance(a, list) and isinstance(b, list):
            out.append(
                Reason(ReasonCode.FIELD_CHANGED, f"{field_name}: {_list_delta(a, b)}", {"field": field_name})
            )
        elif isinstance(a, dict) and isinstance(b, dict):
            out.append(
                Reason(
                    ReasonCode.FIELD_CHANGED, f"{field_name}: {_describe_change(a, b)}", {"field": field_name}
                )
            )
        else:
            out.append(
                Reason(
                    ReasonCode.FIELD_CHANGED,
                    f"{field_name}: {_short(a)} -> {_short(b)}",
                    {"field": field_name},
                )
            )
    return out or [Reason(ReasonCode.KEY_CHANGED, "key inputs changed")]


def _backend_reasons(old: dict, new: dict) -> list[Reason]:
    """A build backend's version or defaults moved (build/backends.py), or its ansible project files."""
    name = new.get("name") or old.get("name")
    out = []
    for sub in sorted(set(old) | set(new)):
        a, b = old.get(sub), new.get(sub)
        if a == b:
            continue
        if sub == "version":
            msg = f"imagegraph's {name} build steps changed (backend version {a} -> {b})"
            out.append(Reason(ReasonCode.BACKEND_CHANGED, msg, {"backend": name, "old": a, "new": b}))
        elif sub == "project":
            out.extend(_path_reasons("ansible project", a or [], b or []))
        else:
            msg = f"{name} default {sub}: {_short(a)} -> {_short(b)}"
            out.append(Reason(ReasonCode.BACKEND_CHANGED, msg, {"backend": name, "field": sub}))
    return out


def _path_reasons(label: str, old: list, new: list) -> list[Reason]:
    """Per path of a [{path, content}] list: added, removed or changed."""
    old_by = {p["path"]: p["content"] for p in old}
    new_by = {p["path"]: p["content"] for p in new}
    out = []
    for path in sorted(set(old_by) | set(new_by)):
        if path not in old_by:
            out.append(Reason(ReasonCode.FILE_CHANGED, f"{label}: +{path}", {"path": path}))
        elif path not in new_by:
            out.append(Reason(ReasonCode.FILE_CHANGED, f"{label}: -{path}", {"path": path}))
        elif old_by[path] != new_by[path]:
            out.append(Reason(ReasonCode.FILE_CHANGED, f"{label} {path} changed", {"path": path}))
    return out or [Reason(ReasonCode.FIELD_CHANGED, f"{label} reordered", {"field": label})]


def _upstream_reason(name: str, old: str | None, new: str | None) -> Reason:
    """`repo:Rocky_9_BaseOS` -> "upstream repository Rocky_9_BaseOS changed" (or was locked, or unlocked)."""
    kind, _, what = name.partition(":")
    label = {"repo": "repository"}.get(kind, kind)
    if old is None:
        how = "newly locked"
    elif new is None:
        how = "no longer locked"
    else:
        how = "changed"
    return Reason(
        ReasonCode.UPSTREAM_CHANGED,
        f"upstream {label} {what or name} {how}",
        {"upstream": name, "old": old, "new": new},
    )


def _package_reasons(old: list[str], new: list[str]) -> list[Reason]:
    """A locked package set changed: `upstream: openssl 3.0.7-25.el9 -> 3.0.7-27.el9 (BaseOS)`."""
    from .lockfile import package_diff
    from .resolve import LockedPackage

    diff = package_diff([LockedPackage.parse(x) for x in old], [LockedPackage.parse(x) for x in new])
    return [
        Reason(ReasonCode.UPSTREAM_PACKAGE, f"upstream: {d}", {"change": d})
        for d in diff or ["locked package set reordered"]
    ]


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) < 60 else s[:57] + "..."


def _parent_reason(a: dict, b: dict, parent_plan: LayerPlan | None) -> Reason:
    if a.get("kind") != b.get("kind"):
        return Reason(ReasonCode.PARENT_CHANGED, f"parent changed from {a.get('kind')} to {b.get('kind')}")
    if b.get("kind") == "layer":
        name = parent_plan.spec_id if parent_plan else "layer"
        return Reason(
            ReasonCode.PARENT_CHANGED,
            f"parent {name} was rebuilt since this layer's last build",
            {"parent": name},
        )
    if b.get("kind") == "image":
        if a.get("digest") and b.get("digest"):
            return Reason(
                ReasonCode.PARENT_DIGEST_MOVED,
                f"external parent digest moved: {a['digest'][:19]} -> {b['digest'][:19]}",
                {"old": a["digest"], "new": b["digest"]},
            )
        return Reason(
            ReasonCode.PARENT_CHANGED,
            f"external parent changed: {a.get('ref') or a.get('digest')} -> {b.get('ref') or b.get('digest')}",
        )
    return Reason(ReasonCode.PARENT_CHANGED, "parent changed")


def _copyfiles_reasons(old: list, new: list) -> list[Reason]:
    out = []
    old_by = {c["dest"]: c for c in old}
    new_by = {c["dest"]: c for c in new}
    for dest, c in new_by.items():
        o = old_by.get(dest)
        if o is None:
            out.append(
                Reason(ReasonCode.FIELD_CHANGED, f"copyfiles: +{c['src']} -> {dest}", {"field": "copyfiles"})
            )
        elif o["content"] != c["content"] and o["src"] == c["src"]:
            out.append(
                Reason(
                    ReasonCode.FILE_CHANGED, f"copyfiles {c['src']} changed", {"src": c["src"], "dest": dest}
                )
            )
        elif o != c:
            out.append(
                Reason(ReasonCode.FIELD_CHANGED, f"copyfiles item for {dest} changed", {"field": "copyfiles"})
            )
    for dest, c in old_by.items():
        if dest not in new_by:
            out.append(
                Reason(ReasonCode.FIELD_CHANGED, f"copyfiles: -{c['src']} -> {dest}", {"field": "copyfiles"})
            )
    if not out:
        out.append(Reason(ReasonCode.FIELD_CHANGED, "copyfiles reordered", {"field": "copyfiles"}))
    return out


def _repos_reasons(old: list, new: list) -> list[Reason]:
    out = []
    old_by = {r["alias"]: r for r in old}
    new_by = {r["alias"]: r for r in new}
    for alias in new_by:
        if alias not in old_by:
            out.append(Reason(ReasonCode.FIELD_CHANGED, f"repos: +{alias}", {"field": "repos"}))
        elif old_by[alias] != new_by[alias]:
            out.append(
                Reason(
                    ReasonCode.FIELD_CHANGED,
                    f"repos {alias}: {_describe_change(old_by[alias], new_by[alias])}",
                    {"field": "repos"},
                )
            )
    for alias in old_by:
        if alias not in new_by:
            out.append(Reason(ReasonCode.FIELD_CHANGED, f"repos: -{alias}", {"field": "repos"}))
    return out or [Reason(ReasonCode.FIELD_CHANGED, "repos reordered", {"field": "repos"})]
