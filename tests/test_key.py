"""imagegraph/key.py: canonical key inputs, Merkle chaining, golden keys."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

from imagegraph.arch import Arch, host_arch
from imagegraph.errors import SpecError
from imagegraph.graph import build_graph
from imagegraph.key import (
    KEY_FORMAT,
    ParentInput,
    build_inputs,
    compute_keys,
    key_of,
    path_digest,
    publish_key,
)
from imagegraph.project import load_project
from imagegraph.spec import load_spec

from . import golden_keys
from .specdirs import BASE, COMPUTE, write

SCRATCH = ParentInput("scratch")


def key(path: Path, parent: ParentInput = SCRATCH) -> str:
    return key_of(build_inputs(load_spec(path), parent))


def test_formatting_comments_and_mapping_order_do_not_count(tmp_path: Path) -> None:
    a = write(tmp_path / "a", "x.yaml", BASE)
    b = write(
        tmp_path / "b",
        "x.yaml",
        """
        # a comment, keys reordered, flow style, double quotes
        packages: [kernel, wget]
        cmds: [{loglevel: INFO, cmd: "echo base"}, "echo bare string"]
        package_groups: ["Minimal Install"]
        repos:
          - {gpg: 'https://dl.rockylinux.org/pub/rocky/RPM-GPG-KEY-Rocky-9', alias: Rocky_9_BaseOS,
             url: 'https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/'}
        options: {pkg_manager: dnf, layer_type: base, parent: scratch, name: rocky-base,
                  publish_tags: '9.5', publish_registry: 'registry.dist.si.usrc:5000/redondo/',
                  registry_opts_push: ['--tls-verify=false']}
        """,
    )
    assert key(a) == key(b)


def test_list_order_counts(tmp_path: Path) -> None:
    a = write(tmp_path / "a", "x.yaml", BASE)
    b = write(tmp_path / "b", "x.yaml", BASE.replace("  - kernel\n  - wget\n", "  - wget\n  - kernel\n"))
    assert key(a) != key(b)


def test_publish_targets_are_not_in_the_build_key(tmp_path: Path) -> None:
    a = write(tmp_path / "a", "x.yaml", BASE)
    b = write(
        tmp_path / "b",
        "x.yaml",
        BASE.replace(
            "publish_tags: '9.5'", "publish_tags: ['9.5', 'latest']\n  publish_s3: 'http://s3.example'"
        ),
    )
    assert key(a) == key(b)
    ka = key(a)
    assert publish_key(ka, load_spec(a)) != publish_key(ka, load_spec(b))


def test_loglevel_and_proxy_do_not_count_but_cmds_do(tmp_path: Path) -> None:
    a = write(tmp_path / "a", "x.yaml", BASE)
    b = write(tmp_path / "b", "x.yaml", BASE.replace("loglevel: INFO", "loglevel: DEBUG"))
    c = write(tmp_path / "c", "x.yaml", BASE.replace("echo base", "echo based"))
    assert key(a) == key(b) != key(c)


def test_copied_file_bytes_and_mode_count(tmp_path: Path) -> None:
    p = write(tmp_path, "compute.yaml", COMPUTE)
    f = write(tmp_path, "files/chrony.conf", "server a\n")
    k1 = key(p)
    f.write_text("server b\n")
    k2 = key(p)
    os.chmod(f, 0o600)
    k3 = key(p)
    assert len({k1, k2, k3}) == 3
    f.write_text("server a\n")
    os.chmod(f, 0o644)
    assert key(p) == k1


def test_directory_sources_are_hashed_whole(tmp_path: Path) -> None:
    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a").write_text("a")
    h1 = path_digest(d)
    (d / "sub" / "b").write_text("b")
    h2 = path_digest(d)
    (d / "link").symlink_to("sub/a")
    h3 = path_digest(d)
    assert len({h1, h2, h3}) == 3
    assert path_digest(d) == h3


def test_parent_key_chains(tmp_path: Path) -> None:
    p = write(tmp_path, "compute.yaml", COMPUTE)
    write(tmp_path, "files/chrony.conf", "x\n")
    assert key(p, ParentInput("layer", key="a" * 64)) != key(p, ParentInput("layer", key="b" * 64))
    ext1 = ParentInput("image", ref="r/x:1", digest="sha256:" + "1" * 64)
    ext2 = ParentInput("image", ref="r/x:1", digest="sha256:" + "2" * 64)
    unknown = ParentInput("image", ref="r/x:1")
    assert len({key(p, ext1), key(p, ext2), key(p, unknown)}) == 3


# ----------------------------------------------------------------- golden documents


def moved(old: object, new: object, at: str = "") -> list[str]:
    """Dotted paths of the inputs that differ between two key documents."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += moved(old.get(k), new.get(k), f"{at}.{k}" if at else str(k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [p for i, (a, b) in enumerate(zip(old, new, strict=True)) for p in moved(a, b, f"{at}[{i}]")]
    return [] if old == new else [at or "(document)"]


