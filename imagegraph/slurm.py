"""Building on a Slurm cluster: `SlurmBuildService`, one `sbatch` job per stale layer.

`prepare` submits every build of the plan at once, in topological order,
each job with `--dependency=afterok:<its parents' build jobs>` and
`--kill-on-invalid-dep=yes`, so Slurm holds the chain and cancels the
descendants of a failed build itself. A parent that is already built is no
dependency: the job pulls it by its key tag. A job still queued or running
for the same layer and key (found by its name, `<prefix><layer>-<key12>`,
e.g. left by a submit side that died) is adopted instead of submitted again.

Each job runs `imagegraph build-one` (build_one.py) on a build node, which
pushes the image under its key tag and writes a result document next to its
log. A poll thread asks `squeue` for the run's unfinished jobs every
`poll_interval` seconds (never `sbatch --wait`: it returns 0 for a job
cancelled by its dependency), and `scontrol show job` once per job that
ended, for its exit code; `build` waits for one layer's job and maps its
final state (`job_outcome`) to a `BuiltImage` or a `SlurmJobError`.
`cancel` scancels every job of the run that has not finished.

The registry is the only state shared with the build nodes: `check_plan`
refuses a plan whose Slurm-built layers (or their built parents) have no
`publish_registry`.

A multi-arch layer's nodes are jobs like any other (`build-one DIR
layer@arch --arch A`), each after its parent's node of the same arch. Each
arch's job goes to the partition / constraint of `executor.arch.<arch>`
(native); an arch without an entry goes to the default partition, native for
the submit host's arch and under emulation otherwise (`arch_placement`;
`place_plan` notes it on the plan).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .arch import Arch, Emulation, emulation, host_arch, normalize_arch
from .build import ParentImage
from .build_one import JobExit, read_result, result_path
from .buildservice import BuiltImage
from .errors import Diagnostic, ImagegraphError, rel
from .log import get_logger
from .plan import Action, LayerPlan, Plan
from .project import ExecutorSettings
from .reasons import Reason, ReasonCode
from .redact import SECRET_ENV, redact
from .runner import Cancelled, Runner

# What a build job gets from the submit side's environment (by name, never secrets by value:
# credentials stay in files the job reads, e.g. REGISTRY_AUTH_FILE), and imagegraph's own IMAGEGRAPH_*.
EXPORTED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "BUILDAH_ISOLATION",
    "CONTAINERS_REGISTRIES_CONF",
    "CONTAINERS_CONF",
    "REGISTRY_AUTH_FILE",
    "DOCKER_CONFIG",
    "SOURCE_DATE_EPOCH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
# After this long without an answer from slurmctld, the run's unfinished jobs are reported unknown.
CONTROLLER_TIMEOUT = 300.0
LOG_TAIL_LINES = 15
SUBMIT_WORKERS = 8
POLL_BUDGET = 200
MAX_POLL_WAIT = 30.0


class JobState(StrEnum):
    """Slurm job states (squeue %T) that imagegraph tells apart."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"  # Slurm no longer knows the job (purged, or the controller lost it)

    @classmethod
    def parse(cls, text: str) -> JobState:
        word = text.strip().split()[0].upper() if text.strip() else ""
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @property
    def finished(self) -> bool:
        return self not in ACTIVE_STATES


ACTIVE_STATES = frozenset(
    {
        JobState.PENDING,
        JobState.CONFIGURING,
        JobState.RUNNING,
        JobState.COMPLETING,
        JobState.SUSPENDED,
        JobState.REQUEUED,
        JobState.RESIZING,
    }
)


class Outcome(StrEnum):
    """What a finished build job means for its layer."""

    OK = "ok"
    FAILED = "failed"
    BLOCKED = "blocked"  # Slurm cancelled it because a dependency failed
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class SlurmError(ImagegraphError):
    """Slurm refused or could not take the run's jobs (sbatch failed)."""


class SlurmJobError(ImagegraphError):
    """A layer's build job did not produce its image."""

    def __init__(self, layer: str, outcome: Outcome, message: str, log_file: str | None = None):
        self.layer = layer
        self.outcome = outcome
        self.log_file = log_file
        super().__init__(f"{layer}: {message}")


