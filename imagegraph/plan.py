"""Project + state + what exists out there -> `Plan`: an action with reasons per layer.

Each selected layer gets one action:

- `build`: its key has no image (never built, inputs changed, parent
  rebuilds, image lost, forced);
- `publish`: the image for its key exists, but a publish target lacks it
  (a new tag or target, or an artifact deleted remotely);
- `up-to-date`: nothing to do;
- `blocked`: (in run results) an ancestor failed.

Reasons are typed (`Reason.code`) and computed by comparing the key inputs
stored with the last build against today's, so the plan can say
"packages: +vim" rather than "changed". The same Plan drives `plan`, `up`,
the JSON document and the logs, so the preview cannot disagree with the run.

What exists remotely comes from an `Inventory`: `LiveInventory` asks local
container storage (one `buildah images` call), the registries (one tag list
per repository) and S3 (one listing per prefix); tests use `StaticInventory`.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from .duration import format_age, format_duration
from .errors import RegistryTLSError
from .graph import LayerGraph
from .key import LayerKey, compute_keys, key_tag
from .spec import LayerSpec
from .state import PublishedRecord, State
from .tasks import Task, TaskKind, layer_tasks, task_id


class Action(StrEnum):
    BUILD = "build"
    PUBLISH = "publish"
    UP_TO_DATE = "up-to-date"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class Reason:
    code: str
    message: str
    detail: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict:
        return {
            "code": self.code,
            "message": self.message,
            **({"detail": self.detail} if self.detail else {}),
        }


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
    parent_layer: str | None = None
    tasks: list[Task] = field(default_factory=list)  # the work `up` schedules (tasks.py)

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
    layers: dict[str, LayerPlan]  # topological order
    keys: dict[str, LayerKey]
    offline: bool = False

    @property
    def pending(self) -> bool:
        return any(lp.pending for lp in self.layers.values())

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


# --------------------------------------------------------------------- inventory


class Inventory(Protocol):
    """What exists outside the state: local images, registry tags, S3 artifacts."""

    def local_image(self, image_id: str | None, ref: str | None = None) -> bool: ...

    def registry_tags(self, spec: LayerSpec) -> set[str] | None: ...

    def external_digest(self, ref: str, spec: LayerSpec) -> str | None: ...

    def artifacts_present(self, spec: LayerSpec, key: str, target: str) -> bool | None: ...


@dataclass
class StaticInventory:
    """An inventory given as data (tests, `--offline` with nothing known)."""

    images: set[str] = field(default_factory=set)  # image IDs and refs present locally
    tags: dict[str, set[str]] = field(default_factory=dict)  # repository -> tags
    digests: dict[str, str] = field(default_factory=dict)
    artifacts: dict[tuple[str, str], bool] = field(
        default_factory=dict
    )  # (layer image name, target) -> present
    reachable: bool = True

    def local_image(self, image_id: str | None, ref: str | None = None) -> bool:
        return bool((image_id and image_id in self.images) or (ref and ref in self.images))

    def registry_tags(self, spec: LayerSpec) -> set[str] | None:
        if not self.reachable or not spec.publish_registry:
            return None
        return set(self.tags.get(f"{spec.publish_registry}/{spec.name}", set()))

    def external_digest(self, ref: str, spec: LayerSpec) -> str | None:
        return self.digests.get(ref) if self.reachable else None

    def artifacts_present(self, spec: LayerSpec, key: str, target: str) -> bool | None:
        return self.artifacts.get((spec.name, target))


class LiveInventory:
    """Asks the real world, cheaply: one process for local images, one request per repository."""

    def __init__(self, offline: bool = False, timeout: float = 5.0):
        self.offline = offline
        self.timeout = timeout  # seconds to connect, and again to read an answer
        self._images: set[str] | None = None
        self._registry = None
        self._s3 = None
        self.unreachable: set[str] = set()
        self._digests: dict[str, str | None] = {}  # external parent reference -> digest, once per run

    def _local(self) -> set[str]:
        if self._images is None:
            self._images = set()
            try:
                out = subprocess.run(
                    ["buildah", "images", "--json"], capture_output=True, text=True, timeout=120, check=False
                ).stdout
                for img in json.loads(out or "[]") or []:
                    self._images.add(img.get("id", ""))
                    for n in img.get("names") or []:
                        self._images.add(n)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        return self._images

    def local_image(self, image_id: str | None, ref: str | None = None) -> bool:
        imgs = self._local()
        return bool((image_id and image_id in imgs) or (ref and ref in imgs))

    def registry(self):
        if self._registry is None:
            from .publish.registry import RegistryClient, RetryPolicy

            # Planning must stay fast when a registry is down: a short retry, then "did not answer".
            # A registry that accepts connections and never answers costs one timeout, not one
            # per retry and scheme; the CLI says once per registry what did not answer.
            policy = RetryPolicy.from_env()
            self._registry = RegistryClient(
                retry=RetryPolicy(attempts=min(policy.attempts, 2), initial_wait=0.2, max_wait=0.5),
                timeout=(self.timeout, self.timeout),
                retry_timeouts=False,
                warn_unreachable=False,
            )
        return self._registry

    def registries_of(self, specs: list[LayerSpec]) -> dict[str, int]:
        """The registries `prefetch` asks, with how many repositories each (for a status line)."""
        if self.offline:
            return {}
        from .publish.registry import target_repository

        repos: dict[str, set[str]] = {}
        for spec in specs:
            if spec.publish_registry:
                ref = target_repository(spec)
                repos.setdefault(ref.registry, set()).add(ref.name)
        return {host: len(names) for host, names in repos.items()}

    def registry_problems(self) -> dict[str, str]:
        """Why each registry host that did not answer did not: host -> reason."""
        return self._registry.down_reasons() if self._registry is not None else {}

    def prefetch(
        self, specs: list[LayerSpec], workers: int = 16, external: Iterable[tuple[str, LayerSpec]] = ()
    ) -> None:
        """Ask every registry repository the plan needs at once, in parallel, before planning.

        One tag list per repository either way; in parallel a 1,000-layer no-op
        plan is not 1,000 sequential round trips. The answers land in the
        client's cache, which `registry_tags` then reads. `external` (reference,
        spec) pairs are the external parents' digests, asked in the same pool,
        once per reference.
        """
        if self.offline:
            return
        from concurrent.futures import ThreadPoolExecutor

        from .publish.registry import TLSVerifyError, target_repository

        client = self.registry()
        repos = []
        for spec in specs:
            if spec.publish_registry:
                client.configure_for(spec)
                repos.append(target_repository(spec).name)
        users: dict[str, list[LayerSpec]] = {}
        for spec, repo in zip([s for s in specs if s.publish_registry], repos, strict=True):
            users.setdefault(repo, []).append(spec)
        refs: dict[str, None] = {}
        for ref, spec in external:
            if ref not in self._digests and ref not in refs:
                client.configure_for(spec)
                refs[ref] = None
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch") as pool:
            local = pool.submit(self._local)
            digests = {ref: pool.submit(client.manifest_digest, ref) for ref in refs}
            futures = {repo: pool.submit(client.tags, repo) for repo in users}
            tls: dict[str, tuple[str, list[LayerSpec]]] = {}
            for repo, fut in futures.items():
                try:
                    fut.result()
                except TLSVerifyError as exc:
                    reason, affected = tls.setdefault(exc.host, (exc.reason, []))
                    affected.extend(users[repo])
            for ref, fut in digests.items():
                try:
                    self._digests[ref] = fut.result()
                except TLSVerifyError:
                    pass  # external_digest asks again and names the spec that wants it
            local.result()
        if tls:
            raise RegistryTLSError(
                [
                    (host, reason, [str(s.path) for s in affected], "registry_opts_push")
                    for host, (reason, affected) in tls.items()
                ]
            )

    def registry_tags(self, spec: LayerSpec) -> set[str] | None:
        if self.offline or not spec.publish_registry:
            return None
        from .publish.registry import target_repository

        client = self.registry()
        client.configure_for(spec)
        tags = client.tags(target_repository(spec).name)
        if tags is None:
            self.unreachable.add(spec.publish_registry)
        return tags

    def external_digest(self, ref: str, spec: LayerSpec) -> str | None:
        if self.offline:
            return None
        if ref not in self._digests:  # children of one external parent ask once
            from .publish.registry import TLSVerifyError

            client = self.registry()
            client.configure_for(spec)
            try:
                self._digests[ref] = client.manifest_digest(ref)
            except TLSVerifyError as exc:
                raise RegistryTLSError(
                    [(exc.host, exc.reason, [str(spec.path)], "registry_opts_pull")]
                ) from exc
        return self._digests[ref]

    def artifacts_present(self, spec: LayerSpec, key: str, target: str) -> bool | None:
        if target == "dir":
            from .publish.artifacts import dir_artifacts_present

            return dir_artifacts_present(spec, key)
        if self.offline:
            return None
        if self._s3 is None:
            from .publish.s3 import S3Index

            self._s3 = S3Index()
        return self._s3.has_artifacts(spec, key)


def local_key_ref(spec: LayerSpec, key: str) -> str:
    """Where a build of `key` is committed in local container storage."""
    return f"localhost/imagegraph/{spec.name}:{key_tag(key)}"


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
) -> Plan:
    """Decide, for every selected layer and its ancestors, what must happen and why.

    `upstream_of(spec)` gives the locked upstream fingerprints of a layer (the
    lock file), `locked_digest(ref)` an external parent's locked digest (asked
    before the registry: reproducible and offline), `max_age` (seconds) also
    rebuilds layers whose last build is older than that.
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
    if prefetch is not None:
        # External parents the lock file does not pin are asked alongside the tag lists.
        external = [
            (lg.parents[lid].ref, lg.spec(lid))
            for lid in order
            if lg.parents[lid].kind == "external"
            and not (locked_digest and locked_digest(lg.parents[lid].ref))
        ]
        prefetch([lg.spec(lid) for lid in order], external=external)
    keys = compute_keys(lg, order, digest_of, upstream_of)
    records = state.layers()
    published = state.all_published()
    plans: dict[str, LayerPlan] = {}
    for lid in order:
        spec = lg.spec(lid)
        lk = keys[lid]
        link = lg.parents[lid]
        parent_plan = plans.get(link.layer) if link.layer else None
        rec = records.get(lid)
        reasons: list[Reason] = []
        notes: list[Reason] = []
        image_id: str | None = None
        source: str | None = None
        if link.kind == "external" and lk.parent.digest is None:
            notes.append(
                Reason(
                    "parent-digest-unknown",
                    f"external parent {link.ref}: digest unknown ({'offline' if offline else 'registry did not answer'}); keyed by reference",
                )
            )
        elif link.kind == "external" and locked_digest and locked_digest(link.ref):
            notes.append(
                Reason(
                    "parent-locked",
                    f"external parent {link.ref} pinned by the lock file to {lk.parent.digest}",
                )
            )
        if link.kind == "layer" and link.how == "name-tag":
            notes.append(
                Reason(
                    "parent-resolved-by-name",
                    f"parent '{link.ref}' resolved by name and tag to layer {link.layer}",
                )
            )

        tags = inventory.registry_tags(spec) if spec.publish_registry else None
        in_registry = tags is not None and key_tag(lk.key) in tags
        if spec.publish_registry and tags is None and not offline:
            notes.append(
                Reason(
                    "registry-unreachable",
                    f"registry {spec.publish_registry} did not answer; what is published there is taken from local records",
                )
            )

        build = False
        if force_all or lid in forced:
            build = True
            reasons.append(Reason("forced", "forced rebuild"))
        elif parent_plan is not None and parent_plan.action == Action.BUILD:
            build = True
            reasons.append(
                Reason(
                    "parent-rebuilds", f"parent {parent_plan.layer} rebuilds", {"parent": parent_plan.layer}
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
                    "too-old",
                    f"last built {format_age(now - rec.built_at)} ago, older than --max-age "
                    f"{format_duration(max_age)}",
                    {"built_at": rec.built_at, "max_age": max_age},
                )
            )
        elif rec is not None and rec.key == lk.key and inventory.local_image(rec.image_id, rec.image_ref):
            image_id, source = rec.image_id, "local"
        elif inventory.local_image(None, local_key_ref(spec, lk.key)):
            # The state is only a cache: an image committed under this key is this key's image.
            image_id, source = local_key_ref(spec, lk.key), "local"
            if rec is None or rec.key != lk.key:
                notes.append(Reason("found-locally", "local storage already holds an image for this key"))
        elif in_registry:
            source = "registry"
            if rec is None or rec.key != lk.key:
                notes.append(
                    Reason(
                        "built-elsewhere",
                        f"the registry already holds this key ({key_tag(lk.key)[:15]}...) in {spec.publish_registry}/{spec.name}",
                    )
                )
        elif rec is None:
            build = True
            reasons.append(Reason("never-built", "never built"))
        elif rec.key != lk.key:
            build = True
            reasons.extend(diff_inputs(rec.inputs, lk.inputs, parent_plan))
        else:
            build = True
            reasons.append(
                Reason(
                    "image-missing",
                    "image missing from local storage" + (" and registry" if spec.publish_registry else ""),
                    {"image_id": rec.image_id},
                )
            )

        publish: list[str] = []
        blocker = _blocker(link, lk, parent_plan, inventory, offline) if build else None
        missing = lg.project.unbuildable.get(lid)
        if missing:  # its spec pulls in files that do not exist (the errors say which)
            first = f"{missing[0].file}:{missing[0].line}"
            blocker = Reason(
                "source-missing",
                f"{len(missing)} file(s) it copies or runs do not exist (first at {first})",
                {"diagnostics": [d.to_dict() for d in missing]},
            )
        if blocker is not None:
            # Say so now rather than fail at `buildah pull` in the night.
            reasons.insert(0, blocker)
        elif build:
            publish = list(lk.targets)
        else:
            pub_reasons, publish = _publish_reasons(spec, lk, published.get(lid, {}), tags, inventory)
            reasons.extend(pub_reasons)
        parent_builds = parent_plan is not None and parent_plan.action in (Action.BUILD, Action.BLOCKED)
        tasks = layer_tasks(
            lid,
            build=build,
            publish=publish,
            boot_test=bool(publish) and boot_test_due(spec, lk.key, state, lid),
            parent_build=task_id(link.layer, TaskKind.BUILD) if parent_builds and link.layer else None,
        )
        action = Action.BLOCKED if blocker is not None else action_of(tasks)
        plans[lid] = LayerPlan(
            layer=lid,
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
            parent_layer=link.layer,
            tasks=tasks,
        )
    return Plan(lg.project.root, lg, plans, keys, offline)


