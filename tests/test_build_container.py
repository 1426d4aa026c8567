"""build/container.py: a pulled key tag counts only when the image's labels name its key.

A scripted `buildah` on PATH answers `pull` with an image ID and `inspect` with the labels the
test gives it (the real pull, by a machine without the images, is in test_publish_up.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from imagegraph.build.container import WrongKeyImage, check_key_label, pull_key_image
from imagegraph.runner import Runner

KEY = "3f2a" + "0" * 60
IMAGE_ID = "ab" * 32

SCRIPT = """#!/bin/sh
echo "$@" >> "{calls}"
case "$1" in
  pull) echo {image_id} ;;
  inspect) cat "{labels}" ;;
  *) exit 2 ;;
esac
"""


def scripted_buildah(tmp: Path, monkeypatch: pytest.MonkeyPatch, labels: dict) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir()
    (tmp / "labels.json").write_text(json.dumps({"OCIv1": {"config": {"Labels": labels}}}))
    exe = bindir / "buildah"
    exe.write_text(SCRIPT.format(calls=tmp / "calls", image_id=IMAGE_ID, labels=tmp / "labels.json"))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return tmp / "calls"


REF = f"registry.example:5000/site/base:ig-{KEY}"


def test_a_key_tag_holding_its_key_is_pulled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = scripted_buildah(tmp_path, monkeypatch, {"io.imagegraph.key": KEY, "other": "x"})
    assert pull_key_image(REF, KEY, ["--tls-verify=false"], Runner("child")) == IMAGE_ID
    said = calls.read_text().splitlines()
    assert said[0].startswith("pull") and REF in said[0] and said[1].startswith("inspect")


@pytest.mark.parametrize(
    ("labels", "shown"),
    [({"io.imagegraph.key": "9c1d" + "1" * 60}, "key 9c1d11111111…"), ({}, "no imagegraph key")],
)
def test_a_key_tag_holding_another_image_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, labels: dict, shown: str
) -> None:
    scripted_buildah(tmp_path, monkeypatch, labels)
    with pytest.raises(WrongKeyImage) as err:
        pull_key_image(REF, KEY, [], Runner("child"))
    assert str(err.value).startswith(f"{REF} holds an image of {shown}, not of key {KEY[:12]}…")
    assert "the key tag was overwritten" in str(err.value) and "up --force" in str(err.value)


def test_check_key_label_alone() -> None:
    check_key_label(REF, KEY, {"io.imagegraph.key": KEY})
    with pytest.raises(WrongKeyImage):
        check_key_label(REF, KEY, {"io.imagegraph.key": KEY[:-1] + "1"})
