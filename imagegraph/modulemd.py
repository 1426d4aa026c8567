"""dnf modules for `imagegraph lock`: module metadata, module state, and dnf's modular filtering.

A repository with modules carries a `modules` record in its repomd.xml
(modules.yaml, maybe .gz/.xz/.zst): modulemd v2 documents (a module's
stream, version, context, profiles and the NEVRAs of its `artifacts`) and
modulemd-defaults v1 documents (a module's default stream and that stream's
default profiles). `parse_modules` reads them with libyaml (plain scalars
kept as strings, as libmodulemd reads them: stream `1.10` is not a float).

The module state is what an image's /etc/dnf/modules.d says: per module an
enabled stream or `disabled`; a module absent from it follows its default.
`apply_operations` runs a layer's `modules:` operations on its parent's
state (`enable`, `disable`, `reset`, `install NAME[:STREAM][/PROFILE]`: the
stream is enabled and its profile's rpms, the default profile when none is
given, are installed), as `dnf module` does.

`filtering` is dnf's (libdnf's `setModuleExcludes`): the active streams are
the enabled ones plus the defaults of modules the state does not name; every
version and context of an active stream is active. Artifacts of streams that
are not active are hidden; for active streams, packages whose name (or a
provide) is an active artifact's name are hidden unless they are active
artifacts themselves, except in repositories marked `module_hotfixes=1`.
Module dependencies (`platform:el9` and friends) are not resolved: every
context of an active stream counts.

A package installed from a default stream enables that stream (dnf records
it in modules.d), so `state_after` adds those to the state a layer leaves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

OPERATIONS = ("enable", "disable", "reset", "install")

# name -> enabled stream, or None: disabled. A module not named follows its default stream.
ModuleState = dict[str, str | None]


class ModuleError(Exception):
    """A module operation names a module or stream the repositories do not have, or metadata is bad."""


@dataclass(frozen=True)
class ModuleStream:
    """One modulemd v2 document: a version and context of a module stream."""

    name: str
    stream: str
    version: str
    context: str
    repo: str
    artifacts: tuple[str, ...] = ()  # name-epoch:version-release.arch
    profiles: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def profile(self, name: str) -> tuple[str, ...] | None:
        return next((rpms for p, rpms in self.profiles if p == name), None)


@dataclass
class ModuleMetadata:
    """The module documents of the repositories a layer installs from."""

    streams: list[ModuleStream] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)  # module -> default stream
    default_profiles: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    hotfix_repos: set[str] = field(default_factory=set)

    def names(self) -> set[str]:
        return {s.name for s in self.streams}

    def has_stream(self, name: str, stream: str) -> bool:
        return any(s.name == name and s.stream == stream for s in self.streams)

    def __bool__(self) -> bool:
        return bool(self.streams)


def _loader() -> type:
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StringLoader(base):  # type: ignore[misc, valid-type]
        """Every plain scalar a string, as libmodulemd reads streams and versions."""

        yaml_implicit_resolvers: dict = {}

    return StringLoader


def parse_modules(text: str, repo: str, into: ModuleMetadata | None = None) -> ModuleMetadata:
    """The modulemd v2 and modulemd-defaults v1 documents of one repository's modules.yaml."""
    import yaml

    meta = into if into is not None else ModuleMetadata()
    try:
        docs = list(yaml.load_all(text, Loader=_loader()))  # noqa: S506 (a safe loader, strings only)
    except yaml.YAMLError as exc:
        raise ModuleError(f"repository {repo}: its modules.yaml cannot be read: {exc}") from exc
    for doc in docs:
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
            continue
        kind, data = doc.get("document"), doc["data"]
        if kind == "modulemd" and str(doc.get("version")) == "2":
            rpms = ((data.get("artifacts") or {}).get("rpms")) or []
            profiles = tuple(
                (str(p), tuple(str(r) for r in ((v or {}).get("rpms") or [])))
                for p, v in (data.get("profiles") or {}).items()
            )
            meta.streams.append(
                ModuleStream(
                    str(data.get("name", "")),
                    str(data.get("stream", "")),
                    str(data.get("version", "0")),
                    str(data.get("context", "")),
                    repo,
                    tuple(str(a) for a in rpms),
                    profiles,
                )
            )
        elif kind == "modulemd-defaults" and str(doc.get("version")) == "1":
            name = str(data.get("module", ""))
            if data.get("stream") is not None:
                meta.defaults[name] = str(data["stream"])
            for stream, profs in (data.get("profiles") or {}).items():
                meta.default_profiles[(name, str(stream))] = tuple(str(p) for p in (profs or []))
    return meta


