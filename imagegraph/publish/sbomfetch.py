"""What a host that did not build a key learns of it from its published targets.

A second host (a fresh state directory, a laptop, a CI job) computes a
layer's keys like any other, but its state holds no inventories or tag
records. `RemoteBuilds` asks the layer's targets instead:

- `inventory(layer, spec, key)`: the SBOM `up` published for the key
  (sbomfiles.py), read back into an `Inventory` (`sbom.inventory_from_sbom`,
  which checks that it describes that key). Sources in order: the registry
  (the key tag `ig-<key>` -> its manifest digest -> the artifacts referring
  to it, through the referrers API or the `sha256-<hex>` tag -> the CycloneDX
  artifact annotated with the key -> its one blob, digest-checked); a
  directory tag whose `manifest.json` names the key
  (`<tag>/sbom.cdx.json`); an S3 tag holding a complete publication of the
  key (the SBOM beside its SquashFS). The first found is recorded in the
  state (`record_inventory`), so a key is fetched once per state. When none
  has it, the inventory is `unknown` with the reason: a source that could
  not be asked (`registry unreachable: ...`) is said so, never taken as "no
  packages".
- `tag_key(spec, tag)`: the key a human tag holds: the registry tag's image
  config label `io.imagegraph.key` (for an image index, its member for this
  host's architecture), else a directory tag's manifest, else the
  `imagegraph-key` metadata of an S3 tag's SquashFS.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch import host_arch
from ..keytag import KEY_TAG_PREFIX, key_tag
from ..packages import Inventory, InventoryStatus
from ..reference import target_repository
from ..sbom import SBOM_MEDIA_TYPE, SbomError, inventory_from_sbom
from ..state import State
from .referrers import OCI_INDEX, referring
from .registry_client import RegistryClient, planning_client
from .registry_errors import RegistryError
from .s3 import S3Index
from .sbomfiles import SBOM_NAME, s3_sbom_key

KEY_RE = re.compile(re.escape(KEY_TAG_PREFIX) + "[0-9a-f]{64}")
KEY_LABEL = "io.imagegraph.key"
KEY_ANNOTATION = "io.imagegraph.key"


@dataclass
class Found:
    """One source's answer: the value, or why there is none (`unknown`: it could not be asked)."""

    value: Any = None
    unknown: str = ""  # why the source could not answer ("" = it answered)
    where: str = ""


