"""`status`: recent runs and, per layer, whether it is up to date, stale or failed.

Built from a `Plan` (what `up` would do now) and the state's build records;
returns data (`StatusReport`), never prints. Timestamps in `to_json` are ISO
8601 UTC; stored run results are parsed, not passed on as JSON strings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .diff import inventory_of
from .plan import Action, Plan
from .state import State


class LayerStatus(StrEnum):
    UP_TO_DATE = "up to date"
    STALE = "stale"  # `up` would build or publish it
    FAILED = "failed"  # its last build of the current key failed
    NEVER_BUILT = "never built"
    BLOCKED = "blocked"


def iso(ts: float | None) -> str | None:
    return (
        datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if ts else None
    )


@dataclass(frozen=True)
class RunRow:
    run_id: str
    command: str
    started: float | None
    finished: float | None
    status: str
    result: Any

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "started": iso(self.started),
            "finished": iso(self.finished),
            "status": self.status,
            "result": self.result,
        }


@dataclass(frozen=True)
class LayerRow:
    layer: str
    status: LayerStatus
    key: str | None
    built_at: float | None
    duration: float | None
    detail: str = ""  # why stale, or the failure
    hint: str | None = None  # the command that says more
    image: str | None = None  # the recorded build's image (reference, else ID)
    packages: int | None = None  # installed packages of the build (None: not built, or unknown)
    packages_unknown: str = ""  # why the count is unknown

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "status": str(self.status),
            "key": self.key,
            "built_at": iso(self.built_at),
            "duration": self.duration,
            "detail": self.detail,
            "hint": self.hint,
            "image": self.image,
            "packages": self.packages,
            "packages_unknown": self.packages_unknown or None,
        }


@dataclass
class StatusReport:
    runs: list[RunRow] = field(default_factory=list)
    layers: list[LayerRow] = field(default_factory=list)

    def to_json(self) -> dict:
        # layers keyed by name (`jq .layers.compute`), in build order
        return {
            "runs": [r.to_json() for r in self.runs],
            "layers": {s.layer: s.to_json() for s in self.layers},
        }


def _parsed(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def layer_status(plan: Plan, state: State, runs: int = 10, remote: Any = None) -> StatusReport:
    """Each planned layer's status; a failed last build of the current key wins over stale.

    Each row counts the packages of the layer's build (the current key when it is built, else
    the last build here) from the state's inventory, else, with `remote` (diff.RemoteSource),
    from the SBOM published with it; an inventory that cannot be had is unknown, with the reason.
    """
    report = StatusReport()
    for r in state.runs(runs):
        report.runs.append(
            RunRow(
                r["run_id"],
                r["command"] or "",
                r["started"],
                r["finished"],
                r["status"] or "",
                _parsed(r["result"]),
            )
        )
    records = state.layers()
    for lid, lp in plan.layers.items():
        rec = records.get(lid)
        last = (state.builds(lid, limit=1) or [None])[0]
        why = "; ".join(r.message for r in lp.reasons)
        if last and last["status"] == "failed" and last["key"] == lp.key and lp.action == Action.BUILD:
            row = LayerRow(
                lid,
                LayerStatus.FAILED,
                lp.key,
                rec.built_at if rec else None,
                last["duration"],
                (last["error"] or "build failed").splitlines()[0],
                f"imagegraph log {lid}",
            )
        elif lp.action == Action.BLOCKED:
            row = LayerRow(lid, LayerStatus.BLOCKED, lp.key, rec.built_at if rec else None, None, why)
        elif lp.action == Action.UP_TO_DATE:
            row = LayerRow(
                lid, LayerStatus.UP_TO_DATE, lp.key, rec.built_at if rec else None, rec and rec.duration
            )
        elif rec is None and lp.action == Action.BUILD:
            row = LayerRow(lid, LayerStatus.NEVER_BUILT, lp.key, None, None)
        elif rec is None:  # built elsewhere (another host's state): something to publish here
            row = LayerRow(lid, LayerStatus.STALE, lp.key, None, None, why)
        else:
            row = LayerRow(lid, LayerStatus.STALE, lp.key, rec.built_at, rec.duration, why)
        if rec is not None:
            row = dataclasses.replace(row, image=rec.image_ref or rec.image_id)
        built = lp.key if lp.action not in (Action.BUILD, Action.BLOCKED) else (rec.key if rec else None)
        if built is not None:
            inv = inventory_of(state, built)
            if inv is None and remote is not None:
                inv = remote.inventory(lid, plan.graph.spec(lid), built)
            if inv is not None and inv.known:
                row = dataclasses.replace(row, packages=len(inv.packages))
            else:
                why = inv.reason if inv is not None else "no inventory recorded for this key"
                row = dataclasses.replace(row, packages_unknown=why)
        report.layers.append(row)
    return report
