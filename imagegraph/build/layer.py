"""Build one layer with buildah: `build_layer(BuildRequest, Runner) -> BuildResult`.

The steps follow image-builder's order: `buildah from` (scratch or the
parent's image ID, never pulling: the executor pulled it once per run) ->
mount -> repos -> modules -> package_groups -> packages (see dnf, zypper,
apt) or the ansible playbooks -> remove_packages -> copyfiles[i] -> cmds[i]
-> /etc/imagegraph/layer.json (stamp.py) -> package inventory
(packages.py) -> labels -> commit to `localhost/imagegraph/<name>:<key tag>` -> tags
(`localhost/<name>:<tag>` when publish_local). Each step is noted in the
layer log and timed.

Whatever happens, the working container is unmounted and removed and the
build's temporary directory deleted (the clean-up commands run even after
cancellation). A failure becomes `BuildError` naming the step (`packages`,
`copyfiles[0]`, `cmds[2]` ...) quoting the command's cause lines, then its last lines;
`Cancelled` is re-raised as it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from ..arch import Arch
from ..errors import BuildError
from ..keytag import key_tag
from ..labels import image_labels as spec_image_labels
from ..packages import Inventory, read_inventory
from ..redact import redact
from ..runner import Cancelled, CommandError, Runner
from ..spec import LayerSpec
from . import ansible
from .backends import PACKAGE_MANAGERS
from .container import TMP_PREFIX, container_name, forget_owner, record_owner, remove_container
from .stamp import write_stamp
from .work import Work

LOCAL_REPO = "localhost/imagegraph"


@dataclass(frozen=True)
class ParentImage:
    image: str  # what to `buildah from`: an image ID or a full reference
    ref: str  # the human reference (for the org.openchami.image.parent label)
    key: str | None  # the parent layer's imagegraph key, None for an external parent
    digest: str | None = None  # an external parent's manifest digest (the one in the key)


@dataclass(frozen=True)
class BuildRequest:
    spec: LayerSpec
    key: str  # the layer's content key (64 hex)
    parent: ParentImage | None  # None when spec.parent == "scratch"
    run_id: str = ""  # recorded with the working container so a later run can clean up after a dead one
    _: KW_ONLY  # the rest by name: two optional fields of similar types were once swapped by position
    # The node's architecture for a multi-arch layer (None: the host's, as single-arch layers always
    # were); `tag_suffix` names its publish_local tags (`name:tag-aarch64`).
    arch: Arch | None = None
    tag_suffix: str = ""
    locked: tuple[str, ...] | None = None  # exact packages from imagegraph.lock (NEVRAs); None: the spec's


@dataclass
class BuildResult:
    image_id: str  # full image ID
    image_ref: str  # local reference committed: localhost/imagegraph/<name>:<key tag>
    steps: list[tuple[str, float]]  # (step name, seconds)
    inventory: Inventory | None = None  # the installed packages, read before commit


def local_ref(spec: LayerSpec, key: str) -> str:
    return f"{LOCAL_REPO}/{spec.name}:{key_tag(key)}"


def image_labels(
    spec: LayerSpec, key: str, parent: ParentImage | None, arch: Arch | None = None
) -> dict[str, str]:
    """Labels set at commit: the spec's (labels.py, all key inputs) and imagegraph's key labels.

    io.imagegraph.* win over everything, since the planner trusts them.
    """
    labels = spec_image_labels(spec, arch)
    labels["io.imagegraph.key"] = key
    labels["io.imagegraph.parent-key"] = (parent.key or "") if parent else ""
    return labels


def build_layer(req: BuildRequest, runner: Runner) -> BuildResult:
    """Build `req.spec` on its parent and commit it; see the module docstring."""
    spec = req.spec
    name = container_name(spec.name, req.key)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    work = Work(
        spec=spec,
        key=req.key,
        runner=runner,
        container=name,
        tmp=tmp,
        scratch=req.parent is None,
        arch=req.arch,
        locked=req.locked,
    )
    created = False
    try:
        record_owner(name, spec.name, req.key, req.run_id, tmp=tmp)
        with work.step("from", f"from {req.parent.ref if req.parent else 'scratch'}"):
            source = req.parent.image if req.parent else "scratch"
            created = True  # a failure half-way through `buildah from` may leave the container
            # The image config's platform comes from here (scratch) or from the parent's image.
            platform = ["--arch", req.arch.oci, "--os", "linux"] if req.arch else []
            work.run(["buildah", "from", "--pull=never", *platform, "--name", name, source], capture=True)
        with work.step("mount"):
            work.mount = Path(work.run(["buildah", "mount", name], capture=True).stdout.strip())
            runner.note("mount", f"{name} mounted at {work.mount}")
        if spec.layer_type == "ansible":
            ansible.run_playbooks(work)
        else:
            _base_layer(work)
        write_stamp(work, req.parent)
        with work.step("inventory"):  # the mount is what commit snapshots: same packages, no extra mount
            inventory = read_inventory(work.mount, runner)
            if req.locked and (wrong := locked_mismatches(req.locked, inventory, spec.remove_packages)):
                raise BuildError(
                    spec.name,
                    "inventory",
                    "the image does not hold the locked versions: " + "; ".join(wrong[:10]),
                )
        image_id = _commit(work, req)
        return BuildResult(image_id, local_ref(spec, req.key), work.steps, inventory)
    except Cancelled:
        raise
    except BuildError:
        raise
    except CommandError as exc:
        shown = redact(" ".join(exc.argv))
        if len(shown) > 300:
            shown = shown[:300] + "..."
        raise BuildError(
            spec.name,
            exc.step or work.current,
            f"command exited with status {exc.returncode}: {shown}",
            [redact(t) for t in exc.tail],
        ) from exc
    except Exception as exc:
        raise BuildError(spec.name, work.current, f"{type(exc).__name__}: {exc}") from exc
    finally:
        if created:
            remove_container(name, runner)
        forget_owner(name)
        shutil.rmtree(tmp, ignore_errors=True)


def locked_mismatches(
    locked: tuple[str, ...], inventory: Inventory, removed: tuple[str, ...] = ()
) -> list[str]:
    """Locked packages the image holds in another version (`name have (locked want)`).

    A locked package absent from the image is not one: remove_packages or a cmd took it out.
    """
    have: dict[str, set[str]] = {}
    for p in inventory.packages:
        v = p.version if ":" in p.version or inventory.format != "rpm" else f"0:{p.version}"
        have.setdefault(p.name, set()).add(v)
    gone = set(removed)
    wrong = []
    for arg in locked:
        if "=" in arg:  # apt: name=version; zypper: name.arch=version
            name, version = arg.split("=", 1)
            if "." in name and not any(p == name for p in have):
                name = name.rsplit(".", 1)[0]
            if inventory.format == "rpm" and ":" not in version:
                version = f"0:{version}"
        else:  # dnf: name-epoch:version-release.arch
            nevr = arg.rsplit(".", 1)[0]
            name, version = nevr.rsplit("-", 2)[0], "-".join(nevr.rsplit("-", 2)[1:])
        if name in gone or not have.get(name) or version in have[name]:
            continue
        wrong.append(f"{name} {', '.join(sorted(have[name]))} (locked {version})")
    return wrong


def _base_layer(work: Work) -> None:
    spec = work.spec
    backend = PACKAGE_MANAGERS.get(spec.pkg_manager or "")
    if backend is None:
        raise BuildError(spec.name, "packages", f"unknown pkg_manager {spec.pkg_manager!r}")
    backend.install(work)
    if spec.remove_packages:
        with work.step("remove_packages", " ".join(spec.remove_packages)):
            backend.remove(work)
    for i, cf in enumerate(spec.copyfiles):
        with work.step(f"copyfiles[{i}]", f"{cf.src} -> {cf.dest}"):
            src = os.path.abspath(cf.source)  # relative to the spec's directory, not to buildah's cwd
            work.run(["buildah", "copy", *cf.opts, work.container, src, cf.dest], capture=True)
    for i, cmd in enumerate(spec.cmds):
        with work.step(f"cmds[{i}]", cmd.cmd):
            # image-builder runs `bash -c`; images without bash (busybox, minimal) get /bin/sh
            shell = "bash" if work.has("/bin/bash", "/usr/bin/bash") else "/bin/sh"
            work.buildah_run([shell, "-c", cmd.cmd], loglevel=cmd.loglevel, stdout_level="INFO")


def _commit(work: Work, req: BuildRequest) -> str:
    spec = work.spec
    with work.step("labels"):
        argv = ["buildah", "config"]
        for k, v in image_labels(spec, req.key, req.parent, req.arch).items():
            argv += ["--label", f"{k}={v}"]
        work.run([*argv, work.container])
    ref = local_ref(spec, req.key)
    with work.step("commit", f"commit {ref}"):
        iidfile = work.tmp / "iid"
        argv = ["buildah", "commit", "--quiet", "--iidfile", str(iidfile)]
        epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if epoch.isdigit():
            argv += ["--timestamp", epoch]
        work.run([*argv, work.container, ref], capture=True)
        image_id = iidfile.read_text().strip().removeprefix("sha256:")
    if spec.publish_local:
        with work.step("tag", ", ".join(spec.publish_tags)):
            refs = [f"localhost/{spec.name}:{t}{req.tag_suffix}" for t in spec.publish_tags]
            work.run(["buildah", "tag", image_id, *refs])
    return image_id
