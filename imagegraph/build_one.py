"""The job side of a Slurm build: `imagegraph build-one DIR LAYER --key KEY --result FILE`.

One job builds one key of one layer on a build node:

1. loads the layer directory and re-derives the layer's key (lock file,
   external parent digests), and refuses to build when it differs from the
   key the submit host planned (the directory differs between the hosts);
2. uses a container storage on node-local disk when `--graphroot` is given
   (overlay storage breaks on network filesystems);
3. pulls the parent by its key tag (a layer parent) or by the digest the
   key was computed from (an external parent), builds with buildah and
   pushes the image under its immutable key tag only (human tags are the
   submit host's publish step);
4. writes a JSON result document (key, image reference and digest, node,
   the package inventory read before commit,
   step durations) next to its log, and exits with a `JobExit` status that
   tells a failed build from a failed infrastructure.

SIGTERM (scancel) stops the running command; the working container is
removed as in any build, and the job exits 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
from enum import IntEnum
from pathlib import Path
from typing import Any

from . import runner as runner_mod
from .arch import emulation, host_arch, normalize_arch
from .errors import BuildError, ImagegraphError, PublishError, SpecError
from .key import compute_keys, key_tag
from .redact import redact

RESULT_VERSION = 1


class JobExit(IntEnum):
    """Exit statuses of `build-one`: the submit side reports them in words."""

    OK = 0
    BUILD_FAILED = 1  # a step of the layer's own build failed: fix the spec
    USAGE = 2  # the layer directory cannot be loaded on the node
    KEY_MISMATCH = 3  # the node's directory gives another key than the submit host planned
    INFRASTRUCTURE = 4  # pull, push, storage or tools failed: the node or the registry, not the spec
    CANCELLED = 143

    @classmethod
    def describe(cls, status: int) -> str:
        return {
            cls.OK: "ok",
            cls.BUILD_FAILED: "the build failed",
            cls.USAGE: "the layer directory could not be loaded on the build node",
            cls.KEY_MISMATCH: "the build node's layer directory gives another key",
            cls.INFRASTRUCTURE: "infrastructure failure: pull, push, storage or tools",
            cls.CANCELLED: "cancelled",
        }.get(status, "failed")


def result_path(log_file: Path) -> Path:
    """The result document beside a job's log: `<layer>-<run>.log` -> `<layer>-<run>.result.json`."""
    return log_file.with_name(log_file.stem + ".result.json")


