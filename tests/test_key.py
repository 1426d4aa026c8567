"""imagegraph/key.py: canonical key inputs, Merkle chaining, golden keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagegraph.key import ParentInput, build_inputs, key_of, path_digest, publish_key
from imagegraph.spec import load_spec

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


# Golden keys: an accidental change to what goes into a key rebuilds whole sites.
# If a change is deliberate, bump KEY_FORMAT and update these with the reason in the commit.
GOLDEN = {
    "base": "402251811c16a8ea57cd8024e086aa487269132655ece167ebb2604209144514",
    "compute": "14b759e8e8b7dd762e4b95da2bbfa643afcc8922a3cb237924b60aa9ec97ab11",
    "ansible": "915a206c0ada0e99bb66f38c77e0a6fef5021e8f1f1c0eff22093d8ffe612b03",
}


@pytest.fixture
def golden_dir(tmp_path: Path) -> Path:
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "compute.yaml", COMPUTE)
    f = write(tmp_path, "files/chrony.conf", "server time.example.org iburst\n")
    os.chmod(f, 0o644)
    write(tmp_path, "play/site.yaml", "- hosts: all\n  tasks: []\n")
    os.chmod(tmp_path / "play/site.yaml", 0o644)
    write(
        tmp_path,
        "ansible.yaml",
        """
        options:
          layer_type: ansible
          name: compute-ansible
          parent: 'compute-base:9.5'
          groups: [compute]
          playbooks: play/site.yaml
          vars: {ntp: time.example.org}
        """,
    )
    return tmp_path


def test_golden_keys(golden_dir: Path) -> None:
    base = key(golden_dir / "base.yaml")
    compute = key(golden_dir / "compute.yaml", ParentInput("layer", key=base))
    ansible = key(golden_dir / "ansible.yaml", ParentInput("layer", key=compute))
    assert {"base": base, "compute": compute, "ansible": ansible} == GOLDEN
