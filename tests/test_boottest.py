"""Boot tests under QEMU (boottest.py), `up` holding human tags for a boot, and `promote`.

One real Debian boot to a login prompt: the module fixture runs `up` on a copy
of the bundled `boot` layer (boot_test enabled), which builds it (its parent
debian-base is reused from local storage when `make demo` built it) and boots
it under QEMU before publishing. The other boots reuse its kernel and
initramfs and fail fast on purpose (a 404 for the SquashFS, an initramfs
without the live modules), or stop at the kernel's first line (`Linux
version` as the marker) for the cheap `up`/`promote` checks on a tiny layer.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest

from imagegraph.boottest import boot
from imagegraph.key import KEY_TAG_PREFIX
from imagegraph.publish.registry_client import RegistryClient
from imagegraph.state import State
from tests.fixtures_build import buildah, have_buildah
from tests.needs import requires
from tests.test_publish_up import by_name, cleanup_images, cli, up

pytestmark = [
    pytest.mark.slow,
    pytest.mark.buildah,
    requires(have_buildah(), "needs buildah as root"),
    requires(shutil.which("qemu-system-x86_64") is not None, "needs qemu-system-x86"),
]

LAYERS = Path(__file__).resolve().parent.parent / "layers"
TCG = {"IMAGEGRAPH_BOOT_ACCEL": "tcg"}  # the fixture's run probes KVM; later runs need not again


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory):
    """`up` of base + boot (boot-tested, then published to ../out): (root, state db, result, key)."""
    tmp = tmp_path_factory.mktemp("boot")
    root = tmp / "layers"
    root.mkdir()
    for name in ("base.yaml", "boot.yaml"):
        shutil.copy(LAYERS / name, root / name)
    shutil.copytree(LAYERS / "files", root / "files")
    state = tmp / "state" / "state.db"
    started = time.monotonic()
    rc, doc, err = up(root, state, "boot")
    assert rc == 0, err[-4000:]
    res = by_name(doc)["boot"]
    assert res["status"] == "ok", res
    print(
        f"\nbase+boot up: {time.monotonic() - started:.0f} s ({res['action']} boot {res['duration']:.0f} s)"
    )
    key = json.loads(cli("plan", str(root), "boot", "--state", str(state), "--json").stdout)["layers"][-1]
    return root, state, res, key["key"]


def test_bundled_layer_boots_before_it_is_published(booted) -> None:
    root, state_db, res, key = booted
    st = State(state_db, readonly=True)
    ev = st.events("boot", "boot-test")
    assert ev and ev[0]["key"] == key and ev[0]["detail"]["outcome"] == "booted", ev
    detail = ev[0]["detail"]
    assert detail["seconds"] < 240 and "login:" in detail["reason"]
    serial = Path(ev[0]["location"])
    assert serial.parent == state_db.parent / "boot" and "login:" in serial.read_text(errors="replace")
    assert (
        "root=live:http://10.0.2.2:" in detail["params"] and "rd.live.overlay.overlayfs=1" in detail["params"]
    )
    # Published only after the boot: the directory's record is younger than the boot's.
    out = root.parent / "out" / "boot" / "bookworm"
    assert json.loads((out / "manifest.json").read_text())["key"] == key
    pub = st.published("boot")["dir"]
    assert pub.published_at >= ev[0]["published_at"]
    print(
        f"boot: {detail['seconds']} s ({detail['accel']}), squashfs {(out / 'rootfs.squashfs').stat().st_size >> 20} MiB"
    )


def _files(booted) -> tuple[Path, Path, Path]:
    root = booted[0]
    out = root.parent / "out" / "boot" / "bookworm"
    return out / "vmlinuz", out / "initramfs.img", out / "rootfs.squashfs"


def test_wrong_squashfs_url_fails_fast(booted, tmp_path: Path) -> None:
    kernel, initrd, rootfs = _files(booted)
    t0 = time.monotonic()
    res = boot(
        kernel,
        initrd,
        "root=live:{server}/missing.squashfs ip=dhcp rd.live.overlay.overlayfs=1 console=ttyS0",
        serve={"/rootfs.squashfs": rootfs},
        log_path=tmp_path / "serial.log",
        layer="boot",
        timeout=300,
        accel="tcg",
    )
    # Ended by dracut's failure line, not by the deadline (that outcome is "timeout"): the time it
    # takes depends on how fast this machine emulates, so it is bounded by the deadline only.
    assert res.outcome == "failed", res
    assert time.monotonic() - t0 < 300
    assert "failed to download live image" in res.reason and "404" in res.reason, res.reason
    assert any("failed to download live image" in t for t in res.tail)


def test_initramfs_without_live_modules_fails_with_dracuts_reason(booted, tmp_path: Path) -> None:
    root, _, res, key = booted
    kernel, _, rootfs = _files(booted)
    kver = json.loads((kernel.parent / "manifest.json").read_text())["kver"]
    ctr = buildah(
        "from", "--pull=never", "--quiet", f"localhost/imagegraph/boot:{KEY_TAG_PREFIX}{key}"
    ).stdout
    ctr = ctr.strip()
    try:
        buildah(
            "run",
            ctr,
            "--",
            "dracut",
            "-q",
            "-f",
            "--kver",
            kver,
            "-o",
            "dmsquash-live livenet",
            "/nolive.img",
        )
        mnt = Path(buildah("mount", ctr).stdout.strip())
        initrd = tmp_path / "nolive.img"
        shutil.copyfile(mnt / "nolive.img", initrd)
    finally:
        buildah("rm", ctr, check=False)
    res = boot(
        kernel,
        initrd,
        "root=live:{server}/rootfs.squashfs ip=dhcp rd.live.overlay.overlayfs=1 console=ttyS0",
        serve={"/rootfs.squashfs": rootfs},
        log_path=tmp_path / "serial.log",
        timeout=120,
        accel="tcg",
    )
    assert res.outcome == "failed", res
    assert "Don't know how to handle 'root=live:http://10.0.2.2:" in res.reason, res.reason


# ------------------------------------------------------- up holds human tags; promote moves them


@pytest.fixture
def tiny(tmp_path: Path, booted, rpm_repo, registry, s3_env):
    """A small scratch layer carrying the real kernel and initramfs, to every kind of target."""
    kernel, initrd, _ = _files(booted)
    kver = json.loads((kernel.parent / "manifest.json").read_text())["kver"]
    bucket = s3_env.make_bucket()
    root = tmp_path / "layers"
    root.mkdir()
    (root / "tiny.yaml").write_text(
        textwrap.dedent(
            f"""
            options:
              layer_type: base
              name: igt-boot-tiny
              publish_tags: ['1']
              pkg_manager: dnf
              parent: scratch
              gpgcheck: false
              releasever: '9'
              publish_registry: '{registry.host}/igt'
              registry_opts_push: ['--tls-verify=false']
              publish_dir: '../out'
              publish_s3: '{s3_env.endpoint}'
              s3_bucket: '{bucket}'
              s3_layout: versioned
              squashfs: {{compression: gzip, level: 1}}
              boot_test: {{enabled: true, marker: 'NEVER-PRINTED', timeout: 8}}
            repos:
              - alias: igtest
                url: '{rpm_repo.url}'
            package_groups: ['IG Minimal']
            copyfiles:
              - {{src: '{kernel}', dest: '/boot/vmlinuz-{kver}'}}
              - {{src: '{initrd}', dest: '/boot/initrd.img-{kver}'}}
            cmds:
              - 'mkdir -p /lib/modules/{kver}'
            """
        )
    )
    yield root, tmp_path / "state" / "state.db", registry, bucket
    cleanup_images("igt-boot-tiny")


def _tags(registry) -> set[str]:
    return RegistryClient().tags(f"{registry.host}/igt/igt-boot-tiny") or set()


def _builds(state_db: Path) -> int:
    with sqlite3.connect(state_db) as c:
        return c.execute("SELECT COUNT(*) FROM builds").fetchone()[0]


def test_up_publishes_human_tags_only_after_a_boot_and_promote_moves_them(tiny, s3_env) -> None:
    root, state_db, registry, bucket = tiny
    out = root.parent / "out" / "igt-boot-tiny"
    # 1. The marker never appears: the layer fails, only the immutable key tag reached the registry.
    rc, doc, err = up(root, state_db, env=TCG)
    assert rc == 1, err[-3000:]
    res = by_name(doc)["tiny"]
    assert res["status"] == "failed" and "boot test timeout" in res["error"], res
    assert "serial log:" in res["error"]
    tags = _tags(registry)
    assert len(tags) == 1 and next(iter(tags)).startswith(KEY_TAG_PREFIX), tags
    assert not (out / "1").exists()
    assert s3_env.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0

    # 2. A marker the kernel prints (the boot settings are in no key): publish, no rebuild.
    spec = root / "tiny.yaml"
    spec.write_text(spec.read_text().replace("NEVER-PRINTED", "Linux version"))
    builds = _builds(state_db)
    rc, doc, err = up(root, state_db, env=TCG)
    assert rc == 0, err[-3000:]
    res = by_name(doc)["tiny"]
    assert res["action"] == "publish" and _builds(state_db) == builds
    assert "1" in _tags(registry) and (out / "1" / "rootfs.squashfs").is_file()
    key = json.loads((out / "1" / "manifest.json").read_text())["key"]

    # 3. boot-test by hand, both ways, through the CLI.
    r = cli("boot-test", str(root), "tiny", "--state", str(state_db), "--json", env=TCG)
    assert r.returncode == 0 and json.loads(r.stdout)["outcome"] == "booted", r.stderr[-2000:]
    r = cli(
        "boot-test",
        str(root),
        "tiny",
        "--state",
        str(state_db),
        "--marker",
        "NOPE",
        "--timeout",
        "4",
        env=TCG,
    )
    assert r.returncode == 1 and "timeout" in r.stdout and "serial console" in r.stdout, r.stdout + r.stderr

    # 4. promote: every target's `prod` points at the key, nothing is built or pushed.
    client = RegistryClient()
    digest = client.manifest_digest(f"{registry.host}/igt/igt-boot-tiny:1")
    r = cli("promote", str(root), "tiny", "prod", "--state", str(state_db), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _builds(state_db) == builds
    assert client.manifest_digest(f"{registry.host}/igt/igt-boot-tiny:prod") == digest
    assert os.stat(out / "prod" / "rootfs.squashfs").st_ino == os.stat(out / "1" / "rootfs.squashfs").st_ino
    assert json.loads((out / "prod" / "manifest.json").read_text())["tag"] == "prod"
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert {f"igt-boot-tiny/prod/{n}" for n in ("rootfs.squashfs", "vmlinuz", "initramfs.img")} <= keys
    # The promoted S3 tag is a complete publication of the key (what `plan` checks).
    plan = json.loads(cli("plan", str(root), "--state", str(state_db), "--json").stdout)
    assert plan["layers"][0]["action"] == "up-to-date"
    ev = State(state_db, readonly=True).events("tiny", "promote")
    assert {e["detail"]["target"] for e in ev} == {"registry", "dir", "s3"} and all(
        e["key"] == key for e in ev
    )

    # 5. A key that has not booted is refused while boot_test is enabled.
    from imagegraph.project import load_project
    from imagegraph.promote import PromoteError, promote

    spec = load_project(root).layers["tiny"]
    with pytest.raises(PromoteError, match="has not booted"):
        promote(spec, "tiny", "f" * 64, "prod2", State(state_db), run_id="t")
    assert "prod2" not in _tags(registry)


def test_rootfs_only_layer_says_why_it_cannot_boot(tmp_path: Path) -> None:
    """A rootfs_only layer has no boot files by design: the error says so, not "set rootfs_only"."""
    from imagegraph.boottest import BootTestError, layer_artifacts
    from imagegraph.spec import load_spec

    path = tmp_path / "r.yaml"
    path.write_text("options:\n  layer_type: base\n  name: r\n  pkg_manager: dnf\n  rootfs_only: true\n")
    with pytest.raises(BootTestError) as info, layer_artifacts(load_spec(path), "0" * 64, tmp_path):
        pass
    assert "rootfs_only: true publishes no kernel" in str(info.value)
    assert "set rootfs_only" not in str(info.value)