def test_golden_key_documents(tmp_path: Path) -> None:
    """An accidental change to what goes into a key rebuilds whole sites: each fixture's document is pinned.

    After a deliberate change, run scripts/regen-golden-keys.py and commit tests/golden/ with the reason.
    """
    docs = golden_keys.documents(tmp_path)
    golden = {p.stem: json.loads(p.read_text()) for p in golden_keys.GOLDEN_DIR.glob("*.json")}
    assert sorted(docs) == sorted(golden), "fixture layers and tests/golden/*.json differ: regenerate"
    problems = []
    for lid in sorted(docs):
        want, got = golden[lid], docs[lid]
        if want == got:
            continue
        diff = difflib.unified_diff(
            golden_keys.render(want).splitlines(),
            golden_keys.render(got).splitlines(),
            f"tests/golden/{lid}.json",
            "computed",
            lineterm="",
        )
        paths = moved(want["inputs"], got["inputs"])
        problems.append(f"{lid}: inputs moved: {', '.join(paths) or 'none (key only)'}\n" + "\n".join(diff))
    assert not problems, "\n\n".join(problems)


def test_golden_failure_names_the_input_that_moved() -> None:
    a = {"format": 2, "backend": {"name": "dnf", "version": 1}, "packages": ["a"]}
    b = {"format": 2, "backend": {"name": "dnf", "version": 2}, "packages": ["a"]}
    assert moved(a, b) == ["backend.version"]
    assert moved(a, {**a, "packages": ["a", "b"]}) == ["packages"]


def test_golden_documents_cover_every_backend_and_option_family(tmp_path: Path) -> None:
    docs = {lid: d["inputs"] for lid, d in golden_keys.documents(tmp_path).items()}
    assert {d["backend"]["name"] for d in docs.values()} == {"dnf", "zypper", "apt", "ansible"}
    assert {d["parent"]["kind"] for d in docs.values()} == {"scratch", "layer", "image"}
    assert docs["external"]["parent"] == {"kind": "image", "digest": golden_keys.EXTERNAL_DIGEST}
    assert docs["modules"]["modules"] and docs["modules"]["package_groups"]
    assert len(docs["copyfiles"]["copyfiles"]) == 2 and docs["key-paths"]["key_paths"]
    assert all(d["arch"] == "x86_64" and d["format"] == KEY_FORMAT for d in docs.values())


# ------------------------------------------------------------------ complete keys


def _graph_keys(root: Path, arch: Arch = Arch.X86_64) -> dict[str, str]:
    lg = build_graph(load_project(root))
    return {lid: lk.key for lid, lk in compute_keys(lg, lg.order(), arch=arch).items()}


def test_architecture_is_in_the_key(tmp_path: Path) -> None:
    golden_keys.write_project(tmp_path)
    x86, arm = _graph_keys(tmp_path, Arch.X86_64), _graph_keys(tmp_path, Arch.AARCH64)
    assert all(x86[lid] != arm[lid] for lid in x86)
    # without an explicit arch, the host's
    lg = build_graph(load_project(tmp_path))
    assert compute_keys(lg, lg.order())["apt"].arch == host_arch()


def test_each_arch_keys_on_its_own_locked_package_set(tmp_path: Path) -> None:
    """A foreign arch's node asks the lock for its own set, never the host's (a host set would put
    host-arch NEVRAs into an aarch64 build and key it on packages it never installs)."""
    golden_keys.write_project(tmp_path)
    lg = build_graph(load_project(tmp_path))
    asked: list[str | None] = []

    def upstream_of(spec, arch: str | None = None) -> dict[str, list[str]]:
        asked.append(arch)
        return {"packages": [f"bash 0:5.2-1 {arch or host_arch()} R sha256:00"]}

    foreign = Arch.AARCH64 if host_arch() != Arch.AARCH64 else Arch.X86_64
    native = compute_keys(lg, lg.order(), upstream_of=upstream_of, arch=host_arch())
    assert set(asked) == {None}
    other = compute_keys(lg, lg.order(), upstream_of=upstream_of, arch=foreign)
    assert set(asked) == {None, str(foreign)}
    lid = lg.order()[0]
    assert other[lid].inputs["upstream"]["packages"] == [f"bash 0:5.2-1 {foreign} R sha256:00"]
    assert native[lid].inputs["upstream"]["packages"] != other[lid].inputs["upstream"]["packages"]


