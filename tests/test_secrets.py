"""Secrets never leave imagegraph: a real `up` with every kind of credential, then grep everything it wrote.

The credentials: S3 keys (S3_ACCESS/S3_SECRET, moto over HTTP), a registry
password (htpasswd registry, credentials in a REGISTRY_AUTH_FILE), and a
repository URL with `user:password@` (the rpm repository server ignores
auth, so the build works). Searched: stdout and stderr of `up` (-vv, JSON
logs), `plan --json`, every file under the state directory (logs, run
records, state.db bytes), and a deliberately failing run's messages. The
dnf repo file written into the image legitimately holds the URL; that is
inside the image, not in imagegraph's output.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_build import buildah, have_buildah
from tests.fixtures_servers import S3_TEST_ACCESS, S3_TEST_SECRET
from tests.needs import requires

pytestmark = [pytest.mark.buildah, requires(have_buildah(), "needs buildah as root")]

P = "igt-sec"
REPO_USER = "repouser"
REPO_PASSWORD = "s3cr3tpass-Rk29"


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", "--log-format", "json", "-vv", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_no_secret_leaks_anywhere(tmp_path: Path, rpm_repo, auth_registry, s3_env) -> None:
    bucket = s3_env.make_bucket()
    authfile = tmp_path / "auth.json"
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    env = {
        **os.environ,
        "BUILDAH_ISOLATION": "chroot",
        "REGISTRY_AUTH_FILE": str(authfile),
        "S3_ACCESS": S3_TEST_ACCESS,
        "S3_SECRET": S3_TEST_SECRET,
        "IMAGEGRAPH_RETRY_ATTEMPTS": "2",
        "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.1",
    }
    secrets = {
        "s3 secret": S3_TEST_SECRET,
        "registry password": auth_registry.password,
        "registry auth token": token,
        "repo password": REPO_PASSWORD,
    }
    port = rpm_repo.url.split(":")[-1].strip("/")
    repo_url = f"http://{REPO_USER}:{REPO_PASSWORD}@127.0.0.1:{port}/"
    root = tmp_path / "layers"
    root.mkdir()
    layer = root / f"{P}-one.yaml"
    text = (
        f"options:\n  layer_type: base\n  name: {P}-one\n  publish_tags: ['1']\n  pkg_manager: dnf\n"
        "  parent: scratch\n  gpgcheck: false\n  releasever: '9'\n  rootfs_only: true\n"
        f"  publish_registry: '{auth_registry.host}/igt'\n  registry_opts_push: ['--tls-verify=false']\n"
        f"  publish_s3: '{s3_env.endpoint}'\n  s3_bucket: '{bucket}'\n"
        f"repos:\n  - alias: igtest\n    url: '{repo_url}'\npackage_groups: ['IG Minimal']\n"
        "cmds:\n  - 'grep -r 127.0.0.1 /etc/yum.repos.d /etc/dnf 2>/dev/null || true'\n"
    )
    layer.write_text(text)
    state = tmp_path / "state" / "state.db"
    outputs: dict[str, str] = {}
    try:
        r = cli("up", str(root), "--state", str(state), "--json", env=env)
        outputs["up stdout"], outputs["up stderr"] = r.stdout, r.stderr
        assert r.returncode == 0, r.stderr[-3000:]
        doc = json.loads(r.stdout)
        assert {x["status"] for x in doc["layers"]} == {"ok"}

        r = cli("plan", str(root), "--state", str(state), "--json", env=env)
        outputs["plan stdout"], outputs["plan stderr"] = r.stdout, r.stderr
        assert r.returncode == 0, r.stderr
        for command in ("status", "artifacts"):
            args = [command, str(root), "--state", str(state), "--json"]
            if command == "artifacts":
                args.insert(2, f"{P}-one")
            r = cli(*args, env=env)
            outputs[f"{command} stdout"], outputs[f"{command} stderr"] = r.stdout, r.stderr

        # A failing run: the repository (credentials in its URL) does not answer; the S3 secret and
        # registry password are in the environment of every command.
        layer.write_text(text.replace(f"127.0.0.1:{port}/", "127.0.0.1:9/").replace("echo", "echo x"))
        r = cli("up", str(root), "--state", str(state), "--json", env=env)
        outputs["failing up stdout"], outputs["failing up stderr"] = r.stdout, r.stderr
        assert r.returncode == 1, r.stderr[-3000:]
        failed = json.loads(r.stdout)["layers"][0]
        assert failed["status"] == "failed" and "127.0.0.1:9" in failed["error"], failed["error"]
        assert "***" in failed["error"] or REPO_USER not in failed["error"]

        files = sorted(p for p in state.parent.rglob("*") if p.is_file())
        assert any(p.suffix == ".log" for p in files) and any(p.parent.name == "runs" for p in files)
        for p in files:
            outputs[str(p)] = p.read_bytes().decode("latin-1")

        leaks = [
            f"{what} in {where}" for where, out in outputs.items() for what, s in secrets.items() if s in out
        ]
        assert leaks == []

        # Owner-only: the state directory, the database, logs and run records.
        assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700
        for p in files:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode & 0o077 == 0, f"{p} is {oct(mode)}"
        for d in (p for p in state.parent.rglob("*") if p.is_dir()):
            assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, f"{d} is {oct(d.stat().st_mode)}"
    finally:
        for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
            if f"{P}-" in ref:
                buildah("rmi", "-f", ref, check=False)
