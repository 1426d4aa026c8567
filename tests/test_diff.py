"""Package diffs: properties of `diff_inventories`, key naming, and the state-backed `layer_diff`."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.diff import ChangeKind, diff_inventories, layer_diff, previous_key, resolve_ref
from imagegraph.errors import UsageError
from imagegraph.packages import Inventory, InventoryStatus, Package, PackageFormat
from imagegraph.state import State
from imagegraph.versions import version_cmp

VERSIONS = {
    PackageFormat.RPM: ["1.0-1", "1.0-2", "1.0~rc1-1", "1:0.9-1", "2.0-1.el9", "10.0-1"],
    PackageFormat.DEB: ["1.0", "1.0-1", "1.0~rc1", "1:0.9", "2.0+deb12u1", "10.0"],
}


@st.composite
def inventory(draw, fmt: PackageFormat) -> Inventory:
    pkgs = draw(
        st.lists(
            st.tuples(
                st.sampled_from("abcdef"),
                st.sampled_from(["noarch", "x86_64"]),
                st.sampled_from(VERSIONS[fmt]),
            ),
            max_size=14,
            unique=True,
        )
    )
    return Inventory(InventoryStatus.KNOWN, fmt, [Package(n, v, a) for n, a, v in pkgs])


@st.composite
def pair(draw) -> tuple[Inventory, Inventory]:
    fmt = draw(st.sampled_from(list(PackageFormat)))
    return draw(inventory(fmt)), draw(inventory(fmt))


def versions(inv: Inventory) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for p in inv.packages:
        out[p.ident].add(p.version)
    return dict(out)


FLIP = {
    ChangeKind.ADDED: ChangeKind.REMOVED,
    ChangeKind.REMOVED: ChangeKind.ADDED,
    ChangeKind.UPGRADED: ChangeKind.DOWNGRADED,
    ChangeKind.DOWNGRADED: ChangeKind.UPGRADED,
}


@settings(max_examples=300, deadline=None)  # a loaded CI machine is slow, not wrong
@given(pair())
def test_applying_the_diff_to_old_gives_new(p: tuple[Inventory, Inventory]) -> None:
    old, new = p
    state = versions(old)
    for c in diff_inventories(old, new):
        ident = (c.name, c.arch)
        if c.old is not None:
            state[ident].remove(c.old)
        if c.new is not None:
            state.setdefault(ident, set()).add(c.new)
    assert {k: v for k, v in state.items() if v} == versions(new)


@settings(max_examples=300, deadline=None)  # a loaded CI machine is slow, not wrong
@given(pair())
def test_the_reverse_diff_is_the_mirror_image(p: tuple[Inventory, Inventory]) -> None:
    old, new = p
    there = diff_inventories(old, new)
    back = diff_inventories(new, old)
    mirrored = sorted((FLIP[c.kind], c.name, c.arch, c.new, c.old) for c in there)
    assert sorted((c.kind, c.name, c.arch, c.old, c.new) for c in back) == mirrored


@settings(max_examples=300, deadline=None)  # a loaded CI machine is slow, not wrong
@given(pair())
def test_kinds_follow_the_formats_version_order(p: tuple[Inventory, Inventory]) -> None:
    old, new = p
    fmt = str(old.format)
    assert diff_inventories(old, old) == []
    for c in diff_inventories(old, new):
        if c.kind == ChangeKind.UPGRADED:
            assert version_cmp(fmt, c.new, c.old) > 0
        elif c.kind == ChangeKind.DOWNGRADED:
            assert version_cmp(fmt, c.new, c.old) < 0


def test_deb_tilde_is_an_upgrade_where_string_order_says_downgrade() -> None:
    old = Inventory(InventoryStatus.KNOWN, PackageFormat.DEB, [Package("a", "1.0~rc1", "all")])
    new = Inventory(InventoryStatus.KNOWN, PackageFormat.DEB, [Package("a", "1.0", "all")])
    (c,) = diff_inventories(old, new)
    assert (c.kind, c.old, c.new) == (ChangeKind.UPGRADED, "1.0~rc1", "1.0")
    assert "1.0" < "1.0~rc1"  # what a plain string comparison would have said


def test_install_only_kernels_pair_their_left_overs() -> None:
    k = [Package("kernel", v, "x86_64") for v in ("5.14.0-427.el9", "5.14.0-503.el9", "5.14.0-570.el9")]
    old = Inventory(InventoryStatus.KNOWN, PackageFormat.RPM, k[:2])
    new = Inventory(InventoryStatus.KNOWN, PackageFormat.RPM, k[1:])
    (c,) = diff_inventories(old, new)
    assert (c.kind, c.old, c.new) == (ChangeKind.UPGRADED, "5.14.0-427.el9", "5.14.0-570.el9")


# ----------------------------------------------------------------------- state-backed


class Spec:
    name = "compute"
    publish_tags = ["9"]


def record(state: State, key: str, inv: Inventory | None, t: float) -> None:
    state.record_build(
        run_id=f"r{t}",
        layer="compute",
        key=key,
        inputs={},
        image_id=None,
        image_ref=None,
        spec_file="compute.yaml",
        parent_key=None,
        started=t,
        finished=t + 1,
    )
    if inv is not None:
        state.record_inventory("compute", key, inv)


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(tmp_path / "state.db")


def test_layer_diff_and_key_names(state: State) -> None:
    a, b, c = ("a" * 64, "ab" + "1" * 62, "c" * 64)
    rpm = PackageFormat.RPM
    record(state, a, Inventory(InventoryStatus.KNOWN, rpm, [Package("openssl", "3.0.7-25.el9", "x86_64")]), 1)
    record(state, b, Inventory(InventoryStatus.KNOWN, rpm, [Package("openssl", "3.0.7-27.el9", "x86_64")]), 2)
    record(state, c, None, 3)  # built before inventories were recorded
    d = layer_diff(state, "compute", a, b)
    assert d.brief() == "openssl 3.0.7-25.el9 → 3.0.7-27.el9"
    assert d.summary() == "0 added, 0 removed, 1 upgraded, 0 downgraded"
    unknown = layer_diff(state, "compute", b, c)
    assert unknown.status == InventoryStatus.UNKNOWN and unknown.changes == []
    assert "no inventory recorded" in unknown.reason and unknown.brief() == "unknown"
    assert previous_key(state, "compute", c) == b and previous_key(state, "compute", a) is None
    assert layer_diff(state, "compute", None, a).brief() == "first build: 1 package"
    assert resolve_ref(state, "compute", Spec(), "ig-" + b) == b
    assert resolve_ref(state, "compute", Spec(), "c" * 6) == c
    with pytest.raises(UsageError, match="matches 2 builds"):
        resolve_ref(state, "compute", Spec(), "a")
    state.record_event(
        run_id="p", layer="compute", key=a, kind="promote", location="[]", detail={"tag": "prod"}
    )
    assert resolve_ref(state, "compute", Spec(), "prod") == a
    with pytest.raises(UsageError, match="tags: prod"):
        resolve_ref(state, "compute", Spec(), "stable")


def test_a_revert_diffs_against_the_build_it_replaced(state: State) -> None:
    from imagegraph.diff import default_keys, replaced_key

    a, b = "a" * 64, "b" * 64
    rpm = PackageFormat.RPM
    record(state, a, Inventory(InventoryStatus.KNOWN, rpm, [Package("ig", "1.0-1", "noarch")]), 1)
    record(state, b, Inventory(InventoryStatus.KNOWN, rpm, [Package("ig", "1.1-1", "noarch")]), 2)
    assert replaced_key(state, "compute", b) == a  # the newest build replaced the previous one
    assert replaced_key(state, "compute", a) == b  # a revert to a replaced the newer b
    # the state's record is b (the last build), but planning says the current key is a again
    assert default_keys(state, "compute", Spec(), current=a) == (b, a, "replaced build")
    assert default_keys(state, "compute", Spec(), current=b) == (a, b, "previous build")
    # an edit not built yet: TO stays the last build here
    assert default_keys(state, "compute", Spec(), current="c" * 64)[1] == b


@dataclasses.dataclass
class Said:
    value: str | None = None
    unknown: str = ""


@dataclasses.dataclass
class Remote:
    """A stand-in for publish/sbomfetch.RemoteBuilds (tested against a real registry in test_changes)."""

    tags: dict
    registry_keys: set | None
    inventories: dict

    def inventory(self, layer: str, spec: object, key: str) -> Inventory:
        return self.inventories.get(key) or Inventory(InventoryStatus.UNKNOWN, reason="registry unreachable")

    def tag_key(self, spec: object, tag: str) -> Said:
        return self.tags.get(tag, Said())

    def keys(self, spec: object) -> set | None:
        return self.registry_keys


def test_names_and_inventories_the_state_lacks_come_from_the_remote(state: State) -> None:
    from imagegraph.diff import default_keys
    from imagegraph.errors import NotBuiltError

    a, b = "a" * 64, "b" * 64
    inv = Inventory(InventoryStatus.KNOWN, PackageFormat.DEB, [Package("libc6", "2.36-9", "amd64")])
    remote = Remote({"9": Said(a), "prod": Said(unknown="registry unreachable")}, {a, b}, {a: inv})
    assert resolve_ref(state, "compute", Spec(), "9", remote) == a
    assert resolve_ref(state, "compute", Spec(), "bbbb", remote) == b  # the registry's key tags
    assert resolve_ref(state, "compute", Spec(), "c" * 64, remote) == "c" * 64  # a whole key names itself
    with pytest.raises(NotBuiltError, match="cannot tell which build 'prod' names: registry unreachable"):
        resolve_ref(state, "compute", Spec(), "prod", remote)
    with pytest.raises(UsageError, match="neither"):
        resolve_ref(state, "compute", Spec(), "stable", remote)
    # never built here: TO is the planned key, FROM what tag 9 holds on the registry
    assert default_keys(state, "compute", Spec(), remote, current=b) == (a, b, "9")
    d = layer_diff(state, "compute", a, b, spec=Spec(), remote=remote)
    assert d.status == InventoryStatus.UNKNOWN and "TO key bbbbbbbbbbbb: registry unreachable" in d.reason
    assert (
        layer_diff(state, "compute", None, a, spec=Spec(), remote=remote).brief() == "first build: 1 package"
    )
