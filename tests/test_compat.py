"""Compatibility suite: real image-builder spec directories through `validate` and `plan --offline`.

For every public directory in the shared examples (image-builder's own examples and a real
4-layer chain), the seed document's two specs (examples/seed) and this project's fixture with the
same quirks (tests/compat/site: `/data/...` container paths, `publish_local: true'`, a parent
without its registry port, a typo'd parent, an unclosed quote, keyless scratch repos, `dst`), the
real CLI's answers are compared with golden documents in tests/golden/compat/: every diagnostic
with file, line, column and words, and every layer's planned action and reasons. A failing test
shows which answer moved. Regenerate after a deliberate change with
`IMAGEGRAPH_REGEN_GOLDEN=1 pytest tests/test_compat.py` and review the diff.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from imagegraph.cli import main

from .test_spec import EXAMPLES

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "compat"
OWN = {"seed": HERE.parent / "examples" / "seed", "site": HERE / "compat" / "site"}


def _shared() -> dict[str, Path]:
    if not EXAMPLES.is_dir():
        return {}
    dirs = sorted({p.parent for p in EXAMPLES.rglob("*.yaml")})
    return {str(d.relative_to(EXAMPLES)).replace("/", "--"): d for d in dirs}


def _run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, list[dict]]:
    capsys.readouterr()
    rc = main(["--log-format", "json", *argv])
    out = capsys.readouterr()
    events = [json.loads(line) for line in out.err.splitlines() if line.startswith("{")]
    return rc, out.out, events


def observe(root: Path, tmp: Path, capsys: pytest.CaptureFixture) -> dict:
    def local(text: str) -> str:
        # messages name files as seen from the working directory or absolutely: both become relative
        for spelling in (str(root), os.path.relpath(root)):
            text = text.replace(spelling + "/", "")
        return text

    rc, out, _ = _run(capsys, ["validate", "--json", str(root)])
    doc = json.loads(out)
    validate = {
        "exit": rc,
        "layers": doc["layers"],
        "diagnostics": sorted(
            (
                {
                    "where": f"{local(d['file'])}:{d['line']}:{d['column']}",
                    "severity": d["severity"],
                    "message": local(d["message"]),
                    "hint": local(d["hint"] or ""),
                }
                for d in doc["diagnostics"]
            ),
            key=lambda d: (d["where"].split(":")[0], int(d["where"].split(":")[1]), d["message"]),
        ),
    }
    rc, out, events = _run(
        capsys, ["plan", "--offline", "--json", "--state", str(tmp / "state.db"), str(root)]
    )
    plan: dict = {"exit": rc}
    if out.strip():
        plan["layers"] = {
            lp["name"]: {"action": lp["action"], "reasons": [r["code"] for r in lp["reasons"]]}
            for lp in json.loads(out)["layers"]
        }
    plan["errors"] = sorted(
        local(e["event"]).split(": error: ")[0] for e in events if ": error: " in e["event"]
    )
    return {"validate": validate, "plan": plan}


def _check(name: str, root: Path, tmp: Path, capsys: pytest.CaptureFixture) -> dict:
    got = observe(root, tmp, capsys)
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("IMAGEGRAPH_REGEN_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(golden.read_text())
    return got


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="the shared examples are not beside this checkout")
@pytest.mark.parametrize("name", sorted(_shared()))
def test_shared_example_directory(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    got = _check(name, _shared()[name], tmp_path, capsys)
    # every error is located in a file of the directory, and a missing /data/... file is one of them
    for d in got["validate"]["diagnostics"]:
        assert d["where"].split(":")[1] != "0", d


@pytest.mark.parametrize("name", sorted(OWN))
def test_own_fixture_directory(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _check(name, OWN[name], tmp_path, capsys)


def test_site_all_problems_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """YAML, schema, source and graph problems of five files come in one `validate`, not in phases."""
    got = observe(OWN["site"], tmp_path, capsys)["validate"]
    said = {(d["where"], d["severity"]) for d in got["diagnostics"]}
    assert ("broken.yaml:3:9", "error") in said  # YAML: where the unclosed quote opens
    assert ("ansible.yaml:5:18", "error") in said  # schema: `true'` is a string
    assert ("base.yaml:30:10", "error") in said  # source: /data/image-configs/files/motd
    assert ("ansible.yaml:6:3", "error") in said  # source too, though the file failed the schema
    assert ("compute.yaml:8:3", "warning") in said  # graph: parent spelled without the port
    assert ("login.yaml:5:3", "warning") in said  # graph: a typo'd parent
    assert got["exit"] == 2 and got["layers"] == ["base", "compute", "login"]


def test_path_map_fixes_the_site_and_strict_fails_on_warnings(tmp_path: Path, capsys) -> None:
    root = tmp_path / "image-configs"
    shutil.copytree(OWN["site"], root)
    (root / "broken.yaml").unlink()
    (root / "ansible.yaml").unlink()
    # the hint's own words, put into imagegraph.yaml
    (root / "imagegraph.yaml").write_text("path_map:\n  /data/image-configs: .\n")
    rc, out, _ = _run(capsys, ["validate", "--json", str(root)])
    doc = json.loads(out)
    assert rc == 0 and doc["ok"], doc
    assert [d["severity"] for d in doc["diagnostics"]] == ["warning"] * 4
    rc, out, _ = _run(capsys, ["validate", "--json", "--strict", str(root)])
    doc = json.loads(out)
    assert rc == 2 and not doc["ok"]
    assert all(d["severity"] == "error" and d["message"].endswith("[--strict]") for d in doc["diagnostics"])
    typo = next(d for d in doc["diagnostics"] if "login.yaml" in d["file"])
    assert (
        "did you mean 'registry.local:5000/site/compute-base:9.5' (layer 'compute', compute.yaml)"
        in typo["message"]
    )
    # the plan now has the copied file and nothing is blocked for want of sources
    rc, out, _ = _run(capsys, ["plan", "--offline", "--json", "--state", str(tmp_path / "s.db"), str(root)])
    assert rc == 0
    actions = {lp["name"]: lp["action"] for lp in json.loads(out)["layers"]}
    assert actions == {"base": "build", "compute": "build", "login": "build"}


def test_graph_draws_with_missing_sources(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "site"
    shutil.copytree(OWN["site"], root)
    (root / "broken.yaml").unlink()
    (root / "ansible.yaml").unlink()
    # compute.yaml names its parent's registry without the port: only an alias joins the two spellings.
    (root / "imagegraph.yaml").write_text(
        "registry_aliases:\n  registry.local/site: registry.local:5000/site\n"
    )
    rc, out, events = _run(capsys, ["graph", "--format", "json", str(root)])
    assert rc == 2  # the missing source is still an error ...
    assert any("copyfiles source '/data/image-configs/files/motd'" in e["event"] for e in events)
    edges = {(e["from"], e["to"]) for e in json.loads(out)["edges"]}
    assert edges == {("base", "compute")}  # ... but the graph is drawn
