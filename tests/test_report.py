"""Run report pages: made from a real run's record, self-contained, shown by a real browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.report import build_report, critical_path, make_report, render_html, run_document
from tests.browser import ink, render
from tests.fixtures_build import have_buildah

# Anything a page could fetch: scripts, stylesheets, fonts, images, frames, CSS imports and urls.
EXTERNAL = re.compile(
    r"<script|<link\b|<iframe|<img\b|<object|<embed|@import|url\(|\bsrc\s*=|href\s*=\s*[\"']?(?:https?:)?//",
    re.I,
)


def external_references(html: str) -> list[str]:
    # xmlns declarations name a namespace; nothing is fetched for them.
    return EXTERNAL.findall(re.sub(r'xmlns(?::\w+)?="[^"]*"', "", html))


def synthetic_doc(chains: dict[str, tuple[str | None, float]], failed: str | None = None) -> dict:
    """A run document: layer -> (parent layer, seconds); layers run back to back from t=1000."""
    t, layers, plan = 1000.0, [], []
    for name, (parent, secs) in chains.items():
        layers.append(
            {
                "name": name,
                "action": "build",
                "status": "failed" if name == failed else "ok",
                "duration": secs,
                "started": t,
                "finished": t + secs,
                "error": "Error: Unable to find a match: nosuchpkg\n  last output: ..."
                if name == failed
                else None,
                "log_file": f"/var/tmp/state/logs/{name}.log",
            }
        )
        plan.append(
            {
                "name": name,
                "image": name,
                "key": "ab" * 32,
                "parent": parent or "scratch",
                "parent_kind": "layer" if parent else "scratch",
                "action": "build",
                "reasons": [{"code": "never-built", "message": "never built"}],
            }
        )
        t += secs
    return {
        "run_id": "20261201-000000-abcd",
        "command": "up",
        "started": 1000.0,
        "finished": t,
        "duration": t - 1000.0,
        "exit_status": 1 if failed else 0,
        "summary": {"ok": len(chains)},
        "layers": layers,
        "plan": {"layers": plan},
    }


def test_critical_path_is_the_heaviest_chain() -> None:
    doc = synthetic_doc({"a": (None, 5), "b": ("a", 1), "c": ("a", 7), "d": ("c", 1), "e": (None, 10)})
    r = build_report(doc)
    assert r.critical_path == ["a", "c", "d"] and r.critical_seconds == pytest.approx(13)
    assert {x.name for x in r.layers if x.critical} == {"a", "c", "d"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0.1, 100)), min_size=1, max_size=25))
def test_critical_path_property(spec: list[tuple[int, float]]) -> None:
    # Layer i's parent is an earlier layer (or none): the report's path is a real parent chain
    # and no chain in the graph carries more work.
    chains: dict[str, tuple[str | None, float]] = {}
    for i, (p, secs) in enumerate(spec):
        chains[f"l{i}"] = (f"l{p}" if p < i else None, secs)
    r = build_report(synthetic_doc(chains))
    path = r.critical_path
    for parent, child in zip(path, path[1:], strict=False):
        assert chains[child][0] == parent
    assert chains[path[0]][0] is None

    def chain_work(name: str) -> float:
        parent, secs = chains[name]
        return secs + (chain_work(parent) if parent else 0.0)

    assert r.critical_seconds == pytest.approx(max(chain_work(n) for n in chains))
    assert critical_path({x.name: x for x in r.layers})[0] == path


def test_page_is_self_contained_and_says_why(tmp_path: Path) -> None:
    doc = synthetic_doc(
        {"base": (None, 30), "compute": ("base", 12), "debug": ("compute", 3)}, failed="debug"
    )
    html = render_html(make_report(doc, log_base=Path("/var/tmp/state")))
    assert external_references(html) == []
    assert "Unable to find a match: nosuchpkg" in html
    assert 'href="logs/debug.log"' in html  # relative to the report's directory
    assert "base → compute → debug" in html
    assert html.count('class="bar bar-build"') == 3
    # Names are escaped, not interpreted.
    doc2 = synthetic_doc({"<b>x</b>": (None, 1)})
    assert "<b>x</b>" not in render_html(build_report(doc2))


def test_run_document_lookup(tmp_path: Path) -> None:
    from imagegraph.errors import UsageError

    with pytest.raises(UsageError, match="no run recorded"):
        run_document(tmp_path)
    (tmp_path / "runs").mkdir()
    for rid in ("20261201-010101-aaaa", "20261201-020202-bbbb"):
        (tmp_path / "runs" / f"{rid}.json").write_text(json.dumps({"run_id": rid}))
    assert run_document(tmp_path, "20261201-02")["run_id"] == "20261201-020202-bbbb"
    with pytest.raises(UsageError, match="2 runs matching"):
        run_document(tmp_path, "20261201")
    with pytest.raises(UsageError, match="no run matching 'zzz'"):
        run_document(tmp_path, "zzz")


# ------------------------------------------------------------------ a real run


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.buildah
@pytest.mark.skipif(not have_buildah(), reason="needs buildah as root")
def test_failed_run_report_in_a_browser(tmp_path: Path, rpm_repo, s3_env) -> None:
    from tests.fixtures_build import buildah
    from tests.test_up import P, make_site

    root = make_site(tmp_path / "layers", rpm_repo.url)
    right = root / "right.yaml"
    right.write_text(
        right.read_text().replace("echo right > /etc/role", "echo ig-report-cause: disk full >&2; exit 7")
    )
    bucket = "ig-reports"
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_env.endpoint,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    (root / "imagegraph.yaml").write_text(
        f"reports:\n  s3: {s3_env.endpoint}\n  bucket: {bucket}\n  prefix: nightly/\n"
    )
    state = tmp_path / "state" / "state.db"
    page = tmp_path / "out" / "report.html"
    try:
        r = cli("up", str(root), "--state", str(state), "-j", "2", "--report", str(page))
        assert r.returncode == 1, r.stderr
        html = page.read_text()
        assert external_references(html) == []
        doc = json.loads((state.parent / "last-run.json").read_text())
        for layer in doc["layers"]:
            assert f'id="layer-{layer["name"]}"' in html
        # The failure's cause is quoted, and its log is linked relative to the page.
        assert "ig-report-cause: disk full" in html
        failed = next(x for x in doc["layers"] if x["name"] == "right")
        import os

        assert f'href="{os.path.relpath(failed["log_file"], page.parent)}"' in html
        shown = render(page, tmp_path)
        assert ink(shown.screenshot) > 0.02, "the screenshot is blank"
        for layer in doc["layers"]:
            assert layer["name"] in shown.dom
        assert "failed" in shown.dom
        # The project's reports setting put the same run on S3, and latest.html beside it.
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="nightly/")["Contents"]}
        assert keys == {f"nightly/{doc['run_id']}.html", "nightly/latest.html"}
        got = s3.get_object(Bucket=bucket, Key="nightly/latest.html")
        assert (
            got["ContentType"].startswith("text/html") and b"ig-report-cause: disk full" in got["Body"].read()
        )
        # `report` re-renders a recorded run from its record alone.
        r = cli(
            "report",
            str(root),
            "--state",
            str(state),
            "--run",
            doc["run_id"][:15],
            "-o",
            str(tmp_path / "again.html"),
        )
        assert r.returncode == 0, r.stderr
        assert "ig-report-cause: disk full" in (tmp_path / "again.html").read_text()
    finally:
        out = buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split()
        for ref in out:
            if f"/{P}-" in ref:
                buildah("rmi", "-f", ref, check=False)


def test_reports_dir_setting_and_its_validation(tmp_path: Path) -> None:
    from imagegraph.errors import SpecError
    from imagegraph.project import load_project
    from imagegraph.publish.reports import publish_report

    root = tmp_path / "layers"
    root.mkdir()
    (root / "a.yaml").write_text("options:\n  layer_type: base\n  name: a\n  pkg_manager: dnf\n")
    (root / "imagegraph.yaml").write_text("reports:\n  dir: ../pages\n")
    project = load_project(root)
    assert project.settings.reports == {"dir": "../pages"}
    written = publish_report("<html>x</html>", "run-1", project.settings.reports, project.root)
    assert sorted(Path(w).name for w in written) == ["latest.html", "run-1.html"]
    assert (tmp_path / "pages" / "latest.html").read_text() == "<html>x</html>"
    assert (tmp_path / "pages" / "latest.html").stat().st_mode & 0o777 == 0o644
    (root / "imagegraph.yaml").write_text("reports:\n  s3: not-a-url\n")
    with pytest.raises(SpecError) as exc:
        load_project(root)
    assert any(d.file.endswith("imagegraph.yaml") and d.line == 2 for d in exc.value.diagnostics), exc.value


def test_package_changes_and_slurm_queueing_from_the_run_record() -> None:
    doc = synthetic_doc({"base": (None, 30), "compute": ("base", 12)})
    doc["package_changes"] = {"compute": {"brief": "openssl 3.0.7-25 → 3.0.7-27"}}
    start = doc["layers"][1]["started"]
    import datetime as dt

    doc["jobs"] = [
        {
            "layer": "compute",
            "submitted": start - 5,
            "started": dt.datetime.fromtimestamp(start).isoformat(timespec="seconds"),
            "state": "COMPLETED",
        }
    ]
    r = build_report(doc)
    compute = next(x for x in r.layers if x.name == "compute")
    assert compute.changes == ["openssl 3.0.7-25 → 3.0.7-27"]
    queued = [b for b in compute.bars if b.kind == "queued"]
    assert len(queued) == 1 and queued[0].end - queued[0].start == pytest.approx(5, abs=1)
    assert r.critical_seconds == pytest.approx(42)  # queueing is not work
    html = render_html(r)
    assert "openssl 3.0.7-25 → 3.0.7-27" in html and 'class="bar bar-queued"' in html
