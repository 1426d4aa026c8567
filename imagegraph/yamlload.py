"""Fast YAML loading: libyaml's parser, ruamel.yaml's values and positions.

ruamel.yaml's round-trip parser is pure Python (about 2 ms per spec file);
libyaml (PyYAML's C parser) composes the same file in a small fraction of
that. `fast_load` composes with libyaml and builds what ruamel's round-trip
loader would, as dicts and lists carrying ruamel's `.lc` line/column
interface (`PositionedMap`, `PositionedSeq`). Each plain scalar's type comes
from ruamel's own YAML 1.2 resolver, so `yes`, `on` and `no` stay strings.
Only the forms whose value is beyond doubt are constructed (strings,
`true`/`false`, null, decimal integers that do not start with 0); for
anything else (floats, `0`, `0755`, hex, timestamps, empty values, tags,
anchors, merge keys, directives, tabs, Unicode line breaks, duplicate keys,
syntax errors) it returns an `Unsupported` with the reason, and the caller
parses the file with ruamel, which gives the values and error messages it
always gave. `stats` counts the files each path read (`-v` shows them).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

import yaml
from ruamel.yaml.nodes import ScalarNode as RuamelScalarNode
from ruamel.yaml.resolver import VersionedResolver

try:
    from yaml import CSafeLoader as _CLoader
except ImportError:  # PyYAML built without libyaml: every file goes to ruamel
    _CLoader = None

# Set False to read every file with ruamel (the equivalence tests compare both paths).
enabled = True


class Unsupported:
    """The fast path cannot promise ruamel's result for this text; `reason` says why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unsupported({self.reason!r})"


class _NotIdentical(Exception):
    pass


class LineCol:
    """Positions as ruamel's `.lc` gives them (0-based): `key(k)`, `value(k)`, `item(i)`."""

    __slots__ = ("line", "col", "data")

    def __init__(self, line: int, col: int, data: dict):
        self.line, self.col, self.data = line, col, data

    def key(self, k: Any) -> tuple[int, int]:
        d = self.data[k]
        return d[0], d[1]

    def value(self, k: Any) -> tuple[int, int]:
        d = self.data[k]
        return d[2], d[3]

    def item(self, i: int) -> tuple[int, int]:
        d = self.data[i]
        return d[0], d[1]


class PositionedMap(dict):
    """A mapping with ruamel's `.lc` positions (a plain dict otherwise: C-speed access); a
    document's top mapping may carry its plain values (`take_plain`)."""

    __slots__ = ("lc", "plain")


class PositionedSeq(list):
    """A sequence with ruamel's `.lc` positions."""

    __slots__ = ("lc",)


# Markers the loader's resolver hands back instead of YAML 1.1 tags: the tag
# of a plain scalar is decided later by ruamel's 1.2 resolver.
_PLAIN = "!imagegraph-plain"
_QUOTED = "!imagegraph-quoted"
_MAP = "!imagegraph-map"
_SEQ = "!imagegraph-seq"

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_PLAIN_DEPTH = 100  # deeper documents: to_plain (whose RecursionError is a diagnostic) makes theirs
_DECIMAL = re.compile(r"[-+]?[1-9][0-9]*\Z")  # ruamel makes 0 and 0-led digits a ScalarInt

if _CLoader is not None:

    class _Loader(_CLoader):  # type: ignore[misc,valid-type]
        """libyaml composer that leaves tag resolution to us (no YAML 1.1 guesses)."""

        def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
            if kind is yaml.ScalarNode:
                if implicit[0]:
                    return _PLAIN
                return _QUOTED if implicit[1] else "!imagegraph-other"
            if not implicit:
                return "!imagegraph-other"
            return _MAP if kind is yaml.MappingNode else _SEQ

        # Path resolvers (PyYAML's add_path_resolver) are not used: skip their bookkeeping per node.
        def descend_resolver(self, current_node: Any, current_index: Any) -> None:
            pass

        def ascend_resolver(self) -> None:
            pass


_ScalarNode, _MappingNode = yaml.ScalarNode, yaml.MappingNode  # libyaml makes these exact classes
_ODD_BREAKS = re.compile("[\x85\u2028\u2029]")
_resolver_local = threading.local()


def _ruamel_tag(value: str) -> str:
    # ruamel's resolver, as its round-trip loader uses it for a document without %YAML (1.2).
    local = _resolver_local
    r = getattr(local, "r", None)
    if r is None:
        r = local.r = VersionedResolver(version=(1, 2))
        # ruamel picks its regexps by a value's first character: any other first character is a
        # string (unless some regexp applies to every first character, the None entry).
        table = r.versioned_resolver
        local.firsts = None if None in table else frozenset(table)
        local.memo = {}
    if local.firsts is not None and value[0] not in local.firsts:
        return _STR
    tag = local.memo.get(value)
    if tag is None:
        tag = str(r.resolve(RuamelScalarNode, value, (True, False)))
        if len(local.memo) < 4096:
            local.memo[value] = tag
    return tag


