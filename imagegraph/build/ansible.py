"""`layer_type: ansible`: run the spec's playbooks against the working container.

The container is reached with the `buildah` connection plugin
(containers.podman, shipped by Debian's `ansible` package; ansible-core alone
lacks it). A generated inventory puts the container in `all`, gives it the
spec's `vars` as host vars and makes it a member of each of the spec's
`groups`, so playbooks written for image-builder (`hosts: compute`) work
unchanged. User inventories (`inventory`) are passed too, and `--limit`
keeps the play on the container. Ansible's local state (~/.ansible, temp
files) goes to the build's private temp directory, and its remote temp
directory inside the image is removed after the run.

Most modules need python3 in the image; `raw` does not.

The key (`key_inputs`) holds the *project files* a playbook can pull in
without naming them: `PROJECT_ENTRIES` and `PROJECT_GLOBS` beside each
playbook, group_vars/ and host_vars/ beside each inventory, and ansible.cfg
in the spec's directory (where ansible-playbook runs, so it applies), minus
`.git` and the state directory `.imagegraph` anywhere in them.
Other layouts list their files in `options.key_paths`.
"""

from __future__ import annotations

import json
import posixpath
import shutil
from pathlib import Path
from typing import Any

from ..digest import path_digest
from ..spec import LayerSpec
from .work import Work

NAME = "ansible"
VERSION = 1  # bump when a change below changes what an image contains
PROJECT_ENTRIES = (
    "ansible.cfg",
    "roles",
    "group_vars",
    "host_vars",
    "templates",
    "files",
    "vars",
    "tasks",
    "handlers",
    "library",
    "module_utils",
    "filter_plugins",
    "lookup_plugins",
    "collections/ansible_collections",
)
INVENTORY_ENTRIES = ("group_vars", "host_vars")  # read beside an inventory file too
PROJECT_GLOBS = ("collections/requirements*", "requirements*.yml", "requirements*.yaml")
EXCLUDED = frozenset({".git", ".imagegraph"})  # VCS metadata and imagegraph's state directory

REMOTE_TMP = "/tmp/.imagegraph-ansible"


def project_files(spec: LayerSpec) -> list[tuple[str, Path]]:
    """(name, host path) of every project file or directory that exists, names as the spec spells them.

    A name is relative to the spec's directory (or absolute when the spec's path is), so
    keys do not depend on where the project directory is or how it was named on the command line.
    """

    def parent_of(written: str) -> str:
        return posixpath.dirname(posixpath.normpath(written)) or "."

    # (directory as the spec spells it, what ansible reads there)
    places: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [(".", ("ansible.cfg",), ())]
    places += [(parent_of(w), PROJECT_ENTRIES, PROJECT_GLOBS) for w in spec.playbooks]
    places += [(parent_of(w), INVENTORY_ENTRIES, ()) for w in spec.inventory]
    found: dict[str, Path] = {}
    for d, entries, globs in places:
        host_dir = Path(d) if d.startswith("/") else spec.directory / d
        candidates = [host_dir / e for e in entries]
        for pattern in globs:
            candidates += sorted(host_dir.glob(pattern))
        for c in candidates:
            if c.name in EXCLUDED or not (c.exists() or c.is_symlink()):
                continue
            name = posixpath.normpath(posixpath.join(d, c.relative_to(host_dir).as_posix()))
            found.setdefault(name, c)
    return sorted(found.items())


def key_inputs(spec: LayerSpec) -> dict[str, Any]:
    """The ansible project files a playbook can pull in, by content (see the module docstring)."""
    return {
        "connection": "buildah",
        "project": [{"path": n, "content": path_digest(p, EXCLUDED)} for n, p in project_files(spec)],
    }


def inventory(container: str, groups: tuple[str, ...], host_vars: dict) -> dict:
    """The generated inventory (YAML is a superset of JSON: written as JSON)."""
    hostvars = {"ansible_connection": "buildah", "ansible_remote_tmp": REMOTE_TMP, **host_vars}
    inv: dict = {"all": {"hosts": {container: hostvars}}}
    if groups:
        inv["all"]["children"] = {g: {"hosts": {container: None}} for g in groups}
    return inv


def run_playbooks(work: Work) -> None:
    spec = work.spec
    with work.step("ansible", f"playbooks {', '.join(spec.playbooks)} on groups {', '.join(spec.groups)}"):
        inv_path = work.tmp / "inventory.yml"
        inv_path.write_text(json.dumps(inventory(work.container, spec.groups, spec.vars), indent=2))
        argv = ["ansible-playbook", "-c", "buildah", "-i", str(inv_path)]
        for p in spec.inventory_paths:
            argv += ["-i", str(p)]
        argv += ["--limit", work.container, *(str(p) for p in spec.playbook_paths)]
        home = work.tmp / "ansible-home"
        env = {
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "false",
            **work.proxy_env(),
        }
        try:
            work.run(argv, env=env, cwd=spec.directory, stdout_level="INFO", loglevel="WARNING")
        finally:
            if work.mount is not None:
                shutil.rmtree(work.image_path(REMOTE_TMP), ignore_errors=True)
