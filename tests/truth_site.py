"""A small real site for the truth tests: two tiny layers to a registry, S3 (moto) and a directory.

`base` is a scratch dnf layer (ig-hello from the local RPM repository of
tests/rpmrepo.py, one copied file); `child` builds on base's registry tag
`1` and copies a file. Both publish to the registry; base also to S3
(versioned layout) and the directory, child also to local storage and the
directory. `rootfs_only` and gzip level 1 keep SquashFS and uploads small.

`Site` writes the specs from a few knobs (`rev`, `tags`, `extra_file`), runs
the CLI, and reads what each target really holds (registry digests, S3
metadata, directory manifests, local image IDs) for the assertions.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from imagegraph.key import key_tag
from imagegraph.publish.registry_client import RegistryClient
from tests.fixtures_build import buildah

LAYERS = ("base", "child")


@dataclass
class Site:
    root: Path
    registry_host: str
    s3_endpoint: str
    bucket: str
    repo_url: str
    prefix: str = "igt-tr"
    rev: dict[str, int] = field(default_factory=lambda: {"base": 0, "child": 0})
    tags: dict[str, list[str]] = field(default_factory=lambda: {"base": ["1"], "child": ["1", "latest"]})
    extra_file: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = self.root / "layers"
        self.state = self.root / "state" / "state.db"
        self.out = self.root / "out"
        (self.layers / "files").mkdir(parents=True, exist_ok=True)
        (self.layers / "files" / "base.txt").write_text("base\n")
        (self.layers / "files" / "child.txt").write_text("child\n")
        self.write()

    # ------------------------------------------------------------------ specs

    def name(self, layer: str) -> str:
        return f"{self.prefix}-{layer}"

    def repository(self, layer: str) -> str:
        return f"{self.registry_host}/igt/{self.name(layer)}"

    def write(self) -> None:
        common = (
            "  pkg_manager: dnf\n  gpgcheck: false\n  releasever: '9'\n"
            f"  publish_registry: '{self.registry_host}/igt'\n"
            "  registry_opts_push: ['--tls-verify=false']\n  registry_opts_pull: ['--tls-verify=false']\n"
            "  publish_dir: '../out'\n  rootfs_only: true\n  squashfs: {compression: gzip, level: 1}\n"
        )
        base = (
            f"options:\n  layer_type: base\n  name: {self.name('base')}\n  parent: scratch\n"
            f"  publish_tags: {json.dumps(self.tags['base'])}\n"
            f"  labels: {{rev: '{self.rev['base']}'}}\n"
            f"  publish_s3: '{self.s3_endpoint}'\n  s3_bucket: '{self.bucket}'\n  s3_layout: versioned\n"
            + common
            + textwrap.dedent(
                f"""\
                repos:
                  - alias: igtest
                    url: '{self.repo_url}'
                packages: [ig-hello]
                copyfiles:
                  - {{src: files/base.txt, dest: /etc/base.txt}}
                """
            )
        )
        copies = "  - {src: files/child.txt, dest: /etc/child.txt}\n"
        if self.extra_file:
            copies += "  - {src: files/extra.txt, dest: /etc/extra.txt}\n"
        child = (
            f"options:\n  layer_type: base\n  name: {self.name('child')}\n"
            f"  parent: '{self.repository('base')}:1'\n"
            f"  publish_tags: {json.dumps(self.tags['child'])}\n"
            f"  labels: {{rev: '{self.rev['child']}'}}\n  publish_local: true\n"
            + common
            + "copyfiles:\n"
            + copies
        )
        (self.layers / "base.yaml").write_text(base)
        (self.layers / "child.yaml").write_text(child)
        if self.extra_file:
            (self.layers / "files" / "extra.txt").write_text("extra\n")

    # -------------------------------------------------------------------- CLI

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        e = {
            **os.environ,
            "BUILDAH_ISOLATION": "chroot",
            "IMAGEGRAPH_RETRY_ATTEMPTS": "2",
            "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.1",
            **self.env,
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, "-m", "imagegraph.cli", *args],
            capture_output=True,
            text=True,
            env=e,
            timeout=900,
        )

    def plan(self, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
        r = self.cli("plan", str(self.layers), "--state", str(self.state), "--json", *extra, env=env)
        return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr

    def up(self, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
        r = self.cli("up", str(self.layers), "--state", str(self.state), "--json", *extra, env=env)
        doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        return r.returncode, doc, r.stderr

    def gc(self, keep: int) -> subprocess.CompletedProcess:
        return self.cli("gc", str(self.layers), "--keep", str(keep), "--state", str(self.state), "--json")

    # ------------------------------------------------------------ what is held

    def builds(self) -> dict[str, int]:
        """Successful builds per layer, from the state (what a rebuild would add to)."""
        if not self.state.exists():
            return dict.fromkeys(LAYERS, 0)
        with sqlite3.connect(self.state) as c:
            rows = c.execute("SELECT layer, COUNT(*) FROM builds WHERE status='ok' GROUP BY layer").fetchall()
        return {**dict.fromkeys(LAYERS, 0), **dict(rows)}

    def registry_digest(self, layer: str, tag: str) -> str | None:
        return RegistryClient().manifest_digest(f"{self.repository(layer)}:{tag}")

    def s3_key(self, tag: str, s3) -> str | None:
        """The layer key in the metadata of base's rootfs object for `tag` (None: no object)."""
        try:
            head = s3.client().head_object(
                Bucket=self.bucket, Key=f"{self.name('base')}/{tag}/rootfs.squashfs"
            )
        except Exception:
            return None
        return head["Metadata"].get("imagegraph-key")

    def dir_key(self, layer: str, tag: str) -> str | None:
        try:
            return json.loads((self.out / self.name(layer) / tag / "manifest.json").read_text()).get("key")
        except OSError:
            return None

    def local_id(self, ref: str) -> str | None:
        r = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref, check=False)
        return r.stdout.strip() or None if r.returncode == 0 else None

    def holdings(self, layer: str, s3) -> dict[str, str | None]:
        """What every target of `layer` holds, as a layer key ('?' when it holds an image of no known key)."""
        out: dict[str, str | None] = {}
        key_digests: dict[str, str] = {}
        for t in self.registry_tags(layer):
            if t.startswith("ig-"):
                d = self.registry_digest(layer, t)
                if d:
                    key_digests[d] = t[3:]
        for tag in self.tags[layer]:
            d = self.registry_digest(layer, tag)
            out[f"registry:{tag}"] = key_digests.get(d, "?") if d else None
            out[f"dir:{tag}"] = self.dir_key(layer, tag)
        if layer == "base":
            for tag in self.tags[layer]:
                out[f"s3:{tag}"] = self.s3_key(tag, s3)
        else:
            for tag in self.tags[layer]:
                iid = self.local_id(f"localhost/{self.name(layer)}:{tag}")
                out[f"local:{tag}"] = self._key_of_local(layer, iid) if iid else None
        return out

    def _key_of_local(self, layer: str, iid: str) -> str:
        r = buildah("images", "--json", "--no-trunc", check=False)
        for img in json.loads(r.stdout or "[]") or []:
            if str(img.get("id", "")).removeprefix("sha256:") == iid.removeprefix("sha256:"):
                for n in img.get("names") or []:
                    for p in (
                        f"localhost/imagegraph/{self.name(layer)}:ig-",
                        f"{self.repository(layer)}:ig-",
                    ):
                        if n.startswith(p):
                            return n[len(p) :]
        return "?"

    def registry_tags(self, layer: str) -> set[str]:
        return RegistryClient().tags(self.repository(layer)) or set()

    def move_tag(self, layer: str, tag: str, key: str) -> None:
        """Point a registry tag by hand at the manifest of another key's key tag."""
        client = RegistryClient()
        digest = client.manifest_digest(f"{self.repository(layer)}:{key_tag(key)}")
        assert digest, f"no key tag {key[:12]} for {layer}"
        client.put_tag(self.repository(layer), digest, tag)

    def cleanup(self) -> None:
        for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
            if self.prefix in ref:
                buildah("rmi", "-f", ref, check=False)


def keys_of(plan: dict) -> dict[str, str]:
    return {x["name"]: x["key"] for x in plan.get("layers", [])}


def actions_of(doc: dict) -> dict[str, str]:
    return {x["name"]: x["action"] for x in doc.get("layers", [])}