def _scalar(node: Any) -> Any:
    tag = node.tag
    value = node.value
    if tag == _QUOTED:
        return value
    if tag != _PLAIN:
        raise _NotIdentical(f"explicit tag {tag}")
    if value == "":
        # ruamel places an empty value's mark differently from libyaml: keep its positions.
        raise _NotIdentical("an empty value")
    resolved = _ruamel_tag(value)
    if resolved == _STR:
        return value
    if resolved == _NULL:
        return None
    if resolved == _BOOL:
        return value.lower() == "true"
    if resolved == _INT and _DECIMAL.match(value):
        return int(value)
    # The reason names the place, not the value (it is logged with -vv; a value may be a secret).
    m = node.start_mark
    raise _NotIdentical(f"{resolved.rsplit(':', 1)[-1]} scalar at line {m.line + 1}, column {m.column + 1}")


def _build(node: Any, count: list[int], depth: int = 1) -> tuple[Any, Any]:
    """(the positioned value, the plain value `spec.to_plain` makes of it) of a mapping or
    sequence node; `count`: [values so far, the deepest container so far]."""
    mark = node.start_mark
    items = node.value
    count[0] += len(items)
    if depth > count[1]:
        count[1] = depth
    depth += 1
    if type(node) is _MappingNode:
        if node.tag != _MAP:
            raise _NotIdentical(f"explicit tag {node.tag}")
        out = PositionedMap()
        plain: Any = {}
        data: dict[Any, tuple[int, int, int, int]] = {}
        for knode, vnode in items:
            if type(knode) is not _ScalarNode:
                raise _NotIdentical("a mapping or sequence as a key")
            key = _scalar(knode)
            if key in out:
                raise _NotIdentical("duplicate key")  # ruamel words the error
            km, vm = knode.start_mark, vnode.start_mark
            data[key] = (km.line, km.column, vm.line, vm.column)
            if type(vnode) is _ScalarNode:
                out[key] = pv = _scalar(vnode)
            else:
                out[key], pv = _build(vnode, count, depth)
            plain[key if type(key) is str else str(key)] = pv
        out.lc = LineCol(mark.line, mark.column, data)
        return out, plain
    if node.tag != _SEQ:
        raise _NotIdentical(f"explicit tag {node.tag}")
    seq = PositionedSeq()
    plain = []
    positions: dict[int, tuple[int, int]] = {}
    for i, item in enumerate(items):
        m = item.start_mark
        positions[i] = (m.line, m.column)
        if type(item) is _ScalarNode:
            v = pv = _scalar(item)
        else:
            v, pv = _build(item, count, depth)
        seq.append(v)
        plain.append(pv)
    seq.lc = LineCol(mark.line, mark.column, positions)
    return seq, plain


def _has_anchor(text: str) -> bool:
    # Anchored values are typed differently by ruamel (ScalarBoolean, ScalarInt);
    # '&' is otherwise common only in URLs, so the event scan is rare.
    if "&" not in text:
        return False
    try:
        return any(getattr(ev, "anchor", None) for ev in yaml.parse(text, Loader=_CLoader))
    except yaml.YAMLError:
        return True


def has_directive(text: str) -> bool:
    """A `%YAML` / `%TAG` line (or anything that may be one): the document picks its own rules."""
    return "%" in text and re.search(r"^%", text, re.M) is not None


def fast_load(text: str) -> Any:
    """The document ruamel's round-trip loader would return, or `Unsupported`."""
    if not enabled or _CLoader is None:
        return Unsupported("fast path off")
    if has_directive(text):
        return Unsupported("a directive")
    if "\t" in text:
        return Unsupported("a tab")  # ruamel refuses tabs in places libyaml accepts them
    if _ODD_BREAKS.search(text):
        return Unsupported("a Unicode line break")  # libyaml counts NEL, LS, PS as new lines
    if _has_anchor(text):
        return Unsupported("an anchor")
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError:
        return Unsupported("a syntax error")  # ruamel words the diagnostic
    except Exception as exc:  # junk libyaml refuses in its own way
        return Unsupported(type(exc).__name__)
    if node is None:
        return None
    try:
        if type(node) is _ScalarNode:
            return _scalar(node)
        count = [1, 0]
        doc, plain = _build(node, count)
    except _NotIdentical as exc:
        return Unsupported(str(exc))
    except RecursionError:
        return Unsupported("too deep")
    # to_plain refuses a string no encoding takes (only an escape or a non-ASCII text can make
    # one) and raises RecursionError on a deep document: those it makes itself, as for ruamel's.
    if type(doc) is PositionedMap and count[1] <= _PLAIN_DEPTH and text.isascii() and "\\" not in text:
        doc.plain = (plain, count[0])
    return doc


def take_plain(doc: Any, max_values: int) -> Any:
    """`spec.to_plain(doc)` as `fast_load` made it beside `doc`, once; None when it did not or
    when the document holds more than `max_values` values (to_plain raises)."""
    made = getattr(doc, "plain", None) if type(doc) is PositionedMap else None
    if made is None:
        return None
    doc.plain = None  # the caller changes it
    plain, values = made
    return plain if values <= max_values else None


class LoadStats:
    """How many files each path read in this process (shown with `-v`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.fallbacks: list[tuple[str, str]] = []  # (file, reason)

    def record(self, file: str, result: Any) -> None:
        with self._lock:
            if isinstance(result, Unsupported):
                self.counts["ruamel"] += 1
                if len(self.fallbacks) < 1000:  # a long-lived process keeps a sample, not all
                    self.fallbacks.append((file, result.reason))
            else:
                self.counts["libyaml"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"libyaml": self.counts["libyaml"], "ruamel": self.counts["ruamel"]}


stats = LoadStats()
