"""The one way imagegraph runs external commands.

Every buildah, dnf, mksquashfs ... call goes through `Runner.run`, which
streams the command's stdout and stderr line by line into the structured log
(tagged with layer and step; cleaned of carriage returns and ANSI escapes,
see `log.clean_line`) and into the layer's log file (as written), keeps the
last lines and the lines that say why (`cause.py`) for error messages, and
turns a non-zero exit into `CommandError`, which quotes the latter first.

Cancellation: every child runs in its own process group and is registered
while it runs, so `terminate_all()` (called on Ctrl-C/SIGTERM) can stop
every running command of every layer at once.
"""

from __future__ import annotations

import collections
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .cause import QUOTE_CAUSES, is_cause, quote
from .errors import ImagegraphError
from .log import clean_line, get_logger
from .redact import redact

TAIL_LINES = 20
_active: set[subprocess.Popen] = set()
_active_lock = threading.Lock()
_cancelled = threading.Event()


class CommandError(ImagegraphError):
    """An external command exited non-zero (or could not start)."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        tail: list[str],
        step: str = "",
        causes: Sequence[str] = (),
    ):
        self.argv = list(argv)
        self.returncode = returncode
        # What the failure quotes: the lines that say why first (cause.py), then the last lines.
        self.tail = quote(causes, tail)
        self.step = step
        shown = redact(" ".join(self.argv))
        if len(shown) > 300:
            shown = shown[:300] + "..."
        msg = f"command exited with status {returncode}: {shown}"
        if self.tail:
            msg += "\n  output:\n" + "\n".join("    " + redact(t) for t in self.tail)
        super().__init__(msg)


class Cancelled(ImagegraphError):
    """The run was interrupted; the command was stopped or never started."""

    exit_status = 130


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str = ""
    tail: list[str] = field(default_factory=list)
    seconds: float = 0.0


def cancel_requested() -> bool:
    return _cancelled.is_set()


def sleep_unless_cancelled(seconds: float) -> None:
    """A retry's wait that ends at once, raising Cancelled, when the run is interrupted."""
    if _cancelled.wait(seconds):
        raise Cancelled("cancelled while waiting to retry")


def reset_cancel() -> None:
    _cancelled.clear()


def terminate_all(grace: float = 5.0) -> None:
    """Stop every running command: SIGTERM to its process group, SIGKILL after `grace`."""
    _cancelled.set()
    with _active_lock:
        procs = list(_active)
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Runner:
    """Runs commands for one layer (or one global task), logging as it goes."""

    def __init__(self, layer: str = "", logfile: IO[str] | None = None, env: dict[str, str] | None = None):
        self.layer = layer
        self.logfile = logfile
        self.base_env = env
        self._file_lock = threading.Lock()
        self.log = get_logger(layer=layer) if layer else get_logger()

    def note(self, step: str, message: str) -> None:
        """A line of our own in the layer log (and the event log)."""
        self._write_file(f"==> [{step}] {message}")
        self.log.info(message, step=step)

    def _write_file(self, line: str) -> None:
        if self.logfile is not None:
            with self._file_lock:
                self.logfile.write(redact(line) + "\n")
                self.logfile.flush()

    def run(
        self,
        argv: Sequence[str],
        *,
        step: str,
        env: dict[str, str] | None = None,
        check: bool = True,
        capture: bool = False,
        loglevel: str = "INFO",
        stdout_level: str = "DEBUG",
        input: str | bytes | None = None,
        cwd: Path | str | None = None,
        timeout: float | None = None,
        cleanup: bool = False,
        nice: int = 0,
    ) -> Completed:
        """Run argv; stream output; raise CommandError on failure when `check`.

        stdout is logged at `stdout_level` (captured, not logged, when `capture`),
        stderr at `loglevel`, so a chatty tool does not show up as errors.
        `cleanup=True` marks commands that must run even after cancellation
        (removing working containers and mounts). `nice` > 0 runs the command
        at that lower CPU priority (through nice(1), so every thread it starts
        has it too).
        """
        if _cancelled.is_set() and not cleanup:
            raise Cancelled(f"{self.layer or 'run'}: cancelled before {step}")
        argv = [str(a) for a in argv]
        if nice > 0:
            argv = ["nice", "-n", str(nice), *argv]
        full_env = dict(os.environ)
        if self.base_env:
            full_env.update(self.base_env)
        if env:
            full_env.update(env)
        # shlex.join: a logged command can be pasted into a shell as it ran.
        self._write_file(f"$ {shlex.join(argv)}")
        self.log.debug("exec", step=step, argv=redact(" ".join(argv)))
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise CommandError(argv, 127, [f"cannot run {argv[0]}: {exc.strerror}"], step) from exc
        # Clean-up commands (umount, rm) are never terminated: killing one is what leaves a container.
        if not cleanup:
            with _active_lock:
                _active.add(proc)
            if _cancelled.is_set():  # cancelled between the check above and now: terminate_all missed it
                _signal_group(proc, signal.SIGTERM)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        causes: collections.deque[str] = collections.deque(maxlen=QUOTE_CAUSES)
        captured: list[str] = []
        out_level = logging.getLevelName(stdout_level.upper())
        err_level = logging.getLevelName("WARNING" if loglevel.upper() == "WARN" else loglevel.upper())

        def pump(stream: IO[bytes], level: int, is_stdout: bool) -> None:
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", "replace").rstrip("\n")
                if is_stdout and capture:
                    captured.append(text)
                    continue
                self._write_file(text)  # the layer log keeps the bytes as the tool wrote them
                line = clean_line(text)
                tail.append(line)
                if is_cause(line):
                    causes.append(line)
                self.log.log(level, line, step=step, stream="stdout" if is_stdout else "stderr")
            stream.close()

        threads = [
            threading.Thread(target=pump, args=(proc.stdout, out_level, True), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, err_level, False), daemon=True),
        ]
        for t in threads:
            t.start()
        if input is not None:
            try:
                proc.stdin.write(input.encode() if isinstance(input, str) else input)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            rc = proc.wait()
            tail.append(f"(killed after {timeout:.0f} s timeout)")
        except KeyboardInterrupt:
            _signal_group(proc, signal.SIGTERM)
            rc = proc.wait()
            raise
        finally:
            for t in threads:
                t.join(timeout=10)
            with _active_lock:
                _active.discard(proc)
        seconds = time.monotonic() - start
        result = Completed(argv, rc, "\n".join(captured) + ("\n" if captured else ""), list(tail), seconds)
        if rc != 0 and _cancelled.is_set() and not cleanup:
            raise Cancelled(f"{self.layer or 'run'}: {step} stopped by cancellation")
        if rc != 0 and check:
            self._write_file(f"!! exit status {rc}")
            raise CommandError(argv, rc, list(tail), step, causes)
        return result

    def output(self, argv: Sequence[str], *, step: str, **kw: Any) -> str:
        """Run and return stripped stdout."""
        return self.run(argv, step=step, capture=True, **kw).stdout.strip()
