"""The `imagegraph` command: argument parsing and dispatch only.

Every command calls into the core (`project`, `graph`, `plan`, `scheduler`,
`executor`, `doctor`, `status`) and hands the objects it gets back to
`render`. The parser is built one function per command (`_cmd_<name>`), so
that `--help`, the man page and shell completion all come from it. Heavy
imports (rich, requests, boto3, the executor) happen inside the functions
that need them: `--help` and completion stay quick.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__

if TYPE_CHECKING:
    from .graph import LayerGraph
    from .plan import Plan
    from .project import Project
    from .render import Output
    from .state import State

EXIT_STATUS = """\
exit status:
  0  done, or nothing to do
  1  a layer failed (plan --check: something would be done)
  2  a spec or usage error; nothing was built
  3  another run holds the state directory
  130/143/129  interrupted (SIGINT/SIGTERM/SIGHUP)"""

ENVIRONMENT = """\
environment:
  IMAGEGRAPH_RETRY_ATTEMPTS      registry tries per operation (default 5)
  IMAGEGRAPH_RETRY_INITIAL_WAIT  first wait between tries, seconds (default 1)
  IMAGEGRAPH_RETRY_MAX_WAIT      longest wait between tries, seconds (default 30)
  IMAGEGRAPH_REGISTRY_TIMEOUT    seconds planning waits for a registry or S3 (default 5; --registry-timeout)
  IMAGEGRAPH_BOOT_ACCEL          boot-test accelerator: auto, kvm or tcg (default auto)
  IMAGEGRAPH_RUNTIME_DIR         where working-container owner records live (default $XDG_RUNTIME_DIR)
  IMAGEGRAPH_REGISTRY_PASSWORD   a registry password, masked in every output
  REGISTRY_AUTH_FILE             registry credentials (containers-auth.json), as buildah reads them
  AWS_*                          S3 credentials, region and endpoint (boto3's usual variables)
  SOURCE_DATE_EPOCH              timestamp for reproducible SquashFS images
  NO_COLOR                       no colour, even on a terminal
  JOURNAL_STREAM                 set by systemd: output becomes JSON lines (as --log-format json)"""

LOG_FORMATS = ["auto", "text", "json", "console"]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; appends an option's default when its help does not say it."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=min(100, shutil.get_terminal_size().columns))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (
            "default" not in text
            and action.option_strings
            and d not in (None, False, [], argparse.SUPPRESS)
            and not isinstance(action, argparse._CountAction | argparse._VersionAction)
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Errors name the command, suggest a close command name and point at its help."""

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: '([^']*)'", message)
        commands = getattr(self, "commands", None)
        if m and commands:
            import difflib

            close = difflib.get_close_matches(m[1], list(commands), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            message = f"unknown command '{m[1]}'{hint}"
        self.print_usage(sys.stderr)
        name = self.prog.removeprefix("imagegraph ").strip()
        see = f"imagegraph help {name}" if name != "imagegraph" else "imagegraph --help"
        self.exit(2, f"{self.prog}: error: {message}\nTry '{see}' for more information.\n")


def _examples(*lines: str, one: str | None = None) -> str:
    """The epilog: examples, then the exit statuses (`one`: what 1 means for this command)."""
    status = EXIT_STATUS
    if one:
        status = re.sub(r"(?m)^  1  .*$", f"  1  {one}", status)
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + status


# ------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _seconds(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return n


def _duration(text: str) -> float:
    from .duration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ------------------------------------------------------------------- shared options

DIR_HELP = "the layer directory, or one spec file in it (default: ./layers if it exists, else .)"


def _globals(p: argparse.ArgumentParser, top: bool) -> None:
    """-q, -v and --log-format, before or after the command (`up DIR --log-format json`, as cron
    lines are written). SUPPRESS keeps a subcommand from resetting what came before it."""
    default: Any = (lambda v: v) if top else (lambda _v: argparse.SUPPRESS)
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default("auto"),
        help="text: readable lines; json: every line printed is a JSON object; "
        "auto: json under systemd (JOURNAL_STREAM), else text (default: auto; console = text)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="more output: -v progress events and each registry request, -vv every command run",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="print only errors and the command's own data (no warnings, summaries or progress)",
    )


def _dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=None, metavar="DIR", help=DIR_HELP)


def _state_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", metavar="PATH", help="the state database (default: DIR/.imagegraph/state.db)")


def _json_opt(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as one JSON document on stdout")


def _wait_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="queue behind a running run instead of exiting 3")


def _online_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--offline",
        action="store_true",
        help="do not ask registries or S3; key external parents by reference",
    )
    p.add_argument(
        "--registry-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="how long planning waits for a registry or an S3 endpoint to connect and to answer "
        "(default: $IMAGEGRAPH_REGISTRY_TIMEOUT or 5)",
    )


def _max_age(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-age",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="also rebuild layers last built longer ago than this, e.g. 7d, 12h, 30m (default: no limit)",
    )


def _arch(text: str) -> Any:
    from .arch import normalize_arch

    try:
        return normalize_arch(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arch_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arch",
        action="append",
        type=_arch,
        default=None,
        metavar="ARCH",
        help="only this architecture's nodes of multi-arch layers, e.g. aarch64 (repeatable)",
    )


def _add(
    sub: Any, name: str, summary: str, usage: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        usage=f"imagegraph {name} [OPTIONS] {usage}".rstrip(),
        description=textwrap.fill(description, 80),
        epilog=epilog,
        formatter_class=_Formatter,
    )


# ------------------------------------------------------------------- commands' parsers


def _cmd_validate(sub: Any) -> None:
    p = _add(
        sub,
        "validate",
        "load and check every spec of a directory",
        "[DIR]",
        "Load every layer spec of DIR, check it against the schema and resolve the parents; report every "
        "problem with its file, line and column. Builds nothing.",
        _examples("imagegraph validate layers/", "imagegraph validate layers/ --json | jq .diagnostics"),
    )
    _dir_arg(p)
    _json_opt(p, "the layers and diagnostics")
    p.add_argument("--strict", action="store_true", help="every warning is an error")