# squeue %r reasons of a pending job that waits for nodes an admin took away (down, drained, a
# partition down), not for a free slot or a parent job.
STUCK_REASONS = ("ReqNodeNotAvail", "DOWN, DRAINED", "NodeDown", "PartitionDown", "PartitionInactive")


@dataclass
class Job:
    """One layer's build job as the submit side knows it."""

    layer: str
    key: str
    name: str
    job_id: str
    log_file: str
    dependencies: list[str] = field(default_factory=list)
    adopted: bool = False
    state: JobState = JobState.PENDING
    reason: str = ""
    node: str = ""
    submitted: float = field(default_factory=time.time)
    started: str = ""
    ended: str = ""
    exit_code: str = ""  # Slurm's "status:signal"
    outcome: Outcome | None = None
    message: str = ""

    @property
    def result_file(self) -> Path:
        return result_path(Path(self.log_file))

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "key": self.key,
            "job_id": self.job_id,
            "name": self.name,
            "adopted": self.adopted,
            "dependencies": self.dependencies,
            "state": str(self.state),
            "reason": self.reason,
            "node": self.node,
            "submitted": self.submitted,
            "started": self.started,
            "ended": self.ended,
            "exit_code": self.exit_code,
            "outcome": str(self.outcome) if self.outcome else None,
            "message": redact(self.message),
            "log_file": self.log_file,
        }


