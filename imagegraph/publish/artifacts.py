"""Boot artifacts of a built layer: where they go, publishing them, and the boot config.

A layer that sets `publish_s3` and/or `publish_dir` is published as three
files made from its root filesystem: a SquashFS (made ONCE per build,
whatever the number of tags), the kernel and the initramfs.

Layouts of S3 keys (`s3_layout`):

- `image-builder` (default): exactly the keys OpenCHAMI's image-builder
  writes, so existing boot configurations keep working:
  `<s3_prefix><ID><VERSION_ID>-<name>-<tag>` for the SquashFS,
  `efi-images/<s3_prefix>vmlinuz-<kver>` and
  `efi-images/<s3_prefix><initramfs file name>` (`initramfs-<kver>.img`,
  `initrd-<kver>` on SUSE). The boot-file keys hold neither name nor tag:
  they are uploaded once per build, and two layers with the same prefix and
  kernel version share (and overwrite) them; a warning says so.
- `versioned`: `<s3_prefix><name>/<tag>/{rootfs.squashfs,vmlinuz,initramfs.img}`,
  one self-contained directory per tag.

Every object carries `imagegraph-key` and `sha256` metadata; the SquashFS also
records the keys and ETags of its boot files, and is uploaded LAST, so its
presence with the right key means the whole set is there (`find_published`,
used by `s3_artifacts_present`, checks exactly this with one listing).

Several tags: the SquashFS crosses the network once; further tags are
server-side copies (S3 CopyObject / UploadPartCopy), falling back to an
upload where a gateway lacks copies. Objects already holding the same content
and key are left alone, so adding a tag publishes only the new tag.

`publish_dir` writes `<publish_dir>/<name>/<tag>/` with `rootfs.squashfs`,
`vmlinuz`, `initramfs.img` and `manifest.json`, built in a temporary
directory beside it and swapped in with one atomic rename (renameat2
RENAME_EXCHANGE when the tag already exists), so a web server never serves a
mix of two builds. Tags after the first are hard links of the first.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..errors import PublishError
from ..log import get_logger
from ..runner import Cancelled, Runner, cancel_requested
from .bootfiles import BootFiles, find_boot_files, os_tag
from .dirlayout import INITRAMFS_NAME, MANIFEST_NAME, ROOTFS_NAME, VMLINUZ_NAME
from .s3 import (
    META_KEY,
    META_SHA256,
    ClientAhead,
    ObjectAction,
    S3Index,
    S3Settings,
    S3Target,
    check_bucket,
    copy_digested,
    object_url,
    sha256_file,
)
from .s3layout import artifact_keys, artifact_options, find_published, rootfs_metadata
from .s3stream import StreamedUpload
from .squashfs import fsync_path, make_squashfs

MANIFEST_FORMAT = 1
DEFAULT_BOOT_PARAMS = ("ip=dhcp", "overlayroot=tmpfs", "overlayroot_cfgdisk=disabled")


class ArtifactTarget(StrEnum):
    """Where boot artifacts go."""

    S3 = "s3"
    DIR = "dir"


class ArtifactRole(StrEnum):
    """What one published file is."""

    ROOTFS = "rootfs"
    KERNEL = "kernel"
    INITRAMFS = "initramfs"
    MANIFEST = "manifest"


@dataclass(frozen=True)
class PublishedObject:
    """One published file: where, what, and what publishing did to it."""

    target: ArtifactTarget
    role: ArtifactRole
    location: str  # object URL (path style) or file path
    sha256: str
    size: int
    tag: str
    action: ObjectAction
    bucket: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        # Records read back from the state store hold plain strings.
        object.__setattr__(self, "target", ArtifactTarget(self.target))
        object.__setattr__(self, "role", ArtifactRole(self.role))
        object.__setattr__(self, "action", ObjectAction(self.action))


@dataclass
class ArtifactPublication:
    """What `publish_artifacts` did, for the state store, the result document and boot_config."""

    key: str
    kver: str | None
    os: str
    objects: list[PublishedObject] = field(default_factory=list)
    squashfs_sha256: str = ""
    squashfs_size: int = 0

    def find(self, target: str, tag: str, role: str) -> PublishedObject | None:
        return next((o for o in self.objects if (o.target, o.tag, o.role) == (target, tag, role)), None)

    @property
    def tags(self) -> list[str]:
        return list(dict.fromkeys(o.tag for o in self.objects))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------- keys


# ------------------------------------------------------------------------- mounting


@contextmanager
def mounted_image(image: str, runner: Runner) -> Iterator[Path]:
    """Mount a local image read-write-able (a throwaway working container) and yield its root.

    The container is unmounted and removed whatever happens, even after
    cancellation. `--pull=never`: the image was just committed; contacting a
    registry here would be a bug.
    """
    from ..build.container import forget_owner, record_owner

    name = f"imagegraph-publish-{secrets.token_hex(6)}"
    created = False
    # Owned like a build container, so another run's stale-container clean-up leaves it alone.
    record_owner(name, runner.layer, "", "")
    try:
        runner.run(
            ["buildah", "from", "--pull=never", "--quiet", "--name", name, image], step="mount", capture=True
        )
        created = True
        path = runner.output(["buildah", "mount", name], step="mount")
        if not path or not Path(path).is_dir():
            raise PublishError(runner.layer, "mount", f"buildah mount of {image} gave no directory: {path!r}")
        yield Path(path)
    finally:
        # `buildah from` may fail after creating the container; rm by name is harmless when it did not.
        if created:
            runner.run(["buildah", "umount", name], step="unmount", check=False, cleanup=True)
        rc = runner.run(
            ["buildah", "rm", name],
            step="unmount",
            check=False,
            cleanup=True,
            loglevel="INFO" if created else "DEBUG",
        ).returncode
        if rc != 0 and created:
            get_logger(layer=runner.layer).warning("could not remove working container", container=name)
        else:
            forget_owner(name)


# ---------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class ArtifactFile:
    """A made artifact on local disk: where it is, its sha256 and size, and (boot files) the ETags
    S3 gives its bytes (`copy_digested`): an object with one of them holds these bytes."""

    path: Path
    sha256: str
    size: int
    etags: frozenset[str] = frozenset()


def _check_cancel(runner: Runner) -> None:
    if cancel_requested():
        raise Cancelled(f"{runner.layer or 'run'}: cancelled while publishing artifacts")


@dataclass
class MadeArtifacts:
    """A layer's SquashFS and boot files, made (`make_artifacts`) and not yet published.

    Everything lives in `scratch`, a directory of its own under the work dir
    (the kernel and initramfs copied out of the image, so the image need not
    stay mounted); `remove()` deletes it.
    """

    scratch: Path
    files: dict[str, ArtifactFile]
    pub: ArtifactPublication
    boot: BootFiles | None
    staged: StreamedUpload | None = None  # the SquashFS, already on S3 under a staging key
    client_ahead: ClientAhead | None = None  # for the first S3 upload (taken once)

    def paths(self) -> dict[str, Path]:
        return {role: f.path for role, f in self.files.items()}

    def remove(self) -> None:
        self.discard_staged()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def discard_staged(self) -> None:
        staged, self.staged = self.staged, None
        if staged is not None:
            staged.discard()


def make_artifacts(
    spec: Any,
    key: str,
    rootfs: Path,
    runner: Runner,
    workdir: Path,
    *,
    s3_settings: S3Settings | None = None,
    epoch: int | None = None,
    squashfs: bool = True,
) -> MadeArtifacts:
    """Pick the boot files and make the SquashFS of a mounted root, in a new directory under `workdir`.

    The S3 bucket is checked first (before minutes of mksquashfs, not
    after) when the layer publishes to S3. `squashfs=False` makes nothing
    (a layer without S3/dir targets); the result then holds kver and os only.
    Raises PublishError (or Cancelled); on failure nothing is left behind.
    """
    rootfs, workdir = Path(rootfs), Path(workdir)
    layer = spec.name
    log = get_logger(layer=layer)
    target: S3Target | None = None
    if spec.publish_s3 and squashfs:
        if (s3_settings or S3Settings()).stream:  # the stream uploads while mksquashfs writes
            target = S3Target(spec.publish_s3, spec.s3_bucket, layer=layer, settings=s3_settings)
            target.check_bucket()
        else:
            check_bucket(spec.publish_s3, spec.s3_bucket, layer=layer, settings=s3_settings)
    boot: BootFiles | None = None
    if not spec.rootfs_only:
        boot = find_boot_files(rootfs, spec.kernel_version, layer=layer)
    os_str = os_tag(rootfs)
    pub = ArtifactPublication(key=key, kver=boot.kver if boot else None, os=os_str)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="artifacts-", dir=workdir))
    made = MadeArtifacts(scratch, {}, pub, boot)
    if not squashfs:
        return made
    if spec.publish_s3 and target is None:
        # The upload after mksquashfs needs a client: made meanwhile, off the layer's critical path.
        made.client_ahead = ClientAhead(spec.publish_s3, s3_settings)
    try:
        _check_cancel(runner)
        runner.note("squashfs", f"making SquashFS of {rootfs} ({spec.squashfs.compression})")
        stream = None
        if target is not None and target.settings.stream:
            # Named after the first tag's key; publishing copies it onto every tag's key.
            first = artifact_keys(
                spec,
                spec.publish_tags[0],
                pub.kver,
                os_str,
                initramfs_name=boot.initramfs_name if boot else None,
            ).rootfs
            stream = StreamedUpload(target, first)
        # The boot files are copied out of the image (and hashed) while mksquashfs runs.
        copies = ThreadPoolExecutor(max_workers=1, thread_name_prefix="boot-files")
        boot_copies = (
            {
                role: (scratch / name, copies.submit(copy_digested, p, scratch / name, s3_settings))
                for role, p, name in (
                    ("kernel", boot.vmlinuz, VMLINUZ_NAME),
                    ("initramfs", boot.initramfs, INITRAMFS_NAME),
                )
            }
            if boot
            else {}
        )
        try:
            sq = make_squashfs(
                rootfs,
                scratch / ROOTFS_NAME,
                spec.squashfs,
                runner,
                epoch,
                while_writing=stream.writing if stream is not None else None,
            )
        except BaseException:
            copies.shutdown(wait=True, cancel_futures=True)  # a copy not started yet is not needed
            raise
        copies.shutdown(wait=True)  # both copies, however quick mksquashfs was
        if stream is not None:
            if stream.finish(sq):
                made.staged = stream
            made.files["rootfs"] = ArtifactFile(sq, stream.sha256, stream.size)
        else:
            made.files["rootfs"] = ArtifactFile(sq, sha256_file(sq), sq.stat().st_size)
        for role, (copy, done) in boot_copies.items():
            d = done.result()
            made.files[role] = ArtifactFile(copy, d.sha256, d.size, d.etags)
        pub.squashfs_sha256, pub.squashfs_size = made.files["rootfs"].sha256, made.files["rootfs"].size
        log.info(
            "artifacts ready",
            kver=pub.kver,
            os=os_str,
            squashfs_size=pub.squashfs_size,
            sha256=pub.squashfs_sha256,
            step="squashfs",
        )
    except BaseException:
        made.remove()
        raise
    return made


def upload_artifacts(
    made: MadeArtifacts,
    spec: Any,
    key: str,
    runner: Runner,
    tags: Sequence[str] | None = None,
    *,
    s3_settings: S3Settings | None = None,
) -> ArtifactPublication:
    """Publish made artifacts to `publish_dir` and/or S3 for each tag. Raises PublishError (or Cancelled)."""
    tags = list(tags or spec.publish_tags)
    pub = made.pub
    if spec.publish_dir:
        _check_cancel(runner)
        try:
            pub.objects += _publish_dir(spec, key, tags, made.files, pub, made.boot)
        except OSError as exc:
            # A full, read-only or vanished export: the host's fault, not imagegraph's; name the path.
            where = f" ({exc.filename})" if exc.filename else ""
            raise PublishError(spec.name, f"dir {spec.publish_dir}", f"{exc.strerror or exc}{where}") from exc
    if spec.publish_s3:
        ahead, made.client_ahead = made.client_ahead, None
        s3 = S3Target(
            spec.publish_s3,
            spec.s3_bucket,
            layer=spec.name,
            settings=s3_settings,
            client=ahead.take(spec.publish_s3, s3_settings) if ahead is not None else None,
        )
        staged = made.staged.staging_key if made.staged is not None else None
        try:
            pub.objects += _publish_s3(s3, spec, key, tags, made.files, pub, made.boot, runner, staged)
        finally:
            made.discard_staged()
    return pub


def publish_artifacts(
    spec: Any,
    key: str,
    rootfs: Path,
    runner: Runner,
    workdir: Path,
    tags: Sequence[str] | None = None,
    *,
    s3_settings: S3Settings | None = None,
    epoch: int | None = None,
    before_publish: Callable[[dict[str, Path]], None] | None = None,
) -> ArtifactPublication:
    """Make the SquashFS once, pick the boot files, publish to `publish_dir` and/or S3 for each tag.

    `make_artifacts` then `upload_artifacts`. `rootfs` is the image's mounted
    root (see `mounted_image`); `workdir` a scratch directory on a filesystem
    with room for the SquashFS (nothing is left in it). `before_publish` gets
    the made files by role (`rootfs`, `kernel`, `initramfs`) before anything
    is published; raising there publishes nothing. Raises PublishError (or Cancelled).
    """
    made = make_artifacts(
        spec,
        key,
        rootfs,
        runner,
        workdir,
        s3_settings=s3_settings,
        epoch=epoch,
        squashfs=bool(spec.publish_s3 or spec.publish_dir),
    )
    try:
        if not (spec.publish_s3 or spec.publish_dir):
            return made.pub
        if before_publish is not None:
            before_publish(made.paths())
        return upload_artifacts(made, spec, key, runner, tags, s3_settings=s3_settings)
    finally:
        made.remove()


_object_locks: dict[tuple[str, str, str], threading.Lock] = {}
_object_locks_lock = threading.Lock()


def _object_lock(endpoint: str, bucket: str, key: str) -> threading.Lock:
    """One lock per S3 object in this process (layers publishing the same boot-file key)."""
    with _object_locks_lock:
        return _object_locks.setdefault((endpoint, bucket, key), threading.Lock())


def _publish_s3(
    s3: S3Target,
    spec: Any,
    key: str,
    tags: list[str],
    files: dict[str, ArtifactFile],
    pub: ArtifactPublication,
    boot: BootFiles | None,
    runner: Runner,
    staged: str | None = None,
) -> list[PublishedObject]:
    """`staged`: a key holding the SquashFS already (streamed while mksquashfs wrote it)."""
    out: list[PublishedObject] = []
    done: dict[str, tuple[str, str]] = {}  # s3 key -> (sha256, etag) written or verified in this run
    first_of: dict[str, str] = {}  # role -> first key holding that role's content in this run
    log = get_logger(layer=spec.name)

    def put(role: str, obj_key: str, meta: dict[str, str], tag: str) -> str:
        f = files[role]
        if obj_key in done:  # image-builder boot files: one key for every tag
            sha, etag = done[obj_key]
            out.append(
                PublishedObject(
                    ArtifactTarget.S3,
                    role,
                    s3.url(obj_key),
                    sha,
                    f.size,
                    tag,
                    ObjectAction.UNCHANGED,
                    s3.bucket,
                    obj_key,
                )
            )
            return etag
        _check_cancel(runner)
        # Layers sharing image-builder's boot-file keys and publishing at once: one uploads, the next
        # finds the same bytes there (the race uploaded them twice, on the fresh chain's critical path).
        with _object_lock(s3.endpoint, s3.bucket, obj_key) if role != "rootfs" else nullcontext():
            return store(role, obj_key, meta, tag, f)

    def store(role: str, obj_key: str, meta: dict[str, str], tag: str, f: ArtifactFile) -> str:
        existing = s3.head(obj_key)
        want = {**meta, META_SHA256: f.sha256}
        # The metadata says what was written; a boot file's ETag says what is there (metadata can be
        # copied onto other bytes). A SquashFS is not hashed twice over: its metadata must match whole.
        holds_it = not f.etags or bool(existing and existing["etag"] in f.etags)
        if existing and existing["size"] == f.size and existing["metadata"].get(META_SHA256) == f.sha256:
            if holds_it if role != "rootfs" else existing["metadata"] == want:
                done[obj_key] = (f.sha256, existing["etag"])
                first_of.setdefault(role, obj_key)
                out.append(
                    PublishedObject(
                        ArtifactTarget.S3,
                        role,
                        s3.url(obj_key),
                        f.sha256,
                        f.size,
                        tag,
                        ObjectAction.UNCHANGED,
                        s3.bucket,
                        obj_key,
                    )
                )
                return existing["etag"]
        if existing and role != "rootfs" and existing["metadata"].get(META_KEY) not in (None, key):
            log.warning(
                "replacing a boot file another layer published under the same key; image-builder keys "
                "carry no layer name (use s3_layout: versioned or a distinct s3_prefix)",
                key=obj_key,
                other_layer_key=existing["metadata"].get(META_KEY),
                step="s3",
            )
        result = None
        same_content = bool(
            existing
            and holds_it
            and existing["size"] == f.size
            and existing["metadata"].get(META_SHA256) == f.sha256
        )
        # Same bytes, new metadata (e.g. its boot files were re-uploaded): copy the object onto itself.
        source = obj_key if same_content else first_of.get(role)
        from_staging = source is None and role == "rootfs" and staged is not None
        if from_staging:
            source = staged
        if source is not None:
            try:
                result = s3.copy(source, obj_key, meta, f.sha256, f.size, checksum=from_staging)
            except PublishError as exc:
                log.warning(
                    "server-side copy failed; uploading instead", key=obj_key, error=str(exc), step="s3"
                )
        if result is None:
            result = s3.upload(f.path, obj_key, meta, f.sha256)
        done[obj_key] = (f.sha256, result.etag)
        first_of.setdefault(role, obj_key)
        action = (
            ObjectAction.UPLOADED if from_staging and result.action == ObjectAction.COPIED else result.action
        )
        out.append(
            PublishedObject(
                ArtifactTarget.S3, role, result.url, f.sha256, f.size, tag, action, s3.bucket, obj_key
            )
        )
        return result.etag

    for tag in tags:
        keys = artifact_keys(
            spec, tag, pub.kver, pub.os, initramfs_name=boot.initramfs_name if boot else None
        )
        recorded: dict[str, tuple[str, str]] = {}
        for role, obj_key in (("kernel", keys.kernel), ("initramfs", keys.initramfs)):
            if obj_key is None:
                continue
            meta = {META_KEY: key, "imagegraph-role": role, "imagegraph-kver": pub.kver or ""}
            recorded[role] = (obj_key, put(role, obj_key, meta, tag))
        # The SquashFS last: its presence (with its boot files' ETags) marks the tag complete.
        put(
            "rootfs",
            keys.rootfs,
            rootfs_metadata(key, pub.kver, pub.os, recorded, artifact_options(spec)),
            tag,
        )
    return out


# ----------------------------------------------------------------------- publish_dir


def _manifest(
    spec: Any,
    key: str,
    tag: str,
    files: dict[str, ArtifactFile],
    pub: ArtifactPublication,
    boot: BootFiles | None,
) -> bytes:
    names = {"rootfs": ROOTFS_NAME, "kernel": VMLINUZ_NAME, "initramfs": INITRAMFS_NAME}
    doc = {
        "format": MANIFEST_FORMAT,
        "name": spec.name,
        "tag": tag,
        "key": key,
        "kver": pub.kver,
        "os": pub.os,
        "files": {names[r]: {"sha256": f.sha256, "size": f.size} for r, f in files.items()},
        "squashfs": {
            "compression": spec.squashfs.compression,
            "level": spec.squashfs.level,
            "block_size": spec.squashfs.block_size,
        },
    }
    if boot:
        doc["boot"] = {"vmlinuz": boot.vmlinuz.name, "initramfs": boot.initramfs.name}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _publish_dir(
    spec: Any,
    key: str,
    tags: list[str],
    files: dict[str, ArtifactFile],
    pub: ArtifactPublication,
    boot: BootFiles | None,
) -> list[PublishedObject]:
    names = {"rootfs": ROOTFS_NAME, "kernel": VMLINUZ_NAME, "initramfs": INITRAMFS_NAME}
    base = Path(spec.publish_dir) / spec.name
    out: list[PublishedObject] = []
    linkable: dict[str, Path] = {"rootfs": files["rootfs"].path}  # files we made (safe to hard-link)
    for tag in tags:
        final = base / tag
        manifest = _manifest(spec, key, tag, files, pub, boot)
        action = ObjectAction.WRITTEN
        if _dir_is_current(final, manifest, files, names):
            action = ObjectAction.UNCHANGED
        else:
            write_tag_dir(final, manifest, files, names, linkable)
        for role, f in files.items():
            out.append(
                PublishedObject(
                    ArtifactTarget.DIR, role, str(final / names[role]), f.sha256, f.size, tag, action
                )
            )
            linkable[role] = final / names[role]
        out.append(
            PublishedObject(
                ArtifactTarget.DIR,
                ArtifactRole.MANIFEST,
                str(final / MANIFEST_NAME),
                _sha(manifest),
                len(manifest),
                tag,
                action,
            )
        )
    return out


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _dir_is_current(
    final: Path, manifest: bytes, files: dict[str, ArtifactFile], names: dict[str, str]
) -> bool:
    try:
        if (final / MANIFEST_NAME).read_bytes() != manifest:
            return False
        return all((final / names[r]).stat().st_size == f.size for r, f in files.items())
    except OSError:
        return False


def write_tag_dir(
    final: Path,
    manifest: bytes,
    files: dict[str, ArtifactFile],
    names: dict[str, str],
    linkable: dict[str, Path],
) -> None:
    """Write `final` (one tag's directory) whole: the files (hard-linked from `linkable` where
    possible, else copied) under `names`, and `manifest`, into a new directory swapped into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)
        for role, f in files.items():
            _link_or_copy(linkable.get(role), f.path, tmp / names[role])
        (tmp / MANIFEST_NAME).write_bytes(manifest)
        os.chmod(tmp / MANIFEST_NAME, 0o644)
        for p in tmp.iterdir():
            fsync_path(p)
        fsync_path(tmp)
        _swap_into_place(tmp, final)
        fsync_path(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new dir (on failure) or the old one (after a swap)


def _link_or_copy(link_src: Path | None, src: Path, dest: Path) -> None:
    if link_src is not None:
        try:
            os.link(link_src, dest)
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o644)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False when the kernel/fs cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    r = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if r == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Put directory `tmp` at `final`; afterwards `tmp` holds the old content (or is gone)."""
    if not final.exists():
        try:
            os.rename(tmp, final)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if _exchange(tmp, final):
        return
    # No renameat2: a short window without `final` is the best POSIX offers.
    old = final.with_name(f".{final.name}.old-{secrets.token_hex(4)}")
    os.rename(final, old)
    os.rename(tmp, final)
    os.rename(old, tmp)


# ------------------------------------------------------------------------ boot config


def merge_params(defaults: list[str], extra: str | None) -> str:
    """Default kernel arguments, with the user's replacing any of the same name."""
    user = (extra or "").split()
    names = {u.split("=", 1)[0] for u in user}
    kept = [d for d in defaults if d.split("=", 1)[0] not in names]
    return " ".join(kept + user)


