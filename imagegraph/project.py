"""A directory of layer specs (+ optional project settings) -> `Project`.

Layer specs are the `*.yaml`/`*.yml` files at the top of the directory
(sub-directories hold copied files and playbooks, which are YAML too and are
not layers). `imagegraph.yaml` holds optional project settings and
`imagegraph.lock` the upstream lock file; neither is a layer.

Every file is loaded even when an earlier one is broken, so one run reports
every problem in the directory. Parsed specs are cached by file content
(plus the settings that shape them) in the state directory, so re-planning a
large directory does not re-parse unchanged files. The cache holds only what
the spec file itself decides: the host files a spec names (copyfiles
sources, playbooks, key_paths) are checked on every load, hit or miss.

The directory is taken by its canonical absolute path, so every path in a
spec (and in what is keyed, cached and recorded from it) is the same
whichever working directory and spelling of DIR (`layers`, `layers/`,
`./layers`, absolute) imagegraph was started with.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from . import __version__
from .arch import ARCH_NAMES, normalize_arch
from .cachedir import ensure_dir, safe_to_use
from .errors import Diagnostic, SpecError
from .redact import mask_url_credentials
from .spec import LayerSpec, parse_yaml, read_spec, source_diagnostics

SETTINGS_FILE = "imagegraph.yaml"
LOCK_FILE = "imagegraph.lock"
NOT_LAYERS = {SETTINGS_FILE, "imagegraph.yml", LOCK_FILE}
STATE_DIR = ".imagegraph"
CACHE_FORMAT = 4  # 2: specs with missing sources are kept (Diagnostic.kind "source"); 3: arches;
# 4: packages_by_arch

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "path_map": {
            "type": "object",
            "propertyNames": {"pattern": "^/"},
            "additionalProperties": {"type": "string", "minLength": 1},
        },
        "registry_aliases": {"type": "object", "additionalProperties": {"type": "string"}},
        "defaults": {"type": "object"},  # checked against the spec schema's options (_defaults_schema)
        "state_dir": {"type": "string", "minLength": 1, "pattern": "^[^\\x00-\\x1f]+$(?!\\n)"},
        "jobs": {"type": "integer", "minimum": 1},
        "allow_outside_sources": {"type": "boolean"},
        # Where each run's report page goes (publish/reports.py): a directory, or an S3 prefix.
        "reports": {
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["dir"],
                    "properties": {"dir": {"type": "string", "minLength": 1}},
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["s3"],
                    "properties": {
                        "s3": {"type": "string", "pattern": "^https?://"},
                        "bucket": {"type": "string", "minLength": 1},
                        "prefix": {"type": "string"},
                    },
                },
            ]
        },
        "executor": {"$ref": "#/$defs/executor"},
    },
    "$defs": {
        "placement": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"partition": {"type": "string", "minLength": 1}, "constraint": {"type": "string"}},
        },
        "arch_placements": {
            "type": "object",
            "propertyNames": {"enum": ARCH_NAMES},
            "additionalProperties": {"$ref": "#/$defs/placement"},
        },
        "executor": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "kind": {"enum": ["local", "slurm"]},
                "partition": {"type": "string", "minLength": 1},
                "constraint": {"type": "string", "minLength": 1},
                "sbatch_args": {"type": "array", "items": {"type": "string"}},
                "time_limit": {"type": "string", "pattern": "^[0-9][0-9:-]*$"},
                "job_name_prefix": {"type": "string", "pattern": "^[A-Za-z0-9_.-]*$"},
                "log_dir": {"type": "string", "minLength": 1},
                "graphroot": {"type": "string", "pattern": "^/"},
                "runroot": {"type": "string", "pattern": "^/"},
                "poll_interval": {"type": "number", "minimum": 0.1, "maximum": 300},
                # `arch: {aarch64: {partition: grace}}`; `arches` is its older spelling
                "arch": {"$ref": "#/$defs/arch_placements"},
                "arches": {"$ref": "#/$defs/arch_placements"},
            },
        },
    },
}


class ExecutorKind(StrEnum):
    """Where `up` runs layer builds."""

    LOCAL = "local"
    SLURM = "slurm"


@dataclass(frozen=True)
class ExecutorSettings:
    """`executor:` in imagegraph.yaml: where builds run (see README "Building on a Slurm cluster")."""

    kind: ExecutorKind = ExecutorKind.LOCAL
    partition: str | None = None
    constraint: str | None = None
    sbatch_args: tuple[str, ...] = ()
    time_limit: str | None = None
    job_name_prefix: str = "ig-"
    log_dir: str | None = (
        None  # a directory the build nodes and the submit host share; default the state dir's logs
    )
    graphroot: str | None = None  # node-local container storage for build jobs; default the node's own
    runroot: str | None = None
    poll_interval: float = 2.0
    arches: dict[str, dict[str, str]] = field(default_factory=dict)  # arch -> partition / constraint

    @classmethod
    def from_dict(cls, d: dict) -> ExecutorSettings:
        return cls(
            kind=ExecutorKind(d.get("kind", "local")),
            partition=d.get("partition"),
            constraint=d.get("constraint"),
            sbatch_args=tuple(d.get("sbatch_args") or ()),
            time_limit=d.get("time_limit"),
            job_name_prefix=d.get("job_name_prefix", "ig-"),
            log_dir=d.get("log_dir"),
            graphroot=d.get("graphroot"),
            runroot=d.get("runroot"),
            poll_interval=float(d.get("poll_interval", 2.0)),
            arches={
                str(normalize_arch(k)): dict(v)
                for k, v in {**(d.get("arches") or {}), **(d.get("arch") or {})}.items()
            },
        )


@dataclass(frozen=True)
class Settings:
    """Project-wide settings from `imagegraph.yaml` (all optional)."""

    registry_aliases: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    # absolute source prefix -> directory (relative to the layer directory), e.g. image-builder's
    # container convention {"/data/image-configs": "."}; in no key but through the files it finds
    path_map: dict[str, str] = field(default_factory=dict)
    state_dir: str | None = None
    jobs: int | None = None
    allow_outside_sources: bool = False
    reports: dict[str, str] | None = None
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)


@dataclass
class Project:
    """Every layer spec of a directory, keyed by layer id (the file's stem)."""

    root: Path
    layers: dict[str, LayerSpec]
    settings: Settings
    warnings: list[Diagnostic] = field(default_factory=list)
    errors: list[Diagnostic] = field(default_factory=list)  # kept when loaded with strict=False
    # layers whose spec is sound but pulls in missing files (sources_required=False): drawn and
    # planned as blocked, never built
    unbuildable: dict[str, list[Diagnostic]] = field(default_factory=dict)
    # the parsed-spec cache this load used: {"path": str | None, "hits": n, "parsed": n}
    spec_cache: dict[str, Any] = field(default_factory=dict)

    def default_state_dir(self) -> Path:
        if self.settings.state_dir:
            p = Path(self.settings.state_dir)
            return p if p.is_absolute() else self.root / p
        return self.root / STATE_DIR


def layer_id(path: Path) -> str:
    return path.stem


def _name(p: Path) -> str:
    return p.name


def spec_files(root: Path) -> list[Path]:
    # The directory's own entry types (d_type) say which names are regular files, without a stat
    # each; a symlink is followed with a stat, as Path.is_file does.
    with os.scandir(root) as entries:
        regular = {e.name: e.is_file(follow_symlinks=False) for e in entries if not e.is_symlink()}
    files = [
        p
        for p in sorted(root.iterdir(), key=_name)  # Path's order for siblings; 13x cheaper than Path.__lt__
        if (regular[p.name] if p.name in regular else p.is_file())
        and p.suffix in (".yaml", ".yml")
        and p.name not in NOT_LAYERS
        and not p.name.startswith(".")
    ]
    return files


def spec_dirs_below(root: Path, depth: int = 2, visit: int = 200) -> list[Path]:
    """Directories up to `depth` levels below `root` that hold layer specs, looking into at most
    `visit` directories (for a hint when `root` holds none: image-builder sites keep their specs
    in `image-configs/` or one folder per example)."""
    found: list[Path] = []
    level, visited = [root], 0
    for _ in range(depth):
        below = []
        for d in level:
            try:
                subs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            for sub in subs:
                visited += 1
                if visited > visit:
                    return found
                try:
                    if spec_files(sub):
                        found.append(sub)
                except OSError:
                    continue
                below.append(sub)
        level = below
    return found


def load_settings(root: Path) -> tuple[Settings, list[Diagnostic]]:
    for name in (SETTINGS_FILE, "imagegraph.yml"):
        path = root / name
        if path.is_file():
            break
    else:
        return Settings(), []
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Settings(), [Diagnostic(file, 1, 1, f"cannot read project settings: {exc}")]
    doc, diags = parse_yaml(text, file)
    if diags:
        return Settings(), diags
    if doc is None:
        return Settings(), []
    from .spec import (  # the same machinery as specs
        DocumentTooLarge,
        UnpairedSurrogate,
        node_position,
        to_plain,
    )

    try:
        plain = to_plain(doc)
    except (DocumentTooLarge, UnpairedSurrogate, RecursionError) as exc:
        return Settings(), [Diagnostic(file, 1, 1, f"unusable project settings: {type(exc).__name__}")]
    if not isinstance(plain, dict):
        return Settings(), [Diagnostic(file, 1, 1, "project settings must be a mapping")]
    errors = []
    for err in [] if _settings_valid(plain) else _settings_validator().iter_errors(plain):
        path_ = list(err.absolute_path)
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties", {}))  # the mapping's own keys (top level or executor)
            for key in err.instance:
                if key not in known:
                    line, col = node_position(doc, [*path_, key], key_position=True)
                    import difflib

                    close = difflib.get_close_matches(key, known, n=1)
                    errors.append(
                        Diagnostic(
                            file,
                            line,
                            col,
                            f"unknown project setting '{'.'.join(map(str, [*path_, key]))}'",
                            hint=f"did you mean '{close[0]}'?" if close else None,
                        )
                    )
            continue
        line, col = node_position(doc, path_)
        errors.append(
            Diagnostic(file, line, col, f"{'.'.join(map(str, path_)) or 'settings'}: {err.message}")
        )
    if not errors and isinstance(plain.get("defaults"), dict):
        errors += _defaults_diagnostics(doc, plain["defaults"], file)
    if errors:
        return Settings(), errors
    aliases = {k.rstrip("/"): v.rstrip("/") for k, v in (plain.get("registry_aliases") or {}).items()}
    return (
        Settings(
            registry_aliases=aliases,
            defaults=plain.get("defaults") or {},
            path_map={k.rstrip("/") or "/": v for k, v in (plain.get("path_map") or {}).items()},
            state_dir=plain.get("state_dir"),
            jobs=int(plain["jobs"])
            if plain.get("jobs") is not None
            else None,  # JSON Schema: 2.0 is an integer
            allow_outside_sources=bool(plain.get("allow_outside_sources", False)),
            reports=plain.get("reports"),
            executor=ExecutorSettings.from_dict(plain.get("executor") or {}),
        ),
        [],
    )


@cache
def _compiled_settings_validator() -> Any:
    import jsonschema_rs

    return jsonschema_rs.validator_for(SETTINGS_SCHEMA)


def _settings_valid(plain: Any) -> bool:
    """The fast yes/no (jsonschema-rs); jsonschema words the errors only when there are some."""
    try:
        return bool(_compiled_settings_validator().is_valid(plain))
    except Exception:  # a value it cannot take: let jsonschema decide
        return False


@cache
def _settings_validator() -> Any:
    import jsonschema  # loaded only when a project has settings to check

    return jsonschema.Draft202012Validator(SETTINGS_SCHEMA)


@cache
def _defaults_validator() -> Any:
    import jsonschema

    from .spec import layer_schema

    schema = layer_schema()
    options = {k: v for k, v in schema["properties"]["options"].items() if k != "required"}
    return jsonschema.Draft202012Validator({"$defs": schema["$defs"], **options})


@cache
def _defaults_compiled() -> Any:
    """The same schema compiled (jsonschema-rs): the fast yes/no before jsonschema words the errors."""
    import jsonschema_rs

    from .spec import layer_schema

    schema = layer_schema()
    options = {k: v for k, v in schema["properties"]["options"].items() if k != "required"}
    return jsonschema_rs.validator_for({"$defs": schema["$defs"], **options})


def _defaults_diagnostics(doc: Any, defaults: dict, file: str) -> list[Diagnostic]:
    """`defaults` are options every layer gets: they must pass the spec schema's options section."""
    from .spec import layer_schema, node_position, schema_message

    if _defaults_compiled().is_valid(defaults):
        return []  # importing jsonschema (and its format checkers' grammars) costs seconds under load
    options = {k: v for k, v in layer_schema()["properties"]["options"].items() if k != "required"}
    out = []
    for err in _defaults_validator().iter_errors(defaults):
        path = ["defaults", *err.absolute_path]
        if err.validator == "additionalProperties":
            for key in err.instance:
                if key not in options["properties"]:
                    line, col = node_position(doc, [*path, key], key_position=True)
                    out.append(Diagnostic(file, line, col, f"defaults: '{key}' is not a spec option"))
            continue
        line, col = node_position(doc, path)
        out.append(Diagnostic(file, line, col, "defaults: " + schema_message(err)))
    return out


class SpecCache:
    """Parsed specs keyed by sha256 of (file content, path, settings, imagegraph version)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, tuple[LayerSpec | None, list[Diagnostic]]] = {}
        self.dirty = False
        self.hits = 0
        self.parsed = 0
        self.used: set[str] = set()  # digests this load looked up; save() drops the rest
        if path and path.is_file() and safe_to_use(path):  # a pickle someone else can write runs their code
            try:
                with path.open("rb") as f:
                    data = pickle.load(f)
                if (
                    isinstance(data, dict)
                    and data.get("version") == __version__
                    and data.get("format") == CACHE_FORMAT
                ):
                    self.entries = data["entries"]
            except Exception:  # a broken cache is only a slower run
                self.entries = {}

    FORMAT = 2  # 2: absolute paths; no entry depends on files outside the spec

    @staticmethod
    def digest(
        path: Path,
        raw: bytes,
        settings: Settings,
        real: str | None = None,
        settings_part: bytes | None = None,
    ) -> str:
        """`real`: the file's os.path.realpath, when the caller has it; `settings_part`:
        `SpecCache.settings_part(settings)`, when the caller has it."""
        h = hashlib.sha256()
        h.update(f"{SpecCache.FORMAT}\0".encode())
        h.update((real or os.path.realpath(path)).encode() + b"\0")  # = str(path.resolve()), 3x cheaper
        h.update(SpecCache.settings_part(settings) if settings_part is None else settings_part)
        h.update(raw)
        return h.hexdigest()

    @staticmethod
    def settings_part(settings: Settings) -> bytes:
        """What `digest` hashes of the settings (the same for every file of a load)."""
        return (
            json.dumps(settings.defaults, sort_keys=True, default=str).encode()
            + b"\0"
            + json.dumps(settings.path_map, sort_keys=True).encode()
            + b"\0"
        )

    def save(self) -> None:
        stale = self.entries.keys() - self.used
        if stale:  # old versions of edited specs, removed files: the cache stays the project's size
            self.entries = {d: e for d, e in self.entries.items() if d in self.used}
            self.dirty = True
        if not (self.path and self.dirty):
            return
        import tempfile  # only when the cache changed

        try:
            ensure_dir(self.path.parent)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".specs.")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(
                    {"version": __version__, "format": CACHE_FORMAT, "entries": self.entries},
                    f,
                    protocol=pickle.HIGHEST_PROTOCOL,
                )
            os.replace(tmp, self.path)
        except OSError:
            pass  # read-only state directory: caching is optional


def load_project(
    root: Path | str, *, cache_dir: Path | None = None, strict: bool = True, sources_required: bool = True
) -> Project:
    """Load every spec of `root`. Raises SpecError listing every problem when any file is invalid.

    With `sources_required=False`, missing copyfiles sources and playbooks are not fatal: those
    layers load into `Project.unbuildable` with their errors (for `graph` and `plan`).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise SpecError(
            [Diagnostic(str(root), 0, 0, "not a directory of layer specs", hint="give the layer directory")]
        )
    settings, diags = load_settings(root)
    files = spec_files(root)
    if not files:
        below = spec_dirs_below(root)
        shown = ", ".join(os.path.relpath(d) for d in below[:4]) + (
            f" (and {len(below) - 4} more)" if len(below) > 4 else ""
        )
        hint = (
            f"give a directory of specs: {shown}"
            if below
            else "give the directory that holds the layer specs"
        )
        diags.append(Diagnostic(str(root), 0, 0, "no layer specs (*.yaml) found here", hint=hint))
    cache = SpecCache(cache_dir / "specs.pickle" if cache_dir else None)
    real = RealPaths()
    settings_part = SpecCache.settings_part(settings)  # hashed into every file's digest
    layers: dict[str, LayerSpec] = {}
    unbuildable: dict[str, list[Diagnostic]] = {}
    for path in files:
        real_path = real(path)
        shown = _shown(path, real_path)
        if any(ord(c) < 0x20 or c == "\x7f" for c in path.stem):
            # The layer name (file stem) goes into log file names, container names and messages.
            diags.append(
                Diagnostic(repr(path.name), 0, 0, "layer file name has control characters; rename it")
            )
            continue
        try:
            raw = path.read_bytes()
        except OSError as exc:
            diags.append(Diagnostic(shown, 0, 0, f"cannot read: {exc.strerror}"))
            continue
        digest = SpecCache.digest(path, raw, settings, real_path, settings_part)
        cache.used.add(digest)
        hit = cache.entries.get(digest)
        if hit is not None:
            cache.hits += 1
            spec, file_diags = hit
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                diags.append(
                    Diagnostic(shown, 1, 1, f"not UTF-8 text (byte {exc.start})", hint="save it as UTF-8")
                )
                continue
            if _is_yaml_list(text, shown):
                diags.append(
                    Diagnostic(
                        shown, 1, 1, "not a layer spec (a YAML list, e.g. a playbook); skipped", "warning"
                    )
                )
                continue
            # Cached under the canonical file name; shown as the user's working directory sees it.
            spec, file_diags = read_spec(
                path,
                text,
                settings.defaults,
                shown=str(path),
                path_map=settings.path_map,
                check_sources=False,
            )
            cache.parsed += 1
            # Neither credentials in URLs nor answers about host files (an invalid spec's source
            # checks) go into the cache.
            if mask_url_credentials(text) == text and not any(d.kind == "source" for d in file_diags):
                cache.entries[digest] = (spec, file_diags)
                cache.dirty = True
        file_diags = [replace(d, file=shown) if d.file == str(path) else d for d in file_diags]
        if spec is not None:
            # Host files come and go without the spec changing: checked on every load, never cached.
            file_diags = [*file_diags, *source_diagnostics(spec, shown)]
        diags.extend(file_diags)
        file_errors = [d for d in file_diags if d.severity == "error"]
        if spec is not None and not file_errors:
            layers[layer_id(path)] = spec
        elif spec is not None and not sources_required and all(d.kind == "source" for d in file_errors):
            layers[layer_id(path)] = spec
            unbuildable[layer_id(path)] = file_errors
    if not settings.allow_outside_sources:
        for spec in layers.values():
            diags.extend(_escape_diagnostics(spec, root, real))
    cache.save()
    errors = [d for d in diags if d.severity == "error"]
    tolerated = {id(d) for ds in unbuildable.values() for d in ds}
    if strict and any(id(d) not in tolerated for d in errors):
        raise SpecError(diags)
    return Project(
        root=root,
        layers=layers,
        settings=settings,
        warnings=[d for d in diags if d.severity != "error"],
        errors=errors,
        unbuildable=unbuildable,
        spec_cache={
            "path": str(cache.path) if cache.path else None,
            "hits": cache.hits,
            "parsed": cache.parsed,
        },
    )


def _escape_diagnostics(spec: LayerSpec, root: Path, real: RealPaths) -> list[Diagnostic]:
    """A relative copyfiles source may not leave the layer directory (via .. or a symlink)."""
    out = []
    real_root = real.dir(os.fspath(root))
    for cf in spec.copyfiles:
        if cf.src.startswith("/"):
            continue  # absolute paths are taken as written (real specs use /data/...)
        if _relative(real(cf.source), real_root) is None:
            out.append(
                Diagnostic(
                    _shown(spec.path, real(spec.path)),
                    cf.line,
                    cf.column,
                    f"copyfiles source '{cf.src}' leaves the layer directory",
                    hint="use an absolute path, or set allow_outside_sources: true in imagegraph.yaml",
                )
            )
    return out


def _is_yaml_list(text: str, shown: str) -> bool:
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or s == "---":
            continue
        return s.startswith("- ") or s == "-"
    return False


def _relative(real: str, base: str) -> str | None:
    """`real` relative to `base` (both resolved), as Path.relative_to says it; None when outside.

    String work on os.path.realpath results: Path.resolve() per spec file was a
    third of a cached plan's time.
    """
    if real == base:
        return "."
    prefix = base if base.endswith("/") else base + "/"
    return real[len(prefix) :] if real.startswith(prefix) else None


_real_cwd: tuple[str, str] = ("", "")  # (os.getcwd(), its realpath): resolved once per directory


def _shown(path: Path, real_path: str | None = None) -> str:
    global _real_cwd
    cwd = os.getcwd()
    if _real_cwd[0] != cwd:
        _real_cwd = (cwd, os.path.realpath(cwd))
    rel = _relative(real_path or os.path.realpath(path), _real_cwd[1])
    return str(path) if rel is None else rel


class RealPaths:
    """`os.path.realpath` for the many files of one load: each directory is resolved once, then
    only the last component is checked (one lstat, not one per component). The answer is
    realpath's: a symlinked file is resolved in full."""

    def __init__(self) -> None:
        self.dirs: dict[str, str] = {}

    def dir(self, head: str) -> str:
        real = self.dirs.get(head)
        if real is None:
            real = self.dirs[head] = os.path.realpath(head)
        return real

    def __call__(self, path: Path | str) -> str:
        p = os.fspath(path)
        head, tail = os.path.split(p)
        if not os.path.isabs(p) or tail in ("", ".", ".."):
            return os.path.realpath(p)
        full = os.path.join(self.dir(head), tail)
        return os.path.realpath(full) if os.path.islink(full) else full
