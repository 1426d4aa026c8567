"""What the command line prints: human lines or JSON lines, from the core's objects.

The core returns objects; this module turns them into text for a person (a
plan tree, summaries, tables) or into JSON events for a machine. One rule
decides between them (`choose_format`): human lines unless `--log-format
json` is given or systemd's `JOURNAL_STREAM` is set, and then everything
printed is a JSON line. Colour only on a terminal and never with `NO_COLOR`.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import Diagnostic
from .reasons import ReasonCode
from .redact import json_may_change, redact, redact_obj

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .plan import Action, LayerPlan, Plan


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


ACTION_STYLE = {
    # plan.Action values (a StrEnum: its members find these keys); the plan module loads only
    # for the commands that plan, not for validate
    "build": "bold yellow",
    "publish": "cyan",
    "up-to-date": "green",
    "blocked": "red",
    "unknown": "bold magenta",
}
STATUS_STYLE = {
    "ok": "green",
    "up-to-date": "green",
    "up to date": "green",
    "failed": "bold red",
    "blocked": "red",
    "unknown": "bold magenta",
    "stale": "yellow",
    "never built": "yellow",
    "cancelled": "magenta",
    "not-started": "dim",
}


def choose_format(requested: str, environ: Mapping[str, str] | None = None) -> OutputFormat:
    """`json` asks for JSON lines; `auto` means JSON under systemd (JOURNAL_STREAM), else text."""
    env = os.environ if environ is None else environ
    if requested == "json" or (requested == "auto" and env.get("JOURNAL_STREAM")):
        return OutputFormat.JSON
    return OutputFormat.TEXT


def use_color(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(getattr(stream, "isatty", lambda: False)()) and not env.get("NO_COLOR")


def indented_json(doc: Any) -> str:
    """`json.dumps(doc, indent=2, default=str)`, the same characters, about twice as fast on a
    large plan: with `indent` json runs its pure-Python encoder, this writes the layout itself and
    leaves strings and numbers to json's C functions."""
    buf = io.StringIO()
    write_indented_json(doc, buf)
    return buf.getvalue()


def write_indented_json(doc: Any, stream: IO[str]) -> None:
    """`indented_json(doc)` written to `stream` a block at a time (a 5,000-layer plan is 6 MB of
    text in some 700,000 pieces: never all held at once)."""
    out = _Pieces(stream.write)
    _indented(doc, "\n", out)
    out.flush()


def write_redacted_json(doc: Any, stream: IO[str]) -> None:
    """`write_indented_json(redact_obj(doc), stream)`: the document is rendered as it is and
    copied with its strings redacted only when the text shows that redaction could change one."""
    blocks: list[str] = []
    out = _Pieces(blocks.append)
    _indented(doc, "\n", out)
    out.flush()
    text = "".join(blocks)
    del blocks
    if json_may_change(text):
        write_indented_json(redact_obj(doc), stream)
    else:
        stream.write(text)


class _Pieces(list):
    def __init__(self, write: Callable[[str], Any]) -> None:
        super().__init__()
        self.write = write

    def flush(self) -> None:
        self.write("".join(self))
        self.clear()


_encode_str = json.encoder.encode_basestring_ascii


def _indented(obj: Any, nl: str, out: _Pieces) -> None:
    if isinstance(obj, str):
        out.append(_encode_str(obj))
    elif obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        out.append(int.__repr__(obj))
    elif isinstance(obj, float):
        out.append(json.dumps(obj))
    elif isinstance(obj, dict):
        if not obj:
            out.append("{}")
            return
        inner = nl + "  "
        sep = "{" + inner
        for k, v in obj.items():
            if not isinstance(k, str):
                k = json.loads(json.dumps({k: None}))  # json's own key conversion (ints, bools, None)
                k = next(iter(k))
            # Strings, the most common values, are written here rather than by a call each.
            if type(v) is str:
                out.append(sep + _encode_str(k) + ": " + _encode_str(v))
            else:
                out.append(sep + _encode_str(k) + ": ")
                _indented(v, inner, out)
            sep = "," + inner
        out.append(nl + "}")
    elif isinstance(obj, list | tuple):
        if not obj:
            out.append("[]")
            return
        inner = nl + "  "
        sep = "[" + inner
        for v in obj:
            if type(v) is str:
                out.append(sep + _encode_str(v))
            else:
                out.append(sep)
                _indented(v, inner, out)
                if len(out) > 50_000:
                    out.flush()
            sep = "," + inner
        out.append(nl + "]")
    else:
        _indented(str(obj), nl, out)  # default=str


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _console(stderr: bool) -> Console:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # `imagegraph plan | head`: the reader has what it wanted; rich would exit 1, which reads
            # as failure under `set -o pipefail`. Raise for `cli.main`, which exits 0.
            raise BrokenPipeError

    stream = sys.stderr if stderr else sys.stdout
    return _Console(stderr=stderr, highlight=False, soft_wrap=True, no_color=not use_color(stream))


