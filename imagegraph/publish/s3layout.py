"""Where a layer's boot artifacts live in S3, and whether a complete publication is there.

The read side of `artifacts.py`, for the planner, gc, promote and boot
tests: key names under each `s3_layout`, the options digest stored with the
rootfs object, and `find_published` over an `S3Index`. Nothing here makes
or uploads a file (that is `artifacts.py`, which loads the SquashFS, boot
file and upload machinery a plan does not need).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PublishError
from .dirlayout import INITRAMFS_NAME, ROOTFS_NAME, VMLINUZ_NAME
from .s3 import META_KEY, S3Index

LAYOUTS = ("image-builder", "versioned")


@dataclass(frozen=True)
class ArtifactKeys:
    """S3 keys of one tag's artifacts; kernel/initramfs are None for a rootfs-only layer."""

    rootfs: str
    kernel: str | None
    initramfs: str | None


def _os_string(os_id_version: str | tuple[str, str]) -> str:
    if isinstance(os_id_version, tuple):
        return "".join(os_id_version).lower()
    return os_id_version


def artifact_keys(
    spec: Any,
    tag: str,
    kver: str | None,
    os_id_version: str | tuple[str, str],
    *,
    initramfs_name: str | None = None,
) -> ArtifactKeys:
    """The S3 keys of one tag under `spec.s3_layout`.

    `os_id_version` is image-builder's OS string (`rocky9.6`, see
    `bootfiles.os_tag`) or an (ID, VERSION_ID) pair. `initramfs_name` is the
    initramfs's file name in the image (image-builder keys by it:
    `initrd-K` on SUSE); default `initramfs-<kver>.img`.
    """
    prefix = spec.s3_prefix or ""
    if spec.s3_layout == "versioned":
        base = f"{prefix}{spec.name}/{tag}/"
        if kver is None:
            return ArtifactKeys(base + ROOTFS_NAME, None, None)
        return ArtifactKeys(base + ROOTFS_NAME, base + VMLINUZ_NAME, base + INITRAMFS_NAME)
    if spec.s3_layout != "image-builder":
        raise PublishError(
            spec.name, "s3", f"unknown s3_layout '{spec.s3_layout}' (one of {', '.join(LAYOUTS)})"
        )
    rootfs = f"{prefix}{_os_string(os_id_version)}-{spec.name}-{tag}"
    if kver is None:
        return ArtifactKeys(rootfs, None, None)
    initrd = initramfs_name or f"initramfs-{kver}.img"
    return ArtifactKeys(rootfs, f"efi-images/{prefix}vmlinuz-{kver}", f"efi-images/{prefix}{initrd}")


META_OPTIONS = "imagegraph-options"


def artifact_options(spec: Any) -> str:
    """A short digest of what shapes the artifacts besides the image (SquashFS options, kernel choice).

    Stored with the rootfs object, so any host can tell that artifacts made
    with other options are stale, not only the host whose state recorded them.
    """
    sq = spec.squashfs
    doc = [sq.compression, sq.level, sq.block_size, spec.kernel_version, bool(spec.rootfs_only)]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


def find_published(
    index: S3Index, spec: Any, key: str, tags: Sequence[str]
) -> dict[str, ArtifactKeys | None] | None:
    """For each tag, the keys of a complete publication of layer `key`, or None if absent.

    One listing per prefix (cached in `index`) and one HEAD per SquashFS
    candidate. Returns None when S3 cannot be asked.
    """
    endpoint, bucket, prefix = spec.publish_s3, spec.s3_bucket, spec.s3_prefix or ""
    listing = index.objects(endpoint, bucket, prefix)
    if listing is None:
        return None
    boot_listing = listing
    if spec.s3_layout != "versioned" and not spec.rootfs_only:
        boot_listing = index.objects(endpoint, bucket, f"efi-images/{prefix}")
        if boot_listing is None:
            return None
    out: dict[str, ArtifactKeys | None] = {}
    for tag in tags:
        if spec.s3_layout == "versioned":
            candidates = [artifact_keys(spec, tag, "", "").rootfs]
        else:
            # The OS part of the key comes from the image; find it by the rest.
            suffix = f"-{spec.name}-{tag}"
            candidates = sorted(
                k
                for k in listing
                if k.startswith(prefix)
                and k.endswith(suffix)
                and "/" not in k[len(prefix) : len(k) - len(suffix)]
            )
        out[tag] = None
        for cand in candidates:
            if cand not in listing:
                continue
            meta = index.metadata(endpoint, bucket, cand)
            if meta is None:
                if index.unreachable(endpoint):
                    return None
                continue
            if meta.get(META_KEY) != key or meta.get(META_OPTIONS) != artifact_options(spec):
                continue
            boot_ok = True
            boot_keys: dict[str, str | None] = {"kernel": None, "initramfs": None}
            if not spec.rootfs_only:
                for role in ("kernel", "initramfs"):
                    k, etag = meta.get(f"imagegraph-{role}"), meta.get(f"imagegraph-{role}-etag")
                    info = boot_listing.get(k) if k else None
                    if info is None or info.etag != etag:
                        boot_ok = False
                    boot_keys[role] = k
            if boot_ok:
                out[tag] = ArtifactKeys(cand, boot_keys["kernel"], boot_keys["initramfs"])
                break
    return out


def rootfs_metadata(
    key: str, kver: str | None, os_str: str, boot: dict[str, tuple[str, str]], options: str
) -> dict[str, str]:
    """A SquashFS object's user metadata: its key, role, os, options and kver, and its boot files'
    keys and ETags (`boot`: role -> (key, etag))."""
    meta = {META_KEY: key, "imagegraph-role": "rootfs", "imagegraph-os": os_str, META_OPTIONS: options}
    if kver is not None:
        meta["imagegraph-kver"] = kver
    for role, (k, etag) in boot.items():
        meta[f"imagegraph-{role}"] = k
        meta[f"imagegraph-{role}-etag"] = etag
    return meta
