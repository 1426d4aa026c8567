"""structlog configuration: readable lines, or JSON lines when asked (or under systemd).

Every event passes through the secret redactor. Per-layer build logs are
plain text files written by the runner; this module only configures the
process-wide event log.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

from .redact import redact, redact_obj

if TYPE_CHECKING:
    import structlog.typing

_run_context: dict[str, str] = {}
# configure() only records its choice; structlog (and the rich it loads, 0.1 s) is imported
# and set up when the first logger is asked for, so commands that log nothing never load it.
_pending: tuple[str, str, Any, bool | None] | None = None
_apply_lock = threading.Lock()


class _Stderr:
    """Whatever `sys.stderr` is when a line is written (tests and embedders swap it), not when configured."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_STDERR = _Stderr()

# CSI sequences (colours, cursor moves), OSC sequences (titles, links) and lone two-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def clean_line(line: str) -> str:
    """A streamed output line as a terminal would leave it: ANSI escapes removed, and of a line
    redrawn with carriage returns (progress bars) only its last state."""
    line = _ANSI.sub("", line).rstrip("\r")
    if "\r" in line:
        line = line.rsplit("\r", 1)[1]
    return line


def bind_run(run_id: str) -> None:
    """Tag every event of this process with the run id (worker threads included)."""
    _run_context["run_id"] = run_id


def _run_processor(_logger: Any, _name: str, event: dict) -> dict:
    for k, v in _run_context.items():
        event.setdefault(k, v)
    return event


def _redact_processor(_logger: Any, _name: str, event: dict) -> dict:
    for k, v in list(event.items()):
        if isinstance(v, str):
            event[k] = redact(v)
        elif isinstance(v, list | tuple | dict):  # e.g. an argv list
            event[k] = redact_obj(v)
    return event


def configure(fmt: str = "auto", level: str = "INFO", stream: Any = None, color: bool | None = None) -> None:
    """Set up structlog once per process. fmt: auto, console (readable lines) or json (JSON lines).

    `color` None: colour when the stream is a terminal and NO_COLOR is unset.
    """
    global _pending
    # requests silences urllib3's "no PySocks" warning as it imports, but botocore's import in an S3
    # thread restores the filters it saved (catch_warnings), dropping that: a raw, non-JSON line.
    # Filters set here, before any thread starts, survive that.
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")
    _pending = (fmt, level, stream or _STDERR, color)
    if "structlog" in sys.modules:  # loggers already exist: apply now
        _apply()


def _apply() -> None:
    # Under a lock, and `_pending` cleared only once structlog is configured: a second thread must
    # not log through structlog's default configuration (stdout) while the first configures it.
    with _apply_lock:
        if _pending is not None:
            _configure_structlog(*_pending)


def _configure_structlog(fmt: str, level: str, stream: Any, color: bool | None) -> None:
    global _pending
    import logging

    import structlog

    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    if color is None:
        color = getattr(stream, "isatty", lambda: False)() and not os.environ.get("NO_COLOR")
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=color)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _run_processor,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _pending = None


_LEVELS = {"debug": 10, "info": 20, "msg": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40}
_LEVELS |= {"critical": 50, "fatal": 50}


def _drop(*_args: Any, **_kw: Any) -> None:
    return None


class _LazyLogger:
    """Stands for a structlog logger until it is first used (then imports structlog).

    An event below the configured level is dropped without importing structlog (its filtering
    logger would drop it too): `plan` logs its `buildah images` at debug level, and structlog
    with the rich it loads costs 0.05 s of a plan.
    """

    def __init__(self, bind: dict[str, Any]):
        self._bind = bind

    def __getattr__(self, name: str) -> Any:
        pending = _pending
        if (
            pending is not None
            and "structlog" not in sys.modules
            and name in _LEVELS
            and _LEVELS[name] < _LEVELS.get(pending[1].lower(), 0)
        ):
            return _drop
        import structlog

        _apply()
        return getattr(structlog.get_logger("imagegraph", **self._bind), name)


def get_logger(**bind: Any) -> structlog.typing.FilteringBoundLogger:
    # Lazy: modules bind loggers at import time, before configure() picks the stream.
    if "structlog" not in sys.modules:
        return _LazyLogger(bind)  # type: ignore[return-value]
    import structlog

    _apply()
    return structlog.get_logger("imagegraph", **bind)