def plain_stream(stream: IO[str], text: str, environ: Mapping[str, str] | None = None) -> bool:
    """True when rich would print `text` to `stream` as it is: not a terminal by rich's own rules
    (isatty, FORCE_COLOR, TTY_COMPATIBLE), so no style is drawn, and no control character (rich
    expands tabs and drops some). Then a line is written without loading rich (0.05 s)."""
    env = os.environ if environ is None else environ
    if "FORCE_COLOR" in env or "TTY_COMPATIBLE" in env:
        return False
    try:
        if stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    return not any(c < " " and c != "\n" for c in text)


class Output:
    """Where a command's results and diagnostics go, in the chosen format."""

    def __init__(self, fmt: OutputFormat, quiet: bool = False, command: str = ""):
        self.fmt = fmt
        self.quiet = quiet
        self.command = command

    # The consoles (and rich) are made when first needed: `plan --json` to a pipe never needs them.
    @cached_property
    def out(self) -> Console:
        return _console(stderr=False)

    @cached_property
    def err(self) -> Console:
        return _console(stderr=True)

    def _err_line(self, text: str, style: str) -> None:
        if "err" not in self.__dict__ and plain_stream(sys.stderr, text):
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        else:
            from rich.text import Text

            self.err.print(Text(text, style=style))

    @property
    def json(self) -> bool:
        return self.fmt == OutputFormat.JSON

    def event(self, event: str, level: str = "info", stream: IO[str] | None = None, **fields: Any) -> None:
        """One JSON line, shaped like the log's events (event, level, timestamp)."""
        doc = {
            "event": redact(event),
            "level": level,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **redact_obj(fields),
        }
        print(json.dumps(doc, sort_keys=True, default=str), file=stream or sys.stdout, flush=True)

    def document(self, doc: Any, as_json: bool, human: Callable[[], None]) -> None:
        """A command's result: `--json` prints the document (one line in JSON mode),
        JSON mode alone wraps it in an event, else `human()` renders it."""
        if as_json:
            if self.json:
                print(json.dumps(redact_obj(doc), sort_keys=True, default=str), flush=True)
            else:
                write_redacted_json(doc, sys.stdout)
                print(flush=True)
        elif self.json:
            self.event(f"{self.command} result", command=self.command, result=redact_obj(doc))
        else:
            human()  # renders from its own objects, not from `doc`

    def info(self, text: str | Text) -> None:
        """A human summary line on stdout (dropped by -q, an event in JSON mode)."""
        if self.quiet:
            return
        if self.json:
            self.event(str(text), command=self.command)
        elif (
            isinstance(text, str)
            and "out" not in self.__dict__
            and "[" not in text  # rich markup
            and ":" not in text  # rich emoji codes
            and plain_stream(sys.stdout, text)
        ):
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        else:
            self.out.print(text)

    def warnings(self, diags: list[Diagnostic]) -> None:
        if self.quiet:
            return
        for d in diags:
            if self.json:
                self.event(
                    redact(str(d)),
                    level=d.severity,
                    stream=sys.stderr,
                    file=d.file,
                    line=d.line,
                    column=d.column,
                )
            else:
                self._err_line(redact(str(d)), "yellow" if d.severity == "warning" else "red")

    def warning(self, text: str, **fields: Any) -> None:
        if self.quiet:
            return
        if self.json:
            self.event(text, level="warning", stream=sys.stderr, **fields)
        else:
            self._err_line(f"warning: {redact(text)}", "yellow")

    def error(self, text: str, **fields: Any) -> None:
        if self.json:
            self.event(text, level="error", stream=sys.stderr, **fields)
        else:
            self._err_line(redact(text), "red")

    @contextmanager
    def status(self, text: str) -> Iterator[Callable[[str], None]]:
        """A transient status line on a terminal while something slow runs; nothing elsewhere."""
        if self.json or self.quiet or ("err" not in self.__dict__ and plain_stream(sys.stderr, "")):
            yield lambda _t: None
            return
        if not self.err.is_terminal:
            yield lambda _t: None
            return
        with self.err.status(text) as st:
            yield lambda t: st.update(t)


