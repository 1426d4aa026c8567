"""S3 publishing against moto's S3 server over HTTP: layouts, metadata, multipart, retries, cleanup."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from imagegraph.errors import PublishError
from imagegraph.log import configure
from imagegraph.publish import s3 as s3mod
from imagegraph.publish.artifacts import boot_config, publish_artifacts, s3_artifacts_present
from imagegraph.publish.dirlayout import dir_artifacts_present
from imagegraph.publish.s3 import MiB, S3Index, S3Settings, S3Target, make_client
from imagegraph.publish.s3layout import artifact_keys, find_published
from imagegraph.retry import RetryPolicy
from imagegraph.runner import Runner
from imagegraph.spec import LayerSpec, SquashfsOptions

from .fixtures_servers import S3_TEST_ACCESS, S3_TEST_SECRET, S3Server
from .publish_helpers import EL, SUSE, make_rootfs

KVER = "5.14.0-427.el9.x86_64"
KEY = "a" * 64
# Quick retries for tests: no botocore re-sends (tenacity does them, with tiny waits).
FAST = S3Settings(
    botocore_attempts=1,
    retry=RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05),
    connect_timeout=2,
    read_timeout=10,
)
# Multipart from 1 MiB on (s3transfer raises parts to its 5 MiB minimum).
SMALL_PARTS = replace(FAST, multipart_threshold=MiB, multipart_chunksize=MiB)


def spec_for(endpoint: str, bucket: str, **kw) -> LayerSpec:
    base = dict(
        path=Path("/layers/compute.yaml"),
        layer_type="base",
        name="compute",
        pkg_manager="dnf",
        publish_s3=endpoint,
        s3_bucket=bucket,
        s3_prefix="compute/base/",
        publish_tags=("v1",),
        squashfs=SquashfsOptions("gzip", 1),
    )
    base.update(kw)
    return LayerSpec(**base)


def keys_in(s3: S3Server, bucket: str) -> list[str]:
    r = s3.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in r.get("Contents") or [])


def meta(s3: S3Server, bucket: str, key: str) -> dict:
    return s3.client().head_object(Bucket=bucket, Key=key)["Metadata"]


def stored_sha256(s3: S3Server, bucket: str, key: str) -> str:
    """sha256 of the bytes S3 holds, downloaded with the test's own client: not what imagegraph reports."""
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"]
    h = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "root", {KVER: EL, "5.14.0-70.el9.x86_64": EL})


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Everything imagegraph logs (structlog, DEBUG) plus stdlib records (botocore, s3transfer)."""
    old = structlog.get_config()
    buf = io.StringIO()
    configure("json", "DEBUG", buf)
    caplog.set_level(logging.DEBUG)  # botocore's DEBUG lines carry request headers
    try:
        yield buf
    finally:
        structlog.configure(**old)


# ------------------------------------------------------------------------------- keys


def test_keys_of_both_layouts() -> None:
    spec = spec_for("http://s3", "boot-images")
    k = artifact_keys(spec, "v1", KVER, "rocky9.6")
    assert k.rootfs == "compute/base/rocky9.6-compute-v1"
    assert k.kernel == f"efi-images/compute/base/vmlinuz-{KVER}"
    assert k.initramfs == f"efi-images/compute/base/initramfs-{KVER}.img"
    suse = artifact_keys(
        spec, "v1", "5.14.21-default", ("SLES", "15.5"), initramfs_name="initrd-5.14.21-default"
    )
    assert suse.rootfs == "compute/base/sles15.5-compute-v1"
    assert suse.initramfs == "efi-images/compute/base/initrd-5.14.21-default"
    no_prefix = artifact_keys(replace(spec, s3_prefix=""), "latest", KVER, "rocky9.6")
    assert no_prefix == artifact_keys(replace(spec, s3_prefix=""), "latest", KVER, ("rocky", "9.6"))
    assert no_prefix.rootfs == "rocky9.6-compute-latest" and no_prefix.kernel == f"efi-images/vmlinuz-{KVER}"
    v = artifact_keys(replace(spec, s3_layout="versioned"), "v1", KVER, "rocky9.6")
    assert (v.rootfs, v.kernel, v.initramfs) == (
        "compute/base/compute/v1/rootfs.squashfs",
        "compute/base/compute/v1/vmlinuz",
        "compute/base/compute/v1/initramfs.img",
    )
    assert artifact_keys(spec, "v1", None, "rocky9.6").kernel is None


# --------------------------------------------------------------------------- uploads


def test_multipart_upload_carries_metadata(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    f = tmp_path / "big"
    f.write_bytes(os.urandom(6 * MiB + 5))
    target = S3Target(s3_env.endpoint, bucket, layer="compute", settings=SMALL_PARTS)
    r = target.upload(f, "x/big", {"imagegraph-key": KEY})
    assert r.etag.endswith("-2")  # two parts: s3transfer's minimum part is 5 MiB
    head = s3_env.client().head_object(Bucket=bucket, Key="x/big", ChecksumMode="ENABLED")
    assert head["Metadata"] == {"imagegraph-key": KEY, "sha256": r.sha256}
    # The bytes stored are the file's, and the recorded checksum is theirs (hashed here, independently).
    assert stored_sha256(s3_env, bucket, "x/big") == file_sha256(f) == r.sha256
    assert head["ContentLength"] == 6 * MiB + 5
    assert head.get("ChecksumSHA256")  # the SHA256 transfer checksum was used
    assert target.incomplete_uploads() == []


def test_publish_image_builder_layout_several_tags(s3_env: S3Server, rootfs: Path, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    spec = spec_for(s3_env.endpoint, bucket, publish_tags=("v1", "latest", "stable"))
    pub = publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "work", s3_settings=FAST)
    assert pub.kver == KVER and pub.os == "rocky9.6"
    assert keys_in(s3_env, bucket) == sorted(
        [
            f"efi-images/compute/base/initramfs-{KVER}.img",
            f"efi-images/compute/base/vmlinuz-{KVER}",
            "compute/base/rocky9.6-compute-latest",
            "compute/base/rocky9.6-compute-stable",
            "compute/base/rocky9.6-compute-v1",
        ]
    )
    actions = [(o.role, o.tag, o.action) for o in pub.objects if o.target == "s3"]
    # Boot files once (their keys have no tag); the SquashFS crosses the wire once, then server-side copies.
    assert [a for a in actions if a[0] == "kernel"] == [
        ("kernel", "v1", "uploaded"),
        ("kernel", "latest", "unchanged"),
        ("kernel", "stable", "unchanged"),
    ]
    assert [a for a in actions if a[0] == "rootfs"] == [
        ("rootfs", "v1", "uploaded"),
        ("rootfs", "latest", "copied"),
        ("rootfs", "stable", "copied"),
    ]
    m = meta(s3_env, bucket, "compute/base/rocky9.6-compute-stable")
    assert m["imagegraph-key"] == KEY and m["sha256"] == pub.squashfs_sha256
    # Uploaded once, copied twice: each object holds the bytes its metadata's checksum names.
    for tag in ("v1", "latest", "stable"):
        key = f"compute/base/rocky9.6-compute-{tag}"
        assert (
            stored_sha256(s3_env, bucket, key) == meta(s3_env, bucket, key)["sha256"] == pub.squashfs_sha256
        )
    kernel = f"efi-images/compute/base/vmlinuz-{KVER}"
    assert stored_sha256(s3_env, bucket, kernel) == file_sha256(rootfs / f"boot/vmlinuz-{KVER}")
    assert m["imagegraph-kernel"] == f"efi-images/compute/base/vmlinuz-{KVER}"
    assert meta(s3_env, bucket, f"efi-images/compute/base/vmlinuz-{KVER}")["imagegraph-key"] == KEY
    assert not list((tmp_path / "work").iterdir())  # nothing left in the workdir

    # Publishing the same build again changes nothing; a new tag adds only its SquashFS.
    again = publish_artifacts(
        replace(spec, publish_tags=("v1", "latest", "stable", "v2")),
        KEY,
        rootfs,
        Runner("compute"),
        tmp_path / "work",
        s3_settings=FAST,
    )
    changed = [(o.role, o.tag, o.action) for o in again.objects if o.action != "unchanged"]
    assert changed == [("rootfs", "v2", "copied")]  # from the unchanged v1 object, server-side
    assert again.squashfs_sha256 == pub.squashfs_sha256  # reproducible SquashFS


def test_publish_versioned_layout_and_boot_config(s3_env: S3Server, rootfs: Path, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    spec = spec_for(
        s3_env.endpoint,
        bucket,
        s3_layout="versioned",
        publish_tags=("v1", "latest"),
        boot_params="console=ttyS0,115200 ip=dhcp6 selinux=0",
    )
    pub = publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "work", s3_settings=FAST)
    assert keys_in(s3_env, bucket) == [
        f"compute/base/compute/{t}/{n}"
        for t in ("latest", "v1")
        for n in ("initramfs.img", "rootfs.squashfs", "vmlinuz")
    ]
    assert {o.action for o in pub.objects if o.tag == "latest"} == {"copied"}
    cfg = boot_config(spec, pub, "http://s3.public:9000/")
    assert [e["name"] for e in cfg] == ["compute-v1", "compute-latest"]
    e = cfg[0]
    assert e["kernel"] == f"http://s3.public:9000/{bucket}/compute/base/compute/v1/vmlinuz"
    assert e["initrd"] == f"http://s3.public:9000/{bucket}/compute/base/compute/v1/initramfs.img"
    assert e["params"] == (
        f"root=live:http://s3.public:9000/{bucket}/compute/base/compute/v1/rootfs.squashfs "
        "overlayroot=tmpfs overlayroot_cfgdisk=disabled console=ttyS0,115200 ip=dhcp6 selinux=0"
    )
    # Without a public URL the publish endpoint is used.
    assert boot_config(spec, pub)[0]["kernel"].startswith(f"{s3_env.endpoint}/{bucket}/")


def test_suse_initrd_key_and_rootfs_only(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    sles = 'NAME="SLES"\nVERSION_ID="15.5"\nID="sles"\n'
    root = make_rootfs(tmp_path / "suse", {"5.14.21-150500.55.39-default": SUSE}, os_release=sles)
    spec = spec_for(s3_env.endpoint, bucket, s3_prefix="")
    publish_artifacts(spec, KEY, root, Runner("c"), tmp_path / "w", s3_settings=FAST)
    assert "efi-images/initrd-5.14.21-150500.55.39-default" in keys_in(s3_env, bucket)

    bucket2 = s3_env.make_bucket()
    bare = make_rootfs(tmp_path / "bare")  # no kernel at all
    with pytest.raises(PublishError, match="no kernel"):
        publish_artifacts(
            spec_for(s3_env.endpoint, bucket2), KEY, bare, Runner("c"), tmp_path / "w", s3_settings=FAST
        )
    assert keys_in(s3_env, bucket2) == []
    ro = spec_for(s3_env.endpoint, bucket2, rootfs_only=True)
    pub = publish_artifacts(ro, KEY, bare, Runner("c"), tmp_path / "w", s3_settings=FAST)
    assert keys_in(s3_env, bucket2) == ["compute/base/rocky9.6-compute-v1"] and pub.kver is None
    assert boot_config(ro, pub) == []
    assert s3_artifacts_present(S3Index(settings=FAST), ro, KEY) is True


def test_publish_dir_is_atomic_and_linked(s3_env: S3Server, rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "pub"
    spec = spec_for(None, "unused", publish_s3=None, publish_dir=out, publish_tags=("v1", "latest"))
    assert dir_artifacts_present(spec, KEY) is False
    pub = publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "work")
    v1, latest = out / "compute/v1", out / "compute/latest"
    assert sorted(p.name for p in v1.iterdir()) == [
        "initramfs.img",
        "manifest.json",
        "rootfs.squashfs",
        "vmlinuz",
    ]
    assert (v1 / "rootfs.squashfs").stat().st_ino == (
        latest / "rootfs.squashfs"
    ).stat().st_ino  # one copy on disk
    manifest = json.loads((latest / "manifest.json").read_text())
    assert manifest["key"] == KEY and manifest["kver"] == KVER and manifest["tag"] == "latest"
    assert manifest["files"]["rootfs.squashfs"]["sha256"] == pub.squashfs_sha256
    assert file_sha256(latest / "rootfs.squashfs") == pub.squashfs_sha256  # hashed here, not reported
    assert (v1 / "vmlinuz").read_bytes() == (rootfs / f"boot/vmlinuz-{KVER}").read_bytes()
    assert dir_artifacts_present(spec, KEY) is True
    assert dir_artifacts_present(spec, "b" * 64) is False
    # Same build again: unchanged. A new build replaces the directory in one swap, leaving no temp dirs.
    assert {
        o.action for o in publish_artifacts(spec, KEY, rootfs, Runner("c"), tmp_path / "work").objects
    } == {"unchanged"}
    (rootfs / "etc/hostname").write_text("changed\n")
    publish_artifacts(spec, "b" * 64, rootfs, Runner("c"), tmp_path / "work")
    assert json.loads((v1 / "manifest.json").read_text())["key"] == "b" * 64
    assert sorted(p.name for p in (out / "compute").iterdir()) == ["latest", "v1"]


# --------------------------------------------------------------------------- the index


def test_index_answers_many_layers_with_one_listing(s3_env: S3Server, rootfs: Path, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    specs = [
        spec_for(s3_env.endpoint, bucket, name=f"layer{i}", s3_prefix="", publish_tags=("v1", "v2"))
        for i in range(4)
    ]
    for i, spec in enumerate(specs[:3]):
        publish_artifacts(spec, f"{i}" * 64, rootfs, Runner(spec.name), tmp_path / "w", s3_settings=FAST)
    index = S3Index(settings=FAST)
    assert [s3_artifacts_present(index, s, f"{i}" * 64) for i, s in enumerate(specs)] == [
        True,
        True,
        True,
        False,
    ]
    listing_and_heads = index.request_count
    # One listing of the bucket (the prefix is '', which also covers efi-images/), one HEAD per SquashFS.
    assert listing_and_heads == 1 + 3 * 2
    # Asking again, or for another key, costs nothing more.
    assert s3_artifacts_present(index, specs[0], "f" * 64) is False
    assert s3_artifacts_present(index, specs[1], "1" * 64, ["v2"]) is True
    assert index.request_count == listing_and_heads
    found = find_published(index, specs[0], "0" * 64, ["v1"])
    assert found is not None and found["v1"].rootfs == "rocky9.6-layer0-v1"

    # A boot file replaced by other content makes the set incomplete.
    s3_env.client().put_object(Bucket=bucket, Key=f"efi-images/vmlinuz-{KVER}", Body=b"other")
    assert s3_artifacts_present(S3Index(settings=FAST), specs[0], "0" * 64) is False


def test_prefetch_asks_s3_beside_the_registry(s3_env: S3Server, rootfs: Path, tmp_path: Path) -> None:
    """`LiveInventory.prefetch` lists each S3 target and reads its SquashFS objects' metadata in its
    thread pool: the plan's S3 answers afterwards cost no request and equal a cold index's."""
    from imagegraph.inventory import LiveInventory, Presence, s3_answers

    bucket = s3_env.make_bucket()
    specs = [
        spec_for(s3_env.endpoint, bucket, name=f"layer{i}", s3_prefix="", publish_tags=("v1", "v2"))
        for i in range(3)
    ]
    for i, spec in enumerate(specs[:2]):
        publish_artifacts(spec, f"{i}" * 64, rootfs, Runner(spec.name), tmp_path / "w", s3_settings=FAST)
    inv = LiveInventory()
    inv.prefetch(specs)
    index = inv._s3
    assert index is not None
    assert index.request_count == 1 + 2 * 2  # one listing, one HEAD per published SquashFS
    got = [inv.artifacts(s, f"{i}" * 64, "s3") for i, s in enumerate(specs)]
    assert index.request_count == 1 + 2 * 2
    assert got == [s3_answers(S3Index(), s, f"{i}" * 64) for i, s in enumerate(specs)]
    assert [a["v2"].presence for a in got] == [Presence.PRESENT, Presence.PRESENT, Presence.ABSENT]
    # Without S3 targets the prefetch makes no S3 index (and loads no S3 client).
    plain = LiveInventory()
    plain.prefetch([replace(specs[0], publish_s3=None)])
    assert plain._s3 is None


def _overwrite_keeping_metadata(s3: S3Server, bucket: str, key: str, byte: bytes) -> None:
    """Other bytes of the same size under `key`, with its user metadata copied over (a hand copy)."""
    head = s3.client().head_object(Bucket=bucket, Key=key)
    s3.client().put_object(
        Bucket=bucket, Key=key, Body=byte * head["ContentLength"], Metadata=head["Metadata"]
    )


@pytest.mark.parametrize("settings", [FAST, SMALL_PARTS], ids=["one-put", "multipart"])
def test_a_boot_file_counts_for_the_bytes_it_holds_not_its_metadata(
    s3_env: S3Server, tmp_path: Path, settings: S3Settings
) -> None:
    """A kernel replaced under the same name and metadata: the plan's answer says so, and the next
    publish sends the kernel again (its ETag, not its metadata, decides); unchanged, it is not sent."""
    from imagegraph.inventory import Presence, s3_answers

    root = make_rootfs(tmp_path / "root", {KVER: EL})
    (root / f"boot/vmlinuz-{KVER}").write_bytes(os.urandom(7 * MiB))  # two 5 MiB parts when multipart
    bucket = s3_env.make_bucket()
    spec = spec_for(s3_env.endpoint, bucket)
    first = publish_artifacts(spec, KEY, root, Runner("compute"), tmp_path / "w", s3_settings=settings)
    kernel = first.find("s3", "v1", "kernel")
    assert kernel is not None and kernel.key is not None
    assert s3_answers(S3Index(settings=FAST), spec, KEY)["v1"].present

    _overwrite_keeping_metadata(s3_env, bucket, kernel.key, b"y")
    answer = s3_answers(S3Index(settings=FAST), spec, KEY)["v1"]
    assert answer.presence == Presence.ABSENT and answer.holds == KEY
    assert answer.why == "its kernel or initramfs was replaced after it was published"

    again = publish_artifacts(spec, KEY, root, Runner("compute"), tmp_path / "w", s3_settings=settings)
    sent = again.find("s3", "v1", "kernel")
    assert sent is not None and sent.action == "uploaded"
    assert (
        stored_sha256(s3_env, bucket, kernel.key)
        == kernel.sha256
        == file_sha256(root / f"boot/vmlinuz-{KVER}")
    )
    assert s3_answers(S3Index(settings=FAST), spec, KEY)["v1"].present
    # Unchanged: its ETag is the one these bytes get, so nothing is sent again.
    third = publish_artifacts(spec, KEY, root, Runner("compute"), tmp_path / "w", s3_settings=settings)
    assert {o.role: o.action for o in third.objects if o.role != "sbom"} == {
        "kernel": "unchanged",
        "initramfs": "unchanged",
        "rootfs": "unchanged",
    }


def test_answers_say_what_is_wrong_with_what_is_there(s3_env: S3Server, rootfs: Path, tmp_path: Path) -> None:
    from imagegraph.inventory import ABSENT, Answer, Presence, s3_answers

    bucket = s3_env.make_bucket()
    spec = spec_for(s3_env.endpoint, bucket, publish_tags=("v1", "v2"))
    publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "w", s3_settings=FAST)
    rootfs_key = find_published(S3Index(settings=FAST), spec, KEY, ["v1"])["v1"].rootfs

    def answers(s: LayerSpec = spec, key: str = KEY) -> dict[str, Answer]:
        return s3_answers(S3Index(settings=FAST), s, key)

    other = replace(spec, squashfs=replace(spec.squashfs, compression="zstd"))
    assert answers(other)["v1"] == Answer(
        Presence.ABSENT, holds=KEY, why="published with other SquashFS or kernel options"
    )
    assert answers(key="b" * 64)["v1"] == Answer(Presence.ABSENT, holds=KEY)  # another build's
    s3_env.client().put_object(Bucket=bucket, Key=rootfs_key, Body=b"not ours")
    assert answers()["v1"] == Answer(Presence.ABSENT, why="the object there was not written by imagegraph")
    assert answers()["v2"].present
    s3_env.client().delete_object(Bucket=bucket, Key=rootfs_key)
    assert answers()["v1"] == ABSENT


def test_index_versioned_and_unreachable(s3_env: S3Server, rootfs: Path, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    spec = spec_for(s3_env.endpoint, bucket, s3_layout="versioned")
    publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "w", s3_settings=FAST)
    assert s3_artifacts_present(S3Index(settings=FAST), spec, KEY) is True
    assert s3_artifacts_present(S3Index(settings=FAST), spec, KEY, ["v2"]) is False
    # Other SquashFS options make the same key's artifacts stale, for any host that asks S3.
    other = replace(spec, squashfs=replace(spec.squashfs, compression="zstd"))
    assert s3_artifacts_present(S3Index(settings=FAST), other, KEY) is False
    publish_artifacts(other, KEY, rootfs, Runner("compute"), tmp_path / "w", s3_settings=FAST)
    assert s3_artifacts_present(S3Index(settings=FAST), other, KEY) is True
    missing_bucket = replace(spec, s3_bucket="no-such-bucket-here")
    assert s3_artifacts_present(S3Index(settings=FAST), missing_bucket, KEY) is False

    dead = spec_for("http://127.0.0.1:9", bucket)  # nothing listens on the discard port
    index = S3Index(settings=FAST)
    start = time.monotonic()
    assert s3_artifacts_present(index, dead, KEY) is None
    assert s3_artifacts_present(index, replace(dead, name="other"), KEY) is None  # remembered: no second wait
    assert index.request_count <= 2 and time.monotonic() - start < 10
    assert "unreachable" in (index.unreachable("http://127.0.0.1:9/") or "")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (SMALL_PARTS, ["HeadObject", "CopyObject"]),  # multipart uploads, yet one request per copy
        (
            replace(SMALL_PARTS, copy_threshold=5 * MiB, multipart_chunksize=5 * MiB),
            [
                "HeadObject",
                "CreateMultipartUpload",
                "UploadPartCopy",
                "UploadPartCopy",
                "CompleteMultipartUpload",
            ],
        ),
    ],
    ids=["one-copyobject", "multipart-above-threshold"],
)
def test_copies_are_one_request_below_the_copy_threshold(
    s3_env: S3Server, tmp_path: Path, settings: S3Settings, expected: list[str]
) -> None:
    bucket = s3_env.make_bucket()
    f = tmp_path / "big"
    f.write_bytes(os.urandom(6 * MiB))
    target = S3Target(s3_env.endpoint, bucket, settings=settings)
    up = target.upload(f, "src", {"imagegraph-key": KEY})
    calls: list[str] = []
    target.client.meta.events.register("before-call.s3", lambda model, **kw: calls.append(model.name))
    r = target.copy(
        "src", "dest", {"imagegraph-key": KEY, "imagegraph-role": "rootfs"}, up.sha256, f.stat().st_size
    )
    assert calls == [*expected, "HeadObject"]  # the last: the read-back of the copy
    assert r.action == "copied"
    assert meta(s3_env, bucket, "dest") == {
        "imagegraph-key": KEY,
        "imagegraph-role": "rootfs",
        "sha256": up.sha256,
    }
    assert stored_sha256(s3_env, bucket, "dest") == file_sha256(f)
    assert s3_env.client().list_multipart_uploads(Bucket=bucket).get("Uploads") is None


# ------------------------------------------------------------------- clients made ahead


def _recording_make_client(
    monkeypatch: pytest.MonkeyPatch, fail_first: bool = False
) -> list[tuple[str, object]]:
    """Wraps s3.make_client: (thread name, client or the exception) per call."""
    made: list[tuple[str, object]] = []
    real = s3mod.make_client

    def make(endpoint, settings=None):
        name = threading.current_thread().name
        if fail_first and not made:
            exc = RuntimeError("no client this time")
            made.append((name, exc))
            raise exc
        client = real(endpoint, settings)
        made.append((name, client))
        return client

    monkeypatch.setattr(s3mod, "make_client", make)
    return made


def test_a_client_made_ahead_serves_its_target_alone(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_env.make_bucket()
    made = _recording_make_client(monkeypatch)
    ahead = s3mod.ClientAhead(s3_env.endpoint + "/", FAST)
    first = S3Target(s3_env.endpoint, bucket, settings=FAST, client=ahead.take(s3_env.endpoint, FAST))
    second = S3Target(s3_env.endpoint, bucket, settings=FAST)
    assert [name for name, _ in made] == ["s3-client-ahead", "MainThread"]
    assert first.client is made[0][1] and second.client is made[1][1]
    # Each target keeps its own event handlers: one's multipart uploads are not the other's to abort.
    upload = second.client.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    assert second._started == {"k": {upload}} and first._started == {}
    second._abort_started("k")
    assert s3_env.client().list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    f = tmp_path / "f"
    f.write_bytes(b"x" * 1000)
    assert first.upload(f, "via-ahead", {"imagegraph-key": KEY}).action == "uploaded"
    assert meta(s3_env, bucket, "via-ahead")["imagegraph-key"] == KEY


def test_a_client_made_ahead_is_not_given_for_other_settings_or_endpoints(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _recording_make_client(monkeypatch)
    ahead = s3mod.ClientAhead(s3_env.endpoint, FAST)
    assert ahead.take(s3_env.endpoint, replace(FAST, read_timeout=11)) is None
    assert ahead.take(s3_env.proxy_endpoint, FAST) is None
    assert ahead.take(s3_env.endpoint, FAST) is made[0][1]
    assert s3mod.ClientAhead(s3_env.endpoint).take(s3_env.endpoint, S3Settings()) is made[1][1]


def test_a_failed_client_made_ahead_leaves_the_target_to_make_its_own(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_env.make_bucket()
    made = _recording_make_client(monkeypatch, fail_first=True)
    ahead = s3mod.ClientAhead(s3_env.endpoint, FAST)
    target = S3Target(s3_env.endpoint, bucket, settings=FAST, client=ahead.take(s3_env.endpoint, FAST))
    assert [name for name, _ in made] == ["s3-client-ahead", "MainThread"]
    assert target.client is made[1][1]
    target.check_bucket()


def test_the_upload_after_mksquashfs_uses_the_client_made_beside_it(
    s3_env: S3Server, rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_env.make_bucket()
    made = _recording_make_client(monkeypatch)
    spec = spec_for(s3_env.endpoint, bucket, publish_tags=("v1", "latest"))
    pub = publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "work", s3_settings=FAST)
    # One client for the whole publication, made while mksquashfs ran.
    assert [name for name, _ in made] == ["s3-client-ahead"]
    assert [(o.role, o.tag, o.action) for o in pub.objects if o.role == "rootfs"] == [
        ("rootfs", "v1", "uploaded"),
        ("rootfs", "latest", "copied"),
    ]
    assert stored_sha256(s3_env, bucket, "compute/base/rocky9.6-compute-latest") == pub.squashfs_sha256


# ------------------------------------------------------------------------------ faults


def test_dropped_connections_are_retried(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    f = tmp_path / "big"
    f.write_bytes(os.urandom(6 * MiB))
    s3_env.proxy.reset_next(2, min_bytes=MiB)  # the next two big requests are cut off
    target = S3Target(s3_env.proxy_endpoint, bucket, settings=SMALL_PARTS)
    r = target.upload(f, "retried", {"imagegraph-key": KEY})
    assert s3_env.proxy.resets == 2
    assert meta(s3_env, bucket, "retried")["sha256"] == r.sha256
    assert stored_sha256(s3_env, bucket, "retried") == file_sha256(f)  # cut-off parts left no damage
    assert s3_env.client().list_multipart_uploads(Bucket=bucket).get("Uploads") is None


def test_connection_dropped_forever_leaves_nothing(
    s3_env: S3Server, tmp_path: Path, captured_logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = s3_env.make_bucket()
    f = tmp_path / "big"
    f.write_bytes(os.urandom(11 * MiB))
    s3_env.proxy.reset_always(min_bytes=MiB)  # parts never arrive; create/abort/list still pass
    target = S3Target(s3_env.proxy_endpoint, bucket, layer="compute", settings=SMALL_PARTS)
    caplog.clear()  # from here on every log line must be free of credentials
    created: list[str] = []
    target.client.meta.events.register(
        "after-call.s3.CreateMultipartUpload", lambda parsed, **kw: created.append(parsed["UploadId"])
    )
    with pytest.raises(PublishError) as err:
        target.upload(f, "never/arrives", {"imagegraph-key": KEY})
    assert len(created) == 3  # one multipart upload per attempt, each begun and then aborted
    text = str(err.value)
    assert text.startswith("compute: publishing to s3 ") and "uploading never/arrives failed" in text
    assert "unreachable or failing" in text
    assert keys_in(s3_env, bucket) == []
    assert s3_env.client().list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    assert s3_env.proxy.resets >= 3

    s3_env.proxy.reset_always(min_bytes=0)  # now nothing gets through at all
    with pytest.raises(PublishError, match="unreachable or failing"):
        S3Target(s3_env.proxy_endpoint, bucket, settings=FAST).check_bucket()
    logs = captured_logs.getvalue() + caplog.text
    assert "S3 request failed; retrying" in logs
    assert "Sending http request" in logs  # botocore's DEBUG output was captured, and redacted
    for secret in (S3_TEST_SECRET, S3_TEST_ACCESS):
        assert secret not in text and secret not in logs


def test_no_such_bucket_fails_at_once(
    s3_env: S3Server, rootfs: Path, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    spec = spec_for(s3_env.endpoint, "no-such-bucket-x")
    start = time.monotonic()
    with pytest.raises(PublishError) as err:
        publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "w", s3_settings=S3Settings())
    assert time.monotonic() - start < 3  # no retries, and before mksquashfs
    assert "bucket 'no-such-bucket-x' does not exist" in str(err.value)
    f = tmp_path / "small"
    f.write_bytes(b"x")
    with pytest.raises(PublishError, match="does not exist") as err2:
        S3Target(s3_env.endpoint, "no-such-bucket-x", settings=S3Settings()).upload(f, "k", {})
    for text in (str(err.value), str(err2.value), captured_logs.getvalue()):
        assert S3_TEST_SECRET not in text and S3_TEST_ACCESS not in text
    assert "S3 request failed" not in captured_logs.getvalue()


def test_endpoint_without_checksum_support(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that rejects SHA256 checksums gets the upload without them (and is remembered)."""
    import botocore.exceptions

    bucket = s3_env.make_bucket()
    f = tmp_path / "small"
    f.write_bytes(b"hello")
    target = S3Target(s3_env.endpoint + "/", bucket, settings=FAST)

    def reject(params, **kw):
        if "ChecksumAlgorithm" in params or params.get("headers", {}).get("x-amz-sdk-checksum-algorithm"):
            raise botocore.exceptions.ClientError(
                {
                    "Error": {"Code": "NotImplemented", "Message": "checksums"},
                    "ResponseMetadata": {"HTTPStatusCode": 501},
                },
                "PutObject",
            )

    target.client.meta.events.register("provide-client-params.s3.PutObject", reject)
    try:
        r = target.upload(f, "k", {"imagegraph-key": KEY})
        assert meta(s3_env, bucket, "k")["sha256"] == r.sha256 == stored_sha256(s3_env, bucket, "k")
        assert r.sha256 == hashlib.sha256(b"hello").hexdigest()
        assert target.endpoint in S3Target._no_checksum
    finally:
        S3Target._no_checksum.discard(target.endpoint)


