"""A CycloneDX 1.5 JSON SBOM per built key, from its package inventory.

CycloneDX rather than SPDX: cyclonedx-python-lib (OWASP, maintained) builds
the document and ships the official JSON schemas with a validator, the purl
is a first-class field of every component, and the layer's key, its
parent's key and the image digest fit as typed `properties` of the
`metadata.component` (the image, `type: container`) without SPDX's
relationship and external-reference bookkeeping.

Each installed package is a component with its package URL
(`pkg:rpm/rocky/bash@5.1.8-9.el9?arch=x86_64&distro=rocky-9.6`,
`pkg:deb/debian/libc6@2.36-9?arch=amd64&distro=debian-12`; an rpm epoch is
the `epoch` qualifier), license (rpm) and source package. The image component
carries `imagegraph:layer`, `imagegraph:key`, `imagegraph:parent-key`,
`imagegraph:parent-digest`, `imagegraph:image-digest` (the registry
manifest digest when the key was pushed), `imagegraph:image-id` and
`imagegraph:spec`. The document is a function of the key and the image: its
serial number is a UUID5 of both, its timestamp the build's end.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import ImagegraphError
from .key import key_tag
from .packages import Inventory, InventoryStatus, Package, PackageFormat
from .state import State

SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
SBOM_FILE_SUFFIX = ".cdx.json"
SPEC_VERSION = "1.5"


class SbomError(ImagegraphError):
    """No SBOM can be made for the key (no inventory recorded, or it is unknown)."""


@dataclass(frozen=True)
class SbomSubject:
    """The build an SBOM describes."""

    layer: str
    name: str  # the image name (spec `name`)
    key: str
    parent_key: str | None = None
    parent_digest: str | None = None
    image_digest: str | None = None  # registry manifest digest
    image_id: str | None = None  # local image ID
    spec_file: str | None = None
    built_at: float | None = None
    repository: str | None = None  # registry repository, for the image's purl


def subject_of(state: State, layer: str, spec: Any, key: str, image_digest: str | None = None) -> SbomSubject:
    """What the state knows of the build of `key`: parent, image ID, build time, registry digest."""
    build = next(
        (b for b in state.builds(layer, limit=10000) if b["key"] == key and b["status"] == "ok"), None
    )
    parent: dict = {}
    if build and build.get("inputs"):
        parent = json.loads(build["inputs"]).get("parent") or {}
    reg = state.published(layer).get("registry")
    if image_digest is None and reg is not None and reg.key == key:
        image_digest = reg.digest
    repository = f"{spec.publish_registry}/{spec.name}" if getattr(spec, "publish_registry", None) else None
    return SbomSubject(
        layer=layer,
        name=spec.name,
        key=key,
        parent_key=(build or {}).get("parent_key") or parent.get("key"),
        parent_digest=parent.get("digest"),
        image_digest=image_digest,
        image_id=(build or {}).get("image_id"),
        spec_file=str(spec.path.name) if getattr(spec, "path", None) else None,
        built_at=(build or {}).get("finished"),
        repository=repository,
    )


def purl(pkg: Package, inv: Inventory) -> Any:
    """The package URL of an installed package (purl spec: rpm version-release, epoch qualifier)."""
    from packageurl import PackageURL

    qualifiers = {"arch": pkg.arch}
    if inv.os_id:
        qualifiers["distro"] = f"{inv.os_id}-{inv.os_version}" if inv.os_version else inv.os_id
    version = pkg.version
    if inv.format == PackageFormat.RPM and pkg.epoch:
        version = version.split(":", 1)[1]
        qualifiers["epoch"] = pkg.epoch
    ptype = "deb" if inv.format == PackageFormat.DEB else "rpm"
    namespace = inv.os_id or ("debian" if ptype == "deb" else None)
    return PackageURL(type=ptype, namespace=namespace, name=pkg.name, version=version, qualifiers=qualifiers)


def make_sbom(subject: SbomSubject, inv: Inventory) -> dict:
    """The CycloneDX 1.5 document (as JSON data) of one build; SbomError for an unknown inventory."""
    if not inv.known:
        raise SbomError(f"{subject.layer}: key {subject.key[:12]}: package inventory unknown: {inv.reason}")
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model import Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot5
    from packageurl import PackageURL

    props = {
        "imagegraph:layer": subject.layer,
        "imagegraph:key": subject.key,
        "imagegraph:parent-key": subject.parent_key,
        "imagegraph:parent-digest": subject.parent_digest,
        "imagegraph:image-digest": subject.image_digest,
        "imagegraph:image-id": subject.image_id,
        "imagegraph:spec": subject.spec_file,
        "imagegraph:package-format": str(inv.format),
    }
    image_purl = None
    if subject.image_digest and subject.repository:
        image_purl = PackageURL(
            type="oci",
            name=subject.name.rsplit("/", 1)[-1],
            version=subject.image_digest,
            qualifiers={"repository_url": subject.repository},
        )
    image = Component(
        type=ComponentType.CONTAINER,
        name=subject.name,
        version=key_tag(subject.key),
        bom_ref="image",
        purl=image_purl,
        properties=[Property(name=k, value=v) for k, v in props.items() if v],
    )
    bom = Bom(
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"imagegraph:{subject.key}:{subject.image_digest}")
    )
    bom.metadata.component = image
    if subject.built_at:
        bom.metadata.timestamp = dt.datetime.fromtimestamp(int(subject.built_at), tz=dt.UTC)
    licenses = LicenseFactory()
    components = []
    seen: set[str] = set()
    for pkg in inv.packages:
        p = purl(pkg, inv)
        ref = p.to_string()
        if ref in seen:
            continue
        seen.add(ref)
        extra = [Property(name="imagegraph:source-package", value=pkg.source)] if pkg.source else []
        c = Component(
            type=ComponentType.LIBRARY,
            name=pkg.name,
            version=pkg.version,
            purl=p,
            bom_ref=ref,
            licenses=[licenses.make_from_string(pkg.license)] if pkg.license else [],
            properties=extra,
        )
        bom.components.add(c)
        components.append(c)
    bom.register_dependency(image, components)
    return json.loads(JsonV1Dot5(bom).output_as_string())


def sbom_bytes(doc: dict) -> bytes:
    """The document as published: sorted keys, so one key's SBOM has one digest."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def layer_sbom(state: State, layer: str, spec: Any, key: str, image_digest: str | None = None) -> dict:
    """The SBOM of a recorded build of `layer` at `key` (SbomError when no inventory was recorded)."""
    blob = state.inventory_blob(key)
    if blob is None:
        raise SbomError(
            f"{layer}: no package inventory recorded for key {key[:12]} (built elsewhere, or before "
            f"imagegraph recorded inventories); rebuild it here with `imagegraph up --force {layer}`"
        )
    return make_sbom(subject_of(state, layer, spec, key, image_digest), Inventory.decompress(blob))