def to_doc(meta: ModuleMetadata) -> dict:
    """One repository's parsed modules as JSON (resolve.py keeps it beside the modules.yaml: JSON
    reads many times faster than YAML, and an AppStream modules.yaml is megabytes)."""
    return {
        "streams": [
            [s.name, s.stream, s.version, s.context, list(s.artifacts), [[p, list(r)] for p, r in s.profiles]]
            for s in meta.streams
        ],
        "defaults": meta.defaults,
        "default_profiles": [[n, st, list(p)] for (n, st), p in meta.default_profiles.items()],
    }


def merge_doc(meta: ModuleMetadata, doc: dict, repo: str) -> None:
    """Add a `to_doc` document of repository `repo` to `meta`."""
    for name, stream, version, context, artifacts, profiles in doc["streams"]:
        meta.streams.append(
            ModuleStream(
                name,
                stream,
                version,
                context,
                repo,
                tuple(artifacts),
                tuple((p, tuple(r)) for p, r in profiles),
            )
        )
    meta.defaults.update(doc["defaults"])
    for name, stream, profs in doc["default_profiles"]:
        meta.default_profiles[(name, stream)] = tuple(profs)


# ------------------------------------------------------------------------- the state


def state_lines(state: ModuleState) -> list[str]:
    """The lock entry's `modules`: `name:stream` per enabled stream, `name (disabled)`."""
    return sorted(f"{n}:{s}" if s is not None else f"{n} (disabled)" for n, s in state.items())


def parse_state(lines: Iterable[str]) -> ModuleState:
    out: ModuleState = {}
    for line in lines:
        line = str(line).strip()
        if line.endswith(" (disabled)"):
            out[line.removesuffix(" (disabled)")] = None
        elif ":" in line:
            name, stream = line.split(":", 1)
            out[name] = stream
    return out


def read_modules_d(directory: Path) -> ModuleState:
    """An image's /etc/dnf/modules.d (`[name] stream=... state=enabled|disabled`)."""
    import configparser

    out: ModuleState = {}
    if not directory.is_dir():
        return out
    for f in sorted(directory.glob("*.module")):
        cp = configparser.RawConfigParser(strict=False, interpolation=None)
        try:
            cp.read_string(f.read_text(errors="replace"))
        except configparser.Error:
            continue
        for name in cp.sections():
            state = cp.get(name, "state", fallback="").strip()
            if state == "enabled" and cp.get(name, "stream", fallback="").strip():
                out[name] = cp.get(name, "stream").strip()
            elif state == "disabled":
                out[name] = None
    return out


_SPEC = re.compile(r"^@?(?P<name>[^:/\s]+)(?::(?P<stream>[^:/\s]+))?(?:/(?P<profile>[^:/\s]+))?$")


def unsupported(modules: Iterable[tuple[str, Iterable[str]]]) -> str | None:
    """Why a layer's `modules:` cannot be resolved, or None."""
    for sub, _ in modules:
        if sub not in OPERATIONS:
            return f"dnf module {sub} is not resolved (only {', '.join(OPERATIONS)})"
    return None


