"""The task graph of a run: what each layer's work is made of, and what waits for what.

A pending layer contributes, from its plan:

- `build` when its key must be built, after its parent's `build` when the
  parent builds in this run too (the child needs the parent's committed
  image, nothing else);
- `push`: the registry push with every tag on one manifest (with the boot
  gate on, the immutable key tag only), after its own build;
- `tag-local`: tags in local container storage;
- `squashfs`: the SquashFS and boot files made from the image (CPU-heavy:
  it holds a build slot), when the layer publishes to S3 or a directory or
  boot-tests;
- `boot-test` after `squashfs` when the gate (`options.boot_test.enabled`)
  is on and the key has not booted yet;
- `publish-artifacts`: S3 and directory uploads, after `squashfs` (and the
  boot test when gated: their keys and directories are named by tags);
- `tag-registry`: the registry's human tags, after `push` and the boot test
  (gated only);
- `index` (multi-arch layers, on the layer's first node): one OCI index over
  every architecture's key tag, then the human tags, after every arch's
  `push` (and boot test): a failed arch blocks it, so human tags stay put.
  Each arch's `push` is then the key tag only.

Nothing of another layer waits for a publish task: a failed upload fails
that layer's publishing, not its children's builds (a child's push carries
every blob of its image, the parent's included).

Each task holds a resource class: `build` (`-j` slots; builds and SquashFS),
`upload` (registry and S3/dir share a small pool), `boot` (one QEMU at a
time by default) or `none`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TaskKind(StrEnum):
    BUILD = "build"
    PUSH = "push"
    TAG_LOCAL = "tag-local"
    SQUASHFS = "squashfs"
    BOOT_TEST = "boot-test"
    PUBLISH_ARTIFACTS = "publish-artifacts"
    TAG_REGISTRY = "tag-registry"
    INDEX = "index"


class Resource(StrEnum):
    BUILD = "build"
    UPLOAD = "upload"
    BOOT = "boot"
    NONE = "none"


class TaskStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    BLOCKED = "blocked"  # a task it needs failed, or the plan knows it cannot run
    CANCELLED = "cancelled"
    NOT_STARTED = "not-started"  # Ctrl-C, SIGTERM or --fail-fast came first


class SkipReason(StrEnum):
    """Why a task did not run."""

    DEPENDENCY_FAILED = "dependency-failed"
    PLAN_BLOCKED = "plan-blocked"
    FAIL_FAST = "fail-fast"
    CANCELLED = "cancelled"


RESOURCE_OF = {
    TaskKind.BUILD: Resource.BUILD,
    TaskKind.SQUASHFS: Resource.BUILD,
    TaskKind.PUSH: Resource.UPLOAD,
    TaskKind.TAG_REGISTRY: Resource.UPLOAD,
    TaskKind.INDEX: Resource.UPLOAD,
    TaskKind.PUBLISH_ARTIFACTS: Resource.UPLOAD,
    TaskKind.BOOT_TEST: Resource.BOOT,
    TaskKind.TAG_LOCAL: Resource.NONE,
}

# Priority weights (seconds) for tasks without recorded durations; builds use the recorded ones.
DEFAULT_SECONDS = {
    TaskKind.BUILD: 60.0,
    TaskKind.SQUASHFS: 10.0,
    TaskKind.PUSH: 10.0,
    TaskKind.TAG_REGISTRY: 1.0,
    TaskKind.INDEX: 2.0,
    TaskKind.PUBLISH_ARTIFACTS: 10.0,
    TaskKind.BOOT_TEST: 60.0,
    TaskKind.TAG_LOCAL: 0.5,
}

ARTIFACT_TARGETS = ("s3", "dir")


def task_id(layer: str, kind: TaskKind) -> str:
    return f"{layer}:{kind}"


@dataclass(frozen=True)
class Task:
    layer: str
    kind: TaskKind
    after: tuple[str, ...] = ()  # ids of the tasks this one needs
    targets: tuple[str, ...] = ()  # publish targets it fills
    gated: bool = False  # push: key tag only, human tags wait for the boot test
    # Ordering only, whatever their outcome: a child's push starts once its parent's push has ended,
    # so the parent's layers are on the registry and not compressed and sent twice at once.
    waits_for: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return task_id(self.layer, self.kind)

    @property
    def resource(self) -> Resource:
        return RESOURCE_OF[self.kind]

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "resource": str(self.resource),
            "after": list(self.after),
            "targets": list(self.targets),
            **({"gated": True} if self.gated else {}),
            **({"waits_for": list(self.waits_for)} if self.waits_for else {}),
        }


def layer_tasks(
    layer: str,
    *,
    build: bool,
    publish: list[str],
    boot_test: bool,
    parent_build: str | None,
    member: bool = False,
    parent_push: str | None = None,
) -> list[Task]:
    """The tasks of one layer (see the module docstring).

    `publish` lists the targets to fill, `boot_test` whether the gate holds
    this layer's human tags, `parent_build` the parent's build task id when
    the parent builds in this run, `member` that the layer is multi-arch (its
    push is the key tag only; the `index` task, added by the plan, tags),
    `parent_push` the parent's push task id when it pushes in this run to the
    same registry (this layer's push waits for it to end, not for it to succeed).
    """
    out: list[Task] = []
    own: tuple[str, ...] = ()
    if build:
        out.append(Task(layer, TaskKind.BUILD, (parent_build,) if parent_build else ()))
        own = (out[0].id,)
    if not publish:
        return out
    gated = boot_test
    artifacts = tuple(t for t in ARTIFACT_TARGETS if t in publish)
    boot: Task | None = None
    squash: Task | None = None
    if artifacts or gated:
        squash = Task(layer, TaskKind.SQUASHFS, own, artifacts)
        out.append(squash)
    if gated and squash is not None:
        boot = Task(layer, TaskKind.BOOT_TEST, (squash.id,))
        out.append(boot)
    if "registry" in publish:
        push = Task(
            layer,
            TaskKind.PUSH,
            own,
            ("registry",),
            gated=gated or member,
            waits_for=(parent_push,) if parent_push else (),
        )
        out.append(push)
        if boot is not None and not member:
            out.append(Task(layer, TaskKind.TAG_REGISTRY, (push.id, boot.id), ("registry",)))
    if "local" in publish:
        out.append(Task(layer, TaskKind.TAG_LOCAL, own, ("local",)))
    if artifacts and squash is not None:
        after = (squash.id, boot.id) if boot is not None else (squash.id,)
        out.append(Task(layer, TaskKind.PUBLISH_ARTIFACTS, after, artifacts))
    return out
