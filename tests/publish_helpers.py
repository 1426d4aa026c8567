"""Small root filesystems for the artifact-publishing tests (kernels, os-release, junk in /proc)."""

from __future__ import annotations

import os
from pathlib import Path

ROCKY_OS_RELEASE = 'NAME="Rocky Linux"\nVERSION="9.6 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.6"\n'


def make_rootfs(
    root: Path,
    kernels: dict[str, tuple[str, str | None]] | None = None,
    os_release: str | None = ROCKY_OS_RELEASE,
    big_file: int = 0,
) -> Path:
    """A small image tree.

    `kernels`: kver -> (vmlinuz path pattern or '' for none, initramfs pattern or None),
    patterns with `{k}`, e.g. {"5.14.0-427.el9.x86_64": ("boot/vmlinuz-{k}", "boot/initramfs-{k}.img")}.
    `big_file`: bytes of incompressible data in /usr/share/blob (for multipart uploads).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/modules").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    # EL9-style /lib -> usr/lib, so modules are found through a symlink inside the image.
    if not (root / "lib").exists():
        os.symlink("usr/lib", root / "lib")
    (root / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    os.chmod(root / "usr/bin/hello", 0o755)
    os.symlink("hello", root / "usr/bin/hi")
    (root / "etc/hostname").write_text("node\n")
    if os_release is not None:
        (root / "etc/os-release").write_text(os_release)
    for d in ("proc", "sys", "dev", "run", "boot", "var/empty/deep/tree"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # Junk a build may leave in mount points; it must not reach the SquashFS.
    (root / "proc/1").mkdir(exist_ok=True)
    (root / "proc/1/status").write_text("junk\n")
    (root / "dev/junk").write_text("junk\n")
    (root / "run/lock").mkdir(exist_ok=True)
    for kver, (vmlinuz, initrd) in (kernels or {}).items():
        (root / "usr/lib/modules" / kver / "kernel").mkdir(parents=True, exist_ok=True)
        (root / "usr/lib/modules" / kver / "modules.dep").write_text("")
        if vmlinuz:
            p = root / vmlinuz.format(k=kver)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"KERNEL " + kver.encode() + b"\n" * 64)
        if initrd:
            p = root / initrd.format(k=kver)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"INITRAMFS " + kver.encode() + b"\n" * 64)
    if big_file:
        (root / "usr/share").mkdir(parents=True, exist_ok=True)
        (root / "usr/share/blob").write_bytes(os.urandom(big_file))
    return root


EL = ("boot/vmlinuz-{k}", "boot/initramfs-{k}.img")
EL_MODULES = ("lib/modules/{k}/vmlinuz", "boot/initramfs-{k}.img")
SUSE = ("boot/vmlinuz-{k}", "boot/initrd-{k}")
DEBIAN = ("boot/vmlinuz-{k}", "boot/initrd.img-{k}")


def push_tiny_manifest(registry_url: str, repo: str, tag: str, marker: str = "") -> str:
    """An image manifest with no layers, pushed through the registry API (no buildah); its digest.

    `marker` goes into the config blob, so two calls with different markers give different digests.
    """
    import hashlib
    import json
    import urllib.request

    def req(method: str, url: str, data: bytes | None = None, ctype: str | None = None) -> dict:
        r = urllib.request.Request(url, data=data, method=method)
        if ctype:
            r.add_header("Content-Type", ctype)
        with urllib.request.urlopen(r, timeout=30) as resp:
            return dict(resp.headers)

    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "comment": marker,
        }
    ).encode()
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    loc = req("POST", f"{registry_url}/v2/{repo}/blobs/uploads/")["Location"]
    loc = loc if loc.startswith("http") else registry_url + loc
    req("PUT", f"{loc}{'&' if '?' in loc else '?'}digest={cdigest}", config, "application/octet-stream")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cdigest,
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    req(
        "PUT",
        f"{registry_url}/v2/{repo}/manifests/{tag}",
        manifest,
        "application/vnd.oci.image.manifest.v1+json",
    )
    return "sha256:" + hashlib.sha256(manifest).hexdigest()
