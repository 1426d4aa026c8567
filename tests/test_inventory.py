"""imagegraph/inventory.py against the real parts: buildah's local storage, a docker-registry, S3, directories.

Unknown is not absent: a failing or hanging `buildah images` (a wrapper on
PATH that fails only for `images`), a registry that went away and an S3
endpoint that refuses connections all answer `unknown` with the tool's or
server's words, never `absent`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from imagegraph import inventory as inv_mod
from imagegraph.inventory import Answer, LiveInventory, Presence, dir_answers, local_key_ref
from imagegraph.spec import load_spec
from tests.fixtures_build import buildah, have_buildah

pytestmark = [pytest.mark.buildah, pytest.mark.skipif(not have_buildah(), reason="needs buildah as root")]

NAME = "igt-inventory"
KEY = "a" * 64


def _spec(tmp_path: Path, extra: str = "") -> object:
    f = tmp_path / "inv.yaml"
    f.write_text(
        f"options:\n  layer_type: base\n  pkg_manager: dnf\n  name: {NAME}\n  publish_tags: ['1', 'latest']\n"
        + extra
    )
    return load_spec(f)


@pytest.fixture
def scratch_image():
    """An empty image committed as this key's local image, also tagged `localhost/<name>:1`."""
    ctr = buildah("from", "scratch").stdout.strip()
    try:
        buildah("config", "--label", "io.imagegraph.test=inventory", ctr)
        iid = buildah("commit", "-q", ctr, f"localhost/imagegraph/{NAME}:ig-{KEY}").stdout.strip()
    finally:
        buildah("rm", ctr, check=False)
    buildah("tag", iid, f"localhost/{NAME}:1")
    yield iid
    buildah("rmi", "-f", iid, check=False)


def _wrapper(tmp_path: Path, body: str) -> dict[str, str]:
    """A `buildah` on PATH that runs `body` for `buildah images` and the real buildah otherwise."""
    real = subprocess.run(["sh", "-c", "command -v buildah"], capture_output=True, text=True).stdout.strip()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    w = bindir / "buildah"
    w.write_text(f'#!/bin/sh\nif [ "$1" = images ]; then\n{body}\nfi\nexec {real} "$@"\n')
    w.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def test_local_images_present_absent_and_what_tags_hold(tmp_path: Path, scratch_image: str) -> None:
    spec = _spec(tmp_path, "  publish_local: true\n")
    inv = LiveInventory(offline=True)
    mine = inv.local_image(None, local_key_ref(spec, KEY))
    assert mine.presence == Presence.PRESENT and mine.holds == scratch_image.removeprefix("sha256:")
    # The full ID (as `buildah inspect` gives it) finds the same image.
    assert inv.local_image(scratch_image).holds == mine.holds
    assert inv.local_image(None, f"localhost/{NAME}:1").holds == mine.holds
    assert inv.local_image(None, f"localhost/{NAME}:latest").presence == Presence.ABSENT
    assert f"localhost/imagegraph/{NAME}:ig-{KEY}" in inv.local_names(mine.holds or "")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("echo 'Error: database is locked' >&2; exit 125", "database is locked"),
        ("echo not-json; exit 0", "not an image list"),
        ("sleep 30", "timeout"),
    ],
)
def test_unreadable_local_storage_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, words: str
) -> None:
    env = _wrapper(tmp_path, body)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setattr(inv_mod, "LOCAL_TIMEOUT", 1.0)
    spec = _spec(tmp_path)
    ans = LiveInventory(offline=True).local_image(None, local_key_ref(spec, KEY))
    assert ans.presence == Presence.UNKNOWN, ans
    assert words in (ans.error or ""), ans.error


def test_local_storage_asked_early_is_asked_once_and_answers_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch_image: str
) -> None:
    """`plan` starts `buildah images` before loading the specs: the answers are the same, the
    command runs once (start_local, then prefetch and the questions), and unknown stays unknown."""
    log = tmp_path / "calls"
    env = _wrapper(tmp_path, f"echo images >> {log}")
    monkeypatch.setenv("PATH", env["PATH"])
    spec = _spec(tmp_path, "  publish_local: true\n")
    early = LiveInventory(offline=True)
    early.start_local()
    early.prefetch([spec])
    late = LiveInventory(offline=True)
    for ref in (local_key_ref(spec, KEY), f"localhost/{NAME}:1", f"localhost/{NAME}:latest"):
        assert early.local_image(None, ref) == late.local_image(None, ref)
    assert early.local_image(None, local_key_ref(spec, KEY)).presence == Presence.PRESENT
    assert log.read_text().split() == ["images", "images"]  # one per inventory
    (tmp_path / "f").mkdir()
    failing = _wrapper(tmp_path / "f", "echo 'Error: database is locked' >&2; exit 125")
    monkeypatch.setenv("PATH", failing["PATH"])
    broken = LiveInventory(offline=True)
    broken.start_local()
    assert broken.local_image(None, local_key_ref(spec, KEY)).presence == Presence.UNKNOWN