def _cmd_graph(sub: Any) -> None:
    p = _add(
        sub,
        "graph",
        "print the layer graph",
        "[DIR]",
        "Print the parent graph of DIR's layers: a tree, Graphviz dot, Mermaid, or JSON "
        "(parents as written in the specs).",
        _examples(
            "imagegraph graph layers/",
            "imagegraph graph layers/ --format dot | dot -Tsvg > layers.svg",
            "imagegraph graph layers/ --format mermaid",
            "imagegraph graph layers/ --format svg -o graph.svg",
        ),
    )
    _dir_arg(p)
    p.add_argument(
        "--format",
        choices=["tree", "dot", "mermaid", "json", "svg", "png"],
        default="tree",
        help="output format; svg and png are laid out by Graphviz and coloured by the plan's actions",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (required for png; default stdout)")
    _state_opt(p)
    _online_opts(p)


def _cmd_report(sub: Any) -> None:
    p = _add(
        sub,
        "report",
        "write a run's report page (one self-contained HTML file)",
        "[DIR]",
        "Write the report page of a recorded run: its status, the graph coloured by each layer's result, "
        "a timeline of its tasks with the critical path, and per layer its reasons, key, result, the "
        "quoted cause of a failure and a link to its log. Nothing in the page is fetched from anywhere.",
        _examples(
            "imagegraph report layers/ -o report.html",
            "imagegraph report layers/ --run 20261201T0300 -o /srv/www/nightly.html",
        ),
    )
    _dir_arg(p)
    p.add_argument("--run", metavar="RUN", help="a run id or unique prefix (default: the last run)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    _state_opt(p)


def _cmd_plan(sub: Any) -> None:
    p = _add(
        sub,
        "plan",
        "say what `up` would do, and why",
        "[DIR] [LAYER ...]",
        "Compute every selected layer's key and say, per layer, whether `up` would build it, only publish "
        "it, or leave it, with the reasons. LAYERs (ids, file names or image names) select those layers "
        "and their ancestors. Reads the state; changes nothing.",
        _examples(
            "imagegraph plan layers/",
            "imagegraph plan layers/compute.yaml",
            "imagegraph plan layers/ --summary",
            "imagegraph plan layers/ --check && echo 'nothing to do'",
            one="--check: something would be done",
        ),
    )
    p.add_argument("args", nargs="*", metavar="[DIR] [LAYER]", help=DIR_HELP + "; then layers to select")
    _state_opt(p)
    _online_opts(p)
    _json_opt(p, "the plan")
    p.add_argument(
        "--summary", action="store_true", help="counts per action and one line per layer that builds"
    )
    p.add_argument("--check", action="store_true", help="exit 1 when anything would be done (like make -q)")
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="LAYER",
        help="plan LAYER as rebuilt regardless of its key (repeatable)",
    )
    p.add_argument("--force-all", action="store_true", help="plan every selected layer as rebuilt")
    _max_age(p)
    _arch_opt(p)


def _cmd_up(sub: Any) -> None:
    p = _add(
        sub,
        "up",
        "build and publish what is stale",
        "[DIR] [LAYER ...]",
        "Make the plan, then build the stale layers with buildah (parents first, up to -j at once) and "
        "publish them to their targets. Finished layers are recorded as they finish: an interrupted run "
        "resumes where it stopped. Checks first that the host tools the layers need are installed.",
        _examples(
            "imagegraph up layers/",
            "imagegraph up layers/ compute -j 4",
            "imagegraph up layers/ --dry-run",
            "imagegraph up layers/ --wait --log-format json   # nightly, from cron",
            one="a layer failed, or a tool the layers need is missing",
        ),
    )
    p.add_argument("args", nargs="*", metavar="[DIR] [LAYER]", help=DIR_HELP + "; then layers to select")
    _state_opt(p)
    _online_opts(p)
    p.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="build slots: builds and SquashFS at once, at least 1 (default: imagegraph.yaml jobs, else cores + 1)",
    )
    p.add_argument(
        "--uploads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="registry, S3 and directory uploads at once (default: 2)",
    )
    p.add_argument(
        "--boot-tests",
        type=_positive_int,
        default=None,
        metavar="N",
        help="QEMU boot tests at once (default: 1)",
    )
    p.add_argument(
        "--squashfs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="SquashFS images made at once, each within the build slots (default: 1: mksquashfs uses every core)",
    )
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="LAYER",
        help="rebuild LAYER regardless of its key (repeatable)",
    )
    p.add_argument("--force-all", action="store_true", help="rebuild every selected layer")
    p.add_argument("--dry-run", action="store_true", help="print the plan and do nothing")
    p.add_argument(
        "--update-lock",
        action="store_true",
        help="`imagegraph lock --update` first, then build what it changed (the nightly)",
    )
    p.add_argument("--fail-fast", action="store_true", help="start nothing new after the first failure")
    _json_opt(p, "the run result")
    _max_age(p)
    _arch_opt(p)
    _wait_opt(p)
    p.add_argument(
        "--report", metavar="FILE", help="write the run's report page to FILE, whatever the outcome"
    )
    p.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default=None,
        help="where builds run: this host, or one Slurm job per stale layer (default: imagegraph.yaml executor.kind, else local)",
    )


def _cmd_doctor(sub: Any) -> None:
    p = _add(
        sub,
        "doctor",
        "check the host tools, storage, registries and S3 a directory's layers need",
        "[DIR]",
        "Check what building and publishing DIR's layers needs: host tools (buildah, skopeo, the package "
        "managers, mksquashfs, qemu, binfmt handlers for foreign architectures) with their versions, "
        "container storage, registry and S3 reachability and credentials (never printed). Says what to "
        "install for each missing piece.",
        _examples(
            "imagegraph doctor layers/",
            "imagegraph doctor layers/ --offline",
            "imagegraph doctor --json",
            one="something needed is missing, failing or unreachable",
        ),
    )
    _dir_arg(p)
    p.add_argument("--offline", action="store_true", help="check only this host: no registries, no S3")
    p.add_argument(
        "--registry-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds to wait for each registry and S3 endpoint (default: $IMAGEGRAPH_REGISTRY_TIMEOUT or 5)",
    )
    _json_opt(p, "the report")


def _cmd_lock(sub: Any) -> None:
    p = _add(
        sub,
        "lock",
        "write imagegraph.lock: upstream repositories, parents and each layer's resolved packages",
        "[DIR]",
        "Fetch the fingerprints (repomd.xml, Release, .repo files) of every upstream repository the "
        "layers use and the digests of external parents, resolve the exact packages each dnf layer "
        "installs (metadata only, on its parent's installed set), and write them to DIR/imagegraph.lock. "
        "Keys include what is locked, so a changed package shows up in `plan` and nothing else does.",
        _examples(
            "imagegraph lock layers/",
            "imagegraph lock layers/ --update --dry-run   # what would change, and so rebuild",
            "imagegraph lock layers/ --update && imagegraph plan layers/",
        ),
    )
    _dir_arg(p)
    p.add_argument(
        "--update", action="store_true", help="fetch every fingerprint again (else: only missing ones)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would change in the lock (and so rebuild); write nothing",
    )
    p.add_argument(
        "--no-resolve",
        dest="resolve",
        action="store_false",
        default=None,
        help="fingerprints only: keys follow repository revisions, no package sets (kept in the file)",
    )
    p.add_argument("--resolve", dest="resolve", action="store_true", help="lock package sets again")
    _state_opt(p)
    _wait_opt(p)
    _json_opt(p, "the changes")


