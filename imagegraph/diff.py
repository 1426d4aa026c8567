"""What changed between two builds of a layer: the package diff of their inventories.

`diff_inventories(old, new)` pairs packages by (name, arch) and says which were
added, removed, upgraded or downgraded, in the version order of the package
format (`versions.version_cmp`: rpm's for rpm, dpkg's for deb); unchanged
packages are left out. A name installed in several versions (install-only
kernels) pairs its one left-over old version with its one left-over new
version; otherwise the left-overs are added and removed.

`layer_diff(state, layer, from_key, to_key)` diffs two keys' recorded
inventories (`State.inventory_blob`); a key without one gives a diff of
status `unknown` with the reason, never an empty one. `resolve_ref` turns
what a user types (a key, a key prefix, `ig-<key>`, a human tag) into a key
of the layer; `default_keys` picks FROM and TO when they are not given.

Each takes an optional `remote` (a `RemoteSource`: publish/sbomfetch.py's
`RemoteBuilds`) for what this host's state does not know: a key's inventory
from the SBOM published with it, the key a human tag holds on the registry,
the keys the registry has key tags for. So a host that never built the layer
answers from the published SBOMs; what the targets cannot tell stays unknown.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cmp_to_key
from typing import Any, Protocol

from .errors import NotBuiltError, UsageError
from .key import KEY_TAG_PREFIX, key_tag
from .packages import Inventory, InventoryStatus
from .state import State
from .versions import version_cmp


class ChangeKind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"


KINDS = tuple(ChangeKind)


class RemoteSource(Protocol):
    """What a layer's publish targets say about builds the state does not know."""

    def inventory(self, layer: str, spec: Any, key: str) -> Inventory: ...

    def tag_key(self, spec: Any, tag: str) -> Any: ...  # `.value` the key or None, `.unknown` why not asked

    def keys(self, spec: Any) -> set[str] | None: ...  # keys with a key tag on the registry; None unknown


@dataclass(frozen=True)
class PackageChange:
    kind: ChangeKind
    name: str
    arch: str
    old: str | None  # version before (None when added)
    new: str | None  # version after (None when removed)

    def to_json(self) -> dict:
        return {
            "kind": str(self.kind),
            "name": self.name,
            "arch": self.arch,
            "old": self.old,
            "new": self.new,
        }

    def words(self) -> str:
        """`ig-hello 1.0-1 → 1.1-1`, `+ig-new 1.0-1`, `-ig-extra 1.0-1`."""
        if self.kind == ChangeKind.ADDED:
            return f"+{self.name} {self.new}"
        if self.kind == ChangeKind.REMOVED:
            return f"-{self.name} {self.old}"
        return f"{self.name} {self.old} → {self.new}"


@dataclass
class PackageDiff:
    layer: str
    from_key: str | None
    to_key: str
    status: InventoryStatus = InventoryStatus.KNOWN
    format: str | None = None
    changes: list[PackageChange] = field(default_factory=list)
    reason: str = ""  # why the diff is unknown
    from_label: str = ""  # how FROM was named (a tag, "previous build"), for rendering
    to_label: str = ""

    def counts(self) -> dict[str, int]:
        return {str(k): sum(1 for c in self.changes if c.kind == k) for k in KINDS}

    def summary(self) -> str:
        """`1 added, 0 removed, 1 upgraded, 0 downgraded` (or why it is unknown)."""
        if self.status != InventoryStatus.KNOWN:
            return f"package changes unknown: {self.reason}"
        return ", ".join(f"{n} {k}" for k, n in self.counts().items())

    def brief(self, limit: int = 8) -> str:
        """One line for a report: `ig-hello 1.0-1 → 1.1-1, +ig-new 1.0-1` (`no package changes`)."""
        if self.status != InventoryStatus.KNOWN:
            return "unknown"
        if self.from_key is None:
            n = len(self.changes)
            return f"first build: {n} package{'' if n == 1 else 's'}"
        if not self.changes:
            return "no package changes"
        words = [c.words() for c in self.changes[:limit]]
        if len(self.changes) > limit:
            words.append(f"and {len(self.changes) - limit} more")
        return ", ".join(words)

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "from": self.from_key,
            "to": self.to_key,
            "from_label": self.from_label,
            "to_label": self.to_label,
            "status": str(self.status),
            "format": self.format,
            "reason": self.reason,
            "counts": self.counts(),
            "summary": self.summary(),
            "changes": [c.to_json() for c in self.changes],
        }


