"""`doctor` and `up`'s preflight: on this host, and on a PATH without buildah."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagegraph.doctor import CheckStatus, needed_tools, preflight, run_doctor
from imagegraph.graph import build_graph
from imagegraph.project import load_project

from .specdirs import seed_dir, write

EXE = [sys.executable, "-m", "imagegraph.cli"]


def _bare_path(tmp_path: Path, keep: tuple[str, ...] = ()) -> str:
    """A PATH with only the named host tools (symlinked), so the rest are missing."""
    d = tmp_path / "bin"
    d.mkdir()
    for tool in keep:
        found = shutil.which(tool)
        if found:
            (d / tool).symlink_to(found)
    return str(d)


def test_needed_tools_follow_the_layers(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    write(
        root,
        "deb.yaml",
        "options:\n  layer_type: base\n  name: deb\n  pkg_manager: apt\n  publish_dir: out\n  boot_test: {enabled: true}\n"
        "repos:\n  - alias: d\n    url: http://deb.debian.org/debian\n    suite: bookworm\npackages: [bash]\n",
    )
    lg = build_graph(load_project(root))
    need = needed_tools(lg)
    assert set(need["buildah"]) == {"base", "compute", "gpu", "deb"}
    assert need["dnf"] == ["base"]  # from scratch only: children run the image's own dnf
    assert need["mmdebstrap"] == ["deb"] and need["mksquashfs"] == ["deb"]
    assert need["qemu-system-x86_64"] == ["deb"]
    assert "zypper" not in need and "sbatch" not in need
    assert set(needed_tools(lg, {"base"})) == {"buildah", "dnf", "rpm"}


def test_doctor_on_a_path_without_buildah(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    env = {**os.environ, "PATH": _bare_path(tmp_path, ("dnf", "rpm"))}
    r = subprocess.run(
        [*EXE, "doctor", str(root), "--offline", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert not doc["ok"]
    assert checks["buildah"]["status"] == "missing" and checks["buildah"]["fix"] == "apt-get install buildah"
    assert checks["buildah"]["needed_by"] == ["base", "compute", "gpu"]
    assert checks["dnf"]["status"] == ("ok" if shutil.which("dnf") else "missing")
    assert checks["container storage"]["status"] == "unknown"  # cannot be told without buildah
    assert checks["registries"]["status"] == "unknown"  # --offline: not asked, not "absent"
    text = subprocess.run(
        [*EXE, "doctor", str(root), "--offline"], capture_output=True, text=True, env=env, timeout=120
    )
    assert "MISSING  tool: buildah" in text.stdout and "fix: apt-get install buildah" in text.stdout


def test_up_fails_early_naming_the_missing_tool(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    env = {**os.environ, "PATH": _bare_path(tmp_path)}
    r = subprocess.run(
        [*EXE, "up", str(root), "--offline"], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 1
    assert "missing buildah" in r.stderr and "apt-get install buildah" in r.stderr
    assert "nothing was built" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("buildah:") == 1  # said once, not as a failed step with its tail twice
    assert not (root / ".imagegraph" / "state.db").exists()  # no run was started


@pytest.mark.skipif(shutil.which("buildah") is None, reason="needs buildah on this host")
def test_doctor_reports_versions_and_storage_here(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    lg = build_graph(load_project(root))
    report = run_doctor(lg, offline=True)
    buildah = next(c for c in report.checks if c.name == "buildah")
    assert buildah.status == CheckStatus.OK and buildah.version and buildah.version[0].isdigit()
    storage = next(c for c in report.checks if c.name == "container storage")
    assert storage.status in (CheckStatus.OK, CheckStatus.FAILED) and "GiB free" in storage.detail
    assert preflight(lg) == [] or all(c.name != "buildah" for c in preflight(lg))


def test_doctor_registry_checks_say_who_without_secrets(tmp_path: Path, monkeypatch) -> None:
    # a refused connection: reported as failed with the reason, the registry's layers named
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    root = tmp_path / "layers"
    write(
        root,
        "a.yaml",
        f"options:\n  layer_type: base\n  name: a\n  pkg_manager: dnf\n  publish_registry: 127.0.0.1:{port}/x\n"
        "  registry_opts_push: ['--creds=alice:s3cr3t-pw']\npackages: [bash]\n",
    )
    report = run_doctor(build_graph(load_project(root)), timeout=1)
    reg = next(c for c in report.checks if c.kind == "registry")
    assert reg.status == CheckStatus.FAILED and reg.needed_by == ("a",)
    assert "connection refused" in reg.detail and "alice" in reg.detail
    assert "s3cr3t-pw" not in json.dumps(report.to_json())


def test_doctor_s3_reachable_bucket_and_a_missing_one(tmp_path: Path, s3_env) -> None:
    from .fixtures_servers import S3_TEST_SECRET

    bucket = s3_env.make_bucket()
    root = tmp_path / "layers"
    for name, b in (("good", bucket), ("bad", "no-such-bucket-here")):
        write(
            root,
            f"{name}.yaml",
            f"options:\n  layer_type: base\n  name: {name}\n  pkg_manager: dnf\n  publish_s3: {s3_env.endpoint}\n"
            f"  s3_bucket: {b}\npackages: [bash]\n",
        )
    report = run_doctor(build_graph(load_project(root)), timeout=5)
    s3 = {c.needed_by: c for c in report.checks if c.kind == "s3"}
    assert s3[("good",)].status == CheckStatus.OK
    assert "credentials from S3_ACCESS/S3_SECRET" in s3[("good",)].detail
    assert s3[("bad",)].status == CheckStatus.FAILED and "404" in s3[("bad",)].detail
    assert S3_TEST_SECRET not in json.dumps(report.to_json())


def test_doctor_asks_a_real_registry_for_publishing_and_for_parents(tmp_path: Path, registry) -> None:
    root = tmp_path / "layers"
    write(
        root,
        "a.yaml",
        f"options:\n  layer_type: base\n  name: a\n  pkg_manager: dnf\n  parent: '{registry.host}/vendor/rocky:9'\n"
        f"  publish_registry: {registry.host}/site\npackages: [bash]\n",
    )
    report = run_doctor(build_graph(load_project(root)), timeout=5)
    (reg,) = [c for c in report.checks if c.kind == "registry"]
    assert reg.status == CheckStatus.OK and reg.name == registry.host and reg.needed_by == ("a",)
    assert "2 questions" in reg.detail and "anonymous" in reg.detail


def test_slurm_executor_needs_slurms_commands(tmp_path: Path) -> None:
    """`executor: {kind: slurm}` in imagegraph.yaml (or `up --executor slurm`) needs sbatch & co."""
    root = seed_dir(tmp_path / "layers")
    lg = build_graph(load_project(root))
    assert "sbatch" not in needed_tools(lg)
    assert set(needed_tools(lg, executor="slurm")["sbatch"]) == {"base", "compute", "gpu"}
    write(root, "imagegraph.yaml", "executor:\n  kind: slurm\n  partition: build\n")
    lg = build_graph(load_project(root))
    need = needed_tools(lg)
    assert {"sbatch", "squeue", "scancel"} <= set(need) and set(need["squeue"]) == {"base", "compute", "gpu"}
    assert "sbatch" not in needed_tools(lg, executor="local")