def test_copy_to_an_endpoint_without_checksum_support(s3_env: S3Server, tmp_path: Path) -> None:
    """One CopyObject asks for a SHA256; a gateway rejecting that gets the copy without (remembered)."""
    import botocore.exceptions

    bucket = s3_env.make_bucket()
    f = tmp_path / "big"
    f.write_bytes(os.urandom(6 * MiB))
    # Uploaded without checksums, as such a gateway would have it (moto would carry a composite one over).
    up = S3Target(s3_env.endpoint, bucket, settings=replace(SMALL_PARTS, checksum=False)).upload(
        f, "src", {"imagegraph-key": KEY}
    )
    target = S3Target(s3_env.endpoint, bucket, settings=SMALL_PARTS)
    asked: list[bool] = []

    def reject(params, **kw):
        asked.append("ChecksumAlgorithm" in params)
        if "ChecksumAlgorithm" in params:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "InvalidArgument", "Message": "x-amz-checksum-algorithm"}}, "CopyObject"
            )

    target.client.meta.events.register("provide-client-params.s3.CopyObject", reject)
    try:
        r = target.copy("src", "dest", {"imagegraph-key": KEY}, up.sha256, f.stat().st_size)
        assert asked == [True, False] and r.action == "copied"
        assert target.endpoint in S3Target._no_checksum
        assert (
            stored_sha256(s3_env, bucket, "dest") == file_sha256(f) == meta(s3_env, bucket, "dest")["sha256"]
        )
    finally:
        S3Target._no_checksum.discard(target.endpoint)