def diff_inventories(old: Inventory, new: Inventory) -> list[PackageChange]:
    """Changes from `old` to `new` (both known), sorted by name and arch (module docstring)."""
    fmt = str(new.format or old.format or "rpm")
    order = cmp_to_key(lambda a, b: version_cmp(fmt, a, b))

    def group(inv: Inventory) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = defaultdict(list)
        for p in inv.packages:
            out[p.ident].append(p.version)
        return out

    before, after = group(old), group(new)
    changes: list[PackageChange] = []
    for ident in sorted(set(before) | set(after)):
        name, arch = ident
        olds, news = before.get(ident, []), after.get(ident, [])
        gone = sorted((v for v in olds if not any(version_cmp(fmt, v, n) == 0 for n in news)), key=order)
        came = sorted((v for v in news if not any(version_cmp(fmt, v, o) == 0 for o in olds)), key=order)
        if len(gone) == 1 and len(came) == 1:
            kind = ChangeKind.UPGRADED if version_cmp(fmt, came[0], gone[0]) > 0 else ChangeKind.DOWNGRADED
            changes.append(PackageChange(kind, name, arch, gone[0], came[0]))
            continue
        changes += [PackageChange(ChangeKind.REMOVED, name, arch, v, None) for v in gone]
        changes += [PackageChange(ChangeKind.ADDED, name, arch, None, v) for v in came]
    return changes


def inventory_of(state: State, key: str) -> Inventory | None:
    blob = state.inventory_blob(key)
    return Inventory.decompress(blob) if blob is not None else None


def _inventory(
    state: State, layer: str, spec: Any, key: str, remote: RemoteSource | None
) -> Inventory | None:
    inv = inventory_of(state, key)
    if inv is None and remote is not None and spec is not None:
        inv = remote.inventory(layer, spec, key)
    return inv


def layer_diff(
    state: State,
    layer: str,
    from_key: str | None,
    to_key: str,
    *,
    from_label: str = "",
    to_label: str = "",
    spec: Any = None,
    remote: RemoteSource | None = None,
) -> PackageDiff:
    """The package diff between two keys of `layer` from their recorded (else published) inventories."""
    out = PackageDiff(layer, from_key, to_key, from_label=from_label, to_label=to_label)
    new = _inventory(state, layer, spec, to_key, remote)
    old = (
        _inventory(state, layer, spec, from_key, remote)
        if from_key
        else Inventory(InventoryStatus.KNOWN, new.format if new else None)
    )
    for which, k, inv in (("FROM", from_key, old), ("TO", to_key, new)):
        if inv is None or not inv.known:
            out.status = InventoryStatus.UNKNOWN
            why = (
                inv.reason
                if inv is not None
                else "no inventory recorded (built before imagegraph read them?)"
            )
            out.reason = f"{which} key {(k or '')[:12]}: {why}"
            return out
    assert old is not None and new is not None
    out.format = str(new.format) if new.format else None
    out.changes = diff_inventories(old, new)
    return out


def package_count(state: State, layer: str, spec: Any, key: str, remote: RemoteSource | None = None) -> Any:
    """How many packages the build of `key` holds: an int, or None when its inventory is unknown."""
    inv = _inventory(state, layer, spec, key, remote)
    return len(inv.packages) if inv is not None and inv.known else None


# ------------------------------------------------------------------ naming keys


def layer_keys(state: State, layer: str) -> list[str]:
    """Keys of the layer's successful builds, newest first (the current record first)."""
    keys = [b["key"] for b in state.builds(layer, limit=10000) if b["status"] == "ok"]
    rec = state.layer(layer)
    if rec is not None:
        keys.insert(0, rec.key)
    return list(dict.fromkeys(keys))


def tag_keys(state: State, layer: str, spec: Any) -> dict[str, str]:
    """Human tags of the layer and the key each points at, as the state knows them.

    A promoted tag points at its newest `promote` event's key; a publish tag
    that was not promoted since at the key last published to a target.
    """
    out: dict[str, str] = {}
    when: dict[str, float] = {}
    newest = max(state.published(layer).values(), key=lambda r: r.published_at or 0.0, default=None)
    if newest is not None:
        for t in spec.publish_tags:
            out[t], when[t] = newest.key, newest.published_at or 0.0
    seen: set[str] = set()
    for ev in state.events(layer, "promote"):  # newest first
        tag = ev["detail"].get("tag")
        if not tag or tag in seen:
            continue
        seen.add(tag)
        if tag not in out or (ev["published_at"] or 0.0) >= when[tag]:
            out[tag] = ev["key"]
    return out