def _license_text(entry: dict) -> str | None:
    if "expression" in entry:
        return str(entry["expression"])
    lic = entry.get("license") or {}
    return lic.get("id") or lic.get("name")


def inventory_from_sbom(doc: dict, key: str | None = None) -> Inventory:
    """The package inventory an SBOM made by `make_sbom` lists (how a host that did not build
    a key learns its packages). SbomError when it is not one of ours, or describes another key.

    Name, version, arch, epoch, license (as the SBOM states it: an SPDX id the
    factory recognised comes back in its canonical case) and source package
    come back; where in the image the database was (`dbpath`) does not.
    """
    from packageurl import PackageURL

    if doc.get("bomFormat") != "CycloneDX" or not isinstance(doc.get("components", []), list):
        raise SbomError("not a CycloneDX document")
    image = (doc.get("metadata") or {}).get("component") or {}
    props = {p.get("name"): p.get("value") for p in image.get("properties") or []}
    if key is not None and props.get("imagegraph:key") != key:
        raise SbomError(f"the SBOM describes key {str(props.get('imagegraph:key'))[:12]}, not {key[:12]}")
    try:
        fmt = PackageFormat(props.get("imagegraph:package-format"))
    except ValueError:
        raise SbomError("the SBOM names no package format (imagegraph:package-format)") from None
    packages: list[Package] = []
    os_id = os_version = ""
    for c in doc.get("components", []):
        try:
            p = PackageURL.from_string(c["purl"])
        except (KeyError, ValueError) as exc:
            raise SbomError(f"component {c.get('name')!r}: no package URL ({exc})") from None
        q = p.qualifiers if isinstance(p.qualifiers, dict) else {}
        distro = q.get("distro", "")
        if distro and p.namespace:
            os_id = p.namespace
            os_version = distro[len(p.namespace) + 1 :] if distro.startswith(p.namespace + "-") else ""
        extra = {x.get("name"): x.get("value") for x in c.get("properties") or []}
        licenses = [t for e in c.get("licenses") or [] if (t := _license_text(e))]
        packages.append(
            Package(
                name=c["name"],
                version=c["version"],
                arch=q.get("arch", "noarch"),
                license=licenses[0] if licenses else None,
                source=extra.get("imagegraph:source-package"),
                epoch=q.get("epoch"),
            )
        )
    packages.sort(key=Package.sort_key)
    return Inventory(InventoryStatus.KNOWN, fmt, packages, None, os_id=os_id, os_version=os_version)
