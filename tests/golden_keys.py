"""Golden key documents: a fixture project with one layer per build backend and option family.

`documents(root)` writes the project under `root` (file modes pinned, so the
umask does not move a key), loads it through the real project and graph
code, and computes every layer's key document with the host-dependent inputs
pinned (architecture x86_64, the external parent's digest, the lock file's
fingerprints). tests/test_key.py compares them with tests/golden/*.json;
scripts/regen-golden-keys.py rewrites those after a deliberate change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imagegraph.arch import Arch
from imagegraph.graph import build_graph
from imagegraph.key import compute_keys
from imagegraph.project import load_project

GOLDEN_DIR = Path(__file__).parent / "golden"
ARCH = Arch.X86_64
EXTERNAL_DIGEST = "sha256:" + "e" * 64
UPSTREAM = {"repo:BaseOS": "sha256:" + "b" * 64}

FILES: dict[str, str] = {
    "dnf-scratch.yaml": """\
options:
  layer_type: base
  name: rocky-base
  pkg_manager: dnf
  parent: scratch
  publish_tags: ['9.5', latest]
  publish_registry: registry.example.org/site
repos:
  - alias: BaseOS
    url: https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/
    gpg: https://dl.rockylinux.org/pub/rocky/RPM-GPG-KEY-Rocky-9
packages: [kernel, dracut-live]
cmds:
  - cmd: dracut --add dmsquash-live --force
    loglevel: INFO
""",
    "dnf-parent.yaml": """\
options:
  layer_type: base
  name: compute
  pkg_manager: dnf
  parent: registry.example.org/site/rocky-base:9.5
  publish_tags: '9.5'
  publish_registry: registry.example.org/site
  labels: {site: example}
packages: [chrony]
remove_packages: [firewalld]
""",
    "modules.yaml": """\
options:
  layer_type: base
  name: modules
  pkg_manager: dnf
  releasever: '9'
  gpgcheck: false
  parent: registry.example.org/site/rocky-base:9.5
modules:
  enable: ['nodejs:18']
  install: ['nodejs:18/common']
package_groups: ['Development Tools']
""",
    "copyfiles.yaml": """\
options:
  layer_type: base
  name: copyfiles
  pkg_manager: dnf
  parent: registry.example.org/site/rocky-base:9.5
copyfiles:
  - src: files/chrony.conf
    dest: /etc/chrony.conf
    opts: ['--chown 0:0', '--chmod 0644']
  - src: files/profile.d
    dest: /etc/profile.d
""",
    "key-paths.yaml": """\
options:
  layer_type: base
  name: key-paths
  pkg_manager: dnf
  parent: scratch
  key_paths: [extra/site.conf, extra/tree]
cmds: ['echo built']
""",
    "zypper.yaml": """\
options:
  layer_type: base
  name: suse-base
  pkg_manager: zypper
  parent: scratch
repos:
  - alias: oss
    url: https://download.opensuse.org/distribution/leap/15.6/repo/oss/
    priority: 90
package_groups: [base]
packages: [kernel-default]
""",
    "apt.yaml": """\
options:
  layer_type: base
  name: debian-base
  pkg_manager: apt
  parent: scratch
packages: [systemd-sysv, linux-image-amd64]
""",
    "apt-repo.yaml": """\
options:
  layer_type: base
  name: ubuntu-base
  pkg_manager: apt
  parent: scratch
  releasever: noble
repos:
  - alias: ubuntu
    url: http://archive.ubuntu.com/ubuntu
    components: [main, universe]
packages: [systemd-sysv]
""",
    "external.yaml": """\
options:
  layer_type: base
  name: external
  pkg_manager: dnf
  parent: docker.io/library/rockylinux:9
packages: [vim-minimal]
""",
    "ansible.yaml": """\
options:
  layer_type: ansible
  name: compute-ansible
  parent: registry.example.org/site/compute:9.5
  groups: [compute]
  playbooks: play/site.yaml
  inventory: inventory/hosts.yaml
  vars: {ntp_server: time.example.org}
""",
    "files/chrony.conf": "server time.example.org iburst\n",
    "files/profile.d/site.sh": "export SITE=example\n",
    "files/profile.d/proxy.sh": "export no_proxy=.example.org\n",
    "extra/site.conf": "site=example\n",
    "extra/tree/a": "a\n",
    "ansible.cfg": "[defaults]\nforks = 1\n",
    "play/site.yaml": "- hosts: compute\n  roles: [ntp]\n",
    "play/roles/ntp/tasks/main.yml": "- template: {src: chrony.conf.j2, dest: /etc/chrony.conf}\n",
    "play/roles/ntp/templates/chrony.conf.j2": "server {{ ntp_server }} iburst\n",
    "play/roles/ntp/.git/HEAD": "ref: refs/heads/main\n",
    "play/group_vars/compute.yaml": "ntp_server: time.example.org\n",
    "play/collections/requirements.yml": "collections: [containers.podman]\n",
    "inventory/hosts.yaml": "all: {}\n",
    "inventory/host_vars/node.yaml": "x: 1\n",
}


def write_project(root: Path) -> Path:
    """The fixture project under `root`, every file 0644 and every directory 0755."""
    for name, text in FILES.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return root


def documents(root: Path) -> dict[str, dict]:
    """{layer: {"key", "inputs"}} of the fixture project written under `root`."""
    lg = build_graph(load_project(write_project(root)))
    keys = compute_keys(
        lg,
        lg.order(),
        digest_of=lambda ref, spec: EXTERNAL_DIGEST,
        upstream_of=lambda spec: UPSTREAM if spec.name == "rocky-base" else {},
        arch=ARCH,
    )
    return {lid: {"key": lk.key, "inputs": lk.inputs} for lid, lk in keys.items()}


def render(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_golden(root: Path) -> list[Path]:
    """Rewrite tests/golden/<layer>.json; returns the files written."""
    GOLDEN_DIR.mkdir(exist_ok=True)
    for old in GOLDEN_DIR.glob("*.json"):
        old.unlink()
    out = []
    for lid, doc in documents(root).items():
        p = GOLDEN_DIR / f"{lid}.json"
        p.write_text(render(doc))
        out.append(p)
    return out