def resolve_ref(state: State, layer: str, spec: Any, ref: str, remote: RemoteSource | None = None) -> str:
    """A key of `layer` from a key, key prefix, `ig-<key>` or human tag; UsageError otherwise.

    The state answers first; then, with `remote`, the registry: the key a tag holds there, or the
    key tags a prefix matches. NotBuiltError (exit 1) when only an unreachable target could tell.
    """
    tags = tag_keys(state, layer, spec)
    if ref in tags and not ref.startswith(KEY_TAG_PREFIX):
        return tags[ref]
    prefix = ref.removeprefix(KEY_TAG_PREFIX).lower()
    hexish = bool(prefix) and all(c in "0123456789abcdef" for c in prefix)
    if hexish and len(prefix) == 64:
        return prefix  # a whole key names itself, recorded here or not
    if hexish:
        matches = [k for k in layer_keys(state, layer) if k.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"{layer}: {ref} matches {len(matches)} builds; give more of the key")
    unknown = ""
    if remote is not None:
        if not ref.startswith(KEY_TAG_PREFIX):
            found = remote.tag_key(spec, ref)
            if found.value:
                return found.value
            unknown = found.unknown
        if hexish:
            keys = remote.keys(spec)
            if keys is None:
                unknown = unknown or "the registry did not answer"
            else:
                matches = sorted(k for k in keys if k.startswith(prefix))
                if len(matches) == 1:
                    return matches[0]
                if len(matches) > 1:
                    raise UsageError(f"{layer}: {ref} matches {len(matches)} builds; give more of the key")
    if unknown:
        raise NotBuiltError(f"{layer}: cannot tell which build {ref!r} names: {unknown}")
    known = ", ".join(sorted(tags)) or "none"
    raise UsageError(f"{layer}: {ref!r} is neither a recorded build's key (prefix) nor a tag (tags: {known})")


def previous_key(state: State, layer: str, key: str) -> str | None:
    """The key of the layer's newest successful build before `key`'s, of another key."""
    keys = [b["key"] for b in state.builds(layer, limit=10000) if b["status"] == "ok"]
    if key in keys:
        keys = keys[keys.index(key) + 1 :]
    return next((k for k in keys if k != key), None)


def replaced_key(state: State, layer: str, key: str) -> str | None:
    """The build `key` replaced: its previous build when it is the newest; else (a revert to an
    older key) the newest build."""
    keys = [b["key"] for b in state.builds(layer, limit=10000) if b["status"] == "ok"]
    if keys and keys[0] != key and key in keys:
        return keys[0]
    return previous_key(state, layer, key)


def built_keys(state: State, layer: str) -> set[str]:
    """Keys of the layer's successful builds recorded here."""
    return {b["key"] for b in state.builds(layer, limit=10000) if b["status"] == "ok"}


def default_keys(
    state: State,
    layer: str,
    spec: Any,
    remote: RemoteSource | None = None,
    current: str | None = None,
) -> tuple[str | None, str, str]:
    """(FROM, TO, FROM's label) when not given: TO is the layer's last build here, else `current`
    (the key planning computes; `current` also wins when it is a build recorded here, as after a
    revert); FROM the key the first human tag that points elsewhere names
    (the state's record, else the registry's answer with `remote`), else the build TO replaced
    (`replaced_key`: the previous one, or after a revert the newer one)."""
    rec = state.layer(layer)
    to_key = rec.key if rec is not None else current
    if current is not None and current in built_keys(state, layer):
        to_key = current  # after a revert the current key is an older build, not the last one
    if to_key is None:
        raise UsageError(f"{layer}: never built here; run `imagegraph up` first")
    tags = tag_keys(state, layer, spec)
    if remote is not None:
        for t in spec.publish_tags:
            if t not in tags and (k := remote.tag_key(spec, t).value):
                tags[t] = k
    for tag, k in tags.items():
        if k != to_key:
            return k, to_key, tag
    prev = replaced_key(state, layer, to_key)
    if prev is None:
        return None, to_key, "first build" if rec is not None else "no earlier build known here"
    return prev, to_key, "previous build" if prev == previous_key(state, layer, to_key) else "replaced build"


def tag_changes(
    state: State, layer: str, spec: Any, tag: str, key: str, remote: RemoteSource | None = None
) -> PackageDiff:
    """What moving `tag` to `key` changes: the diff from the key it pointed at (from nothing if none)."""
    before = tag_keys(state, layer, spec).get(tag)
    if before is None and remote is not None:
        found = remote.tag_key(spec, tag)
        if found.unknown and not found.value:
            out = PackageDiff(
                layer, None, key, InventoryStatus.UNKNOWN, from_label=tag, to_label=key_tag(key)
            )
            out.reason = f"cannot tell what {tag} pointed at: {found.unknown}"
            return out
        before = found.value
    return layer_diff(
        state,
        layer,
        before,
        key,
        from_label=tag if before else f"{tag} was not set",
        to_label=key_tag(key),
        spec=spec,
        remote=remote,
    )


def changes_since_previous(state: State, layer: str, key: str) -> PackageDiff:
    """The package changes of a build of `key` since the layer's previous build of another key."""
    return layer_diff(state, layer, previous_key(state, layer, key), key, from_label="previous build")


def changes_since_replaced(state: State, layer: str, key: str) -> PackageDiff:
    """The package changes of the build of `key` since the build it replaced (`replaced_key`)."""
    return layer_diff(state, layer, replaced_key(state, layer, key), key, from_label="replaced build")


def run_changes(state: State, built: dict[str, str]) -> dict[str, dict]:
    """Per rebuilt layer (layer -> its new key), its package changes since its previous build."""
    out = {}
    for layer, key in built.items():
        d = changes_since_previous(state, layer, key)
        out[layer] = {**d.to_json(), "brief": d.brief()}
    return out