def test_access_denied_fails_at_once_without_secrets(
    s3_auth_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured_logs: io.StringIO
) -> None:
    monkeypatch.setenv("S3_ACCESS", S3_TEST_ACCESS)
    monkeypatch.setenv("S3_SECRET", S3_TEST_SECRET)
    f = tmp_path / "small"
    f.write_bytes(b"x")
    start = time.monotonic()
    target = S3Target(s3_auth_server.endpoint, "boot-images", layer="compute", settings=S3Settings())
    with pytest.raises(PublishError) as err:
        target.check_bucket()
    with pytest.raises(PublishError) as err2:
        target.upload(f, "k", {})
    assert time.monotonic() - start < 3  # not retried
    for e in (err, err2):
        text = str(e.value)
        assert "access denied to bucket 'boot-images'" in text and "S3_ACCESS/S3_SECRET" in text
        assert S3_TEST_SECRET not in text and S3_TEST_ACCESS not in text
    assert S3_TEST_ACCESS not in captured_logs.getvalue()


def test_shared_boot_file_overwritten_by_another_layer(
    s3_env: S3Server, rootfs: Path, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    """image-builder keys are shared by layers with one prefix: detect the clash and restore our file."""
    bucket = s3_env.make_bucket()
    spec = spec_for(s3_env.endpoint, bucket)
    publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "w", s3_settings=FAST)
    kernel = f"efi-images/compute/base/vmlinuz-{KVER}"
    s3_env.client().put_object(
        Bucket=bucket,
        Key=kernel,
        Body=b"other kernel",
        Metadata={"imagegraph-key": "d" * 64, "sha256": "0" * 64},
    )
    assert s3_artifacts_present(S3Index(settings=FAST), spec, KEY) is False
    pub = publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "w", s3_settings=FAST)
    assert [(o.role, o.action) for o in pub.objects] == [
        ("kernel", "uploaded"),
        ("initramfs", "unchanged"),
        ("rootfs", "unchanged"),  # the restored kernel has its old ETag: the SquashFS's record holds
    ]
    assert "replacing a boot file another layer published" in captured_logs.getvalue()
    assert s3_artifacts_present(S3Index(settings=FAST), spec, KEY) is True

    # Another kernel for the same SquashFS: the SquashFS gets new metadata by a copy onto itself.
    older = replace(spec, kernel_version="5.14.0-70.el9.x86_64")
    pub = publish_artifacts(older, KEY, rootfs, Runner("compute"), tmp_path / "w", s3_settings=FAST)
    assert [(o.role, o.action) for o in pub.objects] == [
        ("kernel", "uploaded"),
        ("initramfs", "uploaded"),
        ("rootfs", "copied"),
    ]
    assert (
        meta(s3_env, bucket, "compute/base/rocky9.6-compute-v1")["imagegraph-kver"] == "5.14.0-70.el9.x86_64"
    )