def _cpu_seconds() -> float:
    """CPU of this process plus that of its finished children (squeue, scontrol)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def job_name(prefix: str, layer: str, key: str) -> str:
    return f"{prefix}{layer}-{key[:12]}"


def job_outcome(
    state: JobState, reason: str, exit_code: str, result: dict | None, key: str
) -> tuple[Outcome, str]:
    """A finished job's meaning for its layer, with the reason in words.

    COMPLETED counts only with a result document for the same key that says
    ok (the document is the job's own word that the key tag was pushed).
    """
    status = exit_code.split(":")[0] if exit_code else ""
    doc_error = (result or {}).get("error") or ""
    if state == JobState.COMPLETED:
        if result is None:
            return Outcome.FAILED, "the job completed but left no readable result document"
        if result.get("key") != key:
            return Outcome.FAILED, f"the job's result document is for key {str(result.get('key'))[:12]}"
        if result.get("status") != "ok" or not result.get("digest"):
            return (
                Outcome.FAILED,
                f"the job completed but its result says {result.get('status')}: {doc_error}",
            )
        return Outcome.OK, f"built and pushed {result.get('image_ref')}"
    if state == JobState.CANCELLED and reason.startswith("Dependency"):
        return Outcome.BLOCKED, "cancelled by Slurm: a job it depends on failed"
    if state == JobState.CANCELLED:
        return Outcome.CANCELLED, "the job was cancelled (scancel)"
    if state == JobState.FAILED:
        what = JobExit.describe(int(status)) if status.isdigit() else "failed"
        return Outcome.FAILED, f"the job failed with exit status {status or '?'} ({what})" + (
            f": {doc_error}" if doc_error else ""
        )
    if state == JobState.TIMEOUT:
        return Outcome.FAILED, "the job hit its time limit (executor.time_limit) and was killed"
    if state == JobState.NODE_FAIL:
        return Outcome.FAILED, "the build node failed while the job ran (NODE_FAIL); run `up` again to retry"
    if state == JobState.PREEMPTED:
        return Outcome.FAILED, "the job was preempted by Slurm; run `up` again to retry"
    if state == JobState.OUT_OF_MEMORY:
        return Outcome.FAILED, "the job ran out of memory; raise its memory with executor.sbatch_args"
    if state in (JobState.BOOT_FAIL, JobState.DEADLINE):
        return Outcome.FAILED, f"the job ended {state}"
    if state == JobState.UNKNOWN:
        if result is not None and result.get("key") == key and result.get("status") == "ok":
            return Outcome.OK, f"built and pushed {result.get('image_ref')} (Slurm no longer knows the job)"
        if reason:  # the controller stopped answering
            return Outcome.UNKNOWN, f"{reason}: whether the job built is unknown"
        return Outcome.UNKNOWN, (
            "Slurm no longer knows the job and it left no result document: whether it built is unknown"
        )
    return Outcome.UNKNOWN, f"the job is in state {state}"


class Placement(StrEnum):
    """How a Slurm build job of one architecture runs."""

    NATIVE = "native"  # on the partition / constraint `executor.arch` names for it (or the host's arch)
    EMULATED = "emulated"  # a foreign arch on the default partition, through binfmt_misc + qemu-user


@dataclass(frozen=True)
class ArchPlacement:
    """Where one architecture's build jobs go: partition, constraint, and native or emulated."""

    arch: Arch
    partition: str | None
    constraint: str | None
    how: Placement

    def describe(self) -> str:
        where = ", ".join(
            f"{k} {v}" for k, v in (("partition", self.partition), ("constraint", self.constraint)) if v
        )
        where = where or "the default partition"
        if self.how == Placement.NATIVE:
            return f"builds natively as Slurm jobs on {where}"
        return f"builds under emulation (qemu-user) as Slurm jobs on {where}: no executor.arch.{self.arch}"


def arch_placement(settings: ExecutorSettings, arch: Arch) -> ArchPlacement:
    """An arch's placement: its `executor.arch` entry (native), else the defaults (native for the
    submit host's arch, whose nodes the default partition is taken to hold; emulated otherwise)."""
    per = settings.arches.get(str(arch))
    partition = (per or {}).get("partition", settings.partition)
    constraint = (per or {}).get("constraint", settings.constraint)
    how = Placement.NATIVE if per is not None or arch == host_arch() else Placement.EMULATED
    return ArchPlacement(arch, partition, constraint, how)


def emulation_for(settings: ExecutorSettings) -> Any:
    """`make_plan`'s `emulation_of` for a Slurm run: an arch built natively needs no binfmt handler
    here; an emulated one is checked on this host, standing in for the default partition's nodes."""

    def of(arch: Arch) -> Emulation:
        if arch_placement(settings, arch).how == Placement.NATIVE:
            return Emulation(arch, native=True, usable=True)
        return emulation(arch)

    return of


def place_plan(plan: Plan, settings: ExecutorSettings) -> None:
    """Note on each multi-arch node that builds where its Slurm job goes (`slurm-placement`)."""
    for lp in plan.layers.values():
        if lp.action == Action.BUILD and lp.multiarch and lp.arch is not None:
            pl = arch_placement(settings, lp.arch)
            detail = {"arch": str(pl.arch), "placement": str(pl.how)}
            detail.update(
                {k: v for k, v in (("partition", pl.partition), ("constraint", pl.constraint)) if v}
            )
            lp.notes.append(Reason(ReasonCode.SLURM_PLACEMENT, pl.describe(), detail))


def check_plan(plan: Plan) -> list[Diagnostic]:
    """Layers a Slurm run cannot build: no registry to carry the image between hosts."""
    out = []
    builds = [lid for lid, lp in plan.layers.items() if lp.action == Action.BUILD]
    need: dict[str, str] = {}
    for lid in builds:
        need.setdefault(lid, f"layer {lid} is built as a Slurm job")
        parent = plan.layers[lid].parent_layer  # the parent's node of the same arch
        if parent is not None:
            need.setdefault(parent, f"layer {parent} is the parent of {lid}, which is built as a Slurm job")
    for lid, why in need.items():
        spec = plan.spec(lid)
        if spec.publish_registry:
            continue
        out.append(
            Diagnostic(
                rel(spec.path),
                spec.line_of("options"),
                1,
                f"{why} and has no options.publish_registry: the registry carries each layer's "
                "image between the build jobs and this host",
                hint="add `publish_registry: <registry>/<namespace>` under options, or use --executor local",
            )
        )
    return out


_SCONTROL_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` output (one line) -> its Key=Value fields."""
    return dict(_SCONTROL_FIELD.findall(text))


class SlurmBuildService:
    """Builds layers as Slurm jobs (see module docstring); one instance per run."""

    slots: int | None = None

    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        project_root: Path,
        log_dir: Path,
        run_id: str,
        state: Any = None,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.project_root = Path(project_root).resolve()
        self.log_dir = Path(log_dir).resolve()
        self.run_id = run_id
        self.state = state
        # How a node runs imagegraph: this interpreter, at the same path (see README).
        self.command = list(command) if command else [sys.executable, "-m", "imagegraph.cli", "build-one"]
        self.env = env
        self.runner = Runner("slurm", env=env)
        self.jobs: dict[str, Job] = {}
        self.log = get_logger(executor="slurm")
        self._cond = threading.Condition()
        self._cancelled = False
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._last_answer = time.monotonic()
        self._stuck_said: set[tuple[str, str]] = set()  # (job id, reason) already warned about
        self.polls = 0

    # ---------------------------------------------------------------- submit

    def prepare(self, plan: Plan, builds: list[LayerPlan]) -> None:
        """Submit (or adopt) one job per build, parents first; then start watching.

        Never raises: a job Slurm refuses (or a controller that does not
        answer) becomes that layer's failure, and its descendants are not
        submitted.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        wanted = {lp.layer for lp in builds}
        try:
            active = self._active_jobs() if builds else {}
        except SlurmError as exc:
            for lp in builds:
                self.jobs[lp.layer] = self._unsubmitted(lp, Outcome.FAILED, str(exc))
            return
        # Parents first: a wave is every build whose parent's job id is known; a wave's
        # sbatch calls run 8 at a time (each waits on slurmctld, not on this host).
        depth: dict[str, int] = {}
        for lp in builds:  # plan order is topological
            parent = lp.parent_layer  # the parent's node of the same arch
            depth[lp.layer] = depth[parent] + 1 if parent in wanted else 0
        waves: dict[int, list[LayerPlan]] = {}
        for lp in builds:
            waves.setdefault(depth[lp.layer], []).append(lp)

        def one(lp: LayerPlan) -> Job:
            parent = lp.parent_layer
            pj = self.jobs.get(parent) if parent in wanted else None
            if pj is not None and not pj.job_id:
                return self._unsubmitted(
                    lp, Outcome.BLOCKED, f"not submitted: the job of its parent {parent} was not submitted"
                )
            deps = [pj.job_id] if pj is not None and not pj.state.finished else []
            name = job_name(self.settings.job_name_prefix, lp.layer, lp.key)
            found = active.get(name)
            try:
                return self._adopt(lp, name, *found) if found else self._submit(lp, name, deps)
            except SlurmError as exc:
                return self._unsubmitted(lp, Outcome.FAILED, str(exc))

        with ThreadPoolExecutor(max_workers=SUBMIT_WORKERS, thread_name_prefix="sbatch") as pool:
            for level in sorted(waves):
                if self._cancelled:
                    break
                for lp, job in zip(waves[level], pool.map(one, waves[level]), strict=True):
                    self.jobs[lp.layer] = job
        if any(j.job_id for j in self.jobs.values()):
            self._poller = threading.Thread(target=self._poll_loop, name="slurm-poll", daemon=True)
            self._poller.start()

    def _unsubmitted(self, lp: LayerPlan, outcome: Outcome, message: str) -> Job:
        name = job_name(self.settings.job_name_prefix, lp.layer, lp.key)
        job = Job(lp.layer, lp.key, name, "", "", state=JobState.UNKNOWN, outcome=outcome, message=message)
        self.log.error("build job not submitted", layer=lp.layer, error=message)
        return job

    def _active_jobs(self) -> dict[str, tuple[str, JobState]]:
        """Queued or running jobs of this user, by name."""
        res = self.runner.run(
            ["squeue", "-h", f"--user={os.getuid()}", "--states=all", "-o", "%i|%j|%T"],
            step="squeue",
            capture=True,
            check=False,
            loglevel="DEBUG",
        )
        if res.returncode != 0:
            raise SlurmError(f"squeue failed (status {res.returncode}): {' '.join(res.tail[-3:])}")
        out = {}
        for line in res.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and not JobState.parse(parts[2]).finished:
                out[parts[1]] = (parts[0], JobState.parse(parts[2]))
        return out

    def sbatch_argv(self, lp: LayerPlan, name: str, deps: list[str], log_file: Path) -> list[str]:
        s = self.settings
        env = self.env if self.env is not None else os.environ
        exports = [v for v in EXPORTED_ENV if v in env]
        exports += sorted(k for k in env if k.startswith("IMAGEGRAPH_") and k not in SECRET_ENV)
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            f"--output={log_file}",
            "--open-mode=append",  # the submit side writes the layer's plan and publish lines there too
            "--kill-on-invalid-dep=yes",
            "--no-requeue",  # a failed node is reported, not silently retried
            f"--chdir={self.project_root}",
            f"--export={','.join(exports) or 'NONE'}",
        ]
        if deps:
            argv.append("--dependency=afterok:" + ":".join(deps))
        partition, constraint = self.placement(str(lp.arch) if lp.arch else None)
        if partition:
            argv.append(f"--partition={partition}")
        if constraint:
            argv.append(f"--constraint={constraint}")
        if s.time_limit:
            argv.append(f"--time={s.time_limit}")
        argv += list(s.sbatch_args)
        job = [
            *self.command,
            str(self.project_root),
            lp.layer,
            "--key",
            lp.key,
            "--result",
            str(result_path(log_file)),
            "--run-id",
            self.run_id,
        ]
        if lp.multiarch and lp.arch is not None:
            job += ["--arch", str(lp.arch)]
        if s.graphroot:
            job += ["--graphroot", s.graphroot]
        if s.runroot:
            job += ["--runroot", s.runroot]
        return [*argv, "--wrap", "exec " + shlex.join(job)]

    def placement(self, arch: str | None) -> tuple[str | None, str | None]:
        """Partition and constraint for a build of `arch` (per-arch settings win; `arch_placement`)."""
        if arch is None:
            return self.settings.partition, self.settings.constraint
        pl = arch_placement(self.settings, normalize_arch(arch))
        return pl.partition, pl.constraint

    def _submit(self, lp: LayerPlan, name: str, deps: list[str]) -> Job:
        log_file = self.log_dir / f"{lp.layer}-{self.run_id}.log"
        argv = self.sbatch_argv(lp, name, deps, log_file)
        res = self.runner.run(argv, step="sbatch", capture=True, check=False, loglevel="DEBUG")
        job_id = res.stdout.strip().split(";")[0]
        if res.returncode != 0 or not job_id.isdigit():
            raise SlurmError(
                f"sbatch refused the build job of {lp.layer} (status {res.returncode}): "
                + " ".join(res.tail[-3:])
            )
        self.log.info("job submitted", layer=lp.layer, job_id=job_id, dependencies=deps)
        return Job(lp.layer, lp.key, name, job_id, str(log_file), deps)

    def _adopt(self, lp: LayerPlan, name: str, job_id: str, state: JobState) -> Job:
        info = self._show(job_id) or {}
        log_file = info.get("StdOut") or str(self.log_dir / f"{lp.layer}-{self.run_id}.log")
        self.log.warning("adopted a build job already queued or running", layer=lp.layer, job_id=job_id)
        return Job(lp.layer, lp.key, name, job_id, log_file, adopted=True, state=state)

    # ----------------------------------------------------------------- watch

    def _poll_loop(self) -> None:
        wait = self.settings.poll_interval
        while not self._stop.wait(wait):
            t0 = _cpu_seconds()
            try:
                if not self.poll_once():
                    return
            except Exception as exc:  # the watcher must not die silently: report and keep trying
                self.log.warning("polling Slurm failed", error=str(exc))
            # A poll over many jobs costs more: space them so that polling stays under
            # 1/POLL_BUDGET of a core whatever the run's size (the process's CPU counts, so
            # a busy submit host polls less often, but never less than every MAX_POLL_WAIT).
            cost = POLL_BUDGET * (_cpu_seconds() - t0)
            wait = max(self.settings.poll_interval, min(cost, MAX_POLL_WAIT))

    def poll_once(self) -> bool:
        """One `squeue` over the unfinished jobs; returns False when none is left."""
        with self._cond:
            todo = {j.job_id: j for j in self.jobs.values() if j.job_id and not j.state.finished}
        if not todo:
            return False
        self.polls += 1
        res = self.runner.run(
            ["squeue", "-h", "--states=all", f"--jobs={','.join(todo)}", "-o", "%i|%T|%r|%N|%S|%e"],
            step="squeue",
            capture=True,
            check=False,
            loglevel="DEBUG",
        )
        said = " ".join(res.tail)
        if res.returncode != 0 and "Invalid job id" not in said:
            if time.monotonic() - self._last_answer > CONTROLLER_TIMEOUT:
                for job in todo.values():
                    self._finish(
                        job, JobState.UNKNOWN, f"slurmctld did not answer for {CONTROLLER_TIMEOUT:.0f} s"
                    )
            return True
        self._last_answer = time.monotonic()
        seen: dict[str, list[str]] = {}
        for line in res.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 6:
                seen[parts[0]] = parts
        for job_id, job in todo.items():
            row = seen.get(job_id)
            if row is None:
                self._vanished(job)
                continue
            state = JobState.parse(row[1])
            with self._cond:
                job.reason, job.node = row[2], row[3] or job.node
                job.started = row[4] if row[4] not in ("N/A", "Unknown") else job.started
            if state.finished:
                # squeue says where and when; only a failure needs scontrol, for its exit code.
                seen_info = {"NodeList": row[3], "StartTime": row[4], "EndTime": row[5]}
                self._finish(job, state, row[2], None if state == JobState.FAILED else seen_info)
            else:
                if state != job.state:
                    with self._cond:
                        job.state = state
                if state == JobState.PENDING:
                    self._say_if_stuck(job, row[2])
        return True

    def _say_if_stuck(self, job: Job, reason: str) -> None:
        """Warn once when a queued job waits for nodes that are down or drained: without it `up`
        waits in silence until an admin resumes the node or someone presses Ctrl-C."""
        if not any(word in reason for word in STUCK_REASONS) or (job.job_id, reason) in self._stuck_said:
            return
        self._stuck_said.add((job.job_id, reason))
        self.log.warning(
            "build job cannot start: its nodes are unavailable; it starts when they are back "
            "(scontrol update nodename=NODE state=resume), or stop the run with Ctrl-C",
            layer=job.layer,
            job_id=job.job_id,
            slurm_reason=reason,
        )

    def _show(self, job_id: str) -> dict[str, str] | None:
        res = self.runner.run(
            ["scontrol", "show", "job", "-o", job_id],
            step="scontrol",
            capture=True,
            check=False,
            loglevel="DEBUG",
        )
        return parse_scontrol(res.stdout) if res.returncode == 0 and res.stdout.strip() else None

    def _vanished(self, job: Job) -> None:
        info = self._show(job.job_id)
        if info and info.get("JobState"):
            state = JobState.parse(info["JobState"])
            if state.finished:
                self._finish(job, state, info.get("Reason", ""), info)
            return
        self._finish(job, JobState.UNKNOWN, "", {})

    def _finish(self, job: Job, state: JobState, reason: str, info: dict[str, str] | None = None) -> None:
        if info is None:
            info = self._show(job.job_id) or {}
        result = read_result(job.result_file)
        outcome, message = job_outcome(state, reason, info.get("ExitCode", ""), result, job.key)
        with self._cond:
            job.state, job.reason = state, reason
            job.exit_code = info.get("ExitCode", job.exit_code)
            job.node = (info.get("NodeList") or job.node).replace("(null)", "")
            job.started = info.get("StartTime", job.started)
            job.ended = info.get("EndTime", job.ended)
            job.outcome, job.message = outcome, message
            self._cond.notify_all()
        self.log.info(
            "job finished", layer=job.layer, job_id=job.job_id, state=str(state), outcome=str(outcome)
        )
        self._record(job)

    def _record(self, job: Job) -> None:
        if self.state is None:
            return
        try:
            self.state.record_event(
                run_id=self.run_id,
                layer=job.layer,
                key=job.key,
                kind="slurm-job",
                location=f"slurm:{job.job_id}",
                detail=job.to_json(),
            )
        except Exception as exc:  # the build's own result matters more than its bookkeeping
            self.log.warning("could not record the job", layer=job.layer, error=str(exc))

    # ----------------------------------------------------------------- build

    def build(self, lp: LayerPlan, parent: ParentImage | None) -> BuiltImage:
        """Wait for this layer's job; its image, or why there is none."""
        job = self.jobs.get(lp.layer)
        if job is None:
            raise SlurmJobError(lp.layer, Outcome.FAILED, "no build job was submitted for this layer")
        with self._cond:
            self._cond.wait_for(lambda: job.outcome is not None or self._cancelled)
            if job.outcome is None:
                raise Cancelled(f"{lp.layer}: build job {job.job_id} cancelled")
        if job.outcome == Outcome.CANCELLED and self._cancelled:
            raise Cancelled(f"{lp.layer}: build job {job.job_id} cancelled")
        if job.outcome != Outcome.OK:
            tail = self._log_tail(job) if job.log_file else []
            text = f"build job {job.job_id} {job.message}" if job.job_id else job.message
            if job.node:
                text += f" (node {job.node})"
            if tail:
                text += "\n  last lines of the job log:\n" + "\n".join("    " + t for t in tail)
            if job.log_file:
                text += f"\n  job log: {job.log_file}"
            raise SlurmJobError(lp.layer, job.outcome or Outcome.UNKNOWN, text, job.log_file)
        result = read_result(job.result_file) or {}
        durations = result.get("durations") or {}
        return BuiltImage(
            key=lp.key,
            image_id=None,
            image_ref=result.get("image_ref", ""),
            digest=result.get("digest"),
            finished=time.time(),  # job times (Slurm's own words) are in `job`
            log_path=job.log_file,
            steps=tuple((k, float(v)) for k, v in durations.items() if k != "total"),
            inventory=_inventory(result.get("inventory")),
            job=job.to_json(),
        )

    def _log_tail(self, job: Job) -> list[str]:
        try:
            lines = Path(job.log_file).read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [redact(ln) for ln in lines[-LOG_TAIL_LINES:]]

    # ---------------------------------------------------------------- cancel

    def cancel(self) -> None:
        """scancel every job of the run that has not finished; wake whoever waits."""
        with self._cond:
            todo = [j for j in self.jobs.values() if j.job_id and not j.state.finished]
            self._cancelled = True
        self._stop.set()
        if todo:
            self.runner.run(
                ["scancel", *[j.job_id for j in todo]],
                step="scancel",
                check=False,
                cleanup=True,
                capture=True,
            )
            for j in todo:
                with self._cond:
                    j.state, j.outcome = JobState.CANCELLED, Outcome.CANCELLED
                    j.message = "cancelled by imagegraph (the run was interrupted or stopped early)"
                self.log.warning("job cancelled", layer=j.layer, job_id=j.job_id)
                self._record(j)
        with self._cond:
            self._cond.notify_all()

    def jobs_json(self) -> list[dict]:
        with self._cond:
            return [j.to_json() for j in self.jobs.values()]


def service_for(
    settings: ExecutorSettings, *, project_root: Path, state_dir: Path, run_id: str, state: Any = None
) -> SlurmBuildService:
    """The Slurm build service of a run, its logs in `executor.log_dir` or the state directory's."""
    log_dir = Path(settings.log_dir) if settings.log_dir else state_dir / "logs"
    if not log_dir.is_absolute():
        log_dir = project_root / log_dir
    return SlurmBuildService(settings, project_root=project_root, log_dir=log_dir, run_id=run_id, state=state)


def last_jobs(runs: list[dict]) -> list[dict]:
    """The Slurm jobs of the newest run (of `State.runs`, newest first) that submitted any."""
    for r in runs:
        try:
            jobs = json.loads(r.get("result") or "{}").get("jobs")
        except ValueError:
            continue
        if jobs:
            return jobs
    return []


def _inventory(doc: Any) -> Any:
    """The package inventory a job read on its node (its result document's `inventory`), if any."""
    from .packages import Inventory

    try:
        return Inventory.from_json(doc) if isinstance(doc, dict) else None
    except (KeyError, TypeError, ValueError):
        return None  # a result from an older imagegraph on the node: no inventory, said by the SBOM step
