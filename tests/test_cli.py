"""The `imagegraph` command line (validate, graph, plan) run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .specdirs import seed_dir, write

EXE = [sys.executable, "-m", "imagegraph.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMAGEGRAPH_RETRY_ATTEMPTS": "1"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_validate_ok_with_warning(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers", aliases=False)
    r = run("validate", str(root))
    assert r.returncode == 0, r.stderr
    assert "3 layer specs OK" in r.stdout
    # the seed's registry mismatch: an external parent, and the alias that would make it base
    assert "names a registry no layer publishes to" in r.stderr and "registry_aliases" in r.stderr


def test_validate_reports_every_problem_of_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    write(root, "a.yaml", "options:\n  layer_type: base\n  pkg_manager: dnf\npakages: [vim]\n")
    write(root, "b.yaml", "options:\n  layer_type: base\n  pkg_manager: yum\n")
    write(
        root,
        "c.yaml",
        "options:\n  layer_type: base\n  pkg_manager: dnf\ncopyfiles:\n  - src: /data/x\n    dest: /x\n",
    )
    r = run("validate", str(root))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "a.yaml:4:1" in r.stderr and "did you mean 'packages'" in r.stderr
    assert "b.yaml:3:16" in r.stderr
    assert "c.yaml:5:10" in r.stderr and "/data/x" in r.stderr
    assert "3 errors; nothing was built" in r.stderr
    j = run("validate", str(root), "--json")
    doc = json.loads(j.stdout)
    assert j.returncode == 2 and not doc["ok"] and len(doc["diagnostics"]) == 3


def test_graph_formats(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    dot = run("graph", str(root), "--format", "dot")
    assert dot.returncode == 0 and '"base" -> "compute";' in dot.stdout
    mer = run("graph", str(root), "--format", "mermaid")
    assert mer.stdout.startswith("graph TD")
    js = json.loads(run("graph", str(root), "--format", "json").stdout)
    assert js["edges"] == [{"from": "base", "to": "compute"}, {"from": "compute", "to": "gpu"}]


def test_plan_json_check_and_selection(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    r = run("plan", str(root), "--offline", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(x["name"], x["action"], x["parent"]) for x in doc["layers"]] == [
        ("base", "build", "scratch"),
        ("compute", "build", "base"),
        ("gpu", "build", "compute"),
    ]
    assert doc["layers"][0]["reasons"][0]["code"] == "never-built"
    assert run("plan", str(root), "--offline", "--check").returncode == 1
    sel = json.loads(run("plan", str(root), "compute", "--offline", "--json").stdout)
    assert [x["name"] for x in sel["layers"]] == ["base", "compute"]
    human = run("plan", str(root), "--offline")
    assert "never built" in human.stdout and "parent compute rebuilds" in human.stdout
    # plan is read-only: no state database appears
    assert not (root / ".imagegraph" / "state.db").exists()


def test_unknown_layer_is_a_usage_error(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    r = run("plan", str(root), "compte", "--offline")
    assert r.returncode == 2 and "did you mean 'compute'" in r.stderr and "Traceback" not in r.stderr


def test_cycle_exit_2(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    write(
        root,
        "a.yaml",
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: a\n  parent: r.io/x/b:1\n  publish_tags: '1'\n  publish_registry: r.io/x\n",
    )
    write(
        root,
        "b.yaml",
        "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: b\n  parent: r.io/x/a:1\n  publish_tags: '1'\n  publish_registry: r.io/x\n",
    )
    r = run("plan", str(root), "--offline")
    assert r.returncode == 2 and "parent cycle: a.yaml -> b.yaml -> a.yaml" in r.stderr


def test_a_created_copyfiles_source_clears_the_error_with_a_state_directory(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    (root / ".imagegraph").mkdir()  # the parsed-spec cache is used
    (root / "files" / "chrony.conf").unlink()
    for _ in range(2):  # the second run reads compute.yaml from the cache
        r = run("plan", "layers", "--offline", cwd=tmp_path)
        assert r.returncode == 2 and "copyfiles source 'files/chrony.conf' does not exist" in r.stderr
    assert (root / ".imagegraph" / "cache" / "specs.pickle").exists()
    write(root, "files/chrony.conf", "server time.example.org iburst\n")
    r = run("plan", "layers", "--offline", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ help, usage, completion


def _walk(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _walk(sub)


def test_every_option_and_command_has_help_and_an_epilog() -> None:
    import argparse

    from imagegraph.cli import build_parser

    missing = []
    for p in _walk(build_parser()):
        if p.prog != "imagegraph":
            assert p.description, f"{p.prog}: no description"
            assert "examples:" in (p.epilog or "") and "exit status:" in (p.epilog or ""), p.prog
            assert p.usage and p.usage.startswith(f"{p.prog} [OPTIONS]"), p.prog
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                missing += [f"{p.prog} {c.dest}" for c in a._choices_actions if not c.help]
            elif not a.help or a.help == argparse.SUPPRESS:
                missing.append(f"{p.prog} {'/'.join(a.option_strings) or a.dest}")
            elif a.option_strings and a.default not in (None, False, [], argparse.SUPPRESS):
                if not isinstance(a, argparse._CountAction | argparse._VersionAction | argparse._HelpAction):
                    shown = p.formatter_class(p.prog)._get_help_string(a)
                    assert "default" in shown, f"{p.prog} {a.option_strings}: default not said"
    assert missing == []


def test_help_command_unknown_command_and_per_command_errors() -> None:
    h = run("help", "plan")
    assert h.returncode == 0 and "usage: imagegraph plan [OPTIONS] [DIR] [LAYER ...]" in h.stdout
    assert "examples:" in h.stdout and "exit status:" in h.stdout
    top = run("--help")
    assert "environment:" in top.stdout and "IMAGEGRAPH_RETRY_ATTEMPTS" in top.stdout
    r = run("pln")
    assert r.returncode == 2 and "did you mean 'plan'?" in r.stderr
    r = run("plan", "--bogus")
    assert r.returncode == 2 and "usage: imagegraph plan" in r.stderr and "imagegraph help plan" in r.stderr
    for bad in ("0", "-2", "x"):
        r = run("up", "-j", bad)
        assert r.returncode == 2 and "imagegraph up: error: argument -j/--jobs" in r.stderr, bad


def test_state_that_does_not_exist_and_a_spec_file_for_a_directory(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    r = run("plan", str(root), "--offline", "--state", str(tmp_path / "nope" / "state.db"))
    assert r.returncode == 0 and "warning: --state" in r.stderr and "no such file yet" in r.stderr
    r = run("status", str(root), "--offline", "--state", str(tmp_path / "state.db"))
    assert r.returncode == 0 and "warning: --state" in r.stderr and "no such file yet" in r.stderr
    r = run("log", str(root), "base", "--state", str(tmp_path / "state.db"))
    assert r.returncode == 2 and "no such file" in r.stderr
    one = json.loads(run("plan", str(root / "compute.yaml"), "--offline", "--json").stdout)
    assert [x["name"] for x in one["layers"]] == ["base", "compute"]


def test_completion_scripts_come_from_the_parser() -> None:
    bash = run("completion", "bash")
    assert bash.returncode == 0 and "complete" in bash.stdout
    for word in ("boot-test", "--registry-timeout", "--summary", "doctor"):
        assert word in bash.stdout
    zsh = run("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef imagegraph")
    assert "--max-age" in zsh.stdout
    # bash accepts the script, and it completes commands and a command's options
    script = Path(os.environ.get("TMPDIR", "/tmp")) / f"ig-completion-{os.getpid()}.sh"
    script.write_text(bash.stdout)
    try:
        words = (
            f"source {script}; "
            'COMP_WORDS=(imagegraph pl); COMP_CWORD=1; _shtab_imagegraph imagegraph pl imagegraph; echo "${COMPREPLY[@]}"; '
            'COMP_WORDS=(imagegraph plan --su); COMP_CWORD=2; _shtab_imagegraph imagegraph --su plan; echo "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", words], text=True, capture_output=True, timeout=60)
    finally:
        script.unlink()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["plan", "--summary"]


def test_the_program_freezes_the_collector_as_it_ends(monkeypatch, capsys) -> None:
    """`main()` as the program (argv from sys.argv) freezes the cycle collector as it returns, so
    interpreter shutdown skips its passes over every loaded module (bench/README.md); `main(argv)`,
    as tests and other callers use it, leaves the collector alone. The output is complete either way."""
    import gc

    from imagegraph.cli import main

    gc.unfreeze()
    try:
        assert main(["completion", "bash"]) == 0
        assert gc.get_freeze_count() == 0
        monkeypatch.setattr(sys, "argv", ["imagegraph", "completion", "bash"])
        assert main() == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    out = capsys.readouterr().out
    assert out.count("_shtab_imagegraph()") == 2 and out.rstrip().endswith(
        run("completion", "bash").stdout.rstrip()[-200:]
    )


def test_man_page_is_generated_from_the_parser(tmp_path: Path) -> None:
    from imagegraph.cli import man_include

    inc = tmp_path / "man.include"
    inc.write_text(man_include())
    out = tmp_path / "imagegraph.1"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from argparse_manpage.cli import main; sys.exit(main())",
            "--module",
            "imagegraph.cli",
            "--function",
            "build_parser",
            "--prog",
            "imagegraph",
            "--include",
            str(inc),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    for section in (
        ".SH SYNOPSIS",
        ".SH ENVIRONMENT",
        ".SH EXIT STATUS",
        "imagegraph doctor",
        "\\-\\-registry\\-timeout",
    ):
        assert section in page, section


def test_plan_tree_summary_and_singular(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    write(root, "io.yaml", (root / "compute.yaml").read_text().replace("compute-base", "io-node"))
    tree = run("plan", str(root), "--offline").stdout
    assert "├─ " in tree and "└─ " in tree and "│" in tree
    lines = tree.splitlines()
    # a child with a later sibling hangs on ├─, its own children are indented under │
    assert any(line.startswith(("├─ compute", "├─ io")) for line in lines), tree
    assert "4 layers: 4 build" in tree
    one = run("plan", str(root / "base.yaml"), "--offline").stdout
    assert "1 layer: 1 build" in one
    summary = run("plan", str(root), "--offline", "--summary").stdout.splitlines()
    assert summary[0] == "4 layers: 4 build" and len(summary) == 5
    assert summary[1].split()[:2] == ["build", "base"]


def test_layer_commands_key_a_layer_as_plan_does_with_a_lock_file(tmp_path: Path) -> None:
    """promote, boot-test, diff and sbom name the layer's current key: the one `plan` computes,
    lock file included (a locked parent digest here), not the key the layer would have unlocked."""
    root = tmp_path / "layers"
    write(
        root,
        "c.yaml",
        "options:\n  layer_type: base\n  name: c\n  pkg_manager: dnf\n"
        "  parent: registry.example/site/base:9\npackages: [x]\n",
    )
    write(
        root,
        "imagegraph.lock",
        "version: 1\nrepositories: []\nlayers: []\nparents:\n- reference: registry.example/site/base:9\n"
        f"  digest: sha256:{'1' * 64}\n  layers: [c.yaml]\n",
    )
    plan = run("plan", str(root), "--offline", "--json")
    key = json.loads(plan.stdout)["layers"][0]["key"]
    unlocked = (root / "imagegraph.lock").rename(tmp_path / "lock")
    other = json.loads(run("plan", str(root), "--offline", "--json").stdout)["layers"][0]["key"]
    unlocked.rename(root / "imagegraph.lock")
    assert key != other  # the lock is part of the key
    for cmd in (["promote", str(root), "c", "prod"], ["boot-test", str(root), "c"], ["sbom", str(root), "c"]):
        r = run(*cmd, "--offline")
        assert r.returncode != 0 and f"key {key[:12]} " in r.stderr, (cmd, r.stderr)
    d = run("diff", str(root), "c", "--offline")
    assert f"-> {key[:12]} (current)" in d.stdout, d.stdout


def test_validate_result_is_an_event_in_json_lines(tmp_path: Path) -> None:
    """Under systemd (JOURNAL_STREAM) a command's result is the event `<command> result`."""
    root = seed_dir(tmp_path / "layers")
    r = run("--log-format", "json", "validate", str(root))
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in (r.stdout + r.stderr).splitlines()]
    result = [e for e in events if e["event"] == "validate result"]
    assert len(result) == 1 and result[0]["result"]["ok"] is True, events
    assert len(result[0]["result"]["layers"]) == 3
    assert "3 layer specs OK" in run("validate", str(root)).stdout
