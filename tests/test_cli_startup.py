"""`imagegraph plan` / `validate` / `--version` load only what they need (fresh processes).

What a command imports decides how fast it starts; the benchmark (bench/plan_bench.py)
measures the time, this test pins the module set so a stray top-level import shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .specdirs import seed_dir

# Loaded by `up`, `lock`, `gc`, the registry and S3 clients, terminal rendering and logging.
NEVER_FOR_PLAN = (
    "boto3",
    "botocore",
    "requests",
    "tenacity",
    # A terminal's rendering: to a pipe, warnings and summaries are written as rich would write them.
    "rich",
    "pygments",
    # Logging: nothing at or above the level is logged by a plan that goes well (the `buildah images`
    # line is a debug event, dropped before structlog would load).
    "structlog",
    # The layer graph is a forest: networkx loads only to name a cycle (and for LayerGraph.graph).
    "networkx",
    "rapidfuzz",  # did-you-mean for external parents only
    "difflib",  # did-you-mean for documents with errors only
    "secrets",  # container names, for builds
    # (concurrent.futures does load: even offline, `plan` asks local storage, `buildah images`,
    # beside the other inventory questions.)
    "imagegraph.executor",
    "imagegraph.scheduler",
    # the build package's backend table and backends (their key inputs) are light; not buildah's side
    "imagegraph.build.layer",
    "imagegraph.publish.s3",
    "imagegraph.publish.artifacts",
    "imagegraph.boottest",
    "urllib.request",  # lock file fetching
    "http.client",
)
# What checking specs does not need: planning, the state and the inventory.
NEVER_FOR_VALIDATE = NEVER_FOR_PLAN + (
    "imagegraph.plan",
    "imagegraph.state",
    "imagegraph.inventory",
    "sqlite3",
    # keys and the build backends' key inputs (the registry client names key tags through keytag)
    "imagegraph.key",
    "imagegraph.build",
)
PARSERS = ("ruamel", "yaml", "jsonschema", "jsonschema_rs")

PROBE = r"""
import json, sys
from imagegraph.cli import main
try:
    status = main(sys.argv[1:])
finally:  # --version exits inside argparse
    sys.stdout.flush()
    print(json.dumps(sorted(sys.modules)), file=sys.stderr)
