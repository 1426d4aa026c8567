"""The `imagegraph` command: argument parsing and rendering only.

Every command calls into the core (`project`, `graph`, `plan`, `scheduler`,
`executor`) and renders the objects it gets back. Exit statuses: 0 done /
nothing to do, 1 a layer failed (or `plan --check` found work), 2 a spec or
usage error, 3 another run holds the state directory, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from . import log as logmod
from .errors import Diagnostic, ImagegraphError, SpecError, UsageError
from .graph import LayerGraph, build_graph, to_dot, to_json, to_mermaid
from .lockfile import load_lock
from .plan import Action, LiveInventory, Plan, current_keys, make_plan
from .project import Project, load_project
from .redact import redact, register_environment
from .state import State

ACTION_STYLE = {
    Action.BUILD: "bold yellow",
    Action.PUBLISH: "cyan",
    Action.UP_TO_DATE: "green",
    Action.BLOCKED: "red",
    Action.UNKNOWN: "bold magenta",
}
STATUS_STYLE = {
    "ok": "green",
    "up-to-date": "green",
    "failed": "bold red",
    "blocked": "red",
    "unknown": "bold magenta",
    "cancelled": "magenta",
    "not-started": "dim",
}


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------- arguments


def _split_dir(positional: list[str]) -> tuple[Path, list[str]]:
    """`[DIR] [LAYER...]`: the first word is the directory when it is one."""
    if positional and (Path(positional[0]).is_dir() or "/" in positional[0]):
        return Path(positional[0]), positional[1:]
    default = Path("layers") if Path("layers").is_dir() and not list(Path(".").glob("*.yaml")) else Path(".")
    return default, positional


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", metavar="PATH", help="state database (default DIR/.imagegraph/state.db)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="do not ask registries or S3; key external parents by reference",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegraph",
        description="make for diskless boot images: build OpenCHAMI image-builder layer graphs.",
    )
    parser.add_argument("--version", action="version", version=f"imagegraph {__version__}")
    parser.add_argument("--log-format", choices=["auto", "console", "json"], default="auto")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for commands)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="load and check every spec of a directory")
    p.add_argument("dir", nargs="?", default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("graph", help="print the layer graph")
    p.add_argument("dir", nargs="?", default=None)
    p.add_argument("--format", choices=["dot", "mermaid", "json", "tree"], default="tree")

    p = sub.add_parser("plan", help="say what `up` would do, and why")
    p.add_argument("args", nargs="*", metavar="[DIR] [LAYER]")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the plan as a JSON document")
    p.add_argument("--check", action="store_true", help="exit 1 when anything would be done (like make -q)")
    p.add_argument("--force", action="append", default=[], metavar="LAYER")
    p.add_argument("--force-all", action="store_true")
    _max_age(p)

    p = sub.add_parser("up", help="build and publish what is stale")
    p.add_argument("args", nargs="*", metavar="[DIR] [LAYER]")
    _common(p)
    p.add_argument(
        "-j", "--jobs", type=int, default=None, help="layers built at once (default: cores/2, at least 1)"
    )
    p.add_argument(
        "--force", action="append", default=[], metavar="LAYER", help="rebuild LAYER regardless of its key"
    )
    p.add_argument("--force-all", action="store_true", help="rebuild every selected layer")
    p.add_argument("--dry-run", action="store_true", help="print the plan and do nothing")
    p.add_argument("--fail-fast", action="store_true", help="start nothing new after the first failure")
    p.add_argument("--json", action="store_true", help="print the run result as JSON")
    _max_age(p)
    p.add_argument("--wait", action="store_true", help="queue behind a running run instead of exiting 3")

    p = sub.add_parser(
        "lock", help="write imagegraph.lock: fingerprints of upstream repositories and parents"
    )
    p.add_argument("dir", nargs="?", default=None)
    p.add_argument("--update", action="store_true", help="fetch every fingerprint again (else: missing ones)")
    p.add_argument("--state", metavar="PATH")
    p.add_argument("--wait", action="store_true", help="queue behind a running run instead of exiting 3")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("gc", help="remove key tags, S3 objects and local images of old builds")
    p.add_argument("dir", nargs="?", default=None)
    p.add_argument("--keep", type=int, required=True, metavar="N", help="builds kept per layer, newest first")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    p.add_argument("--state", metavar="PATH")
    p.add_argument("--wait", action="store_true", help="queue behind a running run instead of exiting 3")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("artifacts", help="published URLs and an OpenCHAMI boot configuration for a layer")
    p.add_argument("args", nargs="+", metavar="[DIR] LAYER")
    p.add_argument("--state", metavar="PATH")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", help="recent runs and each layer's state")
    p.add_argument("dir", nargs="?", default=None)
    p.add_argument("--state", metavar="PATH")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("log", help="show a layer's last build log")
    p.add_argument("args", nargs="+", metavar="[DIR] LAYER")
    p.add_argument("--state", metavar="PATH")

    p = sub.add_parser("boot-test", help="boot a layer's kernel, initramfs and SquashFS under QEMU")
    p.add_argument("args", nargs="+", metavar="[DIR] LAYER")
    p.add_argument("--state", metavar="PATH")
    p.add_argument("--timeout", type=float, default=None, help="seconds (default options.boot_test or 300)")
    p.add_argument("--marker", default=None, help="console text that means booted (default 'login:')")
    p.add_argument("--tag", default=None, help="boot this tag's files (default the first publish tag)")
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"], default=None)
    p.add_argument("--offline", action="store_true", help="do not ask registries or S3 for the key")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("promote", help="point a human tag at an already built key, without building")
    p.add_argument("args", nargs="+", metavar="[DIR] LAYER TAG")
    p.add_argument("--state", metavar="PATH")
    p.add_argument("--key", default=None, help="a recorded build's key (prefix); default the current key")
    p.add_argument("--force", action="store_true", help="promote a key that has not passed its boot test")
    p.add_argument("--json", action="store_true")
    # The global options work after the command too (`imagegraph up DIR --log-format json`, as
    # cron lines are written); SUPPRESS keeps a subcommand from resetting what came before it.
    for cmd in sub.choices.values():
        cmd.add_argument("--log-format", choices=["auto", "console", "json"], default=argparse.SUPPRESS)
        cmd.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
    return parser


def _duration(text: str) -> float:
    from .duration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _max_age(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-age",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="also rebuild layers last built longer ago than this (7d, 12h, 30m)",
    )


# ------------------------------------------------------------------- helpers


def _state_path(project: Project, arg: str | None) -> Path:
    return Path(arg) if arg else project.default_state_dir() / "state.db"


def _load(root: Path, state_arg: str | None = None) -> tuple[Project, LayerGraph]:
    cache_dir = (Path(state_arg).parent if state_arg else root / ".imagegraph") / "cache"
    project = load_project(root, cache_dir=cache_dir if cache_dir.parent.exists() else None)
    lg = build_graph(project)
    return project, lg


# With --log-format json, stderr carries JSON lines only (journald, log shippers): diagnostics and
# errors become events there instead of coloured text.
_json_stderr = False


def _print_warnings(diags: list[Diagnostic]) -> None:
    if _json_stderr:
        for d in diags:
            logmod.get_logger().warning(redact(str(d)), file=d.file, line=d.line, severity=d.severity)
        return
    err = _err()
    for d in diags:
        err.print(Text(redact(str(d)), style="yellow"))


def _plan(args: argparse.Namespace, names_and_dir: list[str]) -> tuple[Project, LayerGraph, State, Plan]:
    root, names = _split_dir(names_and_dir)
    project, lg = _load(root, args.state)
    state = State(_state_path(project, args.state), readonly=args.command == "plan")
    inventory = LiveInventory(offline=args.offline)
    lock = load_lock(project.root)  # keys include the locked upstream fingerprints, when there are any
    plan = make_plan(
        lg,
        state,
        inventory,
        names,
        force=set(args.force),
        force_all=args.force_all,
        offline=args.offline,
        upstream_of=lock.upstream_of if lock else None,
        locked_digest=lock.parent_digest if lock else None,
        max_age=args.max_age,
    )
    return project, lg, state, plan


def render_plan(plan: Plan, console: Console) -> None:
    lg = plan.graph
    roots = [
        lid for lid in plan.layers if not lg.parent_layer(lid) or lg.parent_layer(lid) not in plan.layers
    ]

    def walk(lid: str, depth: int) -> None:
        lp = plan.layers[lid]
        indent = "  " * depth + ("└─ " if depth else "")
        line = Text(indent)
        line.append(f"{lid}", style="bold")
        line.append(f"  {lp.action}", style=ACTION_STYLE[lp.action])
        if depth == 0 and lp.parent_kind != "layer":
            line.append(f"  (from {lp.parent})", style="dim")
        console.print(line)
        pad = "  " * depth + ("   " if depth else "") + "    "
        for r in lp.reasons:
            console.print(Text(pad + "- " + redact(r.message)))
        for r in lp.notes:
            console.print(Text(pad + "· " + redact(r.message), style="dim"))
        for c in lg.children(lid):
            if c in plan.layers:
                walk(c, depth + 1)

    for r in roots:
        walk(r, 0)
    c = plan.counts()
    summary = ", ".join(f"{n} {a}" for a, n in c.items() if n)
    console.print(Text(f"\n{len(plan.layers)} layers: {summary}", style="bold"))


# ------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    root, _ = _split_dir([args.dir] if args.dir else [])
    try:
        project, lg = _load(root)
    except SpecError as exc:
        if args.json:
            print(json.dumps({"ok": False, "diagnostics": [d.to_dict() for d in exc.diagnostics]}, indent=2))
            return 2
        raise
    warnings = project.warnings + lg.warnings
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "layers": sorted(project.layers),
                    "diagnostics": [d.to_dict() for d in warnings],
                },
                indent=2,
            )
        )
        return 0
    _print_warnings(warnings)
    _out().print(f"{len(project.layers)} layer specs OK in {root}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    root, _ = _split_dir([args.dir] if args.dir else [])
    project, lg = _load(root)
    _print_warnings(project.warnings + lg.warnings)
    if args.format == "dot":
        sys.stdout.write(to_dot(lg))
    elif args.format == "mermaid":
        sys.stdout.write(to_mermaid(lg))
    elif args.format == "json":
        print(json.dumps(to_json(lg), indent=2))
    else:
        console = _out()

        def walk(lid: str, depth: int) -> None:
            link = lg.parents[lid]
            extra = f"  (from {link.describe()})" if depth == 0 else ""
            console.print(("  " * depth) + ("└─ " if depth else "") + lid + extra)
            for c in lg.children(lid):
                walk(c, depth + 1)

        for lid in lg.order():
            if lg.parent_layer(lid) is None:
                walk(lid, 0)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    project, lg, state, plan = _plan(args, args.args)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        _print_warnings(project.warnings + lg.warnings)
        render_plan(plan, _out())
    if plan.unknown:
        _print_unknown(plan)
        return 1
    if args.check:
        return 1 if plan.pending else 0
    return 0


def _print_unknown(plan: Plan) -> None:
    """Unknown is not absent: say which inventory could not be read, and why."""
    lines = list(dict.fromkeys(r.message for lp in plan.unknown for r in lp.reasons))
    for line in lines:
        if _json_stderr:
            logmod.get_logger().error(redact(line))
        else:
            _err().print(Text(f"imagegraph: {redact(line)}", style="red"))


def cmd_up(args: argparse.Namespace) -> int:
    from .executor import StateLock, run_up
    from .state import default_run_id

    run_id = default_run_id()
    logmod.bind_run(run_id)  # planning's events (registry warnings) carry the run id too
    if args.wait and not args.dry_run:
        # Queue first, then plan: a plan made before the other run finished would redo its work.
        project, _ = _load(_split_dir(args.args)[0], args.state)
        with StateLock(_state_path(project, args.state).parent, "up (waiting)", wait=True):
            pass
    project, lg, state, plan = _plan(args, args.args)
    if not args.json:
        _print_warnings(project.warnings + lg.warnings)
    if args.dry_run:
        if args.json:
            print(json.dumps(plan.to_json(), indent=2))
        else:
            render_plan(plan, _out())
        return 0
    jobs = args.jobs or project.settings.jobs or max(1, (os.cpu_count() or 2) // 2)
    console = _err()
    progress = _Progress(console, plan) if console.is_terminal and not args.json else None
    result = run_up(
        plan,
        state,
        state_dir=_state_path(project, args.state).parent,
        jobs=jobs,
        fail_fast=args.fail_fast,
        on_event=progress.event if progress else None,
        install_signals=True,
        wait_lock=args.wait,
        run_id=run_id,
    )
    if progress:
        progress.stop()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        render_result(result, _out())
    return result.exit_status


class _Progress:
    """Live progress on a terminal: running layers, done/total, elapsed."""

    def __init__(self, console: Console, plan: Plan):
        from rich.live import Live

        self.total = sum(1 for lp in plan.layers.values() if lp.pending)
        self.done = 0
        self.running: dict[str, float] = {}
        self.start = time.monotonic()
        self.live = Live(self._render(), console=console, refresh_per_second=2, transient=True)
        self.live.start()

    def _render(self) -> Text:
        el = time.monotonic() - self.start
        t = Text(f"[{self.done}/{self.total}] {el:5.0f}s  ")
        t.append(
            ", ".join(f"{k} ({time.monotonic() - v:.0f}s)" for k, v in self.running.items()) or "waiting"
        )
        return t

    def event(self, kind: str, layer: str, result: Any) -> None:
        if kind == "start":
            self.running[layer] = time.monotonic()
        elif kind == "finish":
            if self.running.pop(layer, None) is not None:
                self.done += 1
        self.live.update(self._render())

    def stop(self) -> None:
        self.live.stop()


def render_result(result: Any, console: Console) -> None:
    table = Table(title=f"run {result.run_id}", show_lines=False)
    table.add_column("layer")
    table.add_column("action")
    table.add_column("result")
    table.add_column("time", justify="right")
    for r in result.results.values():
        table.add_row(
            r.layer, str(r.action), Text(r.status, style=STATUS_STYLE.get(r.status, "")), f"{r.duration:.1f}s"
        )
    console.print(table)
    for r in result.results.values():
        if r.status in ("failed", "unknown") and r.error:
            console.print(Text(f"{r.layer} {r.status}: {redact(r.error)}", style="red"))
            if r.log_file:
                console.print(Text(f"  full log: {r.log_file}", style="dim"))
    if result.cancelled:
        console.print(Text("interrupted: finished layers are recorded; run again to resume", style="magenta"))


def _layer_args(
    args: argparse.Namespace, command: str, usage: str = "LAYER"
) -> tuple[Project, LayerGraph, str, list[str]]:
    """`[DIR] LAYER [MORE...]` as `usage` says: the project, its graph, the layer and the rest."""
    root, names = _split_dir(args.args)
    if len(names) != len(usage.split()):
        raise UsageError(f"{command} takes {usage}")
    project, lg = _load(root, args.state)
    return project, lg, lg.lookup(names[0]), names[1:]


def cmd_artifacts(args: argparse.Namespace) -> int:
    from .executor import artifacts_document

    project, lg, layer, _ = _layer_args(args, "artifacts")
    state = State(_state_path(project, args.state), readonly=True)
    doc = artifacts_document(lg, state, layer)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        from ruamel.yaml import YAML

        y = YAML()
        y.default_flow_style = False
        if doc.get("urls"):
            _err().print("published:")
            for u in doc["urls"]:
                _err().print(f"  {u}")
        y.dump(doc["boot_config"], sys.stdout)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    root, _ = _split_dir([args.dir] if args.dir else [])
    project, lg = _load(root, args.state)
    state = State(_state_path(project, args.state), readonly=True)
    runs = state.runs(10)
    layers = state.layers()
    if args.json:
        print(
            json.dumps(
                {"runs": runs, "layers": {k: v.__dict__ for k, v in layers.items()}}, indent=2, default=str
            )
        )
        return 0
    console = _out()
    t = Table(title="recent runs")
    for c in ("run", "command", "started", "status"):
        t.add_column(c)
    for r in runs:
        t.add_row(
            r["run_id"],
            r["command"] or "",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"])),
            r["status"] or "",
        )
    console.print(t)
    t = Table(title="layers")
    for c in ("layer", "key", "built", "duration"):
        t.add_column(c)
    for lid in lg.order():
        rec = layers.get(lid)
        if rec:
            built = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.built_at)) if rec.built_at else "-"
            t.add_row(lid, rec.key[:12], built, f"{rec.duration:.0f}s" if rec.duration else "-")
        else:
            t.add_row(lid, "-", "never", "-")
    console.print(t)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    project, lg, layer, _ = _layer_args(args, "log")
    logs = _state_path(project, args.state).parent / "logs"
    latest = logs / f"{layer}.log"
    if not latest.exists():
        raise UsageError(f"no build log for {layer} yet (looked in {logs})")
    sys.stdout.write(latest.read_text(errors="replace"))
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    from .executor import StateLock
    from .lockfile import lock

    root, _ = _split_dir([args.dir] if args.dir else [])
    project, lg = _load(root, args.state)
    # The lock file changes keys: never under a running `up`.
    with StateLock(_state_path(project, args.state).parent, "lock", wait=args.wait):
        report = lock(lg, update=args.update)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render_lock(report, _out(), _err())
    return report.exit_status


def render_lock(report: Any, out: Console, err: Console) -> None:
    marks = {"added": ("+", "green"), "updated": ("~", "yellow"), "removed": ("-", "red")}
    for c in report.changes:
        if c.change == "unchanged":
            continue
        mark, style = marks[c.change]
        line = Text(f"{mark} {c.what} {c.name}", style=style)
        if c.what == "repository":
            line.append(f"  {c.url}", style="dim")
        if c.change == "updated":
            line.append(f"  {(c.old or '')[:19]} -> {(c.new or '')[:19]}")
        out.print(line)
    for e in report.errors:
        if _json_stderr:
            logmod.get_logger().error(e, command=report.to_json().get("command", "lock"))
        else:
            err.print(Text(f"error: {e}", style="red"))
    n = {k: len(report.of(k)) for k in ("added", "updated", "unchanged", "removed")}
    summary = ", ".join(f"{v} {k}" for k, v in n.items() if v) or "nothing locked"
    if report.errors:
        out.print(
            Text(
                f"{report.path}: left unchanged ({len(report.errors)} error(s); {summary})", style="bold red"
            )
        )
    else:
        verb = "written" if report.written else "unchanged"
        out.print(Text(f"{report.path}: {verb} ({summary})", style="bold"))


def cmd_gc(args: argparse.Namespace) -> int:
    from .gc import run_gc

    if args.keep < 1:
        raise UsageError("--keep must be at least 1")
    root, _ = _split_dir([args.dir] if args.dir else [])
    project, lg = _load(root, args.state)
    path = _state_path(project, args.state)
    state = State(path)
    lock = load_lock(project.root)
    current = current_keys(  # today's keys are kept, whatever was built last
        lg,
        LiveInventory(),
        upstream_of=lock.upstream_of if lock else None,
        locked_digest=lock.parent_digest if lock else None,
    )
    report = run_gc(
        lg,
        state,
        state_dir=path.parent,
        keep=args.keep,
        dry_run=args.dry_run,
        wait_lock=args.wait,
        current=current,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render_gc(report, _out(), _err())
    return report.exit_status


def render_gc(report: Any, out: Console, err: Console) -> None:
    styles = {"removed": "red", "would-remove": "yellow", "kept": "dim", "failed": "bold red"}
    for i in report.items:
        line = Text(f"{i.action:12} {i.kind:12} {redact(i.location)}", style=styles.get(i.action, ""))
        if i.reason:
            line.append(f"  ({i.reason})", style="dim")
        out.print(line)
    for e in report.errors:
        if _json_stderr:
            logmod.get_logger().error(e, command=report.to_json().get("command", "lock"))
        else:
            err.print(Text(f"error: {e}", style="red"))
    verb = "would remove" if report.dry_run else "removed"
    out.print(Text(f"gc --keep {report.keep}: {verb} {len(report.removed)}", style="bold"))


def _layer_key(args: argparse.Namespace, lg: LayerGraph, layer: str) -> tuple[State, str]:
    """A writable state and the layer's current key (as `plan` computes it); usage error if not built."""
    state = State(_state_path(lg.project, args.state))
    offline = getattr(args, "offline", False)
    lp = make_plan(lg, state, LiveInventory(offline=offline), [layer], offline=offline).layers[layer]
    if lp.action == Action.BUILD:
        why = "; ".join(r.message for r in lp.reasons)
        raise UsageError(f"{layer}: its current key {lp.key[:12]} is not built ({why}); run `imagegraph up`")
    return state, lp.key