def read_result(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_result(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, path)


class JobFailure(Exception):
    def __init__(self, status: JobExit, message: str):
        self.status = status
        super().__init__(message)


def use_node_storage(graphroot: str, runroot: str | None) -> Path:
    """Point buildah at a container storage on node-local disk for this process."""
    runroot = runroot or graphroot.rstrip("/") + "-run"
    Path(graphroot).mkdir(parents=True, exist_ok=True, mode=0o700)
    Path(runroot).mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = Path(runroot) / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{graphroot}"\nrunroot = "{runroot}"\n')
    os.environ["CONTAINERS_STORAGE_CONF"] = str(conf)
    return conf


def build_one(
    root: Path,
    layer: str,
    key: str,
    run_id: str,
    runner: runner_mod.Runner,
    timings: dict[str, float],
    arch: str | None = None,
) -> dict:
    """Build and push one layer's key; returns the result fields. Raises JobFailure.

    `arch` (a multi-arch layer's node, `layer` then being `<layer>@<arch>` or the
    layer id for the submit host's arch): the key is derived for that arch, the
    parent pulled for its platform, and the build made for it (emulated when the
    node is another arch).
    """
    from .build import (
        BuildRequest,
        ParentImage,
        WrongKeyImage,
        build_layer,
        pull_image,
        pull_key_image,
        remove_stale_containers,
    )
    from .graph import build_graph
    from .lockfile import load_lock
    from .project import load_project
    from .publish.push import push_layer
    from .publish.registry_client import RegistryClient
    from .reference import parse_reference, target_repository

    t = time.monotonic()
    try:
        lg = build_graph(load_project(root))
        a = normalize_arch(arch) if arch else None
        lid = lg.lookup(layer.rpartition("@")[0] if a and "@" in layer else layer)
    except (SpecError, ImagegraphError, ValueError) as exc:
        raise JobFailure(JobExit.USAGE, f"cannot load {root} on this node: {exc}") from exc
    if a is not None:
        # The submit host checked its own binfmt handlers; an emulated arch runs on this node's.
        emu = emulation(a)
        if not emu.usable:
            raise JobFailure(
                JobExit.INFRASTRUCTURE,
                f"this {host_arch()} node ({socket.gethostname()}) cannot run {a} binaries: {emu.problem}; "
                f"run `{emu.fix}` on it, or build {a} natively (executor.arch.{a} in imagegraph.yaml)",
            )
    # `buildah pull` of a multi-arch parent picks this arch's image from its index.
    platform = ("--arch", a.oci, "--os", "linux") if a else ()
    spec = lg.spec(lid)
    lock = load_lock(lg.project.root)
    client = RegistryClient()

    def digest_of(ref: str, s: Any) -> str | None:
        pinned = lock.parent_digest(ref) if lock else None
        if pinned:
            return pinned
        client.configure_for(s)
        return client.manifest_digest(ref)

    ancestors = lg.order({lid} | _ancestors(lg, lid))
    keys = compute_keys(lg, ancestors, digest_of, lock.upstream_of if lock else None, arch=a)
    if keys[lid].key != key:
        unknown = [a for a in ancestors if lg.parents[a].kind == "external" and keys[a].parent.digest is None]
        if unknown:
            raise JobFailure(
                JobExit.INFRASTRUCTURE,
                f"the registry of external parent {lg.spec(unknown[0]).parent} did not give its digest on "
                "this node, so the planned key cannot be checked; refusing to build",
            )
        raise JobFailure(
            JobExit.KEY_MISMATCH,
            f"this node's {root} gives key {keys[lid].key[:12]} for {lid}, the submit host planned "
            f"{key[:12]}: the layer directories differ (another checkout, or changed since `up` planned), "
            "or an external parent's tag moved since; refusing to build",
        )
    timings["key"] = round(time.monotonic() - t, 3)
    if not spec.publish_registry:
        raise JobFailure(JobExit.USAGE, f"{lid} has no publish_registry: a build job has nowhere to push it")
    repo = target_repository(spec).name
    ktag = key_tag(key)
    with _step(timings, "cleanup"):
        for name in remove_stale_containers(runner):
            runner.note("cleanup", f"removed working container {name} left by a dead job")
    link = lg.parents[lid]
    parent = None
    with _step(timings, "pull"):
        try:
            if link.kind == "layer":
                pspec = lg.spec(link.layer)
                pkey = keys[link.layer].key
                ref = f"{target_repository(pspec).name}:{key_tag(pkey)}"
                opts = tuple(o for o in pspec.registry_opts_push if o.startswith("--tls-verify"))
                runner.note("pull", f"pulling parent {ref}")
                parent = ParentImage(
                    image=pull_key_image(ref, pkey, (*opts, *platform), runner), ref=spec.parent, key=pkey
                )
            elif link.kind == "external":
                ref = spec.parent
                digest = keys[lid].parent.digest
                if digest:
                    ref = str(parse_reference(spec.parent).with_digest(digest))
                runner.note("pull", f"pulling parent {ref}")
                parent = ParentImage(
                    image=pull_image(ref, (*spec.registry_opts_pull, *platform), runner),
                    ref=spec.parent,
                    key=None,
                )
        except runner_mod.Cancelled:
            raise
        except WrongKeyImage as exc:  # not the node's fault: another node would pull the same
            raise JobFailure(JobExit.BUILD_FAILED, str(exc)) from exc
        except (ImagegraphError, RuntimeError) as exc:
            raise JobFailure(JobExit.INFRASTRUCTURE, f"pulling the parent failed: {exc}") from exc
    with _step(timings, "build"):
        try:
            from .resolve import locked_nevras

            locked = locked_nevras(keys[lid].inputs)
            req = BuildRequest(spec, key, parent, run_id, locked=locked)
            if a is not None:
                req = dataclasses.replace(req, arch=a, tag_suffix="" if a == host_arch() else f"-{a}")
            built = build_layer(req, runner)
        except runner_mod.Cancelled:
            raise
        except BuildError as exc:
            raise JobFailure(JobExit.BUILD_FAILED, str(exc)) from exc
        except ImagegraphError as exc:
            raise JobFailure(JobExit.INFRASTRUCTURE, str(exc)) from exc
    for step, seconds in built.steps:
        timings[f"build.{step}"] = seconds
    with _step(timings, "push"):
        try:
            pub = push_layer(spec, key, built.image_id, runner, tags=[], client=client)
        except runner_mod.Cancelled:
            raise
        except (PublishError, ImagegraphError) as exc:
            raise JobFailure(JobExit.INFRASTRUCTURE, f"pushing the key tag failed: {exc}") from exc
    out = {"image_ref": f"{repo}:{ktag}", "digest": pub.digest, "image_id": built.image_id}
    if built.inventory is not None:  # read on the node; the submit host records it and makes the SBOM
        out["inventory"] = built.inventory.to_json()
    return out


class _step:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.t = time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.name] = round(time.monotonic() - self.t, 3)