def _blocker(
    link: Any, lk: LayerKey, parent_plan: LayerPlan | None, inventory: Inventory, offline: bool
) -> Reason | None:
    """Why a layer that must build cannot: its parent is blocked, or its external parent is unobtainable."""
    if parent_plan is not None and parent_plan.action == Action.BLOCKED:
        return Reason(
            "parent-blocked", f"parent {parent_plan.layer} is blocked", {"parent": parent_plan.layer}
        )
    if (
        link.kind == "external"
        and lk.parent.digest is None
        and not offline
        and not inventory.local_image(None, link.normalized or link.ref)
    ):
        return Reason(
            "parent-unavailable",
            f"external parent {link.ref} is not in local storage and its registry did not answer",
            {"parent": link.ref},
        )
    return None


def _publish_reasons(
    spec: LayerSpec,
    lk: LayerKey,
    published: dict[str, PublishedRecord],
    tags: set[str] | None,
    inventory: Inventory,
) -> tuple[list[Reason], list[str]]:
    reasons: list[Reason] = []
    todo: list[str] = []
    for target, want in lk.targets.items():
        rec = published.get(target)
        missing: Reason | None = None
        if target == "registry" and tags is not None:
            # The registry itself is the truth: every tag, and the key tag, must be there.
            absent = [t for t in [*spec.publish_tags, key_tag(lk.key)] if t not in tags]
            if absent:
                shown = ", ".join(a if not a.startswith("ig-") else "key tag" for a in absent)
                missing = Reason(
                    "missing-remote", f"registry lacks {shown} in {spec.publish_registry}/{spec.name}"
                )
            elif rec is None or rec.key != lk.key or rec.spec != want:
                missing = None  # present remotely (perhaps pushed by another machine)
        elif rec is None:
            missing = Reason("not-published", f"not yet published to {target}")
        elif rec.key != lk.key:
            missing = Reason("not-published", f"this build is not yet published to {target}")
        elif rec.spec != want:
            missing = Reason(
                "targets-changed", f"{target} target changed: {_describe_change(rec.spec, want)}"
            )
        else:
            present = None
            if target in ("s3", "dir"):
                present = inventory.artifacts_present(spec, lk.key, target)
            elif target == "local":
                present = all(
                    inventory.local_image(None, f"localhost/{spec.name}:{t}") for t in spec.publish_tags
                )
            if present is False:
                missing = Reason("missing-remote", f"published artifact missing from {target}")
        if target == "registry" and tags is None and missing is None:
            if rec is None or rec.key != lk.key:
                missing = Reason("not-published", "not yet published to registry")
            elif rec.spec != want:
                missing = Reason(
                    "targets-changed", f"registry target changed: {_describe_change(rec.spec, want)}"
                )
        if missing is not None:
            reasons.append(missing)
            todo.append(target)
    return reasons, todo


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
        out.append(Reason("field-changed", text, {"field": name, "index": i}))
    return out


