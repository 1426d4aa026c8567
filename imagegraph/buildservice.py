"""Where a build task's body runs: the `BuildService` protocol and `LocalBuildService`.

The scheduler runs `build` tasks through the executor, and the executor's
build step is one call to a build service. Local builds (buildah on this
host, `LocalBuildService`) are today's; another service (a Slurm job per
layer) plugs in here without the scheduler or the executor's publish steps
changing:

- `slots`: the local build slots one build holds (`-j` counts them); None
  means builds are not limited here (they run elsewhere, so waiting for one
  holds no local slot);
- `prepare(plan, builds)`: called once before scheduling with every layer
  that will build (a batch system submits all jobs here, chained);
- `build(lp, parent)`: called when the task runs; returns `BuiltImage`;
- `cancel()`: Ctrl-C, SIGTERM or fail-fast.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .build import BuildRequest, ParentImage, build_layer
from .plan import LayerPlan, Plan, local_tag_suffix
from .resolve import locked_nevras
from .runner import Runner


@dataclass(frozen=True)
class BuiltImage:
    """What a build yields: the image for `key`, where it is, and how long it took."""

    key: str
    image_id: str | None  # a local image ID; None when the image is only in a registry
    image_ref: str  # the key-tag reference (local storage or registry)
    digest: str | None  # the registry manifest digest when the build pushed it
    started: float = 0.0
    finished: float = 0.0
    log_path: str | None = None
    steps: tuple[tuple[str, float], ...] = ()
    inventory: Any = None  # the image's package inventory (packages.Inventory) when the build read one
    job: dict | None = None  # where it ran elsewhere (a Slurm job's id, node, state, times)

    @property
    def seconds(self) -> float:
        return self.finished - self.started


class BuildService(Protocol):
    slots: int | None

    def prepare(self, plan: Plan, builds: list[LayerPlan]) -> None: ...

    def build(self, lp: LayerPlan, parent: ParentImage | None) -> BuiltImage: ...

    def cancel(self) -> None: ...


class LocalBuildService:
    """Builds with buildah on this host (`build_layer`), one local build slot each.

    `runner_for(layer)` gives the Runner of the task that is running for that
    layer (its log file); cancellation of running commands is the runner's
    (`terminate_all` on a signal), so `cancel` has nothing of its own to stop.
    """

    slots: int | None = 1

    def __init__(self, plan: Plan, run_id: str, runner_for: Callable[[str], Runner]):
        self.plan = plan
        self.run_id = run_id
        self.runner_for = runner_for

    def prepare(self, plan: Plan, builds: list[LayerPlan]) -> None:
        return None  # local builds start when their task runs

    def build(self, lp: LayerPlan, parent: ParentImage | None) -> BuiltImage:
        runner = self.runner_for(lp.layer)
        t0 = time.time()
        req = BuildRequest(
            self.plan.spec(lp.layer), lp.key, parent, self.run_id, locked=locked_nevras(lp.inputs)
        )
        if lp.multiarch and lp.arch is not None:
            req = dataclasses.replace(req, arch=lp.arch, tag_suffix=local_tag_suffix(lp.arch))
        res = build_layer(req, runner)
        return BuiltImage(
            key=lp.key,
            image_id=res.image_id,
            image_ref=res.image_ref,
            digest=None,
            started=t0,
            finished=time.time(),
            log_path=str(runner.log_path) if getattr(runner, "log_path", None) else None,
            steps=tuple(res.steps),
            inventory=res.inventory,
        )

    def cancel(self) -> None:
        return None
