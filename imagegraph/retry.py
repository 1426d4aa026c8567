"""The one retry policy: registry requests and pushes, S3 transfers and lock-file fetches.

Transient failures (connection refused or reset, timeouts, HTTP 5xx, 429,
S3 throttling) are retried with tenacity: `attempts` tries in all,
exponential waits from `initial_wait` s doubling up to `max_wait` s, plus up
to `min(1, initial_wait)` s of jitter so parallel operations that failed
together do not come back together. The environment sets all three for every
user at once (`IMAGEGRAPH_RETRY_ATTEMPTS`, `IMAGEGRAPH_RETRY_INITIAL_WAIT`,
`IMAGEGRAPH_RETRY_MAX_WAIT`). Every wait ends at once, raising `Cancelled`,
when the run is interrupted (Ctrl-C, `runner.terminate_all`).

What counts as transient is the caller's knowledge: by default a
`TransientError` (but not `NoRetry`); S3 passes its own predicate over
botocore's exceptions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from .log import get_logger
from .runner import sleep_unless_cancelled

if TYPE_CHECKING:
    import tenacity

__all__ = ["ENV_ATTEMPTS", "ENV_INITIAL_WAIT", "ENV_MAX_WAIT", "NoRetry", "RetryPolicy", "TransientError"]

ENV_ATTEMPTS = "IMAGEGRAPH_RETRY_ATTEMPTS"
ENV_INITIAL_WAIT = "IMAGEGRAPH_RETRY_INITIAL_WAIT"
ENV_MAX_WAIT = "IMAGEGRAPH_RETRY_MAX_WAIT"

_log = get_logger(component="retry")

_T = TypeVar("_T")

OnRetry = Callable[[BaseException, int, float], None]
"""Called before each wait with the failure, the attempt that failed (1-based) and the wait in s."""


class TransientError(Exception):
    """A failure worth retrying: `reason` for humans, `detail` (what was asked), the HTTP `status`."""

    def __init__(self, reason: str, detail: str = "", status: int | None = None):
        self.reason = reason
        self.detail = detail
        self.status = status
        super().__init__(f"{reason}: {detail}" if detail else reason)


class NoRetry(TransientError):
    """Transient, but retrying cannot help within the caller's time bound (a timeout while planning)."""


def _env_number(name: str, default: float, cast: Callable[[str], float]) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        _log.warning("ignoring invalid setting", variable=name, value=raw)
        return default
    return value if value >= 0 else default


def _is_transient_error(exc: BaseException) -> bool:
    return isinstance(exc, TransientError) and not isinstance(exc, NoRetry)


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried (see the module docstring)."""

    attempts: int = 5
    initial_wait: float = 1.0
    max_wait: float = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The defaults, overridden by `IMAGEGRAPH_RETRY_*` (invalid or negative values are ignored)."""
        base = cls()
        return cls(
            attempts=max(1, int(_env_number(ENV_ATTEMPTS, base.attempts, int))),
            initial_wait=_env_number(ENV_INITIAL_WAIT, base.initial_wait, float),
            max_wait=_env_number(ENV_MAX_WAIT, base.max_wait, float),
        )

    def with_attempts(self, attempts: int) -> RetryPolicy:
        """The same waits with another bound (1: no retries, for quick existence checks)."""
        return replace(self, attempts=max(1, attempts))

    def retrying(
        self,
        on_retry: OnRetry | None = None,
        *,
        retry_if: Callable[[BaseException], bool] = _is_transient_error,
    ) -> tenacity.Retrying:
        """A tenacity `Retrying` for this policy (`for attempt in ...: with attempt: ...`)."""
        import tenacity  # loaded when something is first retried, not by `plan --offline`

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            if on_retry and exc is not None:
                on_retry(exc, state.attempt_number, wait)

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            # (wait_exponential + wait_random rather than wait_exponential_jitter,
            # whose arguments changed between tenacity 8 and 9)
            wait=tenacity.wait_exponential(multiplier=self.initial_wait, max=self.max_wait)
            + tenacity.wait_random(0, min(1.0, self.initial_wait)),
            retry=tenacity.retry_if_exception(retry_if),
            reraise=True,
            sleep=sleep_unless_cancelled,  # Ctrl-C ends a wait at once, not after it
            before_sleep=before_sleep,
        )

    def call(
        self,
        fn: Callable[[], _T],
        on_retry: OnRetry | None = None,
        *,
        retry_if: Callable[[BaseException], bool] = _is_transient_error,
    ) -> _T:
        """`fn()`, retried on transient failures; the last failure is raised as it was."""
        # The first attempt runs before tenacity is imported (~40 ms of a plan's CPU): most calls
        # succeed. A first failure worth retrying is replayed as tenacity's first attempt, so the
        # waits, `on_retry` and the bound are the same as if tenacity had made it.
        try:
            return fn()
        except BaseException as exc:
            if self.attempts <= 1 or not retry_if(exc):
                raise
            first: list[BaseException] = [exc]

        def attempt_fn() -> _T:
            if first:
                raise first.pop()
            return fn()

        for attempt in self.retrying(on_retry, retry_if=retry_if):
            with attempt:
                return attempt_fn()
        raise AssertionError("unreachable")  # tenacity either returns or raises
