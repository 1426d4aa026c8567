"""The SquashFS streamed to S3 while mksquashfs writes it: real mksquashfs, moto's S3 server over HTTP."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.errors import PublishError
from imagegraph.publish.artifacts import make_artifacts, upload_artifacts
from imagegraph.publish.s3 import MiB, S3Target
from imagegraph.publish.s3stream import STREAM_PART, StreamedUpload, part_ranges
from imagegraph.runner import Cancelled, Runner, reset_cancel, terminate_all
from imagegraph.spec import SquashfsOptions

from .fixtures_servers import S3Server
from .publish_helpers import EL, make_rootfs
from .test_publish_s3 import KEY, SMALL_PARTS, file_sha256, keys_in, meta, spec_for, stored_sha256

KVER = "5.14.0-427.el9.x86_64"
STREAM = replace(SMALL_PARTS, multipart_threshold=MiB, stream=True)


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=1500 * 1024 * MiB))
def test_parts_cover_the_file_within_s3_limits(size: int) -> None:
    ranges = part_ranges(size)
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous
    assert all(end - start >= 5 * MiB for start, end in ranges[:-1])  # S3's minimum part but the last
    assert len(ranges) <= 10_000
    if size >= 2 * STREAM_PART:
        assert ranges[0] == (0, STREAM_PART)  # small parts first, so a few hundred MB stream at all


def test_a_rewritten_range_is_sent_again(s3_env: S3Server, tmp_path: Path) -> None:
    """Parts sent early, then rewritten (a duplicate's rewind, the superblock): the object is the final file."""
    bucket = s3_env.make_bucket()
    target = S3Target(s3_env.endpoint, bucket, layer="compute", settings=STREAM)
    up = StreamedUpload(target, "x/rootfs", part=5 * MiB)
    f = tmp_path / "growing"
    f.touch()
    with up.writing(f), open(f, "r+b") as out:
        for _ in range(5):  # 25 MiB, one part at a time: parts 2 and 3 go while the file grows
            out.write(os.urandom(5 * MiB))
            out.flush()
        wait_until(lambda: up.stats.sent_early >= 2)
        out.seek(6 * MiB)  # inside part 2, already sent
        out.write(b"rewound" * 1000)
        out.seek(0)  # the superblock, written last
        out.write(b"hsqs" + os.urandom(92))
        out.flush()
    assert up.finish(f) == up.staging_key
    assert up.stats.resent == 1  # part 2; part 1 was never sent early
    assert up.sha256 == file_sha256(f) and up.size == 25 * MiB
    assert stored_sha256(s3_env, bucket, up.staging_key) == file_sha256(f)
    assert target.incomplete_uploads() == []
    up.discard()
    assert keys_in(s3_env, bucket) == []


def test_small_file_keeps_the_plain_path(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    target = S3Target(s3_env.endpoint, bucket, settings=replace(STREAM, multipart_threshold=64 * MiB))
    up = StreamedUpload(target, "x/small")
    f = tmp_path / "small"
    f.touch()
    with up.writing(f):
        f.write_bytes(os.urandom(MiB))
        time.sleep(0.2)  # the follower looks at it a few times
    assert up.finish(f) == "" and not up.stats.streamed
    assert up.sha256 == file_sha256(f)
    assert target.incomplete_uploads() == [] and keys_in(s3_env, bucket) == []


def test_streamed_squashfs_is_mksquashfs_output(s3_env: S3Server, tmp_path: Path) -> None:
    """Real mksquashfs, duplicate files (it rewinds over them), two tags: each object is the file's bytes."""
    bucket = s3_env.make_bucket()
    root = make_rootfs(tmp_path / "root", {KVER: EL}, big_file=20 * MiB)
    dup = os.urandom(6 * MiB)
    for name in ("a", "b", "c"):
        (root / "usr/share" / name).write_bytes(dup)
    spec = spec_for(s3_env.endpoint, bucket, publish_tags=("v1", "latest"))
    runner = Runner("compute")
    made = make_artifacts(spec, KEY, root, runner, tmp_path / "w", s3_settings=STREAM)
    try:
        assert made.staged is not None and made.staged.stats.streamed
        sq = made.files["rootfs"].path
        # The same bytes as mksquashfs makes without streaming (keys and golden files rely on it).
        plain = make_artifacts(
            spec, KEY, root, runner, tmp_path / "p", s3_settings=replace(STREAM, stream=False)
        )
        assert file_sha256(plain.files["rootfs"].path) == file_sha256(sq) == made.files["rootfs"].sha256
        plain.remove()
        pub = upload_artifacts(made, spec, KEY, runner, s3_settings=STREAM)
    finally:
        made.remove()
    rootfs_objs = [o for o in pub.objects if o.role == "rootfs"]
    assert [o.action for o in rootfs_objs] == ["uploaded", "copied"]
    for o in rootfs_objs:
        assert stored_sha256(s3_env, bucket, o.key) == pub.squashfs_sha256
        m = meta(s3_env, bucket, o.key)
        assert m["imagegraph-key"] == KEY and m["sha256"] == pub.squashfs_sha256
        assert m["imagegraph-kernel"].endswith(KVER)
    head = s3_env.client().head_object(Bucket=bucket, Key=rootfs_objs[0].key, ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256")  # a transfer checksum, as the plain upload has
    assert not any(".staging-" in k for k in keys_in(s3_env, bucket))
    assert S3Target(s3_env.endpoint, bucket, settings=STREAM).incomplete_uploads() == []


def test_ctrl_c_mid_stream_leaves_nothing(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    root = make_rootfs(tmp_path / "root", {KVER: EL}, big_file=96 * MiB)
    spec = spec_for(s3_env.endpoint, bucket, squashfs=SquashfsOptions("xz", None))  # slow: time to cut in
    client = s3_env.client()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            make_artifacts(spec, KEY, root, Runner("compute"), tmp_path / "w", s3_settings=STREAM)
        except BaseException as exc:
            outcome.append(exc)

    def parts_sent() -> bool:
        ups = client.list_multipart_uploads(Bucket=bucket).get("Uploads") or []
        return bool(ups) and bool(
            client.list_parts(Bucket=bucket, Key=ups[0]["Key"], UploadId=ups[0]["UploadId"]).get("Parts")
        )

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_until(parts_sent)
        terminate_all(grace=2)  # what Ctrl-C does
        t.join(30)
    finally:
        reset_cancel()
    assert outcome and isinstance(outcome[0], Cancelled | PublishError), outcome
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    assert keys_in(s3_env, bucket) == []
    assert not list((tmp_path / "w").glob("*/*"))  # the half-written SquashFS is gone too


def test_a_gateway_refusing_the_stream_gets_the_plain_upload(s3_env: S3Server, tmp_path: Path) -> None:
    """Streaming that fails (here: SHA256 checksums refused) removes what it sent; the plain path publishes."""
    import botocore.exceptions

    bucket = s3_env.make_bucket()
    target = S3Target(s3_env.endpoint, bucket, layer="compute", settings=STREAM)

    def reject(params, **kw):
        if "ChecksumAlgorithm" in params or "ChecksumSHA256" in params:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "NotImplemented"}, "ResponseMetadata": {"HTTPStatusCode": 501}}, "X"
            )

    for op in ("CreateMultipartUpload", "UploadPart", "PutObject"):
        target.client.meta.events.register(f"provide-client-params.s3.{op}", reject)
    up = StreamedUpload(target, "x/rootfs", part=5 * MiB)
    f = tmp_path / "f"
    f.touch()
    try:
        with up.writing(f):
            f.write_bytes(os.urandom(12 * MiB))
            time.sleep(0.3)
        assert up.finish(f) == "" and not up.stats.streamed
        assert up.sha256 == file_sha256(f)
        r = target.upload(f, "x/rootfs", {"imagegraph-key": KEY}, up.sha256)
        assert stored_sha256(s3_env, bucket, "x/rootfs") == r.sha256 == up.sha256
    finally:
        S3Target._no_checksum.discard(target.endpoint)
    assert keys_in(s3_env, bucket) == ["x/rootfs"]
    assert target.incomplete_uploads() == []


def test_layers_sharing_boot_files_upload_them_once(s3_env: S3Server, tmp_path: Path) -> None:
    """image-builder's boot-file keys hold no layer name: two layers publishing at once upload them once."""
    bucket = s3_env.make_bucket()
    made, specs = [], []
    for name in ("compute", "debug"):
        root = make_rootfs(tmp_path / name, {KVER: EL})
        (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"K" * 3 * MiB)  # the same kernel in both
        spec = spec_for(s3_env.endpoint, bucket, name=name, s3_prefix="")
        specs.append(spec)
        made.append(make_artifacts(spec, KEY, root, Runner(name), tmp_path / "w", s3_settings=SMALL_PARTS))
    barrier = threading.Barrier(2)
    pubs: dict[str, object] = {}

    def publish(i: int) -> None:
        barrier.wait()
        pubs[specs[i].name] = upload_artifacts(
            made[i], specs[i], KEY, Runner(specs[i].name), s3_settings=SMALL_PARTS
        )

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for m in made:
        m.remove()
    kernel_actions = sorted(o.action for p in pubs.values() for o in p.objects if o.role == "kernel")
    assert kernel_actions == ["unchanged", "uploaded"]
    for name in ("compute", "debug"):
        rootfs = next(o for o in pubs[name].objects if o.role == "rootfs")
        kernel = next(o for o in pubs[name].objects if o.role == "kernel")
        m = meta(s3_env, bucket, rootfs.key)
        assert m["imagegraph-kernel"] == kernel.key
        assert m["imagegraph-kernel-etag"] == s3_env.client().head_object(Bucket=bucket, Key=kernel.key)[
            "ETag"
        ].strip('"')
