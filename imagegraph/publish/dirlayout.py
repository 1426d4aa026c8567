"""Where a directory target's publications live and how to tell one is complete.

`<publish_dir>/<name>/<tag>/` holds the SquashFS, kernel and initramfs under
fixed names and a manifest.json naming the key and each file's size and
sha256 (written by artifacts.py). The planner reads publications through
here without loading the S3 backend (boto3), which `artifacts` needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOTFS_NAME, VMLINUZ_NAME, INITRAMFS_NAME, MANIFEST_NAME = (
    "rootfs.squashfs",
    "vmlinuz",
    "initramfs.img",
    "manifest.json",
)


def dir_artifacts_present(spec: Any, key: str, tags: Sequence[str] | None = None) -> bool:
    """True when every tag's directory under `publish_dir` holds a complete publication of `key`.

    Reads each tag's manifest.json and checks the files it names by size (a
    hash of multi-GB files would make `plan` slow). True when the layer has
    no publish_dir.
    """
    if not spec.publish_dir:
        return True
    for tag in tags or spec.publish_tags:
        d = Path(spec.publish_dir) / spec.name / tag
        try:
            doc = json.loads((d / MANIFEST_NAME).read_text())
            if doc.get("key") != key:
                return False
            entries = doc.get("files") or {}
            if ROOTFS_NAME not in entries:
                return False
            for name, info in entries.items():
                if (d / name).stat().st_size != int(info["size"]):
                    return False
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
    return True
