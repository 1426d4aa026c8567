"""Synthetic layer directories for benchmarks: a forest of chains and fans."""

from __future__ import annotations

import random
from pathlib import Path


def make_layers(root: Path, n: int, seed: int = 1, fanout: int = 4) -> Path:
    """n layers: a few scratch roots, every other layer a child of an earlier one."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "files").mkdir(exist_ok=True)
    (root / "files" / "motd").write_text("welcome\n")
    roots = max(1, n // 50)
    for i in range(n):
        name = f"layer-{i:05d}"
        if i < roots:
            parent = "scratch"
        else:
            p = rng.randrange(max(0, i - fanout * 25), i)
            parent = f"registry.example.org:5000/site/layer-{p:05d}:1"
        pkgs = "\n".join(f"  - pkg-{rng.randrange(1000)}" for _ in range(rng.randrange(1, 8)))
        (root / f"{name}.yaml").write_text(
            f"""options:
  layer_type: 'base'
  name: '{name}'
  publish_tags: ['1', 'latest']
  pkg_manager: 'dnf'
  parent: '{parent}'
  publish_registry: 'registry.example.org:5000/site'
  registry_opts_push: ['--tls-verify=false']

repos:
  - alias: 'BaseOS'
    url: 'http://mirror.example.org/rocky/9/BaseOS/x86_64/os/'
packages:
{pkgs}
copyfiles:
  - src: 'files/motd'
    dest: '/etc/motd'
cmds:
  - cmd: 'echo {name}'
"""
        )
    return root