def boot_config(spec: Any, publication: ArtifactPublication, s3_public_url: str | None = None) -> list[dict]:
    """Entries for OpenCHAMI's boot service (`ochami boot config add -d @FILE -f yaml`), one per tag.

    URLs are path-style under `s3_public_url` (the address nodes reach the
    gateway by), defaulting to `spec.publish_s3`. Node selection (`macs`,
    `groups`, ...) is the site's to add. Rootfs-only publications have no
    kernel and give no entries.
    """
    base = s3_public_url or spec.publish_s3
    if not base:
        return []
    return _boot_entries(spec, publication, "s3", lambda o: object_url(base, o.bucket, o.key))


def dir_boot_config(spec: Any, publication: ArtifactPublication, base_url: str | None = None) -> list[dict]:
    """Boot entries for a publish_dir target: URLs under `base_url` (where a web server serves
    the directory), else `file://` URLs of the files themselves."""
    root = Path(spec.publish_dir).resolve() if spec.publish_dir else None

    def url(o: PublishedObject) -> str:
        path = Path(o.location).resolve()
        if base_url and root is not None and path.is_relative_to(root):
            return base_url.rstrip("/") + "/" + urllib.parse.quote(path.relative_to(root).as_posix())
        return path.as_uri()

    return _boot_entries(spec, publication, "dir", url)


