"""buildah working containers and local images: names, ownership, clean-up.

A build works in one buildah container named
`imagegraph-<name, '/' -> '-'>-<key[:12]>-<6 random>`. buildah cannot label
containers, so before creating one we write an ownership record
`<records dir>/<container>.json` holding the run id, the pid and that pid's
start time (so a recycled pid does not pass for the dead run). A later run's
`remove_stale_containers` removes every `imagegraph-*` container whose owner
is gone: after a crash, a SIGKILL or a reboot (the records live under /run,
which a reboot empties, and a container without a record has no live owner
since the record is always written first).

Every buildah call gets `BUILDAH_ISOLATION=chroot` unless the user set it:
it is the only isolation that works on every build host we run on (in CI
containers, without user namespaces).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from ..runner import Runner

PREFIX = "imagegraph-"
TMP_PREFIX = "imagegraph-build-"  # a build's temporary directory (build/layer.py)


def buildah_env() -> dict[str, str]:
    """Extra environment for buildah (and tools that call buildah, like ansible)."""
    return {} if os.environ.get("BUILDAH_ISOLATION") else {"BUILDAH_ISOLATION": "chroot"}


def records_dir() -> Path:
    """Where ownership records of working containers live (per user, emptied at reboot).

    root always uses /run/imagegraph/containers, whatever XDG_RUNTIME_DIR says
    (sudo and login shells differ), so that two runs as root always see each
    other's records and never take the other's containers for orphans.
    """
    override = os.environ.get("IMAGEGRAPH_RUNTIME_DIR")
    if override:
        return Path(override) / "containers"
    if os.geteuid() == 0:
        return Path("/run/imagegraph/containers")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "imagegraph" / "containers"
    import tempfile

    return Path(tempfile.gettempdir()) / f"imagegraph-{os.getuid()}" / "containers"


def container_name(layer: str, key: str) -> str:
    import secrets  # a build names containers; a plan only asks local storage (0.005 s)

    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", layer.replace("/", "-"))
    return f"{PREFIX}{safe}-{key[:12]}-{secrets.token_hex(3)}"


def _start_time(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19]


def pid_alive(pid: int, start_time: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start_time is None:
        return True
    current = _start_time(pid)
    return current is None or current == start_time


def record_owner(
    container: str, layer: str, key: str, run_id: str, pid: int | None = None, tmp: Path | None = None
) -> Path:
    """Write the ownership record of a container we are about to create (with the build's
    temporary directory, `tmp`, so a sweep after its process died removes that too)."""
    pid = os.getpid() if pid is None else pid
    d = records_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{container}.json"
    data = {
        "container": container,
        "layer": layer,
        "key": key,
        "run_id": run_id,
        "pid": pid,
        "pid_start": _start_time(pid),
        "created": time.time(),
        "tmp": str(tmp) if tmp else None,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return path


def forget_owner(container: str) -> None:
    (records_dir() / f"{container}.json").unlink(missing_ok=True)


def _remove_owned_tmp(owner: dict | None) -> None:
    """A dead build's temporary directory (only one of ours, in the temporary directory)."""
    import shutil
    import tempfile

    tmp = (owner or {}).get("tmp")
    if isinstance(tmp, str) and os.path.dirname(tmp) == tempfile.gettempdir():
        if os.path.basename(tmp).startswith(TMP_PREFIX):
            shutil.rmtree(tmp, ignore_errors=True)


def read_owner(container: str) -> dict | None:
    try:
        return json.loads((records_dir() / f"{container}.json").read_text())
    except (OSError, ValueError):
        return None


def list_containers(runner: Runner) -> list[str]:
    out = runner.output(["buildah", "containers", "--json"], step="containers", env=buildah_env())
    data = json.loads(out or "null") or []
    return [c.get("containername", "") for c in data]


def remove_container(name: str, runner: Runner, step: str = "cleanup") -> None:
    """Unmount and remove a working container; never raises (runs after cancellation too)."""
    env = buildah_env()
    runner.run(["buildah", "umount", name], step=step, env=env, check=False, cleanup=True, loglevel="DEBUG")
    runner.run(["buildah", "rm", name], step=step, env=env, check=False, cleanup=True, loglevel="WARNING")


