"""External parents through the real CLI: keyed by manifest digest, pulled once per run, moves detected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_build import buildah, have_buildah
from tests.needs import requires

pytestmark = [pytest.mark.buildah, requires(have_buildah(), "needs buildah as root")]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "IMAGEGRAPH_RETRY_ATTEMPTS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_external_parent(tmp_path: Path, rpm_repo, registry) -> None:
    host = registry.host
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "base.yaml").write_text(
        "options:\n  layer_type: base\n  name: igt-ext-vendor\n  publish_tags: ['1']\n  pkg_manager: dnf\n"
        f"  gpgcheck: false\n  releasever: '9'\n  publish_registry: '{host}/ext'\n"
        "  registry_opts_push: ['--tls-verify=false']\n"
        f"repos:\n  - alias: igtest\n    url: '{rpm_repo.url}'\npackage_groups: ['IG Minimal']\n"
        "cmds:\n  - 'echo v1 > /etc/vendor'\n"
    )
    site = tmp_path / "site"
    site.mkdir()
    for name in ("a", "b"):
        (site / f"{name}.yaml").write_text(
            f"options:\n  layer_type: base\n  name: igt-ext-{name}\n  pkg_manager: dnf\n"
            f"  parent: '{host}/ext/igt-ext-vendor:1'\n  registry_opts_pull: ['--tls-verify=false']\n"
            f"cmds:\n  - 'cat /etc/vendor > /etc/{name}'\n"
        )
    try:
        r = cli("up", str(vendor), "--state", str(tmp_path / "v.db"), "--json")
        assert r.returncode == 0, r.stderr
        buildah("rmi", "-f", f"{host}/ext/igt-ext-vendor:1", check=False)  # as on a host that never saw it

        plan = json.loads(cli("plan", str(site), "--state", str(tmp_path / "s.db"), "--json").stdout)
        assert {x["parent_kind"] for x in plan["layers"]} == {"external"}
        assert not any(n["code"] == "parent-digest-unknown" for x in plan["layers"] for n in x["notes"])

        r = cli("up", str(site), "--state", str(tmp_path / "s.db"), "--json", "-j", "2")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        logs = "".join(Path(x["log_file"]).read_text() for x in doc["layers"])
        assert logs.count("$ buildah pull") == 1  # one pull per run, however many layers need it

        r = cli("up", str(site), "--state", str(tmp_path / "s.db"), "--json")
        assert {x["status"] for x in json.loads(r.stdout)["layers"]} == {"up-to-date"}

        # The vendor moves its tag: both children see the digest move.
        base = vendor / "base.yaml"
        base.write_text(base.read_text().replace("echo v1", "echo v2"))
        assert cli("up", str(vendor), "--state", str(tmp_path / "v.db"), "--json").returncode == 0
        plan = json.loads(cli("plan", str(site), "--state", str(tmp_path / "s.db"), "--json").stdout)
        assert [x["action"] for x in plan["layers"]] == ["build", "build"]
        assert {x["reasons"][0]["code"] for x in plan["layers"]} == {"parent-digest-moved"}

        # Offline: keyed by the reference, and the plan says so.
        off = json.loads(
            cli("plan", str(site), "--state", str(tmp_path / "s.db"), "--json", "--offline").stdout
        )
        assert all(any(n["code"] == "parent-digest-unknown" for n in x["notes"]) for x in off["layers"])
    finally:
        for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
            if "igt-ext-" in ref:
                buildah("rmi", "-f", ref, check=False)