def _cmd_gc(sub: Any) -> None:
    p = _add(
        sub,
        "gc",
        "remove key tags, S3 objects and local images of old builds",
        "--keep N [DIR]",
        "Keep the newest N builds of every layer (and every key a promoted tag points at); remove older "
        "key tags from registries, their S3 objects and local images.",
        _examples("imagegraph gc layers/ --keep 5 --dry-run", "imagegraph gc layers/ --keep 5"),
    )
    _dir_arg(p)
    p.add_argument(
        "--keep", type=_positive_int, required=True, metavar="N", help="builds kept per layer, newest first"
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    _state_opt(p)
    _wait_opt(p)
    _json_opt(p, "the report")


def _cmd_artifacts(sub: Any) -> None:
    p = _add(
        sub,
        "artifacts",
        "published URLs and an OpenCHAMI boot configuration for a layer",
        "[DIR] LAYER",
        "Print where a layer was published and, for SquashFS targets (S3 or a directory), the boot "
        "configuration for OpenCHAMI's boot service. A publish_dir target's URLs are file:// URLs unless "
        "--base-url says where a web server serves the directory.",
        _examples(
            "imagegraph artifacts layers/ compute",
            "imagegraph artifacts layers/ compute --base-url http://boot.example:8080/images",
            "imagegraph artifacts layers/ compute --json | jq -r .urls[]",
            one="the layer is not built or not published yet",
        ),
    )
    p.add_argument("args", nargs="+", metavar="[DIR] LAYER", help=DIR_HELP + "; then the layer")
    _state_opt(p)
    p.add_argument(
        "--base-url",
        metavar="URL",
        default=None,
        help="the URL a web server serves the publish_dir directory at (default: file:// URLs)",
    )
    _json_opt(p, "the document")


def _cmd_status(sub: Any) -> None:
    p = _add(
        sub,
        "status",
        "recent runs and whether each layer is up to date, stale or failed",
        "[DIR]",
        "Show the recent runs and, per layer, whether it is up to date, stale (and why), or failed (see "
        "`imagegraph log LAYER`).",
        _examples(
            "imagegraph status layers/",
            "imagegraph status layers/ --json | jq '.layers[] | select(.status==\"failed\")'",
        ),
    )
    _dir_arg(p)
    _state_opt(p)
    _online_opts(p)
    _json_opt(p, "runs and layers (ISO 8601 timestamps)")


def _cmd_log(sub: Any) -> None:
    p = _add(
        sub,
        "log",
        "show a layer's last build log",
        "[DIR] LAYER",
        "Print the full log of a layer's last build (every command and its output).",
        _examples("imagegraph log layers/ compute", "imagegraph log layers/ compute | less"),
    )
    p.add_argument("args", nargs="+", metavar="[DIR] LAYER", help=DIR_HELP + "; then the layer")
    _state_opt(p)


def _cmd_boot_test(sub: Any) -> None:
    p = _add(
        sub,
        "boot-test",
        "boot a layer's kernel, initramfs and SquashFS under QEMU",
        "[DIR] LAYER",
        "Boot the layer's published (or locally built) kernel, initramfs and SquashFS under QEMU, the "
        "SquashFS served on 127.0.0.1, and watch the serial console for the marker. The result is "
        "recorded; `promote` checks it.",
        _examples(
            "imagegraph boot-test layers/ compute",
            "imagegraph boot-test layers/ compute --accel tcg --timeout 900",
            one="the boot failed or timed out",
        ),
    )
    p.add_argument("args", nargs="+", metavar="[DIR] LAYER", help=DIR_HELP + "; then the layer")
    _state_opt(p)
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="give up after this long (default: options.boot_test timeout, else 300)",
    )
    p.add_argument("--marker", default=None, help="console text that means booted (default: 'login:')")
    p.add_argument("--tag", default=None, help="boot this tag's files (default: the first publish tag)")
    p.add_argument(
        "--accel",
        choices=["auto", "kvm", "tcg"],
        default=None,
        help="QEMU accelerator; auto uses KVM when /dev/kvm works (default: $IMAGEGRAPH_BOOT_ACCEL or auto)",
    )
    _online_opts(p)
    _json_opt(p, "the boot result")


def _cmd_promote(sub: Any) -> None:
    p = _add(
        sub,
        "promote",
        "point a human tag at an already built key, without building",
        "[DIR] LAYER TAG",
        "Point TAG at a built key on every target (registry, S3, directory, local storage) without "
        "building, once the key passed its boot test.",
        _examples(
            "imagegraph promote layers/ compute stable",
            "imagegraph promote layers/ compute stable --key 3f2a9c",
        ),
    )
    p.add_argument(
        "args", nargs="+", metavar="[DIR] LAYER TAG", help=DIR_HELP + "; then the layer and the tag"
    )
    _state_opt(p)
    p.add_argument(
        "--key", default=None, help="a built key, a key prefix or a tag (default: the current key)"
    )
    p.add_argument("--force", action="store_true", help="promote a key that has not passed its boot test")
    _online_opts(p)
    _json_opt(p, "what was tagged")


def _cmd_diff(sub: Any) -> None:
    p = _add(
        sub,
        "diff",
        "packages added, removed, upgraded and downgraded between two builds of a layer",
        "[DIR] LAYER [FROM] [TO]",
        "Compare the package inventories (read from each image's own package database at build time) of "
        "two builds of LAYER. FROM and TO are keys, key prefixes, `ig-` key tags or human tags; FROM "
        "defaults to what the layer's first human tag points at (else the previous build), TO to the "
        "current build. Unchanged packages are left out.",
        _examples(
            "imagegraph diff layers/ compute",
            "imagegraph diff layers/ compute prod",
            "imagegraph diff layers/ compute 3f2a9c 9c1d07 --json",
            one="an inventory is unknown (no package database, or not read on this host)",
        ),
    )
    p.add_argument(
        "args",
        nargs="+",
        metavar="[DIR] LAYER [FROM] [TO]",
        help=DIR_HELP + "; then the layer and the builds",
    )
    _state_opt(p)
    _online_opts(p)
    _json_opt(p, "the changes")
    p.add_argument(
        "--files",
        action="store_true",
        help="also the paths added, removed and changed (needs both local images)",
    )


def _cmd_sbom(sub: Any) -> None:
    p = _add(
        sub,
        "sbom",
        "print a built key's CycloneDX 1.5 SBOM",
        "[DIR] LAYER",
        "Print the CycloneDX 1.5 JSON SBOM of a build of LAYER: every installed package with its package "
        "URL, the layer's key, its parent's key and the image digest.",
        _examples(
            "imagegraph sbom layers/ compute > compute.cdx.json", "imagegraph sbom layers/ compute --key prod"
        ),
    )
    p.add_argument("args", nargs="+", metavar="[DIR] LAYER", help=DIR_HELP + "; then the layer")
    _state_opt(p)
    p.add_argument(
        "--key", default=None, help="a key, key prefix or tag (default: the layer's last build here)"
    )
    _online_opts(p)


def _cmd_completion(sub: Any) -> None:
    p = _add(
        sub,
        "completion",
        "print a bash or zsh completion script",
        "{bash,zsh}",
        "Print a shell completion script generated from this parser (shtab). `make install` installs "
        "both; by hand: `imagegraph completion bash > /etc/bash_completion.d/imagegraph`.",
        _examples(
            "source <(imagegraph completion bash)",
            "imagegraph completion zsh > ~/.zfunc/_imagegraph",
        ),
    )
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")


def _cmd_help(sub: Any) -> None:
    p = _add(
        sub,
        "help",
        "show the help of a command",
        "[COMMAND]",
        "Show a command's help (the list of commands without one).",
        _examples("imagegraph help up", "imagegraph help"),
    )
    p.add_argument(
        "topic", nargs="?", default=None, metavar="COMMAND", help="the command (default: all commands)"
    )