def _ancestors(lg: Any, lid: str) -> set[str]:
    out = set()
    p = lg.parent_layer(lid)
    while p is not None and p not in out:
        out.add(p)
        p = lg.parent_layer(p)
    return out


def main(argv: list[str]) -> int:
    """Entry point of `imagegraph build-one` (run by a Slurm job, not by people)."""
    from . import log as logmod

    p = argparse.ArgumentParser(prog="imagegraph build-one", description="build one layer key (a Slurm job)")
    p.add_argument("dir", type=Path)
    p.add_argument("layer")
    p.add_argument("--key", required=True)
    p.add_argument("--result", required=True, type=Path)
    p.add_argument("--run-id", default="")
    p.add_argument("--arch", default=None, help="a multi-arch layer's architecture for this node")
    p.add_argument("--graphroot", default=None)
    p.add_argument("--runroot", default=None)
    args = p.parse_args(argv)
    from .redact import register_environment

    register_environment()
    logmod.configure("json", "WARNING")  # the job log is the runner's; events only for warnings
    if args.graphroot:
        use_node_storage(args.graphroot, args.runroot)
    runner = runner_mod.Runner(args.layer, logfile=sys.stdout)
    started = time.time()
    timings: dict[str, float] = {}
    doc: dict[str, Any] = {
        "version": RESULT_VERSION,
        "layer": args.layer,
        "key": args.key,
        "run_id": args.run_id,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "node": socket.gethostname(),
        "started": started,
        "log_file": str(args.result.with_name(args.result.name.removesuffix(".result.json") + ".log")),
    }

    def on_signal(signum: int, _frame: Any) -> None:
        runner.note("cancel", f"{signal.Signals(signum).name}: stopping")
        threading.Thread(target=runner_mod.terminate_all, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    runner.note("job", f"build-one {args.layer} key {args.key[:12]} on {doc['node']} (job {doc['job_id']})")
    status = JobExit.OK
    try:
        doc.update(build_one(args.dir, args.layer, args.key, args.run_id, runner, timings, args.arch))
        doc["status"] = "ok"
    except runner_mod.Cancelled as exc:
        status, doc["status"], doc["error"] = JobExit.CANCELLED, "cancelled", redact(str(exc))
    except JobFailure as exc:
        status, doc["status"], doc["error"] = exc.status, "failed", redact(str(exc))[-4000:]
    except Exception as exc:  # a bug or a broken node is still a clear result
        status, doc["status"] = JobExit.INFRASTRUCTURE, "failed"
        doc["error"] = redact(f"internal error: {type(exc).__name__}: {exc}")
    doc["finished"] = time.time()
    timings["total"] = round(doc["finished"] - started, 3)
    doc["durations"] = timings
    doc["exit_status"] = int(status)
    doc["category"] = JobExit.describe(status)
    runner.note(
        "result", f"{doc['status']} ({doc['category']})" + (f": {doc['error']}" if doc.get("error") else "")
    )
    try:
        write_result(args.result, doc)
    except OSError as exc:
        runner.note("result", f"cannot write the result document {args.result}: {exc}")
        return int(JobExit.INFRASTRUCTURE)
    return int(status)
