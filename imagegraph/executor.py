"""Running a Plan on this machine: `up`.

`LocalExecutor` is the scheduler's executor for one build host: for a
`build` action it finds the exact parent image (the one this run just built,
or the one recorded for the parent's key, or the key tag pulled from the
registry; never a mutable tag), builds with buildah, records the build
atomically, then publishes; for a `publish` action it publishes the image
that already exists for the key. Every command goes through a per-layer
`Runner` writing `<state dir>/logs/<layer>-<run id>.log`. Given a
`BuildService` (slurm.py), the build itself happens there instead, and the
publishing here.

`run_up` wraps a run: the state-directory lock (one run at a time),
clean-up of working containers left by dead runs, signal handling
(Ctrl-C/SIGTERM stop running commands and start nothing new), the run
record, the result document and the last-success marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from . import runner as runner_mod
from .build import BuildRequest, ParentImage, build_layer, local_image_id, pull_image, remove_stale_containers
from .buildservice import BuildService
from .errors import BuildError, ImagegraphError, LockHeldError, PublishError
from .key import key_tag
from .log import bind_run, get_logger
from .plan import Action, LayerPlan, Plan, local_key_ref
from .redact import redact, redact_obj
from .runner import CommandError, Runner
from .scheduler import EventHook, LayerResult, RunResult, Scheduler
from .spec import LayerSpec
from .state import State, default_run_id


class LocalExecutor:
    """Builds and publishes layers on this host (see module docstring)."""

    def __init__(
        self, plan: Plan, state: State, state_dir: Path, run_id: str, builds: BuildService | None = None
    ):
        self.plan = plan
        self.builds = builds  # None: build here; else a service builds elsewhere (Slurm)
        self.state = state
        self.state_dir = state_dir
        self.run_id = run_id
        self.log_dir = state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.work_dir = state_dir / "work"
        self._pulled: dict[str, str] = {}
        self._pull_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._registry = None

    # ------------------------------------------------------------------ helpers

    def registry(self):
        with self._lock:
            if self._registry is None:
                from .publish.registry import RegistryClient

                self._registry = RegistryClient()
            return self._registry

    @contextlib.contextmanager
    def _layer_log(self, layer: str) -> Iterator[tuple[IO[str], Path]]:
        path = self.log_dir / f"{layer}-{self.run_id}.log"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        # logs/<layer>.log always points at the newest build log, from the moment it starts.
        latest = self.log_dir / f"{layer}.log"
        with contextlib.suppress(OSError):
            tmp = latest.with_suffix(f".log.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(path.name)
            os.replace(tmp, latest)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f, path

    def _pull_once(self, ref: str, opts: tuple[str, ...], runner: Runner) -> str:
        """Pull an image at most once per run, however many layers need it."""
        with self._lock:
            lock = self._pull_locks.setdefault(ref, threading.Lock())
        with lock:
            if ref not in self._pulled:
                runner.note("pull", f"pulling {ref}")
                self._pulled[ref] = pull_image(ref, opts, runner)
            return self._pulled[ref]

    def _key_image(self, lid: str, runner: Runner) -> str:
        """The image for a layer's planned key: local when known, else its key tag from the registry."""
        lp = self.plan.layers[lid]
        spec = self.plan.graph.spec(lid)
        if lp.image_id and local_image_id(lp.image_id, runner):
            return lp.image_id
        local = local_image_id(local_key_ref(spec, lp.key), runner)
        if local:
            return local
        if spec.publish_registry:
            ref = f"{spec.publish_registry}/{spec.name}:{key_tag(lp.key)}"
            opts = tuple(o for o in spec.registry_opts_push if o.startswith("--tls-verify"))
            return self._pull_once(ref, opts, runner)
        raise BuildError(lid, "parent", f"no image for key {lp.key[:12]} locally or in a registry")

    def _parent(self, lp: LayerPlan, parents: dict[str, LayerResult], runner: Runner) -> ParentImage | None:
        spec = self.plan.graph.spec(lp.layer)
        link = self.plan.graph.parents[lp.layer]
        if link.kind == "scratch":
            return None
        if link.kind == "layer":
            pres = parents.get(link.layer)
            image = pres.image_id if pres and pres.image_id else self._key_image(link.layer, runner)
            return ParentImage(image=image, ref=spec.parent, key=self.plan.layers[link.layer].key)
        ref = spec.parent
        digest = self.plan.keys[lp.layer].parent.digest if lp.layer in self.plan.keys else None
        if digest:
            from .publish.registry import parse_reference

            # Exactly the manifest the key was computed from (the lock file's, or the registry's at
            # plan time), not whatever the tag points at now.
            ref = str(parse_reference(spec.parent).with_digest(digest))
        image = self._pull_once(ref, spec.registry_opts_pull, runner)
        return ParentImage(image=image, ref=spec.parent, key=None)

    # ------------------------------------------------------------------ execute

    def execute(self, lp: LayerPlan, parents: dict[str, LayerResult]) -> LayerResult:
        spec = self.plan.graph.spec(lp.layer)
        with self._layer_log(lp.layer) as (logf, log_path):
            try:
                return self._execute(lp, parents, spec, logf, log_path)
            except ImagegraphError as exc:
                exc.log_file = str(log_path)  # the scheduler's failure result points at the full log
                Runner(lp.layer, logf).note("result", f"failed: {redact(str(exc))}")
                raise

    def _execute(
        self, lp: LayerPlan, parents: dict[str, LayerResult], spec: LayerSpec, logf: IO[str], log_path: Path
    ) -> LayerResult:
        runner = Runner(lp.layer, logf)
        runner.note("plan", f"{lp.action}: " + "; ".join(r.message for r in lp.reasons))
        t0 = time.time()
        image_ref = None
        if lp.action == Action.BUILD:
            parent = None
            try:
                parent = None if self.builds else self._parent(lp, parents, runner)
                req = BuildRequest(spec, lp.key, parent, self.run_id)
                built = self.builds.build(lp, parent) if self.builds else build_layer(req, runner)
            except (ImagegraphError, RuntimeError) as exc:
                self._record_failed(lp, spec, parent, t0, exc)
                if isinstance(exc, CommandError):
                    raise BuildError(lp.layer, exc.step or "parent", str(exc), exc.tail) from exc
                if isinstance(exc, RuntimeError):
                    raise BuildError(lp.layer, "parent", str(exc)) from exc
                raise
            image_id, image_ref = built.image_id, built.image_ref
            self._record_build(lp, spec, parent, t0, "ok", image_id=image_id, image_ref=image_ref)
            runner.note("build", f"built {image_ref} in {time.time() - t0:.1f} s")
        else:
            image_id = None  # found lazily: a registry-only publish needs no local image
        published = self._publish(lp, spec, image_id, runner)
        return LayerResult(
            lp.layer,
            lp.action,
            "ok",
            duration=time.time() - t0,
            image_id=image_id or lp.image_id,
            image_ref=image_ref,
            published=published,
            log_file=str(log_path),
        )

    def _record_failed(
        self, lp: LayerPlan, spec: LayerSpec, parent: ParentImage | None, t0: float, exc: Exception
    ) -> None:
        status = "cancelled" if isinstance(exc, runner_mod.Cancelled) else "failed"
        with contextlib.suppress(Exception):  # the failure itself is what must reach the user
            self._record_build(lp, spec, parent, t0, status, error=redact(str(exc))[-2000:])

    def _record_build(
        self,
        lp: LayerPlan,
        spec: LayerSpec,
        parent: ParentImage | None,
        t0: float,
        status: str,
        *,
        image_id: str | None = None,
        image_ref: str | None = None,
        error: str | None = None,
    ) -> None:
        self.state.record_build(
            run_id=self.run_id,
            layer=lp.layer,
            key=lp.key,
            inputs=lp.inputs,
            image_id=image_id,
            image_ref=image_ref,
            spec_file=str(spec.path),
            parent_key=parent.key if parent else None,
            started=t0,
            finished=time.time(),
            status=status,
            error=error,
        )

    # ------------------------------------------------------------------ publish

    def _record_publication(
        self,
        lp: LayerPlan,
        target: str,
        locations: list,
        digest: str | None = None,
        detail: dict | None = None,
    ) -> None:
        """A target now holds this key; recorded with the target's description the plan compares."""
        self.state.record_publication(
            run_id=self.run_id,
            layer=lp.layer,
            key=lp.key,
            target=target,
            spec=lp.targets[target],
            locations=locations,
            digest=digest,
            detail=detail,
        )

    def _publish(self, lp: LayerPlan, spec: LayerSpec, image_id: str | None, runner: Runner) -> list[dict]:
        out: list[dict] = []
        todo = list(lp.publish)
        image = image_id

        def need_image() -> str:
            nonlocal image
            if image is None:
                image = self._key_image(lp.layer, runner)
            return image

        gated = bool(todo) and self._boot_test_due(lp, spec, runner)
        if "registry" in todo:
            if gated:  # the key tag only, for now: human tags wait for the boot
                self._push_key_tag(lp, spec, image, runner)
            else:
                out.append(self._publish_registry(lp, spec, image, need_image, runner))
        if "local" in todo:
            refs = [f"localhost/{spec.name}:{t}" for t in spec.publish_tags]
            if lp.action != Action.BUILD or image_id is None:  # a local build tagged them at commit
                runner.run(["buildah", "tag", need_image(), *refs], step="publish-local")
            self._record_publication(lp, "local", refs)
            out.append({"target": "local", "locations": refs})
        artifact_targets = [t for t in ("s3", "dir") if t in todo]
        if gated and not artifact_targets:
            from .boottest import artifacts_from_image

            with artifacts_from_image(spec, need_image(), runner, self.work_dir) as files:
                self._boot_test(lp, spec, files, runner)
        if artifact_targets:
            out.extend(self._publish_artifacts(lp, spec, need_image(), artifact_targets, runner, gated))
        if gated and "registry" in todo:
            out.insert(0, self._publish_registry(lp, spec, None, need_image, runner))
        return out

    # ---------------------------------------------------------------- boot test

    def _boot_test_due(self, lp: LayerPlan, spec: LayerSpec, runner: Runner) -> bool:
        """Whether `options.boot_test.enabled` makes this layer boot before its human tags move.

        The boot test sits between making the artifacts and publishing them:
        the registry gets the immutable key tag first (`_push_key_tag`); the
        SquashFS, kernel and initramfs are made once, into the work dir
        (`publish_artifacts(before_publish=...)`, or `artifacts_from_image` for
        a layer without S3/dir targets) and booted under QEMU (boottest.py);
        only a boot that reaches the marker lets the S3 keys, the directory
        and the registry's human tags be written. A failed boot raises
        BootTestError: the layer fails, its descendants are blocked, nothing
        is published under a human tag. Tags in local container storage
        (`publish_local`) are set at commit, as children find their parent
        by them, and are not held back. A key that already booted (a
        `boot-test` event in the state) is not booted again.
        """
        if not spec.boot_test.enabled or spec.rootfs_only:
            return False
        for ev in self.state.events(lp.layer, "boot-test"):
            if ev["key"] == lp.key and ev["detail"].get("outcome") == "booted":
                runner.note("boot-test", f"key already booted in run {ev['run_id']}; not booting again")
                return False
        return True

    def _push_key_tag(self, lp: LayerPlan, spec: LayerSpec, image: str | None, runner: Runner) -> None:
        from .publish.registry import push_layer, target_repository

        client = self.registry()
        client.configure_for(spec)
        if client.manifest_digest(f"{target_repository(spec).name}:{key_tag(lp.key)}"):
            return
        push_layer(spec, lp.key, image or self._key_image(lp.layer, runner), runner, tags=[], client=client)

    def _boot_test(self, lp: LayerPlan, spec: LayerSpec, files: Any, runner: Runner) -> None:
        from .boottest import BootTestError, boot_and_record, boot_log_path

        log_path = boot_log_path(self.state_dir, lp.layer, self.run_id)
        runner.note("boot-test", f"booting under QEMU; serial console in {log_path}")
        files = dataclasses.replace(files, key=lp.key, source="up")
        res = boot_and_record(self.state, self.state_dir, self.run_id, lp.layer, spec, files)
        runner.note("boot-test", f"{res.outcome} in {res.seconds:.0f} s ({res.accel}): {res.reason}")
        if not res.ok:
            raise BootTestError(res.message(), res)

    def _publish_registry(
        self, lp: LayerPlan, spec: LayerSpec, image: str | None, need_image, runner: Runner
    ) -> dict:
        from .publish.registry import push_layer, target_repository

        client = self.registry()
        client.configure_for(spec)
        repo = target_repository(spec).name
        kt = key_tag(lp.key)
        digest = None
        if image is None:
            # The key tag is already in the registry (built elsewhere): tag it, no pull, no push.
            digest = client.manifest_digest(f"{repo}:{kt}")
        if digest:
            for t in spec.publish_tags:
                client.put_tag(repo, digest, t)
            runner.note(
                "push", f"tagged {', '.join(spec.publish_tags)} -> {digest} (already in the registry)"
            )
            tags = [*spec.publish_tags, kt]
        else:
            pub = push_layer(spec, lp.key, image or need_image(), runner, client=client)
            digest, tags = pub.digest, list(pub.tags)
        locations = [f"{repo}:{t}" for t in tags]
        self._record_publication(lp, "registry", locations, digest=digest)
        return {"target": "registry", "locations": locations, "digest": digest}

    def _publish_artifacts(
        self,
        lp: LayerPlan,
        spec: LayerSpec,
        image: str,
        targets: list[str],
        runner: Runner,
        boot_test: bool = False,
    ) -> list[dict]:
        from .boottest import BootArtifacts
        from .publish.artifacts import mounted_image, publish_artifacts

        def boot(files: dict[str, Path]) -> None:
            arts = BootArtifacts(files["rootfs"], files["kernel"], files["initramfs"])
            self._boot_test(lp, spec, arts, runner)

        # Only the targets that are missing: a deleted S3 object does not rewrite the local directory.
        only = dataclasses.replace(
            spec,
            publish_s3=spec.publish_s3 if "s3" in targets else None,
            publish_dir=spec.publish_dir if "dir" in targets else None,
        )
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with mounted_image(image, runner) as rootfs:
            pub = publish_artifacts(
                only, lp.key, rootfs, runner, self.work_dir, before_publish=boot if boot_test else None
            )
        out = []
        for target in targets:
            objs = [dataclasses.asdict(o) for o in pub.objects if o.target == target]
            self._record_publication(
                lp, target, objs, digest=pub.squashfs_sha256, detail={"kver": pub.kver, "os": pub.os}
            )
            out.append(
                {"target": target, "kver": pub.kver, "os": pub.os, "locations": [o["location"] for o in objs]}
            )
        return out


