"""Running a Plan on this machine: `up`.

`LocalExecutor` is the scheduler's executor for one build host; it runs
one task (tasks.py) at a time per call, in the scheduler's threads:

- `build`: finds the exact parent image (the one this run just built, or
  the one recorded for the parent's key, or the key tag pulled from the
  registry; never a mutable tag), builds through the `BuildService`
  (buildservice.py; buildah here by default) and records the build;
- `push` / `tag-registry` / `tag-local`: the registry push (all tags, or
  the key tag first when the boot gate holds the human tags), the human
  tags after the boot test, local tags; each recorded as a publication;
- `squashfs` -> `boot-test` -> `publish-artifacts`: the SquashFS and boot
  files made once into the work dir, booted under QEMU when gated, then
  uploaded to S3 and/or the directory and recorded.

Every command goes through a per-layer `Runner` writing
`<state dir>/logs/<layer>-<run id>.log`. Given a `BuildService` whose builds run elsewhere (slurm.py:
`slots` None), the build task waits for that build, and the publishing
happens here.

`run_up` wraps a run: the state-directory lock (one run at a time),
clean-up of working containers left by dead runs, signal handling
(Ctrl-C/SIGTERM stop running commands and start nothing new), the reporters
(log, run record, the caller's) and the clean-up of artifacts never uploaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from . import runner as runner_mod
from .arch import Arch
from .build import (
    ParentImage,
    check_key_label,
    local_image_id,
    pull_image,
    pull_key_image,
    remove_stale_containers,
)
from .buildservice import BuildService, LocalBuildService
from .errors import BuildError, ImagegraphError, NotBuiltError
from .key import key_tag
from .log import bind_run, get_logger
from .plan import Action, LayerPlan, Plan, artifact_spec, local_key_ref, local_tag_suffix
from .publish.artifacts import MadeArtifacts, make_artifacts, mounted_image, upload_artifacts
from .redact import redact, redact_obj
from .reporting import LogReporter, Reporter, Reporters, RunRecord, task_durations
from .runner import CommandError, Runner
from .scheduler import RunResult, Scheduler, TaskResult
from .spec import LayerSpec
from .state import State, default_run_id
from .statelock import StateLock
from .tasks import Task, TaskKind, task_id


def _platform(lp: LayerPlan) -> tuple[str, ...]:
    """`buildah pull` options choosing a multi-arch node's platform from a manifest list."""
    return ("--arch", lp.arch.oci, "--os", "linux") if lp.multiarch and lp.arch else ()


