"""Per-arch package lists (`packages_by_arch`) and an aarch64 boot through `imagegraph up`.

The spec, key and argv tests need no tools. The real one builds a two-arch
Debian layer from the Debian archive with each arch's own kernel package
(mmdebstrap `--variant=extract`: no maintainer scripts, seconds per arch), makes
a busybox initramfs in a `cmds` step, and lets `up` boot-test the aarch64 node
under `qemu-system-aarch64 -M virt` (TCG) before it publishes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegraph.arch import Arch, emulation, host_arch
from imagegraph.errors import SpecError
from imagegraph.graph import build_graph
from imagegraph.key import compute_keys
from imagegraph.labels import image_labels
from imagegraph.project import load_project
from imagegraph.spec import load_spec, packages_for_arch
from tests.fixtures_build import buildah, fake_key, have_buildah
from tests.needs import missing, requires
from tests.test_multiarch import _debian_reachable, cli, plan_of, up

HOST = host_arch()


def write(root: Path, name: str, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def node_spec(tmp_path: Path, by_arch: str, arches: str = "[x86_64, aarch64]", manager: str = "apt") -> Path:
    """A two-arch layer spec; `by_arch` is the body of its packages_by_arch (none when empty)."""
    head = textwrap.dedent(
        f"""
        options:
          layer_type: base
          name: ap-node
          pkg_manager: {manager}
          parent: scratch
          gpgcheck: false
          arches: {arches}
          publish_local: true
        repos:
          - alias: r
            url: http://mirror/r/
        packages: [busybox-static]
        """
    ).lstrip()
    body = textwrap.dedent(by_arch).strip("\n")
    if body:
        head += "packages_by_arch:\n" + textwrap.indent(body, "  ") + "\n"
    root = tmp_path / "layers"
    root.mkdir(parents=True, exist_ok=True)
    (root / "node.yaml").write_text(head)
    return root / "node.yaml"


# ------------------------------------------------------------------------------ spec


def test_each_arch_gets_packages_then_its_own_entry(tmp_path: Path) -> None:
    p = node_spec(
        tmp_path,
        """
          arm64: [linux-image-cloud-arm64]
          x86_64: [linux-image-cloud-amd64, busybox-static]
        """,
    )
    spec = load_spec(p)
    assert packages_for_arch(spec, Arch.AARCH64) == ("busybox-static", "linux-image-cloud-arm64")
    assert packages_for_arch(spec, Arch.X86_64) == ("busybox-static", "linux-image-cloud-amd64")
    assert packages_for_arch(spec, Arch.PPC64LE) == ("busybox-static",)  # named nowhere: packages only
    assert packages_for_arch(spec) == packages_for_arch(spec, HOST)  # default: the host's
    # image-builder's packages label on each arch's image names that arch's list
    label = "org.openchami.image.packages"
    assert image_labels(spec, Arch.AARCH64)[label] == "busybox-static,linux-image-cloud-arm64"
    assert not spec.warnings


@pytest.mark.parametrize(
    ("by_arch", "where", "message"),
    [
        ("sparc: [x]", "node.yaml:14:3", "packages_by_arch: unknown architecture 'sparc'"),
        (
            "aarch64: [x]\narm64: [y]",
            "node.yaml:15:3",
            "packages_by_arch: aarch64 is named twice (as 'arm64' too)",
        ),
        (
            "aarch64: linux-image-cloud-arm64",
            "node.yaml:14:12",
            "packages_by_arch.aarch64 must be of type array",
        ),
    ],
)
def test_bad_entries_name_file_and_line(tmp_path: Path, by_arch: str, where: str, message: str) -> None:
    p = node_spec(tmp_path, by_arch)
    with pytest.raises(SpecError) as err:
        load_spec(p)
    text = str(err.value)
    assert where in text and message in text, text


def test_an_arch_the_layer_does_not_build_is_a_warning(tmp_path: Path) -> None:
    spec = load_spec(node_spec(tmp_path, "ppc64le: [x]"))
    (w,) = spec.warnings
    assert (w.line, w.column) == (14, 3)
    assert "does not build ppc64le" in w.message and "ignored" in w.message


def test_cli_validate_exits_2_and_names_the_line(tmp_path: Path) -> None:
    node_spec(tmp_path, "armv7: [x]")
    r = cli("validate", str(tmp_path / "layers"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "node.yaml:14:3: error: packages_by_arch: unknown architecture 'armv7'" in r.stderr + r.stdout


# ------------------------------------------------------------------------------ keys


def _keys(root: Path) -> dict[str, str]:
    return {nid: lp.key for nid, lp in plan_of(root, root.parent).layers.items()}


def _node(arch: Arch) -> str:
    return "node" if arch == HOST else f"node@{arch}"


def test_no_entry_keeps_the_key_and_an_entry_is_the_same_as_listing_it(tmp_path: Path) -> None:
    """Without packages_by_arch the key is today's; the host's entry is as if written in packages."""
    plain = node_spec(tmp_path / "a", "", arches=f"[{HOST}]")
    before = compute_keys(build_graph(load_project(plain.parent)), ["node"])["node"]
    assert before.inputs["packages"] == ["busybox-static"]
    listed = node_spec(tmp_path / "b", "", arches=f"[{HOST}]")
    listed.write_text(listed.read_text().replace("[busybox-static]", "[busybox-static, k]"))
    by_arch = node_spec(tmp_path / "c", f"{HOST}: [k]", arches=f"[{HOST}]")
    assert _keys(listed.parent)["node"] == _keys(by_arch.parent)["node"] != before.key


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(["k1", "k2", "grub-efi", "shim"]), max_size=3, unique=True),
    st.lists(st.sampled_from(["k1", "k2", "grub-efi", "shim"]), max_size=3, unique=True),
    st.lists(st.sampled_from(["k3", "k4", "shim-aa64"]), min_size=1, max_size=3, unique=True),
)
def test_a_node_key_changes_only_with_its_own_arch_entry(
    tmp_path_factory, x86: list, arm: list, arm2: list
) -> None:
    """Changing aarch64's list never moves the x86_64 node's key, and always moves aarch64's."""
    tmp = tmp_path_factory.mktemp("prop")

    def plan(arm_list: list[str]):
        where = Path(tempfile.mkdtemp(dir=tmp))
        return plan_of(node_spec(where, f"x86_64: {x86}\naarch64: {arm_list}").parent, where)

    one, two = plan(arm), plan(arm + [p for p in arm2 if p not in arm])
    x, a = _node(Arch.X86_64), _node(Arch.AARCH64)
    assert one.layers[x].key == two.layers[x].key
    assert one.layers[a].key != two.layers[a].key
    # the x86_64 node's packages are packages + its own entry, whatever aarch64 lists
    assert one.layers[x].inputs["packages"] == ["busybox-static", *[p for p in x86 if p != "busybox-static"]]