# ----------------------------------------------------------------------- locking


class StateLock:
    """An exclusive lock on the state directory: one `up` (or `gc`, `lock --update`) at a time."""

    def __init__(self, state_dir: Path, command: str, wait: bool = False):
        self.path = state_dir / "lock"
        self.command = command
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} ({info.get('command', '?')}), started {info.get('started_at', '?')}"
            except (ValueError, KeyError):
                who = "another process"
            raise LockHeldError(
                f"another imagegraph run holds {self.path}: {who}; wait for it, or pass --wait to queue"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "command": self.command,
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            ).encode(),
        )
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------------- run_up


def run_up(
    plan: Plan,
    state: State,
    *,
    state_dir: Path,
    jobs: int = 1,
    fail_fast: bool = False,
    on_event: EventHook | None = None,
    install_signals: bool = False,
    wait_lock: bool = False,
    executor: Any = None,
    command: str = "up",
    run_id: str | None = None,
    builds: BuildService | None = None,
) -> RunResult:
    """Execute `plan` on this host under the state lock; record the run and its result document."""
    run_id = run_id or default_run_id()
    bind_run(run_id)
    log = get_logger()
    with StateLock(state_dir, command, wait=wait_lock):
        runner_mod.reset_cancel()
        janitor = Runner()
        with contextlib.suppress(Exception):
            for name in remove_stale_containers(janitor):
                log.warning("removed a working container left by a dead run", container=name)
        executor = executor or LocalExecutor(plan, state, state_dir, run_id, builds)
        if builds is not None and builds.slots is None:
            jobs = max(jobs, len(plan.layers))  # the service limits builds itself: threads only wait
        sched = Scheduler(
            plan,
            executor,
            jobs=jobs,
            fail_fast=fail_fast,
            durations=state.durations(),
            on_event=_logging_hook(log, on_event),
            run_id=run_id,
        )
        state.start_run(run_id, command)
        previous: dict[int, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():

            def handler(signum: int, _frame: Any) -> None:
                name = signal.Signals(signum).name
                log.warning("interrupted: stopping running commands, starting nothing new", signal=name)
                sched.cancel(name)
                threading.Thread(target=runner_mod.terminate_all, daemon=True).start()
                if builds is not None:
                    threading.Thread(target=builds.cancel, daemon=True).start()

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        try:
            if builds is not None:
                builds.prepare(plan, [lp for lp in plan.layers.values() if lp.action == Action.BUILD])
            result = sched.run()
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
            if builds is not None:
                builds.cancel()  # whatever the run left unfinished (fail-fast, an error) is not left queued
        status = "cancelled" if result.cancelled else ("failed" if result.failed else "ok")
        doc = redact_obj({**result.to_json(), "command": command, "plan": plan.to_json()})
        if getattr(builds, "jobs_json", None):
            doc["jobs"] = redact_obj(builds.jobs_json())
        state.finish_run(run_id, status, doc)
        _write_records(state_dir, run_id, doc, status)
        log.info(
            "run finished",
            status=status,
            summary=result.counts(),
            seconds=round(result.finished - result.started, 1),
        )
        return result


def _logging_hook(log: Any, downstream: EventHook | None) -> EventHook:
    def hook(kind: str, layer: str, result: LayerResult | None) -> None:
        if kind == "start":
            log.info("layer started", layer=layer)
        elif result is not None:
            fields = {
                "layer": layer,
                "action": str(result.action),
                "status": result.status,
                "seconds": round(result.duration, 1),
            }
            if result.error:
                fields["error"] = result.error.splitlines()[0]
            (log.error if result.status == "failed" else log.info)("layer finished", **fields)
        if downstream:
            downstream(kind, layer, result)

    return hook


def _write_records(state_dir: Path, run_id: str, doc: dict, status: str) -> None:
    """The run's result document, and a last-success marker a monitor can check."""
    runs = state_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True, mode=0o700)
    _atomic_write(runs / f"{run_id}.json", json.dumps(doc, indent=2, sort_keys=True))
    _atomic_write(state_dir / "last-run.json", json.dumps(doc, indent=2, sort_keys=True))
    if status == "ok":
        marker = {"run_id": run_id, "finished": doc["finished"], "layers": len(doc["layers"])}
        _atomic_write(state_dir / "last-success.json", json.dumps(marker, indent=2))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------- artifacts