# ------------------------------------------------------------------------- plans


def _layer_ids(plan: Plan) -> dict[str, list[LayerPlan]]:
    """Layer id -> its nodes (one per architecture; a host-arch layer has one), in plan order."""
    out: dict[str, list[LayerPlan]] = {}
    for lp in plan.layers.values():
        out.setdefault(lp.spec_id, []).append(lp)
    return out


def _roots(plan: Plan, layers: Mapping[str, list[LayerPlan]]) -> list[str]:
    lg = plan.graph
    return [lid for lid in layers if not lg.parent_layer(lid) or lg.parent_layer(lid) not in layers]


def _messages(nodes: list[LayerPlan], attr: str) -> list[tuple[str, str]]:
    """(code, message) of every node; said once when all arches share it, else `aarch64: ...`."""
    per = [[(r.code, redact(r.message)) for r in getattr(lp, attr)] for lp in nodes]
    if len(nodes) == 1 or all(p == per[0] for p in per):
        return per[0]
    return [(code, f"{lp.arch}: {msg}") for lp, p in zip(nodes, per, strict=True) for code, msg in p]


def plan_tree(plan: Plan) -> list[Text]:
    """The plan as a tree of layers (`├─`, `│`, `└─`), each with its reasons and notes."""
    from rich.text import Text

    lg = plan.graph
    lines: list[Text] = []
    layers = _layer_ids(plan)

    def walk(lid: str, connector: str, prefix: str, root: bool) -> None:
        nodes = layers[lid]
        lp = nodes[0]
        kids = [c for c in lg.children(lid) if c in layers]
        line = Text(connector)
        line.append(lid, style="bold")
        by_action: dict[Action, list[str]] = {}
        for n in nodes:
            by_action.setdefault(n.action, []).append(str(n.arch))
        for action, arches in by_action.items():
            line.append(f"  {action}", style=ACTION_STYLE[action])
            if lp.multiarch:  # `compute  build  [x86_64, aarch64]`
                line.append(f"  [{', '.join(arches)}]", style="cyan")
        if root and lp.parent_kind != "layer":
            line.append(f"  (from {lp.parent})", style="dim")
        lines.append(line)
        pad = prefix + ("│    " if kids else "     ")
        for _code, msg in _messages(nodes, "reasons"):
            lines.append(Text(pad + "- " + msg))
        for _code, msg in _messages(nodes, "notes"):
            lines.append(Text(pad + "· " + msg, style="dim"))
        for i, c in enumerate(kids):
            last = i == len(kids) - 1
            walk(c, prefix + ("└─ " if last else "├─ "), prefix + ("   " if last else "│  "), False)

    for r in _roots(plan, layers):
        walk(r, "", "", True)
    return lines


def counts_line(plan: Plan) -> Text:
    from rich.text import Text

    summary = ", ".join(f"{n} {a}" for a, n in plan.counts().items() if n)
    layers = len({lp.spec_id for lp in plan.layers.values()})
    # a multi-arch layer is one node per arch: the counts are of nodes
    nodes = f" ({plural(len(plan.layers), 'node')})" if layers != len(plan.layers) else ""
    return Text(f"{plural(layers, 'layer')}{nodes}: {summary}", style="bold")


def plan_summary(plan: Plan) -> list[Text]:
    """Compact: one line per action with its count, then one line per layer that builds."""
    from rich.text import Text

    lines = [counts_line(plan)]
    for lid, lp in plan.layers.items():
        if lp.action in ("build", "blocked"):
            why = lp.reasons[0].message if lp.reasons else ""
            line = Text(f"{lp.action:8} ", style=ACTION_STYLE[lp.action])
            line.append(lid, style="bold")
            if why:
                line.append(f"  ({redact(why)})", style="dim")
            lines.append(line)
    return lines


def registry_warnings(plan: Plan, reasons: Mapping[str, str] | None = None) -> list[str]:
    """One warning per registry that did not say an external parent's digest, naming the layer
    files keyed by reference instead (a target's registry that did not answer makes its layers
    `unknown`: `unknown_lines` says those)."""
    parents: dict[str, list[str]] = {}
    for lp in plan.layers.values():
        if not plan.offline and any(n.code == ReasonCode.PARENT_DIGEST_UNKNOWN for n in lp.notes):
            parents.setdefault(_registry_host(lp.parent), []).append(lp.file)
    out = []
    for host, files in parents.items():
        why = (reasons or {}).get(host.lower(), "did not answer")
        out.append(
            f"registry {host} {why}; external parents keyed by reference, not digest, "
            f"for {plural(len(files), 'layer')}: {', '.join(files)}"
        )
    return out