def test_the_sessions_loader_lists_services_as_botocore_does() -> None:
    """The S3 session's loader answers "is the service there" without listing every service
    (bench/README.md), and otherwise as botocore's own: the same members, the same full list,
    the same error for an unknown service."""
    import botocore.exceptions
    import botocore.loaders

    from imagegraph.publish.s3 import _botocore_session

    session = _botocore_session()
    ours, theirs = session.get_component("data_loader"), botocore.loaders.Loader()
    assert type(ours) is not botocore.loaders.Loader  # the point of the test: ours is in use
    for type_name in ("service-2", "paginators-1", "waiters-2", "endpoint-rule-set-1"):
        full = theirs.list_available_services(type_name)
        names = ours.list_available_services(type_name)
        assert list(names) == full and len(names) == len(full)
        for name in ("s3", "sts", "s3control", "ec2", "no-such-service", "s3/2006-03-01"):
            assert (name in names) == (name in full), (type_name, name)
    with pytest.raises(botocore.exceptions.UnknownServiceError, match="Valid service names are: .*s3"):
        session.create_client("no-such-service", region_name="us-east-1")
    assert make_client("http://127.0.0.1:9").meta.service_model.service_name == "s3"


def test_boot_files_copied_slower_than_mksquashfs_are_all_there(
    s3_env: S3Server, rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boot files are copied beside mksquashfs, one after the other: a SquashFS made before the
    second copy started must not cancel it (a small image's mksquashfs is that quick)."""
    from imagegraph.publish import artifacts

    real = artifacts.copy_digested

    def slow(*args, **kw):
        time.sleep(0.5)
        return real(*args, **kw)

    monkeypatch.setattr(artifacts, "copy_digested", slow)
    bucket = s3_env.make_bucket()
    spec = spec_for(s3_env.endpoint, bucket)
    pub = publish_artifacts(spec, KEY, rootfs, Runner("compute"), tmp_path / "w", s3_settings=FAST)
    assert {o.role for o in pub.objects} >= {"kernel", "initramfs", "rootfs"}
    found = find_published(S3Index(settings=FAST), spec, KEY, ["v1"])["v1"]
    assert found.kernel and found.initramfs


def test_the_part_size_knob_sets_parts_and_the_etags_that_check_them(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IMAGEGRAPH_S3_PART_MIB: the upload's parts and the ETag a local copy predicts agree, so a
    publish still knows a boot file S3 already holds; values outside S3's limits are held to them."""
    for value, want in (("7", 7), ("1", 5), ("99999", 5 * 1024), ("lots", s3mod.DEFAULT_PART_MIB)):
        monkeypatch.setenv("IMAGEGRAPH_S3_PART_MIB", value)
        assert S3Settings().multipart_chunksize == S3Settings().multipart_threshold == want * MiB
    monkeypatch.setenv("IMAGEGRAPH_S3_PART_MIB", "5")
    settings = replace(S3Settings(), botocore_attempts=1, retry=FAST.retry)
    src = tmp_path / "initramfs"
    src.write_bytes(os.urandom(12 * MiB))
    digests = s3mod.copy_digested(src, tmp_path / "copy", settings)
    bucket = s3_env.make_bucket()
    result = S3Target(s3_env.endpoint, bucket, settings=settings).upload(src, "initramfs", {})
    assert result.etag.endswith("-3"), result.etag  # 5 + 5 + 2 MiB
    assert result.etag in digests.etags
    monkeypatch.setenv("IMAGEGRAPH_S3_PART_MIB", "6")  # other parts: the same bytes, another ETag
    assert result.etag not in s3mod.copy_digested(src, tmp_path / "copy2", S3Settings()).etags