def artifacts_document(lg: Any, state: State, layer: str) -> dict:
    """Published URLs and a boot configuration for OpenCHAMI's boot service, from the state."""
    from .publish.artifacts import ArtifactPublication, PublishedObject, boot_config

    spec = lg.spec(layer)
    records = state.published(layer)
    urls: list[str] = []
    doc: dict[str, Any] = {"layer": layer, "image": spec.name, "urls": urls, "boot_config": []}
    reg = records.get("registry")
    if reg:
        doc["registry"] = {"references": reg.locations, "digest": reg.digest}
        urls.extend(reg.locations)
    for target in ("s3", "dir"):
        rec = records.get(target)
        if not rec:
            continue
        objs = [PublishedObject(**o) for o in rec.locations]
        urls.extend(o.location for o in objs if o.role != "manifest")
        doc[target] = {
            "key": rec.key,
            "kver": rec.detail.get("kver"),
            "objects": [dataclasses.asdict(o) for o in objs],
        }
        if target == "s3":
            pub = ArtifactPublication(
                key=rec.key, kver=rec.detail.get("kver"), os=rec.detail.get("os", ""), objects=objs
            )
            doc["boot_config"] = boot_config(spec, pub)
    if not records:
        raise PublishError(layer, "artifacts", "nothing published yet; run `imagegraph up` first")
    return doc