def cmd_boot_test(args: argparse.Namespace) -> int:
    from .boottest import boot_and_record, boot_log_path, layer_artifacts
    from .runner import Runner
    from .state import default_run_id

    project, lg, layer, _ = _layer_args(args, "boot-test")
    state, key = _layer_key(args, lg, layer)
    spec = lg.spec(layer)
    state_dir = _state_path(project, args.state).parent
    run_id = default_run_id()
    with layer_artifacts(spec, key, state_dir / "work", args.tag, Runner(layer)) as files:
        if not args.json:
            log_path = boot_log_path(state_dir, layer, run_id)
            _err().print(f"booting {layer} ({files.source}) under QEMU; serial console: {log_path}")
        res = boot_and_record(
            state,
            state_dir,
            run_id,
            layer,
            spec,
            files,
            marker=args.marker,
            timeout=args.timeout,
            accel=args.accel,
        )
    if args.json:
        print(json.dumps(res.to_json(), indent=2))
    else:
        out = _out()
        style = "bold green" if res.ok else "bold red"
        out.print(Text(f"{layer}: {res.outcome} in {res.seconds:.1f} s ({res.accel})", style=style))
        out.print(Text(f"  {redact(res.reason)}"))
        if not res.ok:
            out.print(Text("  serial console (last lines):", style="dim"))
            for line in res.tail[-20:]:
                out.print(Text(f"    {line}"))
        out.print(Text(f"  serial log: {res.serial_log}", style="dim"))
    return 0 if res.ok else 1


