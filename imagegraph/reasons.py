"""The plan's vocabulary: why a layer builds, publishes, waits or cannot be told.

A `Reason` is a typed code, a sentence for people and a detail document for
programs; `plan --json`, the run record, the logs and the terminal show the
same objects. The codes are strings on the wire (StrEnum), so documents and
scripts read them as before; a code outside the vocabulary is refused when
the reason is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ReasonCode(StrEnum):
    """Why a layer (or a note on it) is what the plan says."""

    # build: the key is not built, or something it is made of changed
    NEVER_BUILT = "never-built"
    FIELD_CHANGED = "field-changed"
    FILE_CHANGED = "file-changed"
    KEY_CHANGED = "key-changed"
    KEY_FORMAT = "key-format"
    BACKEND_CHANGED = "backend-changed"
    PARENT_REBUILDS = "parent-rebuilds"
    PARENT_CHANGED = "parent-changed"
    PARENT_DIGEST_MOVED = "parent-digest-moved"
    UPSTREAM_CHANGED = "upstream-changed"
    UPSTREAM_PACKAGE = "upstream-package"
    UPSTREAM_STALE = "upstream-stale"
    IMAGE_MISSING = "image-missing"
    FORCED = "forced"
    TOO_OLD = "too-old"
    # publish: built, and a target does not hold it
    NOT_PUBLISHED = "not-published"
    TARGETS_CHANGED = "targets-changed"
    MISSING_REMOTE = "missing-remote"
    TARGET_MOVED = "target-moved"
    BOOT_TEST_FAILED = "boot-test-failed"
    # no build needed: the key's image is already somewhere
    FOUND_LOCALLY = "found-locally"
    BUILT_ELSEWHERE = "built-elsewhere"
    # blocked or unknown
    INVENTORY_UNKNOWN = "inventory-unknown"
    PARENT_UNAVAILABLE = "parent-unavailable"
    PARENT_BLOCKED = "parent-blocked"
    PARENT_LACKS_ARCH = "parent-lacks-arch"
    NO_EMULATION = "no-emulation"
    SOURCE_MISSING = "source-missing"
    # notes: said, and deciding nothing
    PARENT_DIGEST_UNKNOWN = "parent-digest-unknown"
    PARENT_LOCKED = "parent-locked"
    PARENT_RESOLVED_BY_NAME = "parent-resolved-by-name"
    SLURM_PLACEMENT = "slurm-placement"


class IndexReason(StrEnum):
    """Why a multi-arch layer's index is or is not written (reason and note codes)."""

    DUE = "index-due"  # an arch builds or pushes in this run
    MISSING = "index-missing"  # the index of today's keys is not in the registry
    MOVED = "index-moved"  # a human tag points elsewhere
    WAITS = "index-waits"  # an arch in the plan is blocked or unknown
    WAITS_FOR_ARCHES = "index-waits-for-arches"  # `--arch` left out arches whose key tags are missing


def _code(value: str) -> ReasonCode | IndexReason:
    """The member named by `value` (a member already, or its string); ValueError for any other."""
    if isinstance(value, ReasonCode | IndexReason):
        return value
    try:
        return ReasonCode(value)
    except ValueError:
        pass
    try:
        return IndexReason(value)
    except ValueError:
        raise ValueError(f"not a reason code: {value!r}") from None


@dataclass(frozen=True)
class Reason:
    code: ReasonCode | IndexReason
    message: str
    detail: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", _code(self.code))  # records read back hold plain strings

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict:
        return {
            "code": str(self.code),
            "message": self.message,
            **({"detail": self.detail} if self.detail else {}),
        }