def _registry_host(ref: str) -> str:
    """The registry part of an image reference, as the distribution spec tells it from a namespace."""
    first, _, rest = ref.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else "docker.io"


def print_lines(console: Console, lines: list[Text]) -> None:
    for line in lines:
        console.print(line)


# ------------------------------------------------------------------------- runs


def result_table(result: Any) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"run {result.run_id}", show_lines=False)
    table.add_column("layer")
    table.add_column("action")
    table.add_column("result")
    table.add_column("time", justify="right")
    for r in result.results.values():
        table.add_row(
            r.layer, str(r.action), Text(r.status, style=STATUS_STYLE.get(r.status, "")), f"{r.duration:.1f}s"
        )
    return table


_PLAIN_CELL = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._-+@/,()=#%&!?'\"*<>|~^$"
)


def _console_width(environ: Mapping[str, str]) -> int:
    """The width rich gives a console that was not told one (rich's Console.size, on POSIX)."""
    columns = environ.get("COLUMNS")
    width = None
    for fd in (0, 1, 2):
        try:
            width = os.get_terminal_size(fd).columns
            break
        except (AttributeError, ValueError, OSError):
            pass
    if columns is not None and columns.isdigit():
        width = int(columns)
    return width or 80


def plain_result_table(
    result: Any, stream: IO[str] | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """`result_table` as rich prints it to `stream` when that is plain (`plain_stream`): a UTF-8
    pipe or file, cells of plain ASCII (no markup, emoji codes or wide characters) and a table
    that fits the width rich would take. None when rich must draw it (`tests/test_render.py`
    compares both). A no-op `up` to a pipe thus loads no rich (0.05 s)."""
    stream = sys.stdout if stream is None else stream
    env = os.environ if environ is None else environ
    title = f"run {result.run_id}"
    header = ("layer", "action", "result", "time")
    rows = [(r.layer, str(r.action), str(r.status), f"{r.duration:.1f}s") for r in result.results.values()]
    cells = [title, *(c for row in rows for c in row)]
    if not all(c and set(c) <= _PLAIN_CELL and c == c.strip() and "  " not in c for c in cells):
        return None
    if not (getattr(stream, "encoding", None) or "utf-8").lower().startswith("utf"):
        return None  # rich draws ASCII boxes then
    if not plain_stream(stream, "", env):
        return None
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
    if sum(widths) + 3 * len(widths) + 1 > _console_width(env) or len(title) > sum(widths):
        return None

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def row(cols: tuple[str, ...], bar: str) -> str:
        padded = [c.ljust(w) for c, w in zip(cols[:-1], widths, strict=False)]
        padded.append(cols[-1].rjust(widths[-1]))  # `time` is right-justified
        return bar + bar.join(f" {c} " for c in padded) + bar

    out = [title, line("┏", "━", "┳", "┓"), row(header, "┃"), line("┡", "━", "╇", "┩")]
    out += [row(r, "│") for r in rows]
    out.append(line("└", "─", "┴", "┘"))
    return "\n".join(out) + "\n"


def print_result_table(out: Output, result: Any) -> None:
    """The run's table on stdout: written directly when rich would write it plainly, else by rich."""
    text = None if "out" in out.__dict__ else plain_result_table(result)
    if text is None:
        out.out.print(result_table(result))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def result_lines(result: Any) -> list[Text]:
    lines: list[Text] = []
    if not result.cancelled and not any(
        (r.status in ("failed", "unknown") and r.error) or getattr(r, "index", None)
        for r in result.results.values()
    ):
        return lines  # nothing to say: rich need not load
    from rich.text import Text

    for r in result.results.values():
        if r.status in ("failed", "unknown") and r.error:
            lines.append(Text(f"{r.layer} {r.status}: {redact(r.error)}", style="red"))
            if r.log_file:
                lines.append(Text(f"  full log: {r.log_file}  (or: imagegraph log {r.layer})", style="dim"))
        idx = getattr(r, "index", None)
        if idx and idx["status"] not in ("ok", "failed"):  # a failed index is the layer's own error above
            why = (
                f"blocked by {idx['blocked_by']}"
                if idx.get("blocked_by")
                else idx.get("error") or idx["status"]
            )
            lines.append(Text(f"{r.layer} index {idx['status']}: {why}; its human tags stay", style="yellow"))
    if result.cancelled:
        lines.append(Text("interrupted: finished layers are recorded; run again to resume", style="magenta"))
    return lines


def status_table(report: Any) -> list[Any]:
    """Recent runs and each layer's status (`status.StatusReport`)."""
    from rich.table import Table
    from rich.text import Text

    runs = Table(title="recent runs")
    for c in ("run", "command", "started", "status"):
        runs.add_column(c)
    for r in report.runs:
        runs.add_row(r.run_id, r.command, _local_time(r.started), r.status)
    layers = Table(title="layers")
    for c in ("layer", "status", "key", "built", "duration", "packages"):
        layers.add_column(c)
    for s in report.layers:
        layers.add_row(
            s.layer,
            Text(str(s.status), style=STATUS_STYLE.get(str(s.status), "")),
            (s.key or "-")[:12],
            _local_time(s.built_at) if s.built_at else "never",
            f"{s.duration:.0f}s" if s.duration else "-",
            str(s.packages) if s.packages is not None else ("unknown" if s.packages_unknown else "-"),
        )
    hints = [
        Text(
            f"{s.layer}: {s.status}: {redact(s.detail)}" + (f"  (see: {s.hint})" if s.hint else ""),
            style="dim",
        )
        for s in report.layers
        if s.detail
    ]
    hints += [
        Text(f"{s.layer}: packages unknown: {redact(s.packages_unknown)}", style="dim")
        for s in report.layers
        if s.packages_unknown
    ]
    return [runs, layers, *hints]


def _local_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def lock_lines(report: Any) -> tuple[list[Text], list[str]]:
    from rich.text import Text

    from .arch import host_arch

    marks = {"added": ("+", "green"), "updated": ("~", "yellow"), "removed": ("-", "red")}
    # A multi-arch layer has one package set per arch: name the arch where it could be either.
    per_file: dict[str, set] = {}
    for c in report.changes:
        if c.what == "packages":
            per_file.setdefault(c.name, set()).add(c.arch)
    lines = []
    for c in report.changes:
        if c.change == "unchanged":
            continue
        mark, style = marks[c.change]
        shown = c.what == "packages" and c.arch and (len(per_file[c.name]) > 1 or c.arch != str(host_arch()))
        line = Text(f"{mark} {c.what} {c.name}{f' ({c.arch})' if shown else ''}", style=style)
        if c.what == "repository":
            line.append(f"  {c.url}", style="dim")
        if c.what == "packages":
            line.append(f"  {c.new or c.old}", style="dim")
        elif c.change == "updated":
            line.append(f"  {(c.old or '')[:19]} -> {(c.new or '')[:19]}")
        lines.append(line)
        lines.extend(Text(f"    {d}") for d in c.packages)
    n = {k: len(report.of(k)) for k in ("added", "updated", "unchanged", "removed")}
    summary = ", ".join(f"{v} {k}" for k, v in n.items() if v) or "nothing locked"
    if report.errors:
        lines.append(
            Text(
                f"{report.path}: left unchanged ({plural(len(report.errors), 'error')}; {summary})",
                style="bold red",
            )
        )
    else:
        verb = "written" if report.written else "unchanged"
        if getattr(report, "dry_run", False):
            verb = "not written (--dry-run)"
        lines.append(Text(f"{report.path}: {verb} ({summary})", style="bold"))
    return lines, [f"error: {e}" for e in report.errors]


def gc_lines(report: Any) -> tuple[list[Text], list[str]]:
    from rich.text import Text

    styles = {"removed": "red", "would-remove": "yellow", "kept": "dim", "failed": "bold red"}
    lines = []
    for i in report.items:
        line = Text(f"{i.action:12} {i.kind:12} {redact(i.location)}", style=styles.get(i.action, ""))
        if i.reason:
            line.append(f"  ({i.reason})", style="dim")
        lines.append(line)
    verb = "would remove" if report.dry_run else "removed"
    lines.append(Text(f"gc --keep {report.keep}: {verb} {len(report.removed)}", style="bold"))
    return lines, [f"error: {e}" for e in report.errors]


def doctor_lines(report: Any, quiet: bool = False) -> list[Text]:
    """One line per check (`doctor.DoctorReport`); -q keeps only the problems."""
    from rich.text import Text

    marks = {
        "ok": ("ok", "green"),
        "missing": ("MISSING", "bold red"),
        "failed": ("FAILED", "bold red"),
        "unknown": ("unknown", "yellow"),
        "info": ("-", "dim"),
    }
    lines = []
    for c in report.checks:
        if quiet and c.status not in ("missing", "failed"):
            continue
        mark, style = marks[str(c.status)]
        line = Text(f"{mark:8} ", style=style)
        line.append(f"{c.kind}: {c.name}", style="bold")
        if c.version:
            line.append(f" {c.version}")
        if c.detail:
            line.append(f"  {redact(c.detail)}", style="dim" if str(c.status) in ("ok", "info") else "")
        lines.append(line)
        if c.fix and str(c.status) in ("missing", "failed"):
            lines.append(Text(f"         fix: {c.fix}", style="yellow"))
        if c.needed_by and str(c.status) in ("missing", "failed"):
            lines.append(Text(f"         needed by: {', '.join(c.needed_by)}", style="dim"))
    n = len(report.problems)
    lines.append(
        Text(
            "everything needed is here" if not n else f"{plural(n, 'problem')} found",
            style="bold" if not n else "bold red",
        )
    )
    return lines


# ------------------------------------------------------------------- package diffs

_DIFF_MARKS = {
    "added": ("+", "green"),
    "removed": ("-", "red"),
    "upgraded": ("↑", "cyan"),
    "downgraded": ("↓", "yellow"),
}


def diff_lines(d: Any) -> list[Text]:
    """A `diff.LayerDiff`: the two builds, one line per changed package, the summary."""
    from rich.text import Text

    old = (
        f"{d.from_key[:12]} ({d.from_label})" if d.from_key else f"nothing ({d.from_label or 'first build'})"
    )
    to = d.to_label or "current"
    new = d.to_key[:12] if to == "ig-" + d.to_key else f"{d.to_key[:12]} ({to})"  # a key tag says no more
    lines = [Text(f"{d.layer}: {old} -> {new}", style="bold")]
    for c in d.changes:
        mark, style = _DIFF_MARKS[str(c.kind)]
        versions = f"{c.old} -> {c.new}" if c.old and c.new else (c.new or c.old)
        lines.append(Text(f"  {mark} {c.kind:10} {c.name} {versions} ({c.arch})", style=style))
    lines.append(Text(d.summary(), style="bold" if d.status == "known" else "bold red"))
    return lines


def file_change_lines(files: list) -> list[Text]:
    """`rootdiff` path changes: one line each, then the counts."""
    from rich.text import Text

    marks = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}

    def size(n: int | None) -> str:
        return "" if n is None else f"{n} B"

    lines = []
    for f in files:
        mark, style = marks[str(f.kind)]
        sizes = (
            f"{size(f.old_size)} -> {size(f.new_size)}"
            if f.kind == "changed"
            else size(f.old_size or f.new_size)
        )
        extra = f" {f.what}" if f.what else ""
        lines.append(
            Text(f"  {mark} {f.path}{extra} ({sizes})" if sizes else f"  {mark} {f.path}{extra}", style=style)
        )
    n = {k: sum(1 for f in files if f.kind == k) for k in ("added", "removed", "changed")}
    lines.append(
        Text(
            f"{n['added']} path{'' if n['added'] == 1 else 's'} added, {n['removed']} removed,"
            f" {n['changed']} changed",
            style="bold",
        )
    )
    return lines


def unknown_lines(plan: Plan) -> list[str]:
    """One line per distinct reason the plan could not know something, naming the layer files it affects."""
    by: dict[str, list[str]] = {}
    for lp in plan.unknown:
        for r in lp.reasons:
            by.setdefault(r.message, []).append(Path(lp.file).name)
    out = []
    for message, files in by.items():
        files = list(dict.fromkeys(files))
        out.append(f"{message} ({', '.join(files)}: {plural(len(files), 'layer')} unknown)")
    return out


def boot_config_yaml(entries: list[dict]) -> str:
    """OpenCHAMI boot configuration entries as YAML for `ochami boot config add -f yaml`: block
    style, every URL and the kernel command line on one line, however long."""
    from ruamel.yaml import YAML

    y = YAML()
    y.default_flow_style = False
    y.width = 1 << 16  # ruamel folds plain scalars at 80 columns: a URL would continue on the next line
    buf = io.StringIO()
    y.dump(entries, buf)
    return buf.getvalue()