# ------------------------------------------------------------------------------ backends


@pytest.mark.parametrize("manager", ["apt", "dnf", "zypper"])
@pytest.mark.parametrize("arch", [Arch.X86_64, Arch.AARCH64])
def test_each_backend_installs_the_nodes_packages(tmp_path: Path, manager: str, arch: Arch) -> None:
    from imagegraph.build import BuildRequest, build_layer
    from tests.test_build_argv import RecordingRunner

    spec = load_spec(node_spec(tmp_path, "x86_64: [kernel-x64]\naarch64: [kernel-aa64]", manager=manager))
    mount = tmp_path / "mnt"
    mount.mkdir()
    rec = RecordingRunner(mount)
    build_layer(BuildRequest(spec, fake_key(manager), None, arch=None if arch == HOST else arch), rec)
    argv = rec.find("mmdebstrap") if manager == "apt" else rec.find(manager, "install")
    text = " ".join(argv)
    mine, other = ("kernel-x64", "kernel-aa64") if arch == Arch.X86_64 else ("kernel-aa64", "kernel-x64")
    assert mine in text and "busybox-static" in text and other not in text, argv


# ------------------------------------------------------------------------------ real: up boots aarch64

# An initramfs made inside the image: busybox as /init prints the marker with the running
# machine's arch and powers off. Debian's cloud kernels boot it on the virt board in seconds.
INITRAMFS = (
    "k=$(busybox ls /lib/modules) && busybox mkdir -p /tmp/i/bin"
    " && busybox cp /bin/busybox /tmp/i/bin/"
    ' && printf \'#!/bin/busybox sh\\n/bin/busybox echo "IG-BOOTED-$(/bin/busybox uname -m)"\\n'
    "/bin/busybox poweroff -f\\n' > /tmp/i/init && busybox chmod 755 /tmp/i/init"
    " && cd /tmp/i && busybox find . | busybox cpio -o -H newc | busybox gzip -1 > /boot/initrd.img-$k"
    " && cd / && busybox rm -rf /tmp/i"
)


