"""The SBOM document: golden files per package format, schema validity for any inventory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.packages import Inventory, InventoryStatus, Package, PackageFormat
from imagegraph.sbom import SbomError, SbomSubject, inventory_from_sbom, make_sbom, sbom_bytes

GOLDEN = Path(__file__).parent / "golden_sbom"

SUBJECT = SbomSubject(
    layer="compute",
    name="openchami/compute",
    key="c" * 64,
    parent_key="b" * 64,
    image_digest="sha256:" + "d" * 64,
    image_id="e" * 64,
    spec_file="compute.yaml",
    built_at=1700000000.0,
    repository="registry.example:5000/openchami/compute",
)

INVENTORIES = {
    "rpm": Inventory(
        InventoryStatus.KNOWN,
        PackageFormat.RPM,
        [
            Package("bash", "5.1.8-9.el9", "x86_64", "GPL-3.0-or-later", "bash-5.1.8-9.el9.src.rpm"),
            Package(
                "kernel",
                "5.14.0-503.el9",
                "x86_64",
                "GPLv2 and Redistributable",
                "kernel-5.14.0-503.el9.src.rpm",
            ),
            Package(
                "openssl-libs", "1:3.0.7-27.el9", "x86_64", "Apache-2.0", "openssl-3.0.7-27.el9.src.rpm", "1"
            ),
        ],
        "/var/lib/rpm",
        os_id="rocky",
        os_version="9.6",
    ),
    "deb": Inventory(
        InventoryStatus.KNOWN,
        PackageFormat.DEB,
        [
            Package("libc6", "2.36-9+deb12u10", "amd64", None, "glibc 2.36-9+deb12u10"),
            Package("tzdata", "2025b-0+deb12u1", "all"),
        ],
        "/var/lib/dpkg",
        os_id="debian",
        os_version="12",
    ),
}


def validate(doc: dict) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(doc))
    assert error is None, error


@pytest.mark.parametrize("fmt", sorted(INVENTORIES))
def test_golden_sbom(fmt: str) -> None:
    """An accidental change of the document shows here; regenerate deliberately with IMAGEGRAPH_GOLDEN=write."""
    import os

    body = sbom_bytes(make_sbom(SUBJECT, INVENTORIES[fmt]))
    path = GOLDEN / f"sbom-{fmt}.cdx.json"
    if os.environ.get("IMAGEGRAPH_GOLDEN") == "write":
        path.write_bytes(body)
    assert body == path.read_bytes()
    validate(json.loads(body))


def test_unknown_inventory_has_no_sbom() -> None:
    with pytest.raises(SbomError, match="inventory unknown: no rpm database"):
        make_sbom(SUBJECT, Inventory(InventoryStatus.UNKNOWN, reason="no rpm database"))


_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789+.-_~", min_size=1, max_size=10)
_package = st.builds(
    Package,
    name=_word,
    version=_word,
    arch=st.sampled_from(["x86_64", "aarch64", "noarch", "all", "amd64"]),
    license=st.none() | st.sampled_from(["MIT", "GPLv2+", "GPL-2.0-only OR MIT", "Public Domain", ""]),
    source=st.none() | _word,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_package, max_size=12), st.sampled_from(list(PackageFormat)), st.sampled_from(["", "rocky"]))
def test_any_inventory_gives_a_valid_document(
    packages: list[Package], fmt: PackageFormat, os_id: str
) -> None:
    inv = Inventory(InventoryStatus.KNOWN, fmt, packages, os_id=os_id, os_version="9" if os_id else "")
    doc = make_sbom(SUBJECT, inv)
    validate(doc)
    assert {c["name"] for c in doc.get("components", [])} == {p.name for p in packages}


@st.composite
def _inventories(draw: st.DrawFn) -> Inventory:
    fmt = draw(st.sampled_from(list(PackageFormat)))
    packages = []
    for p in draw(st.lists(_package, max_size=12)):
        epoch = draw(st.none() | st.sampled_from(["1", "2"])) if fmt == PackageFormat.RPM else None
        packages.append(dataclasses.replace(p, version=f"{epoch}:{p.version}", epoch=epoch) if epoch else p)
    os_id = draw(st.sampled_from(["", "rocky", "debian", "opensuse-leap"]))
    return Inventory(
        InventoryStatus.KNOWN, fmt, packages, os_id=os_id, os_version=draw(_word) if os_id else ""
    )


@settings(max_examples=60, deadline=None)
@given(_inventories())
def test_an_sbom_gives_back_its_inventory(inv: Inventory) -> None:
    """What a host that never built the key reads (publish/sbomfetch.py): every package as it was."""
    back = inventory_from_sbom(json.loads(sbom_bytes(make_sbom(SUBJECT, inv))), SUBJECT.key)
    unique = {}
    for p in inv.packages:  # one component per package URL
        unique.setdefault((p.name, p.version, p.arch), dataclasses.replace(p, license=p.license or None))
    assert back.packages == sorted(unique.values(), key=Package.sort_key)
    assert (back.status, back.format) == (InventoryStatus.KNOWN, inv.format)
    if inv.packages and inv.os_id:
        assert (back.os_id, back.os_version) == (inv.os_id, inv.os_version)


def test_an_sbom_of_another_key_or_format_is_refused() -> None:
    doc = make_sbom(SUBJECT, INVENTORIES["deb"])
    assert inventory_from_sbom(doc, SUBJECT.key).packages == INVENTORIES["deb"].packages
    with pytest.raises(SbomError, match="describes key cccccccccccc, not 000000000000"):
        inventory_from_sbom(doc, "0" * 64)
    with pytest.raises(SbomError, match="not a CycloneDX document"):
        inventory_from_sbom({"spdxVersion": "SPDX-2.3"})
