"""The seam between scheduling and building: a `BuildService` builds one layer's key somewhere.

The executor calls `prepare` once with every layer the plan builds, before
anything is scheduled, `build` when a layer's build task runs, and `cancel`
on Ctrl-C, SIGTERM or fail-fast. `slots` says how many local build slots one
build takes (None: the service limits itself, e.g. Slurm). A build yields a
`BuiltImage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .build import ParentImage
from .plan import LayerPlan, Plan


@dataclass
class BuiltImage:
    """What a build yields: the key, where its image is, and how it went."""

    key: str
    image_id: str | None  # a local image ID, None when the image was built on another host
    image_ref: str  # local key reference, or the registry key-tag reference
    digest: str | None = None  # the manifest digest when the image is in a registry
    durations: dict[str, float] = field(default_factory=dict)  # step -> seconds (and "total")
    log_file: str | None = None
    job: dict | None = None  # where it ran (a Slurm job's id, node, state, times)

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "image_id": self.image_id,
            "image_ref": self.image_ref,
            "digest": self.digest,
            "durations": self.durations,
            "log_file": self.log_file,
            "job": self.job,
        }


class BuildService(Protocol):
    slots: int | None

    def prepare(self, plan: Plan, builds: list[LayerPlan]) -> None: ...

    def build(self, lp: LayerPlan, parent: ParentImage | None) -> BuiltImage: ...

    def cancel(self) -> None: ...