def diff_inputs(old: dict, new: dict, parent_plan: LayerPlan | None = None) -> list[Reason]:
    """Why a key changed: one reason per changed input, in words."""
    out: list[Reason] = []
    if old.get("format") != new.get("format"):
        return [
            Reason(
                "key-format", f"imagegraph key format changed ({old.get('format')} -> {new.get('format')})"
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
        elif field_name == "upstream":
            for name in sorted(set(a or {}) | set(b or {})):
                if (a or {}).get(name) != (b or {}).get(name):
                    out.append(_upstream_reason(name, (a or {}).get(name), (b or {}).get(name)))
        elif field_name == "backend":
            out.extend(_backend_reasons(a or {}, b or {}))
        elif field_name == "key_paths":
            out.extend(_path_reasons("key_paths", a or [], b or []))
        elif field_name == "ansible":
            for sub in sorted(set(a or {}) | set(b or {})):
                if (a or {}).get(sub) != (b or {}).get(sub):
                    out.append(Reason("field-changed", f"ansible {sub} changed", {"field": f"ansible.{sub}"}))
        elif field_name in _ORDERED and isinstance(a, list) and isinstance(b, list):
            out.extend(_indexed_delta(field_name, a, b))
        elif isinstance(a, list) and isinstance(b, list):
            out.append(Reason("field-changed", f"{field_name}: {_list_delta(a, b)}", {"field": field_name}))
        elif isinstance(a, dict) and isinstance(b, dict):
            out.append(
                Reason("field-changed", f"{field_name}: {_describe_change(a, b)}", {"field": field_name})
            )
        else:
            out.append(
                Reason("field-changed", f"{field_name}: {_short(a)} -> {_short(b)}", {"field": field_name})
            )
    return out or [Reason("key-changed", "key inputs changed")]


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
            out.append(Reason("backend-changed", msg, {"backend": name, "old": a, "new": b}))
        elif sub == "project":
            out.extend(_path_reasons("ansible project", a or [], b or []))
        else:
            msg = f"{name} default {sub}: {_short(a)} -> {_short(b)}"
            out.append(Reason("backend-changed", msg, {"backend": name, "field": sub}))
    return out


def _path_reasons(label: str, old: list, new: list) -> list[Reason]:
    """Per path of a [{path, content}] list: added, removed or changed."""
    old_by = {p["path"]: p["content"] for p in old}
    new_by = {p["path"]: p["content"] for p in new}
    out = []
    for path in sorted(set(old_by) | set(new_by)):
        if path not in old_by:
            out.append(Reason("file-changed", f"{label}: +{path}", {"path": path}))
        elif path not in new_by:
            out.append(Reason("file-changed", f"{label}: -{path}", {"path": path}))
        elif old_by[path] != new_by[path]:
            out.append(Reason("file-changed", f"{label} {path} changed", {"path": path}))
    return out or [Reason("field-changed", f"{label} reordered", {"field": label})]


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
        "upstream-changed",
        f"upstream {label} {what or name} {how}",
        {"upstream": name, "old": old, "new": new},
    )


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) < 60 else s[:57] + "..."