def cmd_promote(args: argparse.Namespace) -> int:
    from .promote import promote
    from .state import default_run_id

    project, lg, layer, (tag,) = _layer_args(args, "promote", "LAYER TAG")
    if args.key:
        state = State(_state_path(project, args.state))
        keys = {b["key"] for b in state.builds(layer, limit=1000) if b["status"] == "ok"}
        matches = sorted(k for k in keys if k.startswith(args.key.removeprefix("ig-")))
        if len(matches) != 1:
            raise UsageError(f"--key {args.key}: {len(matches)} recorded builds of {layer} match")
        key = matches[0]
    else:
        state, key = _layer_key(args, lg, layer)
    doc = promote(lg.spec(layer), layer, key, tag, state, run_id=default_run_id(), force=args.force)
    if args.json:
        print(json.dumps(doc.to_json(), indent=2))
    else:
        out = _out()
        out.print(Text(f"{layer}: {tag} -> key {key[:12]}", style="bold"))
        for t in doc.targets:
            for loc in t["locations"]:
                out.print(Text(f"  {t['target']}: {redact(str(loc))}"))
    return 0


COMMANDS = {
    "lock": cmd_lock,
    "gc": cmd_gc,
    "validate": cmd_validate,
    "graph": cmd_graph,
    "plan": cmd_plan,
    "up": cmd_up,
    "artifacts": cmd_artifacts,
    "status": cmd_status,
    "log": cmd_log,
    "boot-test": cmd_boot_test,
    "promote": cmd_promote,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Layer names may follow options (`up layers/ -j 4 compute`): argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "args") and not any(e.startswith("-") for e in extra):
            args.args = [*args.args, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    register_environment()
    fmt = args.log_format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    # On a terminal `up` shows live progress and a summary; the full story is in the layer logs.
    # Unattended (JSON lines), every layer event is logged for the morning.
    quiet = "WARNING" if fmt == "console" or args.command not in ("up", "lock", "gc") else "INFO"
    level = "DEBUG" if args.verbose >= 2 else ("INFO" if args.verbose == 1 else quiet)
    logmod.configure(fmt, level)
    global _json_stderr
    _json_stderr = fmt == "json"
    try:
        return COMMANDS[args.command](args)
    except SpecError as exc:
        errors = [d for d in exc.diagnostics if d.severity == "error"]
        if _json_stderr:
            for d in exc.diagnostics:
                log = logmod.get_logger()
                (log.error if d.severity == "error" else log.warning)(
                    redact(str(d)), file=d.file, line=d.line, column=d.column
                )
            logmod.get_logger().error(f"{len(errors)} error(s); nothing was built", exit_status=2)
            return 2
        err = _err()
        for d in exc.diagnostics:
            err.print(Text(redact(str(d)), style="red" if d.severity == "error" else "yellow"))
        err.print(Text(f"{len(errors)} error(s); nothing was built", style="bold red"))
        return 2
    except ImagegraphError as exc:
        if _json_stderr:
            logmod.get_logger().error(redact(str(exc)), exit_status=exc.exit_status)
        else:
            _err().print(Text(f"imagegraph: {redact(str(exc))}", style="red"))
        return exc.exit_status
    except KeyboardInterrupt:
        _err().print("interrupted")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