def _boot_entries(
    spec: Any, publication: ArtifactPublication, target: str, url_of: Callable[[PublishedObject], str]
) -> list[dict]:
    entries = []
    for tag in publication.tags:
        objs = {r: publication.find(target, tag, r) for r in ("rootfs", "kernel", "initramfs")}
        if any(o is None or (target == "s3" and (o.key is None or o.bucket is None)) for o in objs.values()):
            continue

        def url(role: str, objs: dict = objs) -> str:
            return url_of(objs[role])

        params = merge_params([f"root=live:{url('rootfs')}", *DEFAULT_BOOT_PARAMS], spec.boot_params)
        entries.append(
            {
                "name": f"{spec.name.replace('/', '-')}-{tag}",
                "kernel": url("kernel"),
                "initrd": url("initramfs"),
                "params": params,
            }
        )
    return entries


def s3_artifacts_present(
    index: S3Index, spec: Any, key: str, tags: Sequence[str] | str | None = None
) -> bool | None:
    """True when every tag's rootfs (and boot files) of `spec` on S3 carry layer key `key`.

    None when S3 cannot be asked; True when the layer does not publish to S3.
    """
    if not spec.publish_s3:
        return True
    if isinstance(tags, str):
        tags = [tags]
    found = find_published(index, spec, key, tags or spec.publish_tags)
    if found is None:
        return None
    return all(v is not None for v in found.values())