def apply_operations(
    modules: Iterable[tuple[str, Iterable[str]]], state: ModuleState, meta: ModuleMetadata
) -> tuple[ModuleState, list[str]]:
    """The state after a layer's `modules:` operations, and the rpm names `module install` adds."""
    state = dict(state)
    install: list[str] = []
    for sub, specs in modules:
        for text in specs:
            m = _SPEC.match(str(text))
            if m is None:
                raise ModuleError(f"dnf module {sub} {text}: not NAME[:STREAM][/PROFILE]")
            name, stream, profile = m["name"], m["stream"], m["profile"]
            if sub in ("disable", "reset"):
                if name not in meta.names():
                    raise ModuleError(f"dnf module {sub} {text}: no module {name} in the repositories")
                if sub == "disable":
                    state[name] = None
                else:
                    state.pop(name, None)
                continue
            if name not in meta.names():
                raise ModuleError(f"dnf module {sub} {text}: no module {name} in the repositories")
            stream = stream or state.get(name) or meta.defaults.get(name)
            if not stream:
                raise ModuleError(f"dnf module {sub} {text}: module {name} has no default stream; name one")
            if not meta.has_stream(name, stream):
                raise ModuleError(f"dnf module {sub} {text}: module {name} has no stream {stream}")
            state[name] = stream
            if sub == "install":
                install += profile_rpms(meta, name, stream, profile, text)
    return state, install


def profile_rpms(meta: ModuleMetadata, name: str, stream: str, profile: str | None, text: str) -> list[str]:
    """The rpms of a stream's profile (its default profiles when `profile` is None), latest version."""
    versions = sorted(
        (s for s in meta.streams if s.name == name and s.stream == stream), key=lambda s: int(s.version or 0)
    )
    wanted = [profile] if profile else list(meta.default_profiles.get((name, stream), ()))
    if not wanted:
        raise ModuleError(
            f"dnf module install {text}: stream {name}:{stream} has no default profile; name one"
        )
    out: list[str] = []
    for p in wanted:
        rpms = next((s.profile(p) for s in reversed(versions) if s.profile(p) is not None), None)
        if rpms is None:
            raise ModuleError(f"dnf module install {text}: stream {name}:{stream} has no profile {p}")
        out += [r for r in rpms if r not in out]
    return out


def active_streams(meta: ModuleMetadata, state: ModuleState) -> set[tuple[str, str]]:
    """Enabled streams, and the default stream of each module the state does not name."""
    out = {(n, s) for n, s in state.items() if s is not None}
    for name, stream in meta.defaults.items():
        if name not in state and meta.has_stream(name, stream):
            out.add((name, stream))
    return out


def filtering(meta: ModuleMetadata, state: ModuleState) -> dict:
    """What solvhelper hides: `include`/`exclude` NEVRAs, the active artifact `names`, `hotfix` repos."""
    active = active_streams(meta, state)
    include: set[str] = set()
    exclude: set[str] = set()
    for s in meta.streams:
        (include if (s.name, s.stream) in active else exclude).update(s.artifacts)
    names = sorted({nevra_name(a) for a in include} - {""})
    return {
        "include": sorted(include),
        "exclude": sorted(exclude - include),
        "names": names,
        "hotfix": sorted(meta.hotfix_repos),
    }


def nevra_name(nevra: str) -> str:
    """`name` of `name-epoch:version-release.arch`."""
    m = re.match(r"^(.+)-[^-]+-[^-]+$", nevra.rsplit(".", 1)[0] if "." in nevra else nevra)
    return m.group(1) if m else ""


def state_after(
    meta: ModuleMetadata, state: ModuleState, installed: Iterable[tuple[str, str, str]]
) -> ModuleState:
    """The state a layer leaves: a package it installs from a default stream enables that stream.

    `installed`: (name, epoch:version-release, arch) of the layer's resolved packages.
    """
    out = dict(state)
    nevras = {f"{n}-{evr}.{a}" for n, evr, a in installed}
    for name, stream in sorted(active_streams(meta, state)):
        if name in out:
            continue
        if any(
            a in nevras for s in meta.streams if (s.name, s.stream) == (name, stream) for a in s.artifacts
        ):
            out[name] = stream
    return out