class LocalExecutor:
    """Runs a run's tasks on this host (see module docstring); builds go through a `BuildService`."""

    def __init__(
        self,
        plan: Plan,
        state: State,
        state_dir: Path,
        run_id: str,
        build_service: BuildService | None = None,
    ):
        self.plan = plan
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
        self._task = threading.local()  # the running task's Runner, for the build service
        self._made: dict[str, MadeArtifacts] = {}  # layer -> SquashFS and boot files awaiting boot/upload
        self.builds: BuildService = build_service or LocalBuildService(plan, run_id, self.runner_for)
        self.build_slots = self.builds.slots

    # ------------------------------------------------------------------ helpers

    def registry(self):
        with self._lock:
            if self._registry is None:
                from .publish.registry_client import RegistryClient

                self._registry = RegistryClient()
            return self._registry

    def runner_for(self, layer: str) -> Runner:
        """The Runner (layer log) of the task running in this thread."""
        runner = getattr(self._task, "runner", None)
        return runner if runner is not None and runner.layer == layer else Runner(layer)

    @contextlib.contextmanager
    def _layer_log(self, layer: str) -> Iterator[tuple[IO[str], Path]]:
        path = self.log_dir / f"{layer}-{self.run_id}.log"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        # logs/<layer>.log always points at the newest build log, from the moment it starts.
        latest = self.log_dir / f"{layer}.log"
        with contextlib.suppress(OSError):
            tmp = latest.with_suffix(f".log.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(path.name)
            os.replace(tmp, latest)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f, path

    def _pull_once(self, ref: str, opts: tuple[str, ...], runner: Runner, key: str | None = None) -> str:
        """Pull an image at most once per run, however many layers need it; a layer's key tag
        (`key`) only when the image is that key's (`pull_key_image`)."""
        with self._lock:
            lock = self._pull_locks.setdefault(ref, threading.Lock())
        with lock:
            once = f"{ref} {' '.join(opts)}"  # one per platform too (`--arch`)
            if once not in self._pulled:
                runner.note("pull", f"pulling {ref}")
                self._pulled[once] = (
                    pull_key_image(ref, key, opts, runner) if key else pull_image(ref, opts, runner)
                )
            return self._pulled[once]

    def _key_image(self, lid: str, runner: Runner) -> str:
        """The image for a layer's planned key: local when known, else its key tag from the registry."""
        lp = self.plan.layers[lid]
        spec = self.plan.spec(lid)
        if lp.image_id and local_image_id(lp.image_id, runner):
            return lp.image_id
        local = local_image_id(local_key_ref(spec, lp.key), runner)
        if local:
            return local
        if spec.publish_registry:
            ref = f"{spec.publish_registry}/{spec.name}:{key_tag(lp.key)}"
            opts = tuple(o for o in spec.registry_opts_push if o.startswith("--tls-verify"))
            return self._pull_once(ref, (*opts, *_platform(lp)), runner, key=lp.key)
        raise BuildError(lid, "parent", f"no image for key {lp.key[:12]} locally or in a registry")

    def _parent(self, lp: LayerPlan, needs: dict[str, TaskResult], runner: Runner) -> ParentImage | None:
        spec = self.plan.spec(lp.layer)
        link = self.plan.graph.parents[lp.spec_id]
        if link.kind == "scratch":
            return None
        if link.kind == "layer" and lp.parent_layer:
            # The parent's node of the same architecture (plan.py: `parent_layer` is its node id).
            pnode = lp.parent_layer
            pres = needs.get(task_id(pnode, TaskKind.BUILD))
            image = pres.image_id if pres and pres.image_id else self._key_image(pnode, runner)
            return ParentImage(image=image, ref=spec.parent, key=self.plan.layers[pnode].key)
        ref = spec.parent
        digest = self.plan.keys[lp.layer].parent.digest if lp.layer in self.plan.keys else None
        if digest:
            from .reference import parse_reference

            # Exactly the manifest the key was computed from (the lock file's, or the registry's at
            # plan time), not whatever the tag points at now.
            ref = str(parse_reference(spec.parent).with_digest(digest))
        image = self._pull_once(ref, (*spec.registry_opts_pull, *_platform(lp)), runner)
        if lp.multiarch and lp.arch is not None:
            # buildah pull --arch only warns when the reference has no such platform: never build
            # an "aarch64" node on an amd64 parent.
            got = runner.output(
                ["buildah", "inspect", "--type", "image", "--format", "{{.OCIv1.Architecture}}", image],
                step="pull",
            ).strip()
            if got != lp.arch.oci:
                raise BuildError(
                    lp.layer, "parent", f"external parent {spec.parent} offers no {lp.arch} image (got {got})"
                )
        return ParentImage(image=image, ref=spec.parent, key=None, digest=digest)

    # ------------------------------------------------------------------ tasks

    def prepare(self, plan: Plan, tasks: list[Task]) -> None:
        self.builds.prepare(plan, [plan.layers[t.layer] for t in tasks if t.kind == TaskKind.BUILD])

    def cancel(self) -> None:
        self.builds.cancel()

    def close(self) -> None:
        """Remove artifacts made but never uploaded (a failed boot test, a cancelled run)."""
        with self._lock:
            made, self._made = list(self._made.values()), {}
        for m in made:
            m.remove()

    def run_task(self, task: Task, needs: dict[str, TaskResult]) -> TaskResult:
        lp = self.plan.layers[task.layer]
        spec = self.plan.spec(task.layer)
        if task.kind in (TaskKind.SQUASHFS, TaskKind.BOOT_TEST, TaskKind.PUBLISH_ARTIFACTS):
            spec = artifact_spec(
                spec, lp.arch, lp.arches
            )  # a multi-arch node's artifacts: per arch (`<tag>/<arch>`)
        step = {
            TaskKind.BUILD: self._build,
            TaskKind.PUSH: self._push,
            TaskKind.TAG_REGISTRY: self._tag_registry,
            TaskKind.TAG_LOCAL: self._tag_local,
            TaskKind.SQUASHFS: self._make_artifacts,
            TaskKind.BOOT_TEST: self._boot_test_task,
            TaskKind.PUBLISH_ARTIFACTS: self._upload_artifacts,
            TaskKind.INDEX: self._index,
        }[task.kind]
        with self._layer_log(task.layer) as (logf, log_path):
            runner = Runner(task.layer, logf)
            self._task.runner = runner
            try:
                res = step(task, lp, spec, needs, runner)
            except ImagegraphError as exc:
                exc.log_file = str(log_path)  # the scheduler's failure result points at the full log
                runner.note("result", f"{task.kind} failed: {redact(str(exc))}")
                raise
            finally:
                self._task.runner = None
        res.log_file = str(log_path)
        return res

    def _image(self, lp: LayerPlan, needs: dict[str, TaskResult], runner: Runner) -> str:
        """The image of this layer's key: the one this run built, else found (or pulled) by key."""
        built = needs.get(task_id(lp.layer, TaskKind.BUILD))
        if built is not None and built.image_id:
            return built.image_id
        return self._key_image(lp.layer, runner)

    def _built_now(self, lp: LayerPlan, needs: dict[str, TaskResult]) -> str | None:
        built = needs.get(task_id(lp.layer, TaskKind.BUILD))
        return built.image_id if built is not None else None

    # ------------------------------------------------------------------ build

    def _build(
        self, task: Task, lp: LayerPlan, spec: LayerSpec, needs: dict[str, TaskResult], runner: Runner
    ) -> TaskResult:
        runner.note("plan", f"{lp.action}: " + "; ".join(r.message for r in lp.reasons))
        t0 = time.time()
        parent = None
        try:
            # A service that builds elsewhere (Slurm: slots None) pulls the parent by key tag itself.
            parent = self._parent(lp, needs, runner) if self.builds.slots is not None else None
            built = self.builds.build(lp, parent)
        except (ImagegraphError, RuntimeError) as exc:
            self._record_failed(lp, spec, parent, t0, exc)
            if isinstance(exc, CommandError):
                raise BuildError(lp.layer, exc.step or "parent", str(exc), exc.tail) from exc
            if isinstance(exc, RuntimeError):
                raise BuildError(lp.layer, "parent", str(exc)) from exc
            raise
        self._record_build(lp, spec, parent, t0, "ok", image_id=built.image_id, image_ref=built.image_ref)
        if built.inventory is not None and built.inventory.known:
            self.state.record_inventory(lp.layer, lp.key, built.inventory)
        runner.note("build", f"built {built.image_ref} in {time.time() - t0:.1f} s")
        return TaskResult(
            task.id,
            task.layer,
            task.kind,
            image_id=built.image_id,
            image_ref=built.image_ref,
            # The image carries no build date (its labels come from key inputs only): the run record does.
            detail={
                **({"digest": built.digest} if built.digest else {}),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
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

    def _push(
        self, task: Task, lp: LayerPlan, spec: LayerSpec, needs: dict[str, TaskResult], runner: Runner
    ) -> TaskResult:
        image = self._built_now(lp, needs)
        if task.gated:  # the key tag only, for now: human tags wait for the boot (`tag-registry`)
            self._push_key_tag(lp, spec, image, lambda: self._image(lp, needs, runner), runner)
            if len(lp.arches) > 1:  # one arch of an index: its key tag is all this node publishes
                from .reference import target_repository

                kt = f"{target_repository(spec).name}:{key_tag(lp.key)}"
                self._record_publication(lp, "registry", [kt])
            return TaskResult(
                task.id, task.layer, task.kind, published=self._publish_sbom(lp, spec, runner, ["registry"])
            )
        pub = self._publish_registry(lp, spec, image, lambda: self._image(lp, needs, runner), runner)
        sbom = self._publish_sbom(lp, spec, runner, ["registry"])
        return TaskResult(task.id, task.layer, task.kind, published=[pub, *sbom])

    def _tag_registry(
        self, task: Task, lp: LayerPlan, spec: LayerSpec, needs: dict[str, TaskResult], runner: Runner
    ) -> TaskResult:
        pub = self._publish_registry(lp, spec, None, lambda: self._image(lp, needs, runner), runner)
        return TaskResult(task.id, task.layer, task.kind, published=[pub])

    def _tag_local(
        self, task: Task, lp: LayerPlan, spec: LayerSpec, needs: dict[str, TaskResult], runner: Runner
    ) -> TaskResult:
        suffix = local_tag_suffix(lp.arch) if lp.multiarch and lp.arch else ""
        refs = [f"localhost/{spec.name}:{t}{suffix}" for t in spec.publish_tags]
        if lp.action != Action.BUILD:  # a build already tagged them at commit
            runner.run(["buildah", "tag", self._image(lp, needs, runner), *refs], step="publish-local")
        self._record_publication(lp, "local", refs)
        return TaskResult(task.id, task.layer, task.kind, published=[{"target": "local", "locations": refs}])

    def _index(
        self, task: Task, lp: LayerPlan, spec: LayerSpec, needs: dict[str, TaskResult], runner: Runner
    ) -> TaskResult:
        """Every arch's key tag in one OCI index, the human tags on it (publish/manifest.py)."""
        from .publish.manifest import publish_index
        from .reference import target_repository

        client = self.registry()
        client.configure_for(spec)
        repo = target_repository(spec).name
        # The plan's members: every arch's key, those `--arch` left out too (their key tags are there).
        keys = lp.index_members or {str(m.arch): m.key for m in self.plan.nodes_of(lp.spec_id) if m.arch}
        members = {Arch(a): (k, f"{repo}:{key_tag(k)}") for a, k in keys.items()}
        opts = [o for o in spec.registry_opts_push if o.startswith(("--tls-verify", "--authfile", "--creds"))]
        pub = publish_index(repo, members, spec.publish_tags, runner, opts=opts, client=client)
        locations = [f"{repo}:{t}" for t in pub.tags]
        detail = {"index": True, "platforms": pub.platforms}
        self._record_publication(lp, "registry", locations, digest=pub.digest, detail=detail)
        published = {"target": "registry", "locations": locations, "digest": pub.digest, **detail}
        return TaskResult(task.id, task.layer, task.kind, published=[published])

    def _publish_sbom(self, lp: LayerPlan, spec: LayerSpec, runner: Runner, wanted: list[str]) -> list[dict]:
        """The key's SBOM beside what a task just published (publish/sbomfiles.py).

        A failure is a warning in the log: the boot image is published already.
        """
        targets = [t for t in wanted if t in ("s3", "dir", "registry")]
        if not targets:
            return []
        from .publish.sbomfiles import ensure_inventory, publish_sbom
        from .sbom import layer_sbom, sbom_bytes

        try:
            if not ensure_inventory(self.state, lp.layer, spec, lp.key, runner):
                runner.note(
                    "sbom", "no package inventory for this key (no local image, or no package database)"
                )
                return []
            body = sbom_bytes(layer_sbom(self.state, lp.layer, spec, lp.key))
            return publish_sbom(self.state, lp.layer, spec, lp.key, body, targets, runner, self.work_dir)
        except (ImagegraphError, OSError) as exc:
            runner.note("sbom", f"SBOM not published: {redact(str(exc))}")
            get_logger().warning("SBOM not published", layer=lp.layer, error=redact(str(exc)))
            return []

    def _push_key_tag(
        self, lp: LayerPlan, spec: LayerSpec, image: str | None, need_image, runner: Runner
    ) -> None:
        from .publish.push import push_layer
        from .reference import target_repository

        client = self.registry()
        client.configure_for(spec)
        if client.manifest_digest(f"{target_repository(spec).name}:{key_tag(lp.key)}"):
            return  # already there (built elsewhere): no pull, no push
        push_layer(spec, lp.key, image or need_image(), runner, tags=[], client=client)

    def _publish_registry(
        self, lp: LayerPlan, spec: LayerSpec, image: str | None, need_image, runner: Runner
    ) -> dict:
        from .publish.push import push_layer
        from .reference import target_repository

        client = self.registry()
        client.configure_for(spec)
        repo = target_repository(spec).name
        kt = key_tag(lp.key)
        digest = None
        if image is None:
            # The key tag is already in the registry (built elsewhere): tag it, no pull, no push,
            # once its config's labels say it is this key's image (key tags are never moved by us).
            digest = client.manifest_digest(f"{repo}:{kt}")
            labels = client.image_labels(f"{repo}@{digest}") if digest else None
            if labels is not None:
                check_key_label(f"{repo}:{kt}", lp.key, labels)
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

    # ---------------------------------------------------------------- artifacts

    def _only(self, spec: LayerSpec, targets: tuple[str, ...]) -> LayerSpec:
        # Only the targets that are missing: a deleted S3 object does not rewrite the local directory.
        return dataclasses.replace(
            spec,
            publish_s3=spec.publish_s3 if "s3" in targets else None,
            publish_dir=spec.publish_dir if "dir" in targets else None,
        )

    def _make_artifacts(
        self, task: Task, lp: LayerPlan, spec: LayerSpec, needs: dict[str, TaskResult], runner: Runner
    ) -> TaskResult:
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with mounted_image(self._image(lp, needs, runner), runner) as rootfs:
            made = make_artifacts(self._only(spec, task.targets), lp.key, rootfs, runner, self.work_dir)
        with self._lock:
            self._made[lp.layer] = made
        detail = {"kver": made.pub.kver, "os": made.pub.os, "squashfs_size": made.pub.squashfs_size}
        return TaskResult(task.id, task.layer, task.kind, detail=detail)

    def _boot_test_task(
        self, task: Task, lp: LayerPlan, spec: LayerSpec, needs: dict[str, TaskResult], runner: Runner
    ) -> TaskResult:
        from .boottest import BootArtifacts

        made = self._made[lp.layer]
        files = made.paths()
        try:
            self._boot_test(
                lp, spec, BootArtifacts(files["rootfs"], files["kernel"], files["initramfs"]), runner
            )
        finally:
            if not any(t.kind == TaskKind.PUBLISH_ARTIFACTS for t in lp.tasks):
                self._drop_made(lp.layer)
        return TaskResult(task.id, task.layer, task.kind)

    def _boot_test(self, lp: LayerPlan, spec: LayerSpec, files: Any, runner: Runner) -> None:
        from .boottest import BootTestError, boot_and_record, boot_log_path

        log_path = boot_log_path(self.state_dir, lp.layer, self.run_id)
        runner.note("boot-test", f"booting under QEMU; serial console in {log_path}")
        files = dataclasses.replace(files, key=lp.key, source="up")
        arch = {"arch": lp.arch} if lp.multiarch else {}  # the node's QEMU machine (boottest.MACHINES)
        res = boot_and_record(self.state, self.state_dir, self.run_id, lp.layer, spec, files, **arch)
        runner.note("boot-test", f"{res.outcome} in {res.seconds:.0f} s ({res.accel}): {res.reason}")
        if not res.ok:
            raise BootTestError(res.message(), res)

    def _drop_made(self, layer: str) -> None:
        with self._lock:
            made = self._made.pop(layer, None)
        if made is not None:
            made.remove()

    def _upload_artifacts(
        self, task: Task, lp: LayerPlan, spec: LayerSpec, needs: dict[str, TaskResult], runner: Runner
    ) -> TaskResult:
        made = self._made[lp.layer]
        out: list[dict] = []
        failed: Exception | None = None
        try:
            # One target at a time, each recorded with its SBOM as it lands: when S3 fails after the
            # directory was written, the directory's publication (and SBOM) is not lost with it.
            for target in task.targets:
                try:
                    pub = upload_artifacts(made, self._only(spec, (target,)), lp.key, runner)
                except runner_mod.Cancelled:
                    raise
                except (ImagegraphError, OSError) as exc:
                    failed = failed or exc
                    continue
                objs = [dataclasses.asdict(o) for o in pub.objects if o.target == target]
                self._record_publication(
                    lp, target, objs, digest=pub.squashfs_sha256, detail={"kver": pub.kver, "os": pub.os}
                )
                out.append(
                    {
                        "target": target,
                        "kver": pub.kver,
                        "os": pub.os,
                        "locations": [o["location"] for o in objs],
                    }
                )
                out += self._publish_sbom(lp, spec, runner, [target])
        finally:
            self._drop_made(lp.layer)
        if failed is not None:
            raise failed
        return TaskResult(task.id, task.layer, task.kind, published=out)


# ------------------------------------------------------------------------- run_up


def run_up(
    plan: Plan,
    state: State,
    *,
    state_dir: Path,
    jobs: int = 1,
    uploads: int | None = None,
    boot_tests: int | None = None,
    squashfs_at_once: int | None = None,
    fail_fast: bool = False,
    reporter: Reporter | None = None,
    install_signals: bool = False,
    wait_lock: bool = False,
    executor: Any = None,
    build_service: BuildService | None = None,
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
        executor = executor or LocalExecutor(plan, state, state_dir, run_id, build_service)
        sched = Scheduler(
            plan,
            executor,
            jobs=jobs,
            uploads=uploads,
            boot_tests=boot_tests,
            squashfs_at_once=squashfs_at_once,
            fail_fast=fail_fast,
            durations={**task_durations(state_dir), **state.durations()},
            reporter=Reporters(
                LogReporter(log),
                reporter,
                RunRecord(state, state_dir, plan, command, extra=_jobs_of(build_service)),
            ),
            run_id=run_id,
        )
        state.start_run(run_id, command)
        previous: dict[int, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():

            def handler(signum: int, _frame: Any) -> None:
                name = signal.Signals(signum).name
                sched.cancel(name)
                with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone (EIO)
                    log.warning("interrupted: stopping running commands, starting nothing new", signal=name)
                threading.Thread(target=runner_mod.terminate_all, daemon=True).start()
                if builds is not None:
                    threading.Thread(target=builds.cancel, daemon=True).start()

            # SIGHUP: the SSH session or terminal went away; clean up as for SIGTERM rather than die
            # with working containers mounted and builds running in their own process groups.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, handler)
        try:
            return sched.run()
        except BaseException:
            # A run that did not finish leaves nothing queued elsewhere (Slurm jobs are cancelled).
            with contextlib.suppress(Exception):
                executor.cancel()
            raise
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
            close = getattr(executor, "close", None)
            if close is not None:
                close()


def _jobs_of(service: Any) -> Any:
    """The run record's `jobs` (a batch system's job ids, nodes, states, times), when the service has them."""
    jobs_json = getattr(service, "jobs_json", None)
    if jobs_json is None:
        return None
    return lambda: {"jobs": redact_obj(jobs_json())}


# --------------------------------------------------------------------- artifacts


def artifacts_document(lg: Any, state: State, layer: str, base_url: str | None = None) -> dict:
    """Published URLs and a boot configuration for OpenCHAMI's boot service, from the state.

    A publish_dir target's URLs are under `base_url` when given, else `file://`.
    A layer only published to local storage gets a `message` and no boot configuration.
    A multi-arch layer gets one document per arch under `arches`, its URLs
    together and its boot configuration entries each with their `arch`.
    """
    arches = lg.arches(layer)
    if len(arches) < 2:
        return _artifacts_document(lg, state, layer, layer, lg.spec(layer), base_url)
    from .arch import host_arch
    from .plan import artifact_spec, node_id

    per = {
        str(a): _artifacts_document(
            lg,
            state,
            layer,
            node_id(layer, a, host_arch()),
            artifact_spec(lg.spec(layer), a, arches),
            base_url,
        )
        for a in arches
    }
    entries = [{**e, "arch": a} for a, d in per.items() for e in d["boot_config"]]
    messages = [f"{a}: {d['message']}" for a, d in per.items() if d.get("message")]
    return {
        "layer": layer,
        "image": lg.spec(layer).name,
        "urls": [u for d in per.values() for u in d["urls"]],
        "boot_config": entries,
        "message": "; ".join(messages) or None,
        "arches": per,
    }


def _artifacts_document(
    lg: Any, state: State, layer: str, node: str, spec: LayerSpec, base_url: str | None
) -> dict:
    from .publish.artifacts import ArtifactPublication, PublishedObject, boot_config, dir_boot_config

    records = state.published(node)
    urls: list[str] = []
    doc: dict[str, Any] = {
        "layer": layer,
        "image": spec.name,
        "urls": urls,
        "boot_config": [],
        "message": None,
    }
    if not records:
        if state.layer(node) is None:
            raise NotBuiltError(
                f"{layer}: not built yet; run `imagegraph up {lg.project.root} {layer}` first"
            )
        if not (spec.publish_registry or spec.publish_s3 or spec.publish_dir or spec.publish_local):
            doc["message"] = f"{layer}: no publish target; nothing to boot from here"
            return doc
        raise NotBuiltError(
            f"{layer}: built but not published yet; run `imagegraph up {lg.project.root} {layer}`"
        )
    reg = records.get("registry")
    if reg:
        doc["registry"] = {"references": reg.locations, "digest": reg.digest}
        urls.extend(reg.locations)
    local = records.get("local")
    if local:
        doc["local"] = {"references": local.locations}
        urls.extend(str(x) for x in local.locations)
    for target in ("s3", "dir"):
        rec = records.get(target)
        if not rec:
            continue
        objs = [PublishedObject(**o) for o in rec.locations]
        pub = ArtifactPublication(
            key=rec.key, kver=rec.detail.get("kver"), os=rec.detail.get("os", ""), objects=objs
        )
        entries = boot_config(spec, pub) if target == "s3" else dir_boot_config(spec, pub, base_url)
        if target == "dir":
            urls.extend(e for entry in entries for e in (entry["kernel"], entry["initrd"]))
            urls.extend(o.location for o in objs if o.role == "rootfs")
        else:
            urls.extend(o.location for o in objs if o.role != "manifest")
        doc[target] = {
            "key": rec.key,
            "kver": rec.detail.get("kver"),
            "objects": [dataclasses.asdict(o) for o in objs],
        }
        if not doc["boot_config"]:  # S3 first: nodes fetch from the gateway
            doc["boot_config"] = entries
    if not doc["boot_config"]:
        if spec.rootfs_only and (records.get("s3") or records.get("dir")):
            doc["message"] = f"{layer}: rootfs_only: no kernel or initramfs, so no boot configuration"
        elif set(records) <= {"local", "registry"}:
            where = "local container storage" if set(records) == {"local"} else "container images only"
            doc["message"] = (
                f"{layer}: published to {where}; nothing to boot from here "
                "(publish_s3 or publish_dir makes a SquashFS, kernel and initramfs)"
            )
    return doc
