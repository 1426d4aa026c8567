"""Helpers that write layer directories for tests (our own fixtures, with real-world quirks)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write(dir_: Path, name: str, text: str) -> Path:
    p = dir_ / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text).lstrip())
    return p


BASE = """
options:
  layer_type: 'base'
  name: 'rocky-base'
  publish_tags: '9.5'
  pkg_manager: 'dnf'
  parent: 'scratch'
  publish_registry: 'registry.dist.si.usrc:5000/redondo/'
  registry_opts_push:
    - '--tls-verify=false'

repos:
  - alias: 'Rocky_9_BaseOS'
    url: 'https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/'
    gpg: 'https://dl.rockylinux.org/pub/rocky/RPM-GPG-KEY-Rocky-9'

package_groups:
  - 'Minimal Install'

packages:
  - kernel
  - wget

cmds:
  - cmd: 'echo base'
    loglevel: INFO
  - 'echo bare string'
"""

COMPUTE = """
options:
  layer_type: 'base'
  name: 'compute-base'
  publish_tags:
    - '9.5'
  pkg_manager: 'dnf'
  # The seed document names another registry host than base publishes to.
  parent: 'registry.my.cluster/my-cluster/rocky-base:9.5'
  publish_registry: 'registry.my.cluster/my-cluster'

packages:
  - vim
  - chrony

copyfiles:
  - src: 'files/chrony.conf'
    dest: '/etc/chrony.conf'
    opts:
      - '--chown 0:0'
"""

GPU = """
options:
  layer_type: 'base'
  name: 'compute-gpu'
  publish_tags: ['9.5', 'latest']
  pkg_manager: 'dnf'
  parent: 'registry.my.cluster/my-cluster/compute-base:9.5'
  publish_registry: 'registry.my.cluster/my-cluster'

packages:
  - cuda
"""


SEED_ALIASES = "registry_aliases:\n  registry.my.cluster/my-cluster: registry.dist.si.usrc:5000/redondo\n"


def seed_dir(root: Path, aliases: bool = True) -> Path:
    """base -> compute -> gpu, with the seed's registry mismatch and a copied file.

    compute names base on another registry host than base publishes to; a fully
    qualified parent joins its layer only through registry_aliases (imagegraph.yaml),
    written unless `aliases` is false.
    """
    if aliases:
        write(root, "imagegraph.yaml", SEED_ALIASES)
    write(root, "base.yaml", BASE)
    write(root, "compute.yaml", COMPUTE)
    write(root, "gpu.yaml", GPU)
    write(root, "files/chrony.conf", "server time.example.org iburst\n")
    return root