def test_registry_tags_and_digests_and_a_registry_that_goes_away(
    tmp_path: Path, scratch_image: str, registry
) -> None:
    spec = _spec(
        tmp_path, f"  publish_registry: '{registry.host}/igt'\n  registry_opts_push: ['--tls-verify=false']\n"
    )
    repo = f"{registry.host}/igt/{NAME}"
    buildah("push", "--tls-verify=false", scratch_image, f"docker://{repo}:1")
    inv = LiveInventory()
    inv.prefetch([spec])
    assert inv.registry_tags(spec).tags == frozenset({"1"})
    one = inv.tag_digest(spec, "1")
    assert one.presence == Presence.PRESENT and (one.holds or "").startswith("sha256:")
    assert inv.tag_digest(spec, "latest").presence == Presence.ABSENT
    registry.stop()
    gone = LiveInventory()
    tags = gone.registry_tags(spec)
    assert tags.unknown and "unreachable" in (tags.error or ""), tags
    d = gone.tag_digest(spec, "1")
    assert d.presence == Presence.UNKNOWN and d.error, d


def test_s3_that_refuses_connections_is_unknown(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "  publish_s3: 'http://127.0.0.1:9'\n  s3_bucket: boot\n")
    answers = LiveInventory().artifacts(spec, KEY, "s3")
    assert set(answers) == {"1", "latest"}
    assert all(a.presence == Presence.UNKNOWN and a.error for a in answers.values()), answers


def test_directory_targets_by_their_manifest(tmp_path: Path) -> None:
    spec = _spec(tmp_path, f"  publish_dir: '{tmp_path / 'out'}'\n")
    tag1 = tmp_path / "out" / NAME / "1"
    tag1.mkdir(parents=True)
    (tag1 / "rootfs.squashfs").write_bytes(b"x" * 10)
    sq = spec.squashfs
    options = {"compression": sq.compression, "level": sq.level, "block_size": sq.block_size}
    manifest = {"key": KEY, "files": {"rootfs.squashfs": {"size": 10}}, "squashfs": options}
    (tag1 / "manifest.json").write_text(json.dumps(manifest))
    # `latest` holds another key; a manifest that cannot be read is unknown.
    other = tmp_path / "out" / NAME / "latest"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"key": "b" * 64, "files": {}}))
    got = dir_answers(spec, KEY)
    assert got["1"].presence == Presence.PRESENT
    # Written with other SquashFS options: not what today's spec publishes.
    (tag1 / "manifest.json").write_text(
        json.dumps({**manifest, "squashfs": {**options, "compression": "xz"}})
    )
    assert dir_answers(spec, KEY)["1"] == Answer(
        Presence.ABSENT, holds=KEY, why="published with other SquashFS or kernel options"
    )
    (tag1 / "manifest.json").write_text(json.dumps(manifest))
    # A file the manifest names, cut short (or gone): this key's, and not whole.
    (tag1 / "rootfs.squashfs").write_bytes(b"x" * 9)
    assert dir_answers(spec, KEY)["1"] == Answer(
        Presence.ABSENT, holds=KEY, why="a file its manifest names is missing or has another size"
    )
    (tag1 / "rootfs.squashfs").write_bytes(b"x" * 10)
    assert got["latest"] == Answer(Presence.ABSENT, holds="b" * 64)
    (other / "manifest.json").unlink()
    (other / "manifest.json").mkdir()  # reading it fails with EISDIR, not "no such file"
    got = dir_answers(spec, KEY)
    assert got["latest"].presence == Presence.UNKNOWN and "cannot read" in (got["latest"].error or "")
    (other / "manifest.json").rmdir()
    assert dir_answers(spec, KEY)["latest"].presence == Presence.ABSENT