def stale_containers(runner: Runner, names: list[str] | None = None) -> list[tuple[str, dict | None]]:
    """imagegraph working containers whose owning process is gone, with their owner records."""
    out = []
    for name in list_containers(runner) if names is None else names:
        if not name.startswith(PREFIX):
            continue
        owner = read_owner(name)
        if owner and pid_alive(int(owner.get("pid", 0)), owner.get("pid_start")):
            continue
        out.append((name, owner))
    return out


def remove_stale_containers(runner: Runner) -> list[str]:
    """Remove imagegraph working containers whose owning process is gone; return their names."""
    removed = []
    names = list_containers(runner)
    for name, owner in stale_containers(runner, names):
        runner.note("cleanup", f"removing stale working container {name}" + _owner_text(owner))
        remove_container(name, runner)
        _remove_owned_tmp(owner)
        forget_owner(name)
        removed.append(name)
    # records whose container is already gone and whose owner is dead are litter too
    d = records_dir()
    if d.is_dir():
        for rec in d.glob(f"{PREFIX}*.json"):
            name = rec.stem
            if name in names:
                continue
            owner = read_owner(name)
            if not owner or not pid_alive(int(owner.get("pid", 0)), owner.get("pid_start")):
                _remove_owned_tmp(owner)
                rec.unlink(missing_ok=True)
    return removed


def _owner_text(owner: dict | None) -> str:
    if not owner:
        return " (no owner record)"
    run = f"run {owner['run_id']}, " if owner.get("run_id") else ""
    return f" ({run}pid {owner.get('pid')} is gone)"


def local_image_id(ref: str, runner: Runner | None = None) -> str | None:
    """The full image ID of `ref` (a reference or an ID) in local storage, or None."""
    runner = runner or Runner()
    res = runner.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
        step="inspect",
        env=buildah_env(),
        check=False,
        capture=True,
        loglevel="DEBUG",
    )
    image_id = res.stdout.strip()
    return image_id if res.returncode == 0 and image_id else None


def pull_image(ref: str, opts: Sequence[str], runner: Runner) -> str:
    """`buildah pull` an image (with the spec's registry_opts_pull); return its image ID."""
    out = runner.output(
        ["buildah", "pull", "--quiet", *opts, ref], step="pull", env=buildah_env(), loglevel="INFO"
    )
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if lines and re.fullmatch(r"[0-9a-f]{64}", lines[-1].strip()):
        return lines[-1].strip()
    image_id = local_image_id(ref, runner)
    if not image_id:
        raise RuntimeError(f"buildah pull {ref} reported no image ID")
    return image_id


class WrongKeyImage(RuntimeError):
    """A pulled key tag (`ig-<key>`) holds an image built for another key."""


def pull_key_image(ref: str, key: str, opts: Sequence[str], runner: Runner) -> str:
    """`pull_image` of a layer's key tag, checked: the image's `io.imagegraph.key` label must be
    `key`. Key tags are never moved by imagegraph; one that was (a hand `skopeo copy`, another
    tool) would give a child the wrong parent, or a human tag the wrong image, under a right key."""
    image = pull_image(ref, opts, runner)
    check_key_label(ref, key, inspect_labels(image, runner))
    return image


def check_key_label(ref: str, key: str, labels: dict[str, str]) -> None:
    """Raise WrongKeyImage unless `labels` (of the image `ref` names) are those of a build of `key`."""
    held = labels.get("io.imagegraph.key", "")
    if held != key:
        shown = f"key {held[:12]}…" if held else "no imagegraph key"
        raise WrongKeyImage(
            f"{ref} holds an image of {shown}, not of key {key[:12]}…: the key tag was overwritten "
            "outside imagegraph; rebuild that layer (`imagegraph up --force LAYER`) to push it again"
        )


def inspect_labels(ref: str, runner: Runner) -> dict[str, str]:
    """Labels of a local image (used by tests and by the executor to check what it built)."""
    out = runner.output(["buildah", "inspect", "--type", "image", ref], step="inspect", env=buildah_env())
    data = json.loads(out)  # buildah 1.28 has no `json` template function: parse it all
    return (data.get("OCIv1", {}).get("config", {}) or {}).get("Labels") or {}