def _parent_reason(a: dict, b: dict, parent_plan: LayerPlan | None) -> Reason:
    if a.get("kind") != b.get("kind"):
        return Reason("parent-changed", f"parent changed from {a.get('kind')} to {b.get('kind')}")
    if b.get("kind") == "layer":
        name = parent_plan.layer if parent_plan else "layer"
        return Reason(
            "parent-changed", f"parent {name} was rebuilt since this layer's last build", {"parent": name}
        )
    if b.get("kind") == "image":
        if a.get("digest") and b.get("digest"):
            return Reason(
                "parent-digest-moved",
                f"external parent digest moved: {a['digest'][:19]} -> {b['digest'][:19]}",
                {"old": a["digest"], "new": b["digest"]},
            )
        return Reason(
            "parent-changed",
            f"external parent changed: {a.get('ref') or a.get('digest')} -> {b.get('ref') or b.get('digest')}",
        )
    return Reason("parent-changed", "parent changed")


def _copyfiles_reasons(old: list, new: list) -> list[Reason]:
    out = []
    old_by = {c["dest"]: c for c in old}
    new_by = {c["dest"]: c for c in new}
    for dest, c in new_by.items():
        o = old_by.get(dest)
        if o is None:
            out.append(Reason("field-changed", f"copyfiles: +{c['src']} -> {dest}", {"field": "copyfiles"}))
        elif o["content"] != c["content"] and o["src"] == c["src"]:
            out.append(
                Reason("file-changed", f"copyfiles {c['src']} changed", {"src": c["src"], "dest": dest})
            )
        elif o != c:
            out.append(Reason("field-changed", f"copyfiles item for {dest} changed", {"field": "copyfiles"}))
    for dest, c in old_by.items():
        if dest not in new_by:
            out.append(Reason("field-changed", f"copyfiles: -{c['src']} -> {dest}", {"field": "copyfiles"}))
    if not out:
        out.append(Reason("field-changed", "copyfiles reordered", {"field": "copyfiles"}))
    return out


def _repos_reasons(old: list, new: list) -> list[Reason]:
    out = []
    old_by = {r["alias"]: r for r in old}
    new_by = {r["alias"]: r for r in new}
    for alias in new_by:
        if alias not in old_by:
            out.append(Reason("field-changed", f"repos: +{alias}", {"field": "repos"}))
        elif old_by[alias] != new_by[alias]:
            out.append(
                Reason(
                    "field-changed",
                    f"repos {alias}: {_describe_change(old_by[alias], new_by[alias])}",
                    {"field": "repos"},
                )
            )
    for alias in old_by:
        if alias not in new_by:
            out.append(Reason("field-changed", f"repos: -{alias}", {"field": "repos"}))
    return out or [Reason("field-changed", "repos reordered", {"field": "repos"})]