raise SystemExit(status)
"""


def _modules(*args: str, xdg: Path) -> set[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg)}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stderr.strip().splitlines()[-1]))


def _loaded(modules: set[str], names: tuple[str, ...]) -> set[str]:
    return {m for m in modules for n in names if m == n or m.startswith(n + ".")}


def test_plan_json_loads_no_client_renderer_or_logger(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    cold = _modules("plan", "--offline", "--json", str(root), xdg=tmp_path / "xdg")
    assert not _loaded(cold, NEVER_FOR_PLAN)
    assert _loaded(cold, ("yaml",))  # the specs were parsed: the fast path ran
    assert not _loaded(cold, ("jsonschema",))  # valid specs: no error to word
    warm = _modules("plan", "--offline", "--json", str(root), xdg=tmp_path / "xdg")
    assert not _loaded(warm, NEVER_FOR_PLAN + ("jsonschema",))
    # imagegraph.yaml is read on every run (it is not cached); without it nothing is parsed at all
    (root / "imagegraph.yaml").unlink()
    _modules("plan", "--offline", "--json", str(root), xdg=tmp_path / "xdg")
    warm = _modules("plan", "--offline", "--json", str(root), xdg=tmp_path / "xdg")
    assert not _loaded(warm, NEVER_FOR_PLAN + PARSERS)  # every spec came from the cache


def test_reading_directory_publications_loads_no_s3_client(tmp_path: Path) -> None:
    """The bundled layers publish to a directory: reading those publications needs no boto3
    (whose import opens a socket, which also keeps an offline plan's answer from being reused).
    Asked directly: whether `plan` asks depends on what local storage holds."""
    probe = (
        "import json, sys\n"
        "from imagegraph.project import load_project\n"
        "from imagegraph.inventory import dir_answers\n"
        "spec = load_project(sys.argv[1]).layers['boot']\n"
        "assert spec.publish_dir\n"
        "print(json.dumps({t: str(a.presence) for t, a in dir_answers(spec, '0' * 64).items()}))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    layers = Path(__file__).resolve().parents[1] / "layers"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    r = subprocess.run([sys.executable, "-c", probe, str(layers)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    answers, mods = (json.loads(line) for line in r.stdout.splitlines()[-2:])
    assert answers and set(answers.values()) <= {"absent", "present"}
    assert _loaded(set(mods), ("imagegraph.publish.dirlayout",))
    assert not _loaded(set(mods), NEVER_FOR_PLAN)


def test_validate_of_a_valid_directory_loads_no_client(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    for args in (("validate", "--json", str(root)), ("validate", str(root))):
        mods = _modules(*args, xdg=tmp_path / "xdg")
        assert not _loaded(mods, NEVER_FOR_VALIDATE), args


def test_version_loads_no_client_parser_or_logger(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", PROBE, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("imagegraph ")
    core = (
        "imagegraph.graph",
        "imagegraph.plan",
        "imagegraph.project",
        "imagegraph.state",
        "imagegraph.render",
    )
    assert not _loaded(set(json.loads(r.stderr.strip().splitlines()[-1])), NEVER_FOR_PLAN + PARSERS + core)


LOG_PROBE = r"""
import io, json, sys
from imagegraph.log import configure, get_logger
buf = io.StringIO()
configure("json", "WARNING", stream=buf)
log = get_logger(step="probe")
log.debug("below the level")
log.info("below the level too")
before = "structlog" in sys.modules
log.warning("at the level", n=1)
print(json.dumps({"before": before, "after": "structlog" in sys.modules, "lines": buf.getvalue().splitlines()}))
"""


def test_events_below_the_level_do_not_load_structlog_and_the_rest_are_logged() -> None:
    r = subprocess.run([sys.executable, "-c", LOG_PROBE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["before"] is False and out["after"] is True
    (line,) = out["lines"]
    event = json.loads(line)
    assert event["event"] == "at the level" and event["level"] == "warning" and event["step"] == "probe"


# What a no-op `up` (nothing to run) must not load: the executor and the build and publish side it
# imports, boto3's transfer layer (only uploads use it), rich when stdout is a pipe.
NEVER_FOR_NOOP_UP = (
    "imagegraph.executor",
    "imagegraph.build.layer",
    "imagegraph.publish.artifacts",
    "imagegraph.publish.push",
    "imagegraph.publish.squashfs",
    "imagegraph.boottest",
    "imagegraph.diff",  # package changes of rebuilt layers: none rebuilt
    "boto3",
    "s3transfer",
    "rich",
    "pygments",
)

UP_PROBE = r"""
import json, sys
from imagegraph.cli import main
try:
    status = main(sys.argv[1:])
finally:
    sys.stdout.flush()
    print(json.dumps({"modules": sorted(sys.modules), "status": status}), file=sys.stderr)
"""


def test_noop_up_loads_no_executor_publisher_or_renderer(tmp_path: Path) -> None:
    """A no-op `up` of layers published locally and to a directory (the fake buildah stands in for
    buildah): still asks the inventory, still records the run, and loads none of NEVER_FOR_NOOP_UP;
    to a pipe, its table is the one rich draws."""
    from .fakebuildah import install
    from .test_executor import site

    fake = install(tmp_path)
    root = site(tmp_path)
    state = tmp_path / "state" / "state.db"
    env = fake.env(XDG_CACHE_HOME=str(tmp_path / "xdg"))
    up = [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state)]
    first = subprocess.run(up, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    for args in ((), ("--json",)):
        before = len(fake.calls())
        (state.parent / "last-run.json").unlink()
        r = subprocess.run(
            [sys.executable, "-c", UP_PROBE, "up", str(root), "--state", str(state), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        probe = json.loads(r.stderr.strip().splitlines()[-1])
        assert probe["status"] == 0, r.stderr
        assert not _loaded(set(probe["modules"]), NEVER_FOR_NOOP_UP), args
        assert [c["argv"][0] for c in fake.calls()[before:]] == ["images"]  # local storage was asked
        record = json.loads((state.parent / "last-run.json").read_text())  # the run is recorded
        assert {x["status"] for x in record["layers"]} == {"up-to-date"}
        assert record["exit_status"] == 0
        if args == ():  # the table as rich draws it to a pipe (80 columns, no colour)
            import io
            from types import SimpleNamespace

            from rich.console import Console

            from imagegraph.render import result_table

            rows = {
                x["name"]: SimpleNamespace(
                    layer=x["name"], action=x["action"], status=x["status"], duration=x["duration"]
                )
                for x in record["layers"]
            }
            buf = io.StringIO()
            Console(file=buf, width=80, soft_wrap=True, highlight=False, no_color=True).print(
                result_table(SimpleNamespace(run_id=record["run_id"], results=rows))
            )
            assert r.stdout == buf.getvalue()
        else:
            assert json.loads(r.stdout)["run_id"] == record["run_id"]