@pytest.mark.slow  # about 50 s here: two extract-variant builds and one TCG boot
@pytest.mark.buildah
@requires(have_buildah(), "needs buildah as root")
def test_up_builds_each_arch_with_its_kernel_and_boots_aarch64(tmp_path: Path) -> None:
    if not _debian_reachable():
        missing("deb.debian.org is not reachable")
    if not emulation(Arch.AARCH64).usable and HOST != Arch.AARCH64:
        missing(f"no aarch64 emulation: {emulation(Arch.AARCH64).fix}")
    for tool in ("mmdebstrap", "qemu-system-aarch64", "mksquashfs"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (scripts/install-system-deps.sh)")
    root = tmp_path / "layers"
    out = tmp_path / "out"
    write(
        root,
        "node.yaml",
        f"""
        options:
          layer_type: base
          name: ap-node
          publish_tags: ['1']
          pkg_manager: apt
          parent: scratch
          variant: extract
          arches: [x86_64, aarch64]
          publish_dir: '{out}'
          squashfs: {{compression: gzip, level: 1}}
          boot_test: {{enabled: true, arches: [aarch64], marker: 'IG-BOOTED-aarch64', timeout: 240}}
        repos:
          - alias: debian
            url: http://deb.debian.org/debian
            suite: bookworm
        packages: [busybox-static, dash]
        packages_by_arch:
          x86_64: [linux-image-cloud-amd64]
          aarch64: [linux-image-cloud-arm64]
        cmds:
          - {json.dumps(INITRAMFS)}
        """,
    )
    _remove_images()  # an earlier run's image of the same key would be reused, not built
    state = tmp_path / "state" / "state.db"
    plan = json.loads(cli("plan", str(root), "--state", str(state), "--json").stdout)
    tasks = {lp["name"]: [t["kind"] for t in lp["tasks"]] for lp in plan["layers"]}
    assert "boot-test" in tasks["node@aarch64" if HOST != Arch.AARCH64 else "node"], tasks
    assert "boot-test" not in tasks["node" if HOST != Arch.AARCH64 else "node@x86_64"], tasks
    started = time.monotonic()
    try:
        rc, doc, err = up(root, state)
        took = time.monotonic() - started
        print(f"\ntwo-arch kernel layer up, aarch64 boot-tested: {took:.0f} s")
        assert rc == 0, err[-4000:]
        results = {r["name"]: r for r in doc["layers"]}
        assert {r["status"] for r in results.values()} == {"ok"}, results
        assert {r["action"] for r in results.values()} == {"build"}, results
        for arch, deb in ((Arch.X86_64, "amd64"), (Arch.AARCH64, "arm64")):
            files = out / "ap-node" / "1" / str(arch)
            manifest = json.loads((files / "manifest.json").read_text())
            assert manifest["kver"].endswith(f"-cloud-{deb}"), manifest  # each arch its own kernel
            assert (files / "rootfs.squashfs").is_file() and (files / "initramfs.img").is_file()
        # The boot test ran for aarch64 only, and the serial console says the guest was aarch64.
        logs = sorted(tmp_path.rglob("boot/*.log"))
        assert len(logs) == 1 and "aarch64" in logs[0].name, logs
        serial = logs[0].read_text(errors="replace")
        assert "IG-BOOTED-aarch64" in serial and "Machine model: linux,dummy-virt" in serial, serial[-2000:]
        boot = json.loads(logs[0].with_suffix(".json").read_text())
        assert boot["outcome"] == "booted" and boot["accel"] in ("tcg", "kvm"), boot
        # Nothing changed: the next plan is up to date for both arches.
        again = json.loads(cli("plan", str(root), "--state", str(state), "--json").stdout)
        assert {lp["action"] for lp in again["layers"]} == {"up-to-date"}, again
    finally:
        _remove_images()


def _remove_images() -> None:
    for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
        if "/ap-node:" in ref:
            buildah("rmi", "-f", ref, check=False)


def test_a_lock_entry_goes_stale_only_for_the_arch_whose_list_moved(tmp_path: Path) -> None:
    """resolve.request_digest (what decides that imagegraph.lock must be re-resolved) per arch."""
    from imagegraph.resolve import request_digest

    one = load_spec(node_spec(tmp_path / "a", "x86_64: [k-x64]\naarch64: [k-aa64]"))
    two = load_spec(node_spec(tmp_path / "b", "x86_64: [k-x64]\naarch64: [k-aa64, shim-aa64]"))
    other = load_spec(node_spec(tmp_path / "d", "ppc64le: [k-ppc]", arches="[x86_64, aarch64, ppc64le]"))
    assert request_digest(one, [], "x86_64") == request_digest(two, [], "x86_64")
    assert request_digest(one, [], "aarch64") != request_digest(two, [], "aarch64")
    plain = load_spec(node_spec(tmp_path / "c", "", arches="[x86_64, aarch64, ppc64le]"))
    assert request_digest(plain, [], "aarch64") == request_digest(other, [], "aarch64")
    assert request_digest(plain, [], "ppc64le") != request_digest(other, [], "ppc64le")
