"""One layer spec file -> `LayerSpec`.

The format is OpenCHAMI image-builder's YAML, accepted unchanged, including
the forms real files use (one-string `publish_tags`, bare-string `cmds`,
`dst` for `dest`, a trailing `/` on `publish_registry`). Validation is a JSON
Schema shipped in `schema/` plus checks a schema cannot express; every
problem becomes a `Diagnostic` with `file:line:column`, and all problems of a
file are returned together rather than stopping at the first.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .arch import Arch, host_arch, normalize_arch
from .errors import Diagnostic, SpecError

if TYPE_CHECKING:
    import jsonschema
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

# ruamel.yaml and jsonschema are imported when a file is parsed by ruamel or has errors to word:
# a plan from cached specs loads neither.

DEFAULT_NAME = "base"
DEFAULT_TAGS = ("latest",)
DEFAULT_BUCKET = "boot-images"
SCRATCH = "scratch"
LOGLEVELS = {"DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"}


@dataclass(frozen=True)
class Repo:
    alias: str
    url: str
    gpg: str | None = None
    priority: int | None = None
    suite: str | None = None  # apt only (imagegraph addition)
    components: tuple[str, ...] = ()  # apt only (imagegraph addition)


@dataclass(frozen=True)
class CopyFile:
    src: str  # as written in the spec
    dest: str
    opts: tuple[str, ...] = ()
    source: Path = Path()  # resolved host path
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class KeyPath:
    """One `options.key_paths` item: a host file or directory whose content counts in the key."""

    path: str  # as written in the spec
    source: Path  # resolved host path
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class Cmd:
    cmd: str
    loglevel: str = "INFO"


@dataclass(frozen=True)
class SquashfsOptions:
    compression: str = "gzip"  # mksquashfs default, as image-builder: every kernel reads it
    level: int | None = None
    block_size: str | None = None


@dataclass(frozen=True)
class BootTestOptions:
    """`options.boot_test` (imagegraph addition): how `boot-test` and `up` boot the layer under QEMU.

    Not part of the build key nor the publish key: testing an image does not change it.
    """

    enabled: bool = False  # `up` boot-tests the layer before its human tags are published
    marker: str = "login:"
    timeout: float = 300.0
    memory: int | None = None  # MiB; default from the SquashFS size
    accel: str = "auto"  # auto (KVM when it works), kvm, tcg
    # a multi-arch layer's arches whose nodes boot before the index moves the tags; () = every arch
    arches: tuple[Arch, ...] = ()


@dataclass(frozen=True)
class LayerSpec:
    """A validated layer spec with defaults applied.

    Fields mirror image-builder's keys (see docs/spec-reference in the README);
    the last group are imagegraph's additions, all optional.
    """

    path: Path
    layer_type: str
    name: str = DEFAULT_NAME
    publish_tags: tuple[str, ...] = DEFAULT_TAGS
    pkg_manager: str | None = None
    parent: str = SCRATCH
    gpgcheck: bool = True
    proxy: str | None = None
    publish_local: bool = False
    publish_registry: str | None = None
    registry_opts_push: tuple[str, ...] = ()
    registry_opts_pull: tuple[str, ...] = ()
    publish_s3: str | None = None
    s3_prefix: str = ""
    s3_bucket: str = DEFAULT_BUCKET
    groups: tuple[str, ...] = ()
    playbooks: tuple[str, ...] = ()
    playbook_paths: tuple[Path, ...] = ()
    inventory: tuple[str, ...] = ()
    inventory_paths: tuple[Path, ...] = ()
    vars: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    repos: tuple[Repo, ...] = ()
    modules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    package_groups: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    # packages_by_arch: the extra packages one arch installs after `packages` (packages_for_arch)
    packages_by_arch: tuple[tuple[Arch, tuple[str, ...]], ...] = ()
    remove_packages: tuple[str, ...] = ()
    copyfiles: tuple[CopyFile, ...] = ()
    cmds: tuple[Cmd, ...] = ()
    # imagegraph additions
    releasever: str | None = None
    publish_dir: Path | None = None
    s3_layout: str = "image-builder"
    squashfs: SquashfsOptions = SquashfsOptions()
    kernel_version: str | None = None
    rootfs_only: bool = False
    boot_params: str | None = None
    boot_test: BootTestOptions = BootTestOptions()
    key_paths: tuple[KeyPath, ...] = ()
    arches: tuple[Arch, ...] = ()  # options.arches as written (normalised); () = the host's
    variant: str | None = None  # apt from scratch: mmdebstrap's --variant (default minbase)
    # where things are in the file, for later diagnostics (e.g. parent resolution)
    lines: dict[str, int] = field(default_factory=dict, compare=False)
    warnings: tuple[Diagnostic, ...] = field(default=(), compare=False)

    @property
    def is_scratch(self) -> bool:
        return self.parent == SCRATCH

    @property
    def directory(self) -> Path:
        return self.path.parent

    def line_of(self, key: str) -> int:
        return self.lines.get(key, 1)

    def verifies(self, repo: Repo) -> bool:
        """Whether packages from `repo` are signature-checked (the gpgcheck rule).

        From scratch, as image-builder: a repository without a `gpg` key installs
        unverified unless `gpgcheck` is set (an explicit `true` with no key is a
        spec error); one with a key is verified. In an image parent, `gpgcheck`
        as written (the image may already trust the repository's key).
        """
        if not self.gpgcheck:
            return False
        return bool(repo.gpg) or not self.is_scratch or repo.url.endswith(".repo")


def packages_for_arch(spec: LayerSpec, arch: Arch | None = None) -> tuple[str, ...]:
    """The packages `spec` installs when built for `arch` (default: the host's).

    `packages` first, then that arch's `packages_by_arch` entry (none for an arch
    it does not name). Builds, keys and locks all take a node's list from here.
    """
    arch = arch or host_arch()
    for a, extra in spec.packages_by_arch:
        if a == arch:
            return spec.packages + tuple(p for p in extra if p not in spec.packages)
    return spec.packages


# --------------------------------------------------------------------------- schema


@cache
def layer_schema() -> dict:
    text = resources.files("imagegraph").joinpath("schema/layer.schema.json").read_text()
    return json.loads(text)


@cache
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema  # only when a document has errors to word (50 ms to import)

    return jsonschema.Draft202012Validator(layer_schema())


@cache
def _compiled_validator() -> Any:
    """The schema compiled once per process (jsonschema-rs): the fast yes/no answer."""
    import jsonschema_rs

    return jsonschema_rs.validator_for(layer_schema())


def _schema_valid(plain: Any) -> bool:
    try:
        return bool(_compiled_validator().is_valid(plain))
    except Exception:  # a value it cannot take (a huge integer): let jsonschema decide
        return False


def _known_keys(schema_path: list) -> list[str]:
    """Property names allowed at a place in the schema (for did-you-mean)."""
    node: Any = layer_schema()
    for part in schema_path:
        node = node[part]
        if isinstance(node, dict) and "$ref" in node:
            node = _resolve_ref(node["$ref"])
    return sorted(node.get("properties", {}))


def _resolve_ref(ref: str) -> dict:
    node: Any = layer_schema()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


# ---------------------------------------------------------------------- positions


def node_position(doc: Any, path: list, key_position: bool = False) -> tuple[int, int]:
    """1-based (line, column) of the node at `path` in a ruamel document."""
    node = doc
    line, col = 1, 1
    for i, part in enumerate(path):
        last = i == len(path) - 1
        try:
            # ruamel's CommentedMap / CommentedSeq are a dict / list with `.lc` (positions)
            if isinstance(node, dict):
                if part not in node:
                    break
                pos = node.lc.key(part) if (key_position and last) else node.lc.value(part)
                node = node[part]
            elif isinstance(node, list):
                pos = node.lc.item(part)
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError, AttributeError):
            break
        if pos and pos[0] is not None:
            line, col = pos[0] + 1, pos[1] + 1
    return line, col


def _key_line(node: Any, key: Any, default: int) -> int:
    """1-based line of `key` in a positioned mapping; `default` when it has no position."""
    try:
        pos = node.lc.key(key)
    except (KeyError, IndexError, TypeError, AttributeError):
        return default
    return pos[0] + 1 if pos and pos[0] is not None else default


def _describe(path: list) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the document"


def schema_message(err: jsonschema.ValidationError) -> str:
    v = err.validator
    where = _describe(list(err.absolute_path))
    if v == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"{where} must be of type {want}, not {_yaml_repr(err.instance)}"
    if v == "enum":
        choices = ", ".join(
            str(c) for c in err.validator_value if not str(c).islower() or len(err.validator_value) < 8
        )
        return f"{where} must be one of {choices}; got {_yaml_repr(err.instance)}"
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f"{where} is missing the required key '{missing}'"
    if v == "pattern":
        return f"{where} has an invalid value {_yaml_repr(err.instance)}: {_pattern_hint(list(err.absolute_path))}"
    if v == "oneOf":
        return f"{where} has the wrong form: {_oneof_hint(list(err.absolute_path), err.instance)}"
    if v == "minItems":
        return f"{where} must not be empty"
    if v == "minLength":
        return f"{where} must not be an empty string"
    return f"{where}: {err.message}"


def _yaml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null (empty)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _pattern_hint(path: list) -> str:
    last = path[-1] if path else ""
    if last == "name":
        return "image names are lowercase letters, digits, '.', '_', '-' and '/' between components"
    if last == "publish_tags" or (len(path) >= 2 and path[-2] == "publish_tags"):
        return "tags are letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-'"
    if last == "s3_prefix":
        return "an S3 prefix may not contain '..' components or control characters"
    if last == "s3_bucket":
        return "S3 bucket names are 3-63 lowercase letters, digits, '.' and '-'"
    if last == "alias":
        return "repository aliases are letters, digits, '_', '.', ':' and '-'"
    if last in ("parent", "publish_registry"):
        return "image references may not contain spaces or control characters"
    if last == "publish_s3":
        return "give the S3 endpoint as an http:// or https:// URL"
    if last in ("publish_dir", "src", "dest", "dst"):
        return "paths may not contain control characters"
    return "see the spec reference in the README"


def _oneof_hint(path: list, instance: Any) -> str:
    if path and path[-1] == "publish_tags":
        return "give one tag as a string or a list of tags"
    if len(path) >= 2 and path[-2] == "cmds":
        return "each cmds item is a string or a mapping with 'cmd' (and optional 'loglevel')"
    return "expected a string or a list of strings"


# --------------------------------------------------------------------------- loading


_yaml_local = threading.local()


def _new_yaml() -> YAML:
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def _yaml(text: str = "") -> YAML:
    # One loader per thread: building a YAML() costs ~15 % of parsing a small spec. A document
    # with a %YAML directive gets its own: ruamel keeps its version for every later document.
    from . import yamlload

    if yamlload.has_directive(text):
        return _new_yaml()
    y = getattr(_yaml_local, "yaml", None)
    if y is None:
        y = _yaml_local.yaml = _new_yaml()
    return y


# ruamel's (context, problem) in plain words: (what is wrong, what to do, where it starts).
# "context" places point at ruamel's context mark: where the unclosed thing began, not where the
# parser gave up (an unclosed quote is noticed only at the end of the file).
_YAML_WORDS: list[tuple[str, str, str, str, str]] = [
    (
        "while scanning a quoted scalar",
        "",
        "a quoted string starts here and is never closed",
        "add the closing quote",
        "context",
    ),
    (
        "while parsing a flow sequence",
        "",
        "a '[' list starts here and is not closed",
        "close it with ']', or write one '- item' per line",
        "context",
    ),
    (
        "while parsing a flow mapping",
        "",
        "a '{' mapping starts here and is not closed",
        "close it with '}'",
        "context",
    ),
    (
        "while scanning a simple key",
        "",
        "this line has no ':' but the lines around it are 'key: value' lines",
        "add the ':' or indent the line under the key it continues",
        "context",
    ),
    (
        "",
        "mapping values are not allowed here",
        "unexpected ':' here: the line is indented differently from its neighbours, or a value "
        "containing ': ' needs quotes",
        "align the indentation, or quote the value",
        "problem",
    ),
    (
        "",
        "cannot start any token",
        "a tab or another character that YAML does not allow here",
        "indent with spaces only",
        "problem",
    ),
    (
        "",
        "expected <block end>",
        "this line is indented differently from the lines before it",
        "indent it like its siblings",
        "problem",
    ),
]


def _plain_yaml_error(exc: Any) -> tuple[str, str, Any]:
    context, problem = str(exc.context or ""), str(exc.problem or "")
    if "duplicate key" in problem:
        first = exc.context_mark.line + 1 if exc.context_mark else None
        key = problem.split('"')[1] if '"' in problem else problem
        where = f" (the mapping starts at line {first})" if first else ""
        return f"key '{key}' appears twice in the same mapping{where}", "keep one", exc.problem_mark
    for ctx, prob, words, hint, mark in _YAML_WORDS:
        if (not ctx or context.startswith(ctx)) and (not prob or prob in problem):
            chosen = exc.context_mark if mark == "context" and exc.context_mark else exc.problem_mark
            return words, hint, chosen or exc.context_mark
    return (problem or str(exc).splitlines()[0]), "fix the syntax", exc.problem_mark or exc.context_mark


def parse_yaml(text: str, file: str) -> tuple[Any, list[Diagnostic]]:
    """Parse YAML keeping positions; syntax errors become diagnostics in plain words.

    libyaml first (`yamlload.fast_load`); ruamel for whatever it cannot read identically.
    """
    from . import yamlload  # libyaml and ruamel load with the first file parsed

    doc = yamlload.fast_load(text)
    yamlload.stats.record(file, doc)
    if not isinstance(doc, yamlload.Unsupported):
        return doc, []
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return _yaml(text).load(io.StringIO(text)), []
    except MarkedYAMLError as exc:
        message, hint, mark = _plain_yaml_error(exc)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [Diagnostic(file, line, col, f"invalid YAML: {message}", hint=hint)]
    except YAMLError as exc:
        return None, [Diagnostic(file, 1, 1, f"invalid YAML: {exc}")]
    except Exception as exc:  # ruamel raises assorted errors on binary junk
        return None, [Diagnostic(file, 1, 1, f"unreadable YAML: {type(exc).__name__}: {exc}")]


MAX_NODES = 200_000  # values in one document, aliases expanded (a "billion laughs" stops here)


class DocumentTooLarge(ValueError):
    """A document whose values, aliases expanded, exceed MAX_NODES."""


class UnpairedSurrogate(ValueError):
    """A string holding half a UTF-16 surrogate pair (a `\\udXXX` escape): no tool can encode it."""


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _text(s: str) -> str:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise UnpairedSurrogate(s) from None
    return s


def to_plain(node: Any, _budget: list[int] | None = None) -> Any:
    """ruamel containers -> plain JSON-like Python values.

    Raises `DocumentTooLarge` past MAX_NODES values and RecursionError on a
    document that contains itself (a recursive alias).
    """
    budget = [MAX_NODES] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0:
        raise DocumentTooLarge(f"more than {MAX_NODES:,} values once aliases are expanded")
    if type(node) is str and node.isascii():  # most values: the answer is the value (as below)
        return node
    if isinstance(node, dict):
        return {
            k if type(k) is str and k.isascii() else _text(str(k)): to_plain(v, budget)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [to_plain(v, budget) for v in node]
    if isinstance(node, bool | int | float | str) or node is None:
        if isinstance(node, str):
            return _text(str(node))
        return node
    return str(node)


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def validate_document(doc: Any, file: str, defaults: dict | None = None) -> list[Diagnostic]:
    """Schema and unknown-key checks of one parsed document (with project `defaults` applied)."""
    return _validated(doc, file, defaults)[0]


def _validated(doc: Any, file: str, defaults: dict | None) -> tuple[list[Diagnostic], Any]:
    """`validate_document`'s diagnostics and the plain document it checked (options with the
    defaults), which `_build` reads instead of walking the document again."""
    diags: list[Diagnostic] = []
    if not isinstance(doc, dict):
        what = "empty" if doc is None else f"a {type(doc).__name__}"
        return [
            Diagnostic(
                file, 1, 1, f"a layer spec must be a mapping with an 'options' section; this file is {what}"
            )
        ], None
    from .yamlload import take_plain

    plain = take_plain(doc, MAX_NODES)  # made while libyaml's nodes were read, when they were
    if plain is None:
        plain = to_plain(doc)
    if defaults and isinstance(plain.get("options"), dict):
        # Defaults are validated as part of every spec: a bad one must not reach _build.
        plain["options"] = {**to_plain(defaults), **plain["options"]}
    if _schema_valid(plain):
        return diags, plain  # jsonschema only words the errors of a document the compiled check refused
    import difflib  # did-you-mean, for documents with errors only

    for err in _validator().iter_errors(plain):
        path = list(err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = _known_keys(list(err.schema_path)[:-1])
            extra = [k for k in err.instance if k not in allowed]
            for key in extra:
                line, col = node_position(doc, [*path, key], key_position=True)
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                where = _describe(path)
                msg = f"unknown key '{key}'" + (f" in {where}" if path else "")
                if key == "dst" or (close and close[0] == "dest"):
                    continue  # handled as an alias below
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
                diags.append(Diagnostic(file, line, col, msg, hint=hint))
            continue
        if err.validator == "oneOf" and err.context:
            # Prefer the most specific sub-error when every branch but one failed on type.
            specific = [e for e in err.context if e.validator not in ("type",)]
            if len(specific) == 1 and specific[0].validator != "oneOf":
                err = specific[0]
                path = list(err.absolute_path)
        line, col = node_position(doc, path, key_position=err.validator == "required")
        diags.append(Diagnostic(file, line, col, schema_message(err)))
    return diags, plain


def load_spec(path: Path, text: str | None = None, defaults: dict | None = None) -> LayerSpec:
    """Load and validate one spec file; raise `SpecError` with every problem found."""
    spec, diags = read_spec(path, text, defaults)
    errors = [d for d in diags if d.severity == "error"]
    if errors or spec is None:
        raise SpecError(diags)
    return spec


def read_spec(
    path: Path,
    text: str | None = None,
    defaults: dict | None = None,
    shown: str | None = None,
    path_map: dict[str, str] | None = None,
    check_sources: bool = True,
) -> tuple[LayerSpec | None, list[Diagnostic]]:
    """Load one spec, returning (spec or None, diagnostics incl. warnings).

    `shown` is the file name used in messages (default: the path as given);
    `path_map` maps absolute source prefixes to directories (project settings). Every
    path in the spec is made absolute against the spec's directory, whatever the
    working directory. `check_sources=False` leaves out `source_diagnostics` (the
    host files a valid spec names), for callers that cache the result and check those
    on every use.
    """
    given = os.fspath(path)
    file = shown or (given if isinstance(path, Path) else str(Path(given)))
    absolute = os.path.abspath(given)
    # Path() costs 0.1 ms in Python 3.11; a project load passes absolute Paths already.
    path = path if isinstance(path, Path) and absolute == given else Path(absolute)
    if text is None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            return None, [Diagnostic(file, 0, 0, f"cannot read: {exc.strerror}")]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [
                Diagnostic(file, 1, 1, f"not UTF-8 text (byte {exc.start})", hint="save the file as UTF-8")
            ]
    doc, diags = parse_yaml(text, file)
    if diags:
        return None, diags
    try:
        diags, plain = _validated(doc, file, defaults)
    except (DocumentTooLarge, RecursionError) as exc:
        why = "it contains itself through an alias" if isinstance(exc, RecursionError) else str(exc)
        return None, [Diagnostic(file, 1, 1, f"the document is too large or too deep: {why}")]
    except UnpairedSurrogate:
        # YAML does not join \\ud83d\\ude00 pairs as JSON does: each half is a lone, unencodable code point.
        m = _SURROGATE_ESCAPE.search(text)
        line, col = (
            (text.count("\n", 0, m.start()) + 1, m.start() - text.rfind("\n", 0, m.start())) if m else (1, 1)
        )
        return None, [
            Diagnostic(
                file,
                line,
                col,
                "a \\u escape here is half of a UTF-16 surrogate pair, which is not a character",
                hint="write the character itself, or escape it as \\UXXXXXXXX (8 hex digits)",
            )
        ]
    if any(d.severity == "error" for d in diags):
        # The source paths are checked anyway: fixing the schema must not reveal a second round.
        return None, diags + _raw_source_diagnostics(doc, path.parent, file, path_map or {})
    spec, diags = _build(path, file, doc, plain, diags, path_map or {})
    if spec is not None and check_sources:
        # The spec itself is sound: it is returned with its missing sources, so a layer can be
        # drawn and planned (as blocked) without the files; building it needs them (load_spec).
        diags += source_diagnostics(spec, file)
    return spec, diags


def source_diagnostics(spec: LayerSpec, file: str) -> list[Diagnostic]:
    """Host paths the spec pulls in (copyfiles sources, playbooks, inventories, key_paths) that do not exist."""
    out = []
    for kp in spec.key_paths:
        if not kp.source.exists() and not kp.source.is_symlink():
            out.append(
                Diagnostic(
                    file,
                    kp.line,
                    kp.column,
                    f"key_paths entry '{kp.path}' does not exist (looked at {kp.source})",
                    hint="create it or remove it from options.key_paths; relative paths resolve against the spec's directory",
                )
            )
    for cf in spec.copyfiles:
        if not _exists(cf.source):
            out.append(
                _missing(
                    file,
                    cf.line,
                    cf.column,
                    f"copyfiles source '{cf.src}'",
                    cf.src,
                    cf.source,
                    spec.directory,
                )
            )
    if spec.layer_type == "ansible":
        for key, values, paths in (
            ("playbooks", spec.playbooks, spec.playbook_paths),
            ("inventory", spec.inventory, spec.inventory_paths),
        ):
            for v, p in zip(values, paths, strict=True):
                if not _exists(p):
                    out.append(
                        _missing(
                            file, spec.line_of(f"options.{key}"), 3, f"{key} path '{v}'", v, p, spec.directory
                        )
                    )
    return out


def _raw_source_diagnostics(doc: Any, base: Path, file: str, path_map: dict[str, str]) -> list[Diagnostic]:
    """Missing copyfiles sources and playbook/inventory paths of a document that failed the
    schema, as far as they are written as strings (what `source_diagnostics` says of a spec)."""
    if not isinstance(doc, dict):
        return []
    out = []
    items = doc.get("copyfiles")
    for i, item in enumerate(items if isinstance(items, list) else []):
        src = item.get("src") if isinstance(item, dict) else None
        if isinstance(src, str) and src and "\0" not in src:
            source = map_path(base, src, path_map)
            if not _exists(source):
                line, col = node_position(doc, ["copyfiles", i, "src"])
                out.append(_missing(file, line, col, f"copyfiles source '{src}'", src, source, base))
    opts = doc.get("options")
    for key in ("playbooks", "inventory"):
        value = opts.get(key) if isinstance(opts, dict) else None
        for v in [value] if isinstance(value, str) else (value if isinstance(value, list) else []):
            if isinstance(v, str) and v and "\0" not in v:
                p = map_path(base, v, path_map)
                if not _exists(p):
                    line, _col = node_position(doc, ["options", key], key_position=True)
                    out.append(_missing(file, line, 3, f"{key} path '{v}'", v, p, base))
    return out


def _exists(p: Path) -> bool:
    """A path (or a dangling symlink) is there; names no file system accepts are not."""
    try:
        return p.exists() or p.is_symlink()
    except (OSError, ValueError):
        return False


def _missing(file: str, line: int, col: int, what: str, written: str, found: Path, base: Path) -> Diagnostic:
    as_written = written.startswith("/") and Path(written) == found
    hint = "create it or fix the path"
    if not written.startswith("/"):
        hint += "; relative paths resolve against the spec's directory"
    elif as_written:
        hint = _path_map_hint(base, written) or hint
    where = "" if as_written else f" (looked at {found})"
    return Diagnostic(file, line, col, f"{what} does not exist{where}", hint=hint, kind="source")


def _build(
    path: Path,
    file: str,
    doc: CommentedMap,
    plain: dict,
    diags: list[Diagnostic],
    path_map: dict[str, str],
) -> tuple[LayerSpec | None, list]:
    """`plain`: the document as `_validated` checked it (options with the project's defaults)."""
    opts_node = doc["options"]
    opts = plain["options"]
    base = path.parent

    def pos(*p: Any, key: bool = False) -> tuple[int, int]:
        return node_position(doc, list(p), key_position=key)

    def warn(p: list, msg: str, hint: str | None = None) -> None:
        line, col = node_position(doc, p, key_position=True)
        diags.append(Diagnostic(file, line, col, msg, severity="warning", hint=hint))

    def error(p: list, msg: str, hint: str | None = None, key: bool = False) -> None:
        line, col = node_position(doc, p, key_position=key)
        diags.append(Diagnostic(file, line, col, msg, hint=hint))

    layer_type = opts["layer_type"]
    pkg_manager = opts.get("pkg_manager")
    if layer_type == "base" and not pkg_manager:
        error(
            ["options"],
            "options.pkg_manager is required for layer_type 'base'",
            hint="set it to dnf, zypper or apt",
            key=True,
        )
    if "openscap" in doc:
        error(
            ["openscap"],
            "openscap is not supported (it is broken in image-builder too)",
            hint="remove the section and run the scan in a cmds step",
            key=True,
        )

    registry = opts.get("publish_registry")
    if registry is not None:
        registry = registry.rstrip("/")
        while "//" in registry:
            registry = registry.replace("//", "/")
    if "registry_opts_push" in opts_node and not registry:
        warn(
            ["options", "registry_opts_push"],
            "registry_opts_push is ignored: the layer has no publish_registry",
        )
    parent = opts.get("parent", SCRATCH).strip()
    if parent == SCRATCH and "registry_opts_pull" in opts_node:
        warn(
            ["options", "registry_opts_pull"], "registry_opts_pull is ignored: the layer starts from scratch"
        )
    if "variant" in opts_node and not (pkg_manager == "apt" and parent == SCRATCH):
        warn(["options", "variant"], "variant is mmdebstrap's: used by apt layers from scratch only; ignored")
    for k in ("s3_prefix", "s3_bucket", "s3_layout"):
        if k in opts_node and not opts.get("publish_s3"):
            warn(["options", k], f"{k} is ignored: the layer has no publish_s3")

    if layer_type == "ansible":
        for k in (
            "repos",
            "modules",
            "package_groups",
            "packages",
            "packages_by_arch",
            "remove_packages",
            "copyfiles",
            "cmds",
        ):
            if k in doc:
                warn([k], f"'{k}' is ignored for layer_type 'ansible' (image-builder ignores it too)")
        if not opts.get("playbooks"):
            error(["options"], "an ansible layer needs options.playbooks", key=True)
    else:
        for k in ("groups", "playbooks", "inventory", "vars"):
            if k in opts_node:
                warn(["options", k], f"options.{k} is only used by layer_type 'ansible'; ignored")

    repos = []
    for i, r in enumerate(plain.get("repos") or []):
        if r.get("priority") is not None and pkg_manager != "zypper":
            warn(["repos", i, "priority"], "repos priority is used by zypper only; ignored")
        if (r.get("suite") or r.get("components")) and pkg_manager != "apt":
            warn(["repos", i], "repos suite/components are used by apt only; ignored")
        repos.append(
            Repo(
                alias=r["alias"],
                url=r["url"],
                gpg=r.get("gpg"),
                priority=r.get("priority"),
                suite=r.get("suite"),
                components=_as_tuple(r.get("components")),
            )
        )
    gpgcheck_explicit = "gpgcheck" in opts  # in the spec or the project's defaults
    if parent == SCRATCH and pkg_manager in ("dnf", "zypper") and opts.get("gpgcheck", True):
        for i, r in enumerate(repos):
            if r.gpg or r.url.endswith(".repo"):
                continue  # a .repo file says itself whether it is checked
            if gpgcheck_explicit:
                error(
                    ["repos", i, "alias"],
                    f"gpgcheck is true but repository {r.alias} has no gpg key: "
                    f"{pkg_manager} would refuse its packages",
                    hint="add `gpg:` with the key's URL, or drop `gpgcheck: true` to install it unverified "
                    "as image-builder does",
                )
            else:
                warn(
                    ["repos", i],
                    f"installs unsigned packages from {r.alias}: add `gpg:` to verify them",
                    hint="image-builder installs scratch layers unverified; imagegraph does so only "
                    "for repositories without a key",
                )
    aliases = [r.alias for r in repos]
    for i, a in enumerate(aliases):
        if a in aliases[:i]:
            error(["repos", i, "alias"], f"repository alias '{a}' is used twice")

    copyfiles = []
    for i, item in enumerate(plain.get("copyfiles") or []):
        if "dst" in item and "dest" in item:
            error(["copyfiles", i, "dst"], "copyfiles item has both 'dest' and 'dst'", key=True)
            continue
        if "dst" in item:
            warn(["copyfiles", i, "dst"], "'dst' is accepted as an alias of 'dest'", hint="write 'dest'")
        dest = item.get("dest", item.get("dst"))
        if dest is None:
            error(["copyfiles", i], "copyfiles item needs 'dest'")
            continue
        src = item["src"]
        source = map_path(base, src, path_map)
        line, col = pos("copyfiles", i, "src")
        copyfiles.append(
            CopyFile(
                src=src, dest=dest, opts=_split_opts(item.get("opts")), source=source, line=line, column=col
            )
        )

    cmds = []
    for node in plain.get("cmds") or []:  # plain: a tagged item (`- !x`) is its text
        if isinstance(node, str):
            cmds.append(Cmd(cmd=str(node)))
        else:
            level = str(node.get("loglevel", "INFO")).upper()
            cmds.append(Cmd(cmd=str(node["cmd"]), loglevel="WARNING" if level == "WARN" else level))

    playbooks = _as_tuple(opts.get("playbooks"))
    inventory = _as_tuple(opts.get("inventory"))
    playbook_paths = tuple(map_path(base, p, path_map) for p in playbooks)
    inventory_paths = tuple(map_path(base, p, path_map) for p in inventory)
    modules = tuple((str(k), _as_tuple(v)) for k, v in (plain.get("modules") or {}).items())
    sq = opts.get("squashfs") or {}
    squashfs = SquashfsOptions(
        compression=sq.get("compression", "gzip"),
        level=sq.get("level"),
        block_size=str(sq["block_size"]) if sq.get("block_size") is not None else None,
    )
    # The key lines node_position(key=True) gives, read straight from `.lc` (13 walks a file otherwise).
    options_line = pos("options")[0]
    lines = {f"options.{k}": _key_line(opts_node, k, options_line) for k in opts_node}
    for k in doc:
        lines[str(k)] = _key_line(doc, k, 1)
    publish_dir = opts.get("publish_dir")
    key_paths = []
    for i, written in enumerate(_as_tuple(opts.get("key_paths"))):
        where = (
            ["options", "key_paths", i]
            if isinstance(opts_node.get("key_paths"), list)
            else ["options", "key_paths"]
        )
        line, col = pos(*where)
        key_paths.append(KeyPath(path=written, source=_resolve(base, written), line=line, column=col))

    arches: list[Arch] = []
    for i, written in enumerate(_as_tuple(opts.get("arches"))):
        where = (
            ["options", "arches", i] if isinstance(opts_node.get("arches"), list) else ["options", "arches"]
        )
        if "arches" not in opts_node:
            where = ["options"]  # from imagegraph.yaml's defaults
        try:
            a = normalize_arch(str(written))
        except ValueError as exc:
            error(
                where,
                f"options.arches: {exc}",
                hint="write the name as the distribution does: x86_64, aarch64, ppc64le",
            )
            continue
        if a in arches:
            error(
                where, f"options.arches: {a} is listed twice" + (f" (as {written!r})" if written != a else "")
            )
            continue
        arches.append(a)

    by_arch: dict[Arch, tuple[str, ...]] = {}
    for written, names in (plain.get("packages_by_arch") or {}).items():
        where = ["packages_by_arch", written]
        try:
            a = normalize_arch(str(written))
        except ValueError as exc:
            error(
                where,
                f"packages_by_arch: {exc}",
                hint="name the architecture as the distribution does: x86_64, aarch64, ppc64le",
                key=True,
            )
            continue
        if a in by_arch:
            error(where, f"packages_by_arch: {a} is named twice (as {written!r} too)", key=True)
            continue
        if arches and a not in arches:
            warn(
                where,
                f"packages_by_arch: the layer does not build {a} (options.arches: "
                f"{', '.join(arches)}); ignored",
                hint=f"add {a} to options.arches or drop this entry",
            )
        by_arch[a] = _as_tuple(names)

    boot_opts = dict(opts.get("boot_test") or {})
    boot_arches: list[Arch] = []
    for written in _as_tuple(boot_opts.pop("arches", None)):
        try:
            boot_arches.append(normalize_arch(written))
        except ValueError as exc:
            error(["options", "boot_test", "arches"], f"options.boot_test.arches: {exc}")

    if any(d.severity == "error" for d in diags):
        return None, diags
    spec = LayerSpec(
        path=path,
        layer_type=layer_type,
        name=opts.get("name", DEFAULT_NAME),
        publish_tags=_as_tuple(opts.get("publish_tags")) or DEFAULT_TAGS,
        pkg_manager=pkg_manager,
        parent=parent,
        gpgcheck=opts.get("gpgcheck", True),
        proxy=opts.get("proxy"),
        publish_local=opts.get("publish_local", False),
        publish_registry=registry,
        registry_opts_push=_as_tuple(opts.get("registry_opts_push")),
        registry_opts_pull=_as_tuple(opts.get("registry_opts_pull")),
        publish_s3=opts.get("publish_s3"),
        s3_prefix=opts.get("s3_prefix", ""),
        s3_bucket=opts.get("s3_bucket", DEFAULT_BUCKET),
        groups=_as_tuple(opts.get("groups")),
        playbooks=playbooks,
        playbook_paths=playbook_paths,
        inventory=inventory,
        inventory_paths=inventory_paths,
        vars=dict(opts.get("vars") or {}),
        labels={str(k): str(v) for k, v in (opts.get("labels") or {}).items()},
        repos=tuple(repos),
        modules=modules,
        package_groups=_as_tuple(doc.get("package_groups")),
        packages=_as_tuple(doc.get("packages")),
        packages_by_arch=tuple(by_arch.items()),
        remove_packages=_as_tuple(doc.get("remove_packages")),
        copyfiles=tuple(copyfiles),
        cmds=tuple(cmds),
        releasever=str(opts["releasever"]) if opts.get("releasever") is not None else None,
        publish_dir=_resolve(base, publish_dir) if publish_dir else None,
        s3_layout=opts.get("s3_layout", "image-builder"),
        squashfs=squashfs,
        kernel_version=opts.get("kernel_version"),
        rootfs_only=opts.get("rootfs_only", False),
        boot_params=opts.get("boot_params"),
        boot_test=BootTestOptions(**boot_opts, arches=tuple(boot_arches)),
        key_paths=tuple(key_paths),
        arches=tuple(arches),
        variant=opts.get("variant"),
        lines=lines,
        warnings=tuple(d for d in diags if d.severity == "warning"),
    )
    return spec, diags


def _resolve(base: Path, p: str) -> Path:
    """`p` against the spec's directory, normalised (`layers/../out` is `out`): one spelling per path."""
    # os.path.join, not `base / p`: one Path built instead of two (normpath does all pathlib's tidying).
    return Path(os.path.normpath(p if p.startswith("/") else os.path.join(base, p)))


def map_path(base: Path, p: str, path_map: dict[str, str]) -> Path:
    """A source path as the host sees it: relative ones against the spec's directory `base`,
    absolute ones under a `path_map` prefix (longest first) moved to its directory."""
    if p.startswith("/"):
        for prefix in sorted(path_map, key=len, reverse=True):
            if p == prefix or p.startswith(prefix + "/"):
                return _resolve(base, path_map[prefix]) / p[len(prefix) :].lstrip("/")
    return _resolve(base, p)


def _path_map_hint(base: Path, p: str) -> str | None:
    """For a missing absolute path: the `path_map` line that would find it beside the spec."""
    parts = Path(p).parts[1:]
    # A bare file name beside the spec says little (it may be another spec): want dir/file at least.
    for k in range(1, len(parts) - 1):
        if _exists(base / Path(*parts[k:])):
            prefix = "/" + "/".join(parts[:k])
            return (
                f"{Path(*parts[k:])} is beside the spec: map the prefix in imagegraph.yaml with "
                f"`path_map: {{{prefix}: .}}` (image-builder mounts the configs at {prefix})"
            )
    return None


def _split_opts(value: Any) -> tuple[str, ...]:
    """`opts` items like '--chown 0:0' are split into argv words, as image-builder does."""
    out: list[str] = []
    for item in _as_tuple(value):
        out.extend(item.split())
    return tuple(out)


def content_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
