"""Publishing a key's SBOM (sbom.py) beside its artifacts and onto its registry image.

- directory target: `<publish_dir>/<name>/<tag>/sbom.cdx.json` in every tag
  directory that holds the key (written to a temporary name, then renamed);
- S3: beside each tag's SquashFS object, `<prefix><name>/<tag>/sbom.cdx.json`
  in the `versioned` layout, `<rootfs key>.cdx.json` in image-builder's, with
  `imagegraph-key` and `sha256` metadata;
- registry: an OCI artifact referring to the pushed image (referrers.py).

Where the objects are comes from the state's publication records of the key;
`publish_sbom` only touches targets named in `targets` (those published in
this run), and returns one entry per target for the result document.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..runner import Runner
from ..sbom import SBOM_FILE_SUFFIX, SBOM_MEDIA_TYPE
from ..state import State
from .s3 import META_KEY, S3Target

SBOM_NAME = "sbom" + SBOM_FILE_SUFFIX


def s3_sbom_key(spec: Any, rootfs_key: str) -> str:
    """The S3 key of the SBOM beside a SquashFS object."""
    if spec.s3_layout == "versioned":
        return rootfs_key.rsplit("/", 1)[0] + "/" + SBOM_NAME
    return rootfs_key + SBOM_FILE_SUFFIX


def _rootfs_objects(state: State, layer: str, key: str, target: str) -> list[dict]:
    rec = state.published(layer).get(target)
    if rec is None or rec.key != key:
        return []
    return [o for o in rec.locations if isinstance(o, dict) and o.get("role") == "rootfs"]


def ensure_inventory(state: State, layer: str, spec: Any, key: str, runner: Runner) -> bool:
    """Whether the state has `key`'s inventory, reading it from the key's local image if it lacks one.

    Keys built before imagegraph read inventories (or adopted from a registry
    and pulled) get theirs once, the first time they are published again.
    """
    if state.inventory_blob(key) is not None:
        return True
    from ..build import local_image_id, local_ref
    from ..packages import read_inventory
    from .artifacts import mounted_image

    image = local_image_id(local_ref(spec, key), runner)
    if image is None:
        return False
    with mounted_image(image, runner) as root:
        inv = read_inventory(root, runner)
    if inv.known:
        state.record_inventory(layer, key, inv)
    return inv.known


def publish_sbom(
    state: State,
    layer: str,
    spec: Any,
    key: str,
    body: bytes,
    targets: list[str],
    runner: Runner,
    workdir: Path,
) -> list[dict]:
    """Write `body` (the SBOM) to each of `targets` that holds `key` (module docstring)."""
    out: list[dict] = []
    if "dir" in targets:
        written = []
        for o in _rootfs_objects(state, layer, key, "dir"):
            dest = Path(o["location"]).parent / SBOM_NAME
            fd, tmp = tempfile.mkstemp(prefix=f".{SBOM_NAME}.", dir=dest.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
            written.append(str(dest))
        if written:
            runner.note("sbom", f"SBOM written to {', '.join(written)}")
            out.append({"target": "sbom-dir", "locations": written})
    if "s3" in targets and spec.publish_s3:
        objs = _rootfs_objects(state, layer, key, "s3")
        if objs:
            s3 = S3Target(spec.publish_s3, spec.s3_bucket, layer=spec.name)
            workdir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=workdir, prefix="sbom-", suffix=SBOM_FILE_SUFFIX) as f:
                f.write(body)
                f.flush()
                urls = []
                for o in objs:
                    k = s3_sbom_key(spec, o["key"])
                    meta = {META_KEY: key, "imagegraph-role": "sbom"}
                    urls.append(s3.upload(Path(f.name), k, meta).url)
            runner.note("sbom", f"SBOM uploaded to {', '.join(urls)}")
            out.append({"target": "sbom-s3", "locations": urls})
    if "registry" in targets and spec.publish_registry:
        rec = state.published(layer).get("registry")
        if rec is not None and rec.key == key and rec.digest:
            from ..reference import target_repository
            from .referrers import attach
            from .registry_client import RegistryClient

            client = RegistryClient()
            client.configure_for(spec)
            repo = target_repository(spec).name
            att = attach(
                client,
                repo,
                rec.digest,
                SBOM_MEDIA_TYPE,
                body,
                filename=SBOM_NAME,
                annotations={"io.imagegraph.key": key},
            )
            runner.note("sbom", f"SBOM attached to {repo}@{rec.digest} ({att.via}) as {att.digest}")
            out.append({"target": "sbom-registry", "locations": [f"{repo}@{att.digest}"], **att.to_json()})
    return out
