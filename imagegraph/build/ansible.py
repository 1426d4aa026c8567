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
"""

from __future__ import annotations

import json
import shutil

from .work import Work

REMOTE_TMP = "/tmp/.imagegraph-ansible"


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