@pytest.mark.parametrize(
    "edit",
    [
        "play/roles/ntp/tasks/main.yml",
        "play/roles/ntp/templates/chrony.conf.j2",
        "play/group_vars/compute.yaml",
        "inventory/host_vars/node.yaml",
        "ansible.cfg",
        "play/collections/requirements.yml",
        "play/site.yaml",
    ],
)
def test_ansible_project_files_are_in_the_key(tmp_path: Path, edit: str) -> None:
    golden_keys.write_project(tmp_path)
    before = _graph_keys(tmp_path)
    with (tmp_path / edit).open("a") as f:
        f.write("# edited\n")
    after = _graph_keys(tmp_path)
    assert after["ansible"] != before["ansible"]
    assert {lid for lid in before if before[lid] != after[lid]} == {"ansible"}


def test_git_and_state_directories_and_unrelated_files_are_not(tmp_path: Path) -> None:
    golden_keys.write_project(tmp_path)
    before = _graph_keys(tmp_path)
    (tmp_path / "play/roles/ntp/.git/HEAD").write_text("ref: refs/heads/other\n")
    write(tmp_path, "play/.imagegraph/state.db", "x")
    write(tmp_path, "play/roles/.imagegraph/junk", "x")
    write(tmp_path, "play/README.md", "notes\n")  # not something ansible reads
    assert _graph_keys(tmp_path) == before
    write(tmp_path, "play/roles/new/tasks/main.yml", "- debug: {msg: hi}\n")
    assert _graph_keys(tmp_path)["ansible"] != before["ansible"]


def test_key_paths_content_counts_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    golden_keys.write_project(tmp_path)
    before = _graph_keys(tmp_path)
    (tmp_path / "extra/tree/b").write_text("b\n")
    assert _graph_keys(tmp_path)["key-paths"] != before["key-paths"]
    (tmp_path / "extra/site.conf").unlink()
    with pytest.raises(SpecError) as ei:
        load_project(tmp_path)
    (d,) = [d for d in ei.value.diagnostics if d.severity == "error"]
    assert d.file.endswith("key-paths.yaml") and d.line == 6 and "extra/site.conf" in d.message


def test_backend_defaults_and_version_are_in_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagegraph.build import apt, dnf

    golden_keys.write_project(tmp_path)
    before = _graph_keys(tmp_path)
    monkeypatch.setattr(apt, "DEFAULT_SUITE", "trixie")
    after = _graph_keys(tmp_path)
    # apt-repo names its suite (releasever): only the layer that relies on the default moves
    assert {lid for lid in before if before[lid] != after[lid]} == {"apt"}
    monkeypatch.setattr(dnf, "VERSION", dnf.VERSION + 1)
    after = _graph_keys(tmp_path)
    dnf_layers = {"dnf-scratch", "dnf-parent", "modules", "copyfiles", "key-paths", "external"}
    # every dnf layer, and their descendants (the ansible layer builds on compute)
    assert {lid for lid in before if before[lid] != after[lid]} == dnf_layers | {"apt", "ansible"}


def test_apt_effective_suite_and_mirror(tmp_path: Path) -> None:
    docs = {lid: d["inputs"] for lid, d in golden_keys.documents(tmp_path).items()}
    assert docs["apt"]["backend"]["suite"] == "bookworm"
    assert docs["apt"]["backend"]["mirror"] == "http://deb.debian.org/debian"
    assert docs["apt-repo"]["backend"]["suite"] == "noble" and docs["apt-repo"]["backend"]["mirror"] is None
    assert docs["dnf-scratch"]["backend"]["releasever"] == "from-image"
    assert docs["modules"]["backend"]["releasever"] == "9"


def test_publish_tags_and_targets_stay_out_of_every_build_key(tmp_path: Path) -> None:
    golden_keys.write_project(tmp_path)
    before = _graph_keys(tmp_path)
    p = tmp_path / "zypper.yaml"
    p.write_text(
        p.read_text().replace(
            "  parent: scratch\n",
            "  parent: scratch\n  publish_tags: [a, b]\n  publish_local: true\n  publish_dir: ../out\n",
        )
    )
    assert _graph_keys(tmp_path) == before


def test_an_unreadable_input_is_a_located_spec_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imagegraph.digest as digest_mod

    golden_keys.write_project(tmp_path)

    def refuse(path: Path, st: os.stat_result) -> str:
        if path.name == "site.sh":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, st)

    real = digest_mod._file_digest
    monkeypatch.setattr(digest_mod, "_file_digest", refuse)
    lg = build_graph(load_project(tmp_path))
    with pytest.raises(SpecError) as ei:
        compute_keys(lg, lg.order(), arch=Arch.X86_64)
    (d,) = ei.value.diagnostics
    assert d.file.endswith("copyfiles.yaml") and d.line == 10
    assert "copyfiles source 'files/profile.d'" in d.message and "Permission denied" in d.message
