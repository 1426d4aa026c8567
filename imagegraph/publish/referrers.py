"""Attaching an artifact (the SBOM) to an image in a registry, as the OCI distribution spec 1.1 says.

The artifact is an OCI image manifest with `artifactType`, the empty config
(`application/vnd.oci.empty.v1+json`, `{}`), the document as its one layer
and a `subject` descriptor naming the image's manifest; it is pushed by its
digest. A registry with the referrers API answers that PUT with an
`OCI-Subject` header and lists the artifact under `GET
/v2/<name>/referrers/<digest>` itself. One without it (the distribution
registry 2.8 in Debian 12 is one) gets the spec's fallback: the tag schema,
an OCI image index under the tag `sha256-<hex of the image digest>` listing
every artifact that refers to that image; it is read, the new descriptor
added (or replaced, by digest), and written back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = b"{}"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
TITLE = "org.opencontainers.image.title"


class AttachedVia(StrEnum):
    REFERRERS_API = "referrers-api"
    TAG_SCHEMA = "tag-schema"


@dataclass(frozen=True)
class Attachment:
    repository: str
    subject: str  # the image manifest's digest
    digest: str  # the artifact manifest's digest
    via: AttachedVia
    tag: str | None = None  # the fallback tag, when via the tag schema

    def to_json(self) -> dict:
        return {**asdict(self), "via": str(self.via)}


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **extra,
    }


def fallback_tag(digest: str) -> str:
    """The tag schema's tag for referrers of `digest`: `sha256-<hex>`."""
    alg, _, hexpart = digest.partition(":")
    return f"{alg}-{hexpart}"


def attach(
    client: Any,
    repository: str,
    subject_digest: str,
    artifact_type: str,
    data: bytes,
    *,
    filename: str,
    annotations: dict[str, str] | None = None,
) -> Attachment:
    """Attach `data` (of `artifact_type`) to the manifest `subject_digest` of `repository`."""
    found = client.manifest(f"{repository}@{subject_digest}")
    if found is None:
        from ..errors import PublishError

        raise PublishError("", "registry", f"{repository}@{subject_digest} does not exist")
    subject_body, subject_type = found
    client.put_blob(repository, EMPTY_CONFIG)
    client.put_blob(repository, data)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": _descriptor(EMPTY_MEDIA_TYPE, EMPTY_CONFIG),
        "layers": [_descriptor(artifact_type, data, annotations={TITLE: filename})],
        "subject": {"mediaType": subject_type, "digest": subject_digest, "size": len(subject_body)},
        "annotations": dict(sorted((annotations or {}).items())),
    }
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    headers = client.put_manifest(repository, digest, body, OCI_MANIFEST)
    if {k.lower(): v for k, v in headers.items()}.get("oci-subject") == subject_digest:
        return Attachment(repository, subject_digest, digest, AttachedVia.REFERRERS_API)
    tag = fallback_tag(subject_digest)
    entry = _descriptor(OCI_MANIFEST, body, artifactType=artifact_type, annotations=manifest["annotations"])
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    current = client.manifest(f"{repository}:{tag}")
    if current is not None:
        try:
            index = json.loads(current[0])
        except ValueError:
            pass  # not an index we can read: start a new one
    kept = [m for m in index.get("manifests", []) if m.get("digest") != digest]
    index["manifests"] = [*kept, entry]
    client.put_manifest(repository, tag, json.dumps(index, sort_keys=True).encode(), OCI_INDEX)
    return Attachment(repository, subject_digest, digest, AttachedVia.TAG_SCHEMA, tag)


def referring(client: Any, repository: str, subject_digest: str) -> list[dict]:
    """The descriptors of artifacts referring to `subject_digest`: referrers API, else the tag schema."""
    index = client.referrers(repository, subject_digest)
    if index is None:
        found = client.manifest(f"{repository}:{fallback_tag(subject_digest)}")
        index = json.loads(found[0]) if found else {}
    return list(index.get("manifests", []))