# The order of `imagegraph --help`.
PARSERS = [
    _cmd_validate,
    _cmd_graph,
    _cmd_report,
    _cmd_plan,
    _cmd_up,
    _cmd_doctor,
    _cmd_status,
    _cmd_log,
    _cmd_artifacts,
    _cmd_boot_test,
    _cmd_promote,
    _cmd_diff,
    _cmd_sbom,
    _cmd_lock,
    _cmd_gc,
    _cmd_completion,
    _cmd_help,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imagegraph",
        description=textwrap.fill(
            "make for diskless boot images: build OpenCHAMI image-builder layer graphs "
            "incrementally with buildah, publish them, boot-test them.",
            80,
        ),
        epilog=_examples(
            "imagegraph plan layers/",
            "imagegraph up layers/ -j 4",
            "imagegraph help up",
        )
        + "\n\n"
        + ENVIRONMENT,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"imagegraph {__version__}")
    _globals(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in PARSERS:
        add(sub)
    for cmd in sub.choices.values():
        _globals(cmd, top=False)
    parser.commands = sub.choices  # type: ignore[attr-defined]
    return parser


def man_include() -> str:
    """Extra man page sections (argparse-manpage `--include`, help2man's format), from the same text
    as `--help`: ENVIRONMENT and EXIT STATUS."""

    def body(block: str) -> str:
        rows = [line.strip() for line in block.splitlines()[1:]]
        return "\n".join(f".TP\n.B {r.split(maxsplit=1)[0]}\n{r.split(maxsplit=1)[1]}" for r in rows if r)

    return f"[ENVIRONMENT]\n{body(ENVIRONMENT)}\n\n[EXIT STATUS]\n{body(EXIT_STATUS)}\n"


# ------------------------------------------------------------------- helpers


def _default_dir() -> Path:
    return Path("layers") if Path("layers").is_dir() and not list(Path(".").glob("*.yaml")) else Path(".")


def _split_dir(positional: list[str]) -> tuple[Path, list[str]]:
    """`[DIR] [LAYER...]`: the first word is the directory when it is one. A spec file
    (`layers/compute.yaml`) stands for its directory and that layer."""
    if positional:
        first = Path(positional[0])
        if first.suffix in (".yaml", ".yml") and first.is_file() and first.name != "imagegraph.yaml":
            return first.parent, [first.name, *positional[1:]]
        if first.is_dir() or "/" in positional[0]:
            return first, positional[1:]
    return _default_dir(), positional


def _root(args: argparse.Namespace) -> tuple[Path, list[str]]:
    return _split_dir([args.dir] if getattr(args, "dir", None) else list(getattr(args, "args", []) or []))


def _check_state_arg(args: argparse.Namespace, must_exist: bool, out: Output | None = None) -> None:
    """For commands that only read (`must_exist`), a `--state` that does not exist is said: as a
    warning with `out` (plan, status: everything then reads as never built), else as an error
    (log, artifacts: nothing to show). Commands that write create it."""
    from .errors import UsageError

    arg = getattr(args, "state", None)
    if not arg or not must_exist or Path(arg).exists():
        return
    if out is None:
        raise UsageError(f"--state {arg}: no such file (nothing was recorded there); check the path")
    out.warning(f"--state {arg}: no such file yet; every layer reads as never built")


def _state_path(project: Project, arg: str | None) -> Path:
    return Path(arg) if arg else project.default_state_dir() / "state.db"


def _cache_dir(root: Path, state_arg: str | None = None) -> Path | None:
    from .cachedir import spec_cache_dir

    return spec_cache_dir(root, Path(state_arg).parent if state_arg else None)


def _load(
    root: Path, state_arg: str | None = None, sources_required: bool = True
) -> tuple[Project, LayerGraph]:
    from .graph import build_graph
    from .log import get_logger
    from .project import load_project

    project = load_project(root, cache_dir=_cache_dir(root, state_arg), sources_required=sources_required)
    _log_spec_loading(project)
    lg = build_graph(project)
    if _verbosity >= 1:  # -v: which directory, state and how many layers (structlog loads only then)
        get_logger().info(
            "layer directory loaded",
            dir=str(root),
            layers=len(project.layers),
            state=str(_state_path(project, state_arg)),
        )
    return project, lg


def _log_spec_loading(project: Project) -> None:
    """-v: how the specs were read (cache hits, libyaml, ruamel fallbacks); -vv names the fallbacks."""
    if _verbosity < 1:
        return
    from . import yamlload
    from .log import get_logger

    log = get_logger()
    log.info("specs loaded", **project.spec_cache, **yamlload.stats.snapshot())
    for file, reason in yamlload.stats.fallbacks:
        log.debug("read with ruamel", file=file, reason=reason)


_verbosity = 0  # -v count, set by main: what _log_spec_loading says


def _registry_timeout(args: argparse.Namespace) -> float:
    if getattr(args, "registry_timeout", None):
        return args.registry_timeout
    try:
        value = float(os.environ.get("IMAGEGRAPH_REGISTRY_TIMEOUT", "") or 5.0)
    except ValueError:
        value = 5.0
    return value if value > 0 else 5.0


def _plan(
    args: argparse.Namespace,
    out: Output,
    names_and_dir: list[str],
    loaded: tuple[Project, LayerGraph] | None = None,
) -> tuple[Project, LayerGraph, State, Plan]:
    from .lockfile import load_lock
    from .plan import LiveInventory, make_plan
    from .render import registry_warnings
    from .state import State

    root, names = _split_dir(names_and_dir)
    _check_state_arg(args, must_exist=args.command in ("plan", "status"), out=out)
    inventory = LiveInventory(offline=args.offline, timeout=_registry_timeout(args))
    if args.command == "plan" and not loaded:  # read-only: local storage is asked while specs load
        inventory.start_local()
    project, lg = loaded or _load(root, args.state, sources_required=args.command == "up")
    state = State(_state_path(project, args.state), readonly=args.command in ("plan", "status"))
    lock = load_lock(project.root)  # keys include the locked upstream fingerprints, when there are any
    if lock and not args.offline and (args.command == "plan" or getattr(args, "dry_run", False)):
        lock = _lock_as_up_would(lock, lg, out)
    registries = inventory.registries_of([lg.spec(lid) for lid in lg.order(lg.select(names or None))])
    ask = ", ".join(f"{host} ({n} repositor{'y' if n == 1 else 'ies'})" for host, n in registries.items())
    slurm_kw: dict = {}
    if (getattr(args, "executor", None) or project.settings.executor.kind) == "slurm":
        from .slurm import emulation_for  # a foreign arch placed on its own nodes needs no binfmt here

        slurm_kw["emulation_of"] = emulation_for(project.settings.executor)
    with out.status(f"asking {ask}..." if ask else "planning..."):
        plan = make_plan(
            lg,
            state,
            inventory,
            names,
            force=set(getattr(args, "force", None) or []),
            force_all=getattr(args, "force_all", False),
            offline=args.offline,
            upstream_of=lock.upstream_of if lock else None,
            locked_digest=lock.parent_digest if lock else None,
            max_age=getattr(args, "max_age", None),
            arches=getattr(args, "arch", None),
            **slurm_kw,
        )
    if slurm_kw:  # which arch builds natively where, which under emulation
        from .slurm import place_plan

        place_plan(plan, project.settings.executor)
    for text in registry_warnings(plan, inventory.registry_problems()):
        out.warning(text)
    return project, lg, state, plan


def _lock_as_up_would(lock: Any, lg: LayerGraph, out: Output) -> Any:
    """The lock `up` would plan with: `up` first re-resolves entries made for another version of
    a spec (an edit, or its revert), so a preview keys those layers by the same re-resolve, in
    memory (nothing written). When that cannot be done, the lock as it is, with a warning."""
    stale = lock.stale_layers(lg)
    if not stale:
        return lock
    from .lockfile import lock as relock

    report = relock(lg, dry_run=True)
    if report.errors or report.lock is None:
        out.warning(
            f"imagegraph.lock: {', '.join(stale)} would be resolved again by `up`, but could not be now"
            f" ({'; '.join(report.errors)[:300]}); keyed by the repositories' fingerprints"
        )
        return lock
    return report.lock


def _render_plan(plan: Plan, out: Output, as_json: bool, summary: bool = False) -> None:
    from .render import counts_line, plan_summary, plan_tree, print_lines

    def human() -> None:
        if out.quiet:
            out.out.print(counts_line(plan))
        elif summary:
            print_lines(out.out, plan_summary(plan))
        else:
            print_lines(out.out, plan_tree(plan))
            out.out.print()
            out.out.print(counts_line(plan))

    out.document(plan.to_json(), as_json, human)


# ------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace, out: Output) -> int:
    from .errors import SpecError
    from .render import plural
    from .validate import validate

    root, _ = _root(args)
    result = validate(root, cache_dir=_cache_dir(root), strict=args.strict)
    if args.json:
        out.document(result.to_json(), True, lambda: None)
        return result.exit_status
    if not result.ok:
        raise SpecError(result.diagnostics)
    out.warnings(result.warnings)
    # JSON lines: the `validate result` event, as every command's result
    out.document(
        result.to_json(), False, lambda: out.info(f"{plural(len(result.layers), 'layer spec')} OK in {root}")
    )
    return 0


def cmd_graph(args: argparse.Namespace, out: Output) -> int:
    from .graph import to_dot, to_json, to_mermaid

    root, _ = _root(args)
    if args.format in ("svg", "png"):
        return _graph_picture(args, out, root)
    project, lg = _load(root, sources_required=False)  # drawing needs no file contents
    out.warnings(project.warnings + lg.warnings + project.errors)
    if args.format in ("dot", "mermaid"):
        text = (to_dot if args.format == "dot" else to_mermaid)(lg)
        out.document({"format": args.format, "text": text}, False, lambda: sys.stdout.write(text))
    elif args.format == "json":
        out.document(to_json(lg), True, lambda: None)
    else:
        lines: list[str] = []

        def walk(lid: str, connector: str, prefix: str) -> None:
            extra = f"  (from {lg.parents[lid].describe()})" if not connector else ""
            lines.append(connector + lid + extra)
            kids = lg.children(lid)
            for i, c in enumerate(kids):
                last = i == len(kids) - 1
                walk(c, prefix + ("└─ " if last else "├─ "), prefix + ("   " if last else "│  "))

        for lid in lg.order():
            if lg.parent_layer(lid) is None:
                walk(lid, "", "")
        out.document(to_json(lg), False, lambda: sys.stdout.write("\n".join(lines) + "\n"))
    return 2 if project.errors else 0


def _graph_picture(args: argparse.Namespace, out: Output, root: Path) -> int:
    from . import picture
    from .errors import UsageError

    if args.format == "png" and not args.output:
        raise UsageError("graph --format png needs -o FILE (a PNG is not written to a terminal)")
    project, lg, _state, plan = _plan(args, out, [str(root)])
    out.warnings(project.warnings + lg.warnings)
    nodes, states = picture.nodes_of(lg), picture.plan_states(plan)
    if args.format == "png":
        picture.write_png(picture.to_dot(nodes, states), Path(args.output))
        return 0
    svg = picture.draw(nodes, states)
    if args.output:
        Path(args.output).write_text(svg)
    else:
        sys.stdout.write(svg)
    return 0


def cmd_report(args: argparse.Namespace, out: Output) -> int:
    from .report import make_report, render_html, run_document

    root, _ = _root(args)
    _check_state_arg(args, must_exist=True)
    project, _lg = _load(root, args.state, sources_required=False)
    state_dir = _state_path(project, args.state).parent
    target = Path(args.output) if args.output else None
    report = make_report(run_document(state_dir, args.run), log_base=(target or Path("x")).absolute().parent)
    html = render_html(report)
    if target:
        from .publish.reports import write_file

        write_file(target, html)
    else:
        sys.stdout.write(html)
    return 0


def _write_run_report(out: Output, project: Project, state_dir: Path, run_id: str, path: str | None) -> None:
    """`up --report FILE` and the project's `reports:` setting; a failure here is a warning only."""
    if not path and not project.settings.reports:
        return
    from .errors import ImagegraphError
    from .log import get_logger
    from .publish.reports import publish_report, write_file
    from .report import make_report, render_html, run_document

    try:
        doc = run_document(state_dir, run_id)
        if path:
            write_file(Path(path), render_html(make_report(doc, log_base=Path(path).absolute().parent)))
        if project.settings.reports:
            base = project.settings.reports.get("dir")
            log_base = (Path(base) if Path(base).is_absolute() else project.root / base) if base else None
            html = render_html(make_report(doc, log_base=log_base.absolute() if log_base else None))
            for where in publish_report(html, run_id, project.settings.reports, project.root):
                get_logger().info("report written", where=where)
    except ImagegraphError as exc:
        out.warning(f"{path or 'reports'}: run report not written: {exc}")


plan_unknown = False  # the last `plan` had an unknown answer (planreuse.py records no such plan)


def cmd_plan(args: argparse.Namespace, out: Output) -> int:
    global plan_unknown
    project, lg, state, plan = _plan(args, out, args.args)
    plan_unknown = bool(plan.unknown)
    out.warnings(project.warnings + lg.warnings)  # on stderr: --json's stdout stays one document
    _render_plan(plan, out, args.json, args.summary)
    if project.errors:  # missing sources: their layers are planned as blocked; still a spec error
        out.warnings(project.errors)
        return 2
    if plan.unknown:  # unknown is not absent: say which inventory could not be read, and why
        from .render import unknown_lines

        for line in unknown_lines(plan):
            out.error(line, command="plan")
        return 1
    if args.check:
        return 1 if plan.pending else 0
    return 0


def cmd_up(args: argparse.Namespace, out: Output) -> int:
    from . import log as logmod
    from .state import default_run_id
    from .statelock import StateLock

    run_id = default_run_id()
    logmod.bind_run(run_id)  # planning's events (registry warnings) carry the run id too
    _check_state_arg(args, must_exist=False)
    loaded = _load(_split_dir(args.args)[0], args.state)
    if not args.dry_run:
        _preflight(args, loaded[1])
    if args.wait and not args.dry_run:
        # Queue first, then plan: a plan made before the other run finished would redo its work
        # (and the specs are read again: hours may pass).
        with StateLock(_state_path(loaded[0], args.state).parent, "up (waiting)", wait=True):
            pass
        loaded = None
    if not args.dry_run and (status := _relock(args, out, loaded)) is not None:
        return status
    project, lg, state, plan = _plan(args, out, args.args, loaded)
    out.warnings(project.warnings + lg.warnings)  # on stderr: --json's stdout stays one document
    slurm = (args.executor or project.settings.executor.kind) == "slurm"
    if slurm:
        from .errors import SpecError
        from .slurm import check_plan

        if diags := check_plan(plan):
            raise SpecError(diags)
    if args.dry_run:
        _render_plan(plan, out, args.json)
        return 0
    # cores + 1: measured fastest for independent builds on 2 cores, near or far repository (bench/README.md).
    jobs = args.jobs or project.settings.jobs or (os.cpu_count() or 1) + 1
    from .scheduler import has_tasks, record_run_without_tasks

    build_service = None
    if slurm and not args.dry_run:
        from .slurm import service_for

        build_service = service_for(
            project.settings.executor,
            project_root=project.root,
            state_dir=_state_path(project, args.state).parent,
            run_id=run_id,
            state=state,
        )
    from .render import plain_stream

    progress = None
    # plain_stream first: asking rich whether stderr is a terminal would load it for a pipe too
    if not (args.json or out.json or out.quiet or plain_stream(sys.stderr, "")) and out.err.is_terminal:
        progress = _Progress(out, plan)
    try:
        if not slurm and not has_tasks(plan):
            # Nothing to run (a no-op `up`): recorded without loading the executor and the build
            # and publish side it imports (boto3 alone is 0.3 s of a 0.6 s no-op; bench/README.md).
            result = record_run_without_tasks(
                plan,
                state,
                state_dir=_state_path(project, args.state).parent,
                run_id=run_id,
                wait_lock=args.wait,
                reporter=progress,
                jobs=jobs,
                uploads=args.uploads,
                boot_tests=args.boot_tests,
                squashfs_at_once=args.squashfs,
            )
        else:
            from .executor import run_up  # after planning: the plan's inventory questions go first

            result = run_up(
                plan,
                state,
                state_dir=_state_path(project, args.state).parent,
                jobs=jobs,
                fail_fast=args.fail_fast,
                uploads=args.uploads,
                boot_tests=args.boot_tests,
                squashfs_at_once=args.squashfs,
                reporter=progress,
                install_signals=True,
                wait_lock=args.wait,
                run_id=run_id,
                build_service=build_service,
            )
    finally:
        if progress:
            progress.stop()
    _write_run_report(out, project, _state_path(project, args.state).parent, result.run_id, args.report)
    from .render import print_lines, print_result_table, result_lines

    def human() -> None:
        if not out.quiet:
            print_result_table(out, result)
        if lines := result_lines(result):
            print_lines(out.err if out.quiet else out.out, lines)

    out.document(result.to_json(), args.json, human)
    return result.exit_status


def _preflight(args: argparse.Namespace, lg: LayerGraph) -> None:
    """The cheap part of `doctor` (host tools on PATH) before anything is planned or built."""
    from .doctor import PreflightError, preflight

    root, names = _split_dir(args.args)
    missing = preflight(lg, lg.select(names or None), getattr(args, "executor", None))
    if missing:
        raise PreflightError(root, missing)


class _Progress:
    """Live progress on a terminal (a `Reporter`): running tasks, done/total, elapsed."""

    def __init__(self, out: Output, plan: Plan):
        import time

        from rich.live import Live

        self._time = time.monotonic
        self.total = sum(len(lp.tasks) for lp in plan.layers.values())
        self.done = 0
        self.running: dict[str, float] = {}
        self.start = self._time()
        self.live = Live(self._render(), console=out.err, refresh_per_second=2, transient=True)
        self.live.start()

    def _render(self) -> Any:
        from rich.text import Text

        now = self._time()
        t = Text(f"[{self.done}/{self.total}] {now - self.start:5.0f}s  ")
        t.append(", ".join(f"{k} ({now - v:.0f}s)" for k, v in self.running.items()) or "waiting")
        return t

    def task_started(self, task: Any) -> None:
        self.running[f"{task.layer} {task.kind}"] = self._time()
        self.live.update(self._render())

    def task_finished(self, task: Any, result: Any) -> None:
        self.running.pop(f"{task.layer} {task.kind}", None)
        self.done += 1
        self.live.update(self._render())

    task_failed = task_finished

    def task_skipped(self, task: Any, result: Any) -> None:
        self.done += 1
        self.live.update(self._render())

    def layer_finished(self, result: Any) -> None:
        pass

    def run_finished(self, result: Any) -> None:
        self.live.update(self._render())

    def stop(self) -> None:
        self.live.stop()


def _layer_args(
    args: argparse.Namespace, command: str, usage: str = "LAYER"
) -> tuple[Project, LayerGraph, str, list[str]]:
    """`[DIR] LAYER [MORE...]` as `usage` says: the project, its graph, the layer and the rest."""
    from .errors import UsageError

    root, names = _split_dir(args.args)
    if len(names) != len(usage.split()):
        raise UsageError(f"{command} takes [DIR] {usage}; see `imagegraph help {command}`")
    _check_state_arg(args, must_exist=command in ("artifacts", "log"))
    project, lg = _load(root, args.state)
    return project, lg, lg.lookup(names[0]), names[1:]


def cmd_artifacts(args: argparse.Namespace, out: Output) -> int:
    from .executor import artifacts_document
    from .state import State

    project, lg, layer, _ = _layer_args(args, "artifacts")
    state = State(_state_path(project, args.state), readonly=True)
    doc = artifacts_document(lg, state, layer, base_url=args.base_url)

    def human() -> None:
        from .render import boot_config_yaml

        if doc.get("message"):
            out.err.print(doc["message"])
        if doc.get("urls") and not out.quiet:
            out.err.print("published:")
            for u in doc["urls"]:
                out.err.print(f"  {u}")
        if doc["boot_config"]:
            sys.stdout.write(boot_config_yaml(doc["boot_config"]))

    out.document(doc, args.json, human)
    return 0


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from .diff import built_keys, changes_since_replaced
    from .render import status_table
    from .slurm import last_jobs
    from .status import layer_status

    project, _lg, state, plan = _plan(args, out, [args.dir] if args.dir else [])
    # Package counts of builds made elsewhere come from their published SBOMs, kept in the state.
    remote = _remote(args, state, _state_path(project, args.state))
    report = layer_status(plan, state, remote=remote)
    slurm_jobs = last_jobs(state.runs(10))
    # Per built layer: its current build's packages since the build it replaced (after a revert
    # to an older key, the newer one), from the inventories kept per key.
    records = state.layers()
    changes = {}
    for lid, lp in plan.layers.items():
        key = lp.key if lp.key in built_keys(state, lid) else (records[lid].key if lid in records else None)
        if key is not None:
            changes[lid] = changes_since_replaced(state, lid, key)
    doc = {
        **report.to_json(),
        "slurm_jobs": slurm_jobs,
        "changes": {k: {**d.to_json(), "brief": d.brief()} for k, d in changes.items()},
    }

    def human() -> None:
        from rich.table import Table
        from rich.text import Text

        from .redact import redact

        for item in status_table(report):
            out.out.print(item)
        for lid, d in sorted(changes.items()):
            if d.changes:
                out.out.print(Text(f"{lid}: {d.brief()}", style="dim"))
        if slurm_jobs:
            t = Table(title="Slurm jobs of the last Slurm run")
            for c in ("layer", "job", "node", "state", "started", "ended", "result"):
                t.add_column(c)
            for j in slurm_jobs:
                t.add_row(
                    j["layer"],
                    j["job_id"],
                    j["node"],
                    j["state"],
                    j["started"],
                    j["ended"],
                    redact(j["message"]),
                )
            out.out.print(t)

    out.document(doc, args.json, human)
    return 0


def cmd_log(args: argparse.Namespace, out: Output) -> int:
    from .errors import UsageError

    root, names = _split_dir(args.args)
    if len(names) == 1 and "@" in names[0]:  # one arch's node of a multi-arch layer: compute@aarch64
        _check_state_arg(args, must_exist=True)
        project, lg = _load(root, args.state)
        layer = lg.lookup_node(names[0])
    else:
        project, lg, layer, _ = _layer_args(args, "log")
    logs = _state_path(project, args.state).parent / "logs"
    latest = logs / f"{layer}.log"
    if not latest.exists():
        raise UsageError(f"no build log for {layer} yet (looked in {logs})")
    text = latest.read_text(errors="replace")
    out.document({"layer": layer, "file": str(latest), "log": text}, False, lambda: sys.stdout.write(text))
    return 0


def _relock(args: argparse.Namespace, out: Output, loaded: tuple[Project, LayerGraph] | None) -> int | None:
    """`up`: `lock --update` with --update-lock; else re-resolve the layers whose lock entry is stale.

    Returns an exit status when the lock could not be brought up to date (nothing is built).
    """
    from .lockfile import load_lock, lock
    from .render import lock_lines, print_lines
    from .statelock import StateLock

    project, lg = loaded or _load(_split_dir(args.args)[0], args.state)
    current = load_lock(project.root)
    if not args.update_lock and (
        current is None or not current.resolve or not current.layers or args.offline
    ):
        return None  # no resolved sets locked (or offline: plan keys stale entries by fingerprints)
    with StateLock(_state_path(project, args.state).parent, "lock", wait=args.wait):
        report = lock(lg, update=args.update_lock)
    lines, errors = lock_lines(report)
    for e in errors:
        out.error(e, command="up")
    if report.errors:
        return report.exit_status
    if report.written and not out.quiet and not args.json:
        print_lines(out.out, lines)
    return None


def cmd_lock(args: argparse.Namespace, out: Output) -> int:
    from .lockfile import lock
    from .render import lock_lines, print_lines
    from .statelock import StateLock

    root, _ = _root(args)
    _check_state_arg(args, must_exist=False)
    project, lg = _load(root, args.state)
    # The lock file changes keys: never under a running `up`.
    with StateLock(_state_path(project, args.state).parent, "lock", wait=args.wait):
        report = lock(lg, update=args.update, dry_run=args.dry_run, resolve=args.resolve)
    lines, errors = lock_lines(report)
    for e in errors:
        out.error(e, command="lock")

    out.document(
        report.to_json(), args.json, lambda: print_lines(out.out, lines[-1:] if out.quiet else lines)
    )
    return report.exit_status


def cmd_gc(args: argparse.Namespace, out: Output) -> int:
    from .gc import run_gc
    from .render import gc_lines, print_lines
    from .state import State

    root, _ = _root(args)
    _check_state_arg(args, must_exist=False)
    project, lg = _load(root, args.state)
    path = _state_path(project, args.state)
    from .lockfile import load_lock
    from .plan import LiveInventory, current_keys

    state = State(path)
    lock = load_lock(project.root)
    current = current_keys(  # today's keys are kept, whatever was built last
        lg,
        LiveInventory(timeout=_registry_timeout(args)),
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
    lines, errors = gc_lines(report)
    for e in errors:
        out.error(e, command="gc")
    out.document(
        report.to_json(), args.json, lambda: print_lines(out.out, lines[-1:] if out.quiet else lines)
    )
    return report.exit_status


def _layer_key(args: argparse.Namespace, lg: LayerGraph, layer: str) -> tuple[State, str]:
    """A writable state and the layer's current key (as `plan` computes it); usage error if not built."""
    from .errors import UsageError
    from .plan import Action, LiveInventory, make_plan
    from .state import State

    state = State(_state_path(lg.project, args.state))
    offline = getattr(args, "offline", False)
    inventory = LiveInventory(offline=offline, timeout=_registry_timeout(args))
    lp = make_plan(lg, state, inventory, [layer], offline=offline, **_lock_kw(lg)).layers[layer]
    if lp.action == Action.BUILD:
        why = "; ".join(r.message for r in lp.reasons)
        raise UsageError(f"{layer}: its current key {lp.key[:12]} is not built ({why}); run `imagegraph up`")
    return state, lp.key


def cmd_boot_test(args: argparse.Namespace, out: Output) -> int:
    from rich.text import Text

    from .boottest import boot_and_record, boot_log_path, layer_artifacts
    from .redact import redact
    from .runner import Runner
    from .state import default_run_id

    project, lg, layer, _ = _layer_args(args, "boot-test")
    state, key = _layer_key(args, lg, layer)
    spec = lg.spec(layer)
    state_dir = _state_path(project, args.state).parent
    run_id = default_run_id()
    with layer_artifacts(spec, key, state_dir / "work", args.tag, Runner(layer)) as files:
        if not args.json and not out.json and not out.quiet:
            log_path = boot_log_path(state_dir, layer, run_id)
            out.err.print(f"booting {layer} ({files.source}) under QEMU; serial console: {log_path}")
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

    def human() -> None:
        o = out.out
        style = "bold green" if res.ok else "bold red"
        o.print(Text(f"{layer}: {res.outcome} in {res.seconds:.1f} s ({res.accel})", style=style))
        o.print(Text(f"  {redact(res.reason)}"))
        if not res.ok:
            o.print(Text("  serial console (last lines):", style="dim"))
            for line in res.tail[-20:]:
                o.print(Text(f"    {line}"))
        o.print(Text(f"  serial log: {res.serial_log}", style="dim"))

    out.document(res.to_json(), args.json, human)
    return 0 if res.ok else 1


def cmd_promote(args: argparse.Namespace, out: Output) -> int:
    from rich.text import Text

    from .promote import promote
    from .redact import redact
    from .state import State, default_run_id

    project, lg, layer, (tag,) = _layer_args(args, "promote", "LAYER TAG")
    if args.key:
        from .diff import resolve_ref

        state = State(_state_path(project, args.state))
        # a recorded build's key (prefix) or a tag; a host that did not build it asks the registry
        key = resolve_ref(state, layer, lg.spec(layer), args.key, _remote(args, state))
    else:
        state, key = _layer_key(args, lg, layer)
    doc = promote(
        lg.spec(layer),
        layer,
        key,
        tag,
        state,
        run_id=default_run_id(),
        force=args.force,
        remote=_remote(args, state),
    )

    def human() -> None:
        from .render import diff_lines, print_lines

        out.out.print(Text(f"{layer}: {tag} -> key {key[:12]}", style="bold"))
        for t in doc.targets:
            for loc in t["locations"]:
                out.out.print(Text(f"  {t['target']}: {redact(str(loc))}"))
        if doc.changes is not None:
            print_lines(out.out, diff_lines(doc.changes))

    out.document(doc.to_json(), args.json, human)
    return 0


def _remote(args: argparse.Namespace, state: State, keep_in: Path | None = None) -> Any:
    """What the layer's targets say of builds the state lacks (publish/sbomfetch.py); None offline.
    Fetched inventories go to `state`, or, when it is read-only, to the state at `keep_in`."""
    if getattr(args, "offline", False):
        return None
    from .publish.sbomfetch import RemoteBuilds

    return RemoteBuilds(state, timeout=_registry_timeout(args), state_path=keep_in)


def _current_key(args: argparse.Namespace, lg: LayerGraph, state: State, layer: str) -> str:
    """The layer's key as planning computes it now (for a host that has not built it)."""
    from .plan import LiveInventory, make_plan

    offline = getattr(args, "offline", False)
    inventory = LiveInventory(offline=offline, timeout=_registry_timeout(args))
    return make_plan(lg, state, inventory, [layer], offline=offline, **_lock_kw(lg)).layers[layer].key


def _lock_kw(lg: LayerGraph) -> dict:
    """The lock file's part of the keys (as `plan` takes it): without it a locked layer's key is another."""
    from .lockfile import load_lock

    lock = load_lock(lg.project.root)
    return {"upstream_of": lock.upstream_of, "locked_digest": lock.parent_digest} if lock else {}


def cmd_diff(args: argparse.Namespace, out: Output) -> int:
    from .diff import default_keys, layer_diff, resolve_ref
    from .errors import UsageError
    from .render import diff_lines, file_change_lines, print_lines
    from .state import State

    root, names = _split_dir(args.args)
    if not 1 <= len(names) <= 3:
        raise UsageError("diff takes [DIR] LAYER [FROM] [TO]")
    project, lg = _load(root, args.state, sources_required=False)
    layer = lg.lookup(names[0])
    spec = lg.spec(layer)
    # Inventories fetched from published SBOMs are kept in the state, once per key.
    state = State(_state_path(project, args.state), readonly=True)
    remote = _remote(args, state, _state_path(project, args.state))
    from_key, to_key, from_label, to_label = None, "", "", "current"
    if len(names) < 3:
        current = _current_key(args, lg, state, layer)
        from_key, to_key, from_label = default_keys(state, layer, spec, remote, current)
        if to_key != current:
            to_label = f"last build here; the current key {current[:12]} is not built"

    def ref(name: str) -> str:
        try:
            return resolve_ref(state, layer, spec, name, remote)
        except UsageError as exc:
            if args.offline:  # what this state does not know, the registry was not asked
                raise UsageError(f"{exc} (--offline: the registry was not asked)") from None
            raise

    if len(names) >= 2:
        from_key, from_label = ref(names[1]), names[1]
    if len(names) == 3:
        to_key, to_label = ref(names[2]), names[2]
    d = layer_diff(
        state, layer, from_key, to_key, from_label=from_label, to_label=to_label, spec=spec, remote=remote
    )
    files = None
    if args.files:
        from .rootdiff import tree_changes
        from .runner import Runner

        if from_key is None:
            raise UsageError(f"{layer}: --files needs two builds; FROM is the first build's nothing")
        files = tree_changes(spec, from_key, to_key, Runner(layer))
    doc = d.to_json()
    if files is not None:
        doc["files"] = [f.to_json() for f in files]

    def human() -> None:
        print_lines(out.out, diff_lines(d))
        if files is not None:
            print_lines(out.out, file_change_lines(files))

    out.document(doc, args.json, human)
    return 0 if d.status == "known" else 1


def cmd_sbom(args: argparse.Namespace, out: Output) -> int:
    from .diff import resolve_ref
    from .errors import NotBuiltError
    from .sbom import layer_sbom, sbom_bytes
    from .state import State

    project, lg, layer, _ = _layer_args(args, "sbom")
    spec = lg.spec(layer)
    state = State(_state_path(project, args.state), readonly=True)
    remote = _remote(args, state)
    rec = state.layer(layer)
    if args.key:
        key = resolve_ref(state, layer, spec, args.key, remote)
    elif rec is not None:
        key = rec.key
    else:
        key = _current_key(args, lg, state, layer)
    built_here = any(b["key"] == key and b["status"] == "ok" for b in state.builds(layer, limit=10000))
    if not built_here and remote is not None:
        # Not built here: the document published with the key, as it was published.
        doc, where = remote.sbom(spec, key)
        if doc is None:
            raise NotBuiltError(f"{layer}: no SBOM of key {key[:12]} here or on its targets: {where}")
        sys.stdout.write(sbom_bytes(doc).decode())
        return 0
    sys.stdout.write(sbom_bytes(layer_sbom(state, layer, spec, key)).decode())
    return 0


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    from .doctor import run_doctor
    from .render import doctor_lines, print_lines

    root, _ = _root(args)
    lg = None
    if args.dir or (root / "imagegraph.yaml").exists() or list(root.glob("*.yaml")):
        _project, lg = _load(root)
    report = run_doctor(lg, offline=args.offline, timeout=_registry_timeout(args))
    out.document(report.to_json(), args.json, lambda: print_lines(out.out, doctor_lines(report, out.quiet)))
    return report.exit_status


def cmd_completion(args: argparse.Namespace, out: Output) -> int:
    sys.stdout.write(completion_script(args.shell))
    return 0


def completion_script(shell: str) -> str:
    """The bash or zsh completion script for the whole parser (shtab: static, no Python per TAB)."""
    import shtab

    return shtab.complete(build_parser(), shell=shell)


def cmd_help(args: argparse.Namespace, out: Output) -> int:
    parser = build_parser()
    if not args.topic:
        parser.print_help()
        return 0
    commands = parser.commands  # type: ignore[attr-defined]
    if args.topic not in commands:
        parser.error(f"invalid choice: '{args.topic}'")
    commands[args.topic].print_help()
    return 0


SHORT_LIVED = ("plan", "validate", "graph", "status")  # read-only, one pass, then exit: no gc (_main)

COMMANDS = {
    "validate": cmd_validate,
    "graph": cmd_graph,
    "report": cmd_report,
    "plan": cmd_plan,
    "up": cmd_up,
    "doctor": cmd_doctor,
    "lock": cmd_lock,
    "gc": cmd_gc,
    "artifacts": cmd_artifacts,
    "status": cmd_status,
    "log": cmd_log,
    "boot-test": cmd_boot_test,
    "promote": cmd_promote,
    "diff": cmd_diff,
    "sbom": cmd_sbom,
    "completion": cmd_completion,
    "help": cmd_help,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    # Layer names may follow options (`up layers/ -j 4 compute`): argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        cmd = parser.commands[args.command]  # type: ignore[attr-defined]
        if hasattr(args, "args") and not any(e.startswith("-") for e in extra):
            args.args = [*args.args, *extra]
        else:
            cmd.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; `argv=None` (the `imagegraph` program) reads sys.argv."""
    collecting = gc.isenabled()  # _main turns the collector off for SHORT_LIVED commands
    try:
        return _main(argv)
    except BrokenPipeError:
        # `imagegraph plan | head`: the reader has all it wanted. Exit 0, and point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        if argv is None:
            # The process ends next: the cycle collector's passes over every loaded object at
            # interpreter shutdown (boto3's models, networkx, rich) took 0.13-0.22 s, a sixth
            # of a no-op `up` (bench/README.md). Frozen objects are skipped; atexit handlers,
            # thread joins and reference-counted clean-up (closing files) still run.
            gc.freeze()
        elif collecting:  # called in-process (tests, embedders): leave the collector as it was
            gc.enable()


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["build-one"]:  # hidden: what a Slurm build job runs (build_one.py)
        from .build_one import main as build_one_main

        return build_one_main(argv[1:])
    args = _parse(argv)
    if args.command in ("help", "completion"):
        return COMMANDS[args.command](args, None)  # type: ignore[arg-type]
    if args.command in SHORT_LIVED:
        # These build hundreds of thousands of objects that live to the end (specs, keys, the plan)
        # and little cyclic garbage: the collector's passes over them were 10-15 % of a plan.
        gc.disable()

    from . import log as logmod
    from .errors import ImagegraphError, SpecError
    from .redact import redact, register_environment
    from .render import Output, OutputFormat, choose_format, plural

    register_environment()
    fmt = choose_format(args.log_format)
    out = Output(fmt, quiet=args.quiet, command=args.command)
    # Text: warnings and errors only (a terminal shows live progress; the full story is in the
    # layer logs). JSON lines (unattended): every layer event of the commands that change things.
    default = "INFO" if fmt == OutputFormat.JSON and args.command in ("up", "lock", "gc") else "WARNING"
    level = "DEBUG" if args.verbose >= 2 else ("INFO" if args.verbose == 1 else default)
    global _verbosity
    _verbosity = args.verbose
    if args.quiet:
        level = "ERROR"
    logmod.configure("json" if fmt == OutputFormat.JSON else "console", level)
    try:
        return COMMANDS[args.command](args, out)
    except SpecError as exc:
        errors = [d for d in exc.diagnostics if d.severity == "error"]
        out.quiet = False
        out.warnings(exc.diagnostics)
        out.error(f"{plural(len(errors), 'error')}; nothing was built", exit_status=2)
        return 2
    except ImagegraphError as exc:
        out.error(
            redact(str(exc)) if out.json else f"imagegraph {args.command}: {redact(str(exc))}",
            exit_status=exc.exit_status,
        )
        return exc.exit_status
    except KeyboardInterrupt:
        out.error("interrupted", exit_status=130)
        return 130


if __name__ == "__main__":
    sys.exit(main())