@dataclass
class RemoteBuilds:
    """Asks a layer's publish targets about keys the state does not know (module docstring)."""

    state: State | None = None
    client: RegistryClient | None = None
    s3: S3Index | None = None
    tags: list[str] = field(default_factory=list)  # human tags to look under in directories and S3
    timeout: float = 5.0  # seconds to connect to a registry, and again to read its answer
    state_path: Path | None = None  # where fetched inventories are kept when `state` is read-only
    _writer: State | None = None  # opened on the first inventory to keep
    fetched: dict[str, str] = field(default_factory=dict)  # key -> where its SBOM came from

    def _registry(self, spec: Any) -> RegistryClient:
        if self.client is None:
            self.client = planning_client(self.timeout)  # as planning asks
        self.client.configure_for(spec)
        return self.client

    def _tags(self, spec: Any) -> list[str]:
        return list(dict.fromkeys([*spec.publish_tags, *self.tags]))

    # ----------------------------------------------------------- inventories

    def sbom(self, spec: Any, key: str) -> tuple[dict | None, str]:
        """The SBOM document published for `key` and where it is, else (None, why not)."""
        unknown: list[str] = []
        for source in (self._from_registry, self._from_dir, self._from_s3):
            found = source(spec, key)
            if found.value is not None:
                try:
                    inventory_from_sbom(found.value, key)
                except SbomError as exc:
                    unknown.append(f"{found.where}: {exc}")
                    continue
                return found.value, found.where
            if found.unknown:
                unknown.append(found.unknown)
        if unknown:
            return None, "; ".join(unknown)
        return (
            None,
            "no SBOM of this key on its registry, directory or S3 targets (not published, or removed)",
        )

    def inventory(self, layer: str, spec: Any, key: str) -> Inventory:
        """The key's inventory from its published SBOM, cached in the state; `unknown` with the reason."""
        for st in (self.state, self._writer):
            if st is not None and (blob := st.inventory_blob(key)) is not None:
                return Inventory.decompress(blob)
        doc, where = self.sbom(spec, key)
        if doc is None:
            return Inventory(InventoryStatus.UNKNOWN, reason=where)
        inv = inventory_from_sbom(doc, key)
        self.fetched[key] = where
        self._keep(layer, key, inv)
        return inv

    def _keep(self, layer: str, key: str, inv: Inventory) -> None:
        """Record a fetched inventory: in `state` when writable, else in `state_path`, opened (and
        created) only now, so a read-only command writes a state only when it learned something."""
        target = self.state if self.state is not None and not self.state.readonly else None
        if target is None and self.state_path is not None:
            if self._writer is None:
                self._writer = State(self.state_path)
            target = self._writer
        if target is not None:
            target.record_inventory(layer, key, inv)

    def _from_registry(self, spec: Any, key: str) -> Found:
        if not spec.publish_registry:
            return Found()
        client = self._registry(spec)
        repo = target_repository(spec).name
        ref = f"{repo}:{key_tag(key)}"
        try:
            digest = client.manifest_digest(ref)
            if digest is None:
                why = client.errors.get(ref, "not found")
                return Found(unknown="" if why == "not found" else f"{repo}: {why}")
            for m in referring(client, repo, digest):
                if m.get("artifactType") != SBOM_MEDIA_TYPE:
                    continue
                if (m.get("annotations") or {}).get(KEY_ANNOTATION) not in (None, key):
                    continue
                found = client.manifest(f"{repo}@{m['digest']}")
                if found is None:
                    continue
                layers = json.loads(found[0]).get("layers") or []
                if not layers:
                    continue
                blob = client.blob(repo, layers[0]["digest"])
                if blob is not None:
                    return Found(json.loads(blob), where=f"{repo}@{m['digest']}")
        except (RegistryError, ValueError, KeyError) as exc:
            return Found(unknown=f"{repo}: {exc}")
        return Found()

    def _from_dir(self, spec: Any, key: str) -> Found:
        if not spec.publish_dir:
            return Found()
        from .dirlayout import MANIFEST_NAME

        base = Path(spec.publish_dir) / spec.name
        for tag in self._tags(spec):
            d = base / tag
            try:
                if json.loads((d / MANIFEST_NAME).read_text()).get("key") != key:
                    continue
                return Found(json.loads((d / SBOM_NAME).read_text()), where=str(d / SBOM_NAME))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, AttributeError) as exc:
                return Found(unknown=f"{d}: {exc}")
        return Found()

    def _from_s3(self, spec: Any, key: str) -> Found:
        if not spec.publish_s3:
            return Found()
        from .s3layout import find_published

        self.s3 = self.s3 or S3Index()
        found = find_published(self.s3, spec, key, self._tags(spec))
        if found is None:
            return Found(
                unknown=self.s3.unreachable(spec.publish_s3) or f"S3 {spec.publish_s3} did not answer"
            )
        for keys in found.values():
            if keys is None:
                continue
            k = s3_sbom_key(spec, keys.rootfs)
            try:
                body = self.s3.client(spec.publish_s3).get_object(Bucket=spec.s3_bucket, Key=k)["Body"].read()
                return Found(json.loads(body), where=f"s3://{spec.s3_bucket}/{k}")
            except Exception as exc:  # noqa: BLE001 - any failure to read is "cannot tell", said
                if "NoSuchKey" in str(exc) or "404" in str(exc):
                    continue
                return Found(unknown=f"s3://{spec.s3_bucket}/{k}: {exc}")
        return Found()

    # ------------------------------------------------------------------ tags

    def keys(self, spec: Any) -> set[str] | None:
        """The keys the layer's registry repository has key tags for; None when it cannot be asked."""
        if not spec.publish_registry:
            return set()
        try:
            tags = self._registry(spec).tags(target_repository(spec).name)
        except RegistryError:
            return None
        if tags is None:
            return None
        return {t.removeprefix(KEY_TAG_PREFIX) for t in tags if KEY_RE.fullmatch(t)}

    def tag_key(self, spec: Any, tag: str) -> Found:
        """The key `tag` holds on the layer's targets (module docstring); `unknown` when none could say."""
        unknown: list[str] = []
        for source in (self._tag_registry, self._tag_dir, self._tag_s3):
            found = source(spec, tag)
            if found.value:
                return found
            if found.unknown:
                unknown.append(found.unknown)
        return Found(unknown="; ".join(unknown))

    def _tag_registry(self, spec: Any, tag: str) -> Found:
        if not spec.publish_registry:
            return Found()
        client = self._registry(spec)
        repo = target_repository(spec).name
        ref = f"{repo}:{tag}"
        try:
            got = client.manifest(ref)
            if got is None:
                return Found()
            body, media_type = got
            doc = json.loads(body)
            if media_type == OCI_INDEX or "manifests" in doc:
                arch = host_arch().oci
                members = [m for m in doc.get("manifests", []) if "digest" in m]
                member = next(
                    (m for m in members if (m.get("platform") or {}).get("architecture") == arch),
                    members[0] if members else None,
                )
                if member is None:
                    return Found()
                got = client.manifest(f"{repo}@{member['digest']}")
                if got is None:
                    return Found()
                doc = json.loads(got[0])
            config = doc.get("config") or {}
            blob = client.blob(repo, config["digest"]) if config.get("digest") else None
            labels = (json.loads(blob).get("config") or {}).get("Labels") or {} if blob else {}
            return Found(labels.get(KEY_LABEL), where=ref)
        except RegistryError as exc:
            return Found(unknown=f"{repo}: {exc}")
        except (ValueError, KeyError, AttributeError):
            return Found()  # not an image we can read: it holds no key of ours

    def _tag_dir(self, spec: Any, tag: str) -> Found:
        if not spec.publish_dir:
            return Found()
        from .dirlayout import MANIFEST_NAME

        path = Path(spec.publish_dir) / spec.name / tag / MANIFEST_NAME
        try:
            return Found(json.loads(path.read_text()).get("key"), where=str(path))
        except FileNotFoundError:
            return Found()
        except (OSError, ValueError, AttributeError) as exc:
            return Found(unknown=f"{path}: {exc}")

    def _tag_s3(self, spec: Any, tag: str) -> Found:
        if not spec.publish_s3:
            return Found()
        from ..inventory import s3_tag_key

        self.s3 = self.s3 or S3Index()
        held = s3_tag_key(self.s3, spec, tag)
        if held is None and self.s3.unreachable(spec.publish_s3):
            return Found(unknown=self.s3.unreachable(spec.publish_s3) or "")
        return Found(held, where=f"s3://{spec.s3_bucket}")
