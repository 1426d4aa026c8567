"""Reuse an offline `plan`'s answer when nothing it read has changed: make's own method.

The `imagegraph` program starts here (`main`), before the CLI and the
planner are imported. An offline `plan` whose output goes to files or pipes
(no terminal) is recorded: its stdout and stderr text, its exit status, and
the stat signature (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, or
"absent") of everything the planner read, seen by an audit hook
(`sys.addaudithook`: every file opened, every directory listed, the SQLite
state database and its WAL, every subprocess, every socket) and by
`os.stat`/`os.lstat` wrappers (every existence probe: a file that appears
later is a change too). `buildah images` is answered by the local container
storage's image list (`<graphroot>/<driver>-images/images.json`) when
containers-storage.conf(5) and the environment say for certain where it is.
The record's key is the argv, the working directory, the whole environment
(minus `_`, `OLDPWD`, `SHLVL`), imagegraph's version and source files, the
interpreter and its library directories, the user and the output mode.

The next identical invocation stats the recorded paths and, when every
signature is unchanged, prints the recorded text and exits with its status
(about 3 ms per 1,000 inputs). Any doubt falls through to the normal
planner: another subprocess, a socket, a file written outside the cache, a
`/proc` file, an unreadable path, a terminal, `-v`, `--log-format`,
`--max-age`, JSON logs (`JOURNAL_STREAM`), or `IMAGEGRAPH_NO_PLAN_CACHE` set.

Racy clean (git's term): a file changed within the timestamp granularity of
the moment it was read would keep its signature. A record is only written
when every input's mtime and ctime are older than the plan's start by at
least `IMAGEGRAPH_PLAN_CACHE_MARGIN` seconds (default 2: FAT's granularity,
and ample for the kernel's coarse clock, which lags `time.time_ns()` by up
to a tick); an input changed during or after the plan then has a newer ctime
(which `os.utime` cannot set back) than the one recorded.

Records live where the parsed-spec cache lives (the state directory's
`cache/plans`, else `$XDG_CACHE_HOME/imagegraph/plans`), only in
directories that are the user's own; `plan` still never writes the state
database. This module imports only the standard library's cheapest parts.
"""

from __future__ import annotations

import marshal
import os
import sys

from . import __version__

FORMAT = 1
OFF_ENV = "IMAGEGRAPH_NO_PLAN_CACHE"  # set (to anything): never reuse, never record
MARGIN_ENV = "IMAGEGRAPH_PLAN_CACHE_MARGIN"  # seconds an input must be older than the plan's start
REPORT_ENV = "IMAGEGRAPH_PLAN_CACHE_REPORT"  # a file: "reused" / "recorded" / "not recorded: why" lines
DEFAULT_MARGIN = 2.0
RECORDED_STATUSES = (0, 1, 2)  # planned, --check found work, spec errors; not 130 (interrupted)
MIN_MARGIN = 0.02  # the kernel's file clock lags time.time_ns() by up to a tick (10 ms at HZ=100)
VOLATILE_ENV = frozenset({"_", "OLDPWD", "SHLVL"})  # shells change them between identical commands
LOCAL_QUERY = ("buildah", "images", "--json", "--no-trunc")  # inventory.py's one local question
# Options whose answer depends on more than the files read (clock, log timestamps, verbosity).
DENIED_OPTIONS = ("--verbose", "--log-format", "--max-age", "--help")
VALUE_OPTIONS = frozenset({"--state", "--arch", "--force", "--registry-timeout", "--max-age", "--log-format"})
UNSAFE_PREFIXES = ("/proc/", "/sys/", "/dev/")  # stat does not show a change of their contents
HARMLESS = frozenset({"/dev/null", "/dev/urandom", "/dev/random"})


def eligible(argv: list[str], environ: os._Environ | dict = os.environ) -> bool:
    """Whether this invocation may be answered from, or recorded into, a plan record."""
    if argv[:1] != ["plan"] or "--offline" not in argv or OFF_ENV in environ or "JOURNAL_STREAM" in environ:
        return False
    for a in argv[1:]:
        if a.startswith(DENIED_OPTIONS) or (a[:1] == "-" and a[1:2] != "-" and ("v" in a or "h" in a)):
            return False
    try:
        if os.isatty(1) or os.isatty(2):
            return False
        out, err = os.fstat(1), os.fstat(2)
    except OSError:
        return False
    # One file behind both (`>log 2>&1`): how the two streams interleave is the buffers' doing.
    return (out.st_dev, out.st_ino) != (err.st_dev, err.st_ino)


def _output_mode() -> tuple:
    sizes = []
    for fd in (0, 1, 2):
        try:
            sizes.append(tuple(os.get_terminal_size(fd)))
        except OSError:
            sizes.append(None)
        try:
            sizes.append(os.fstat(fd).st_mode >> 12)  # file, pipe, character device...
        except OSError:
            sizes.append(None)
    return tuple(sizes)


def record_key(argv: list[str]) -> bytes:
    """The key: everything besides the files read that a plan's text may depend on."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE_ENV))
    return marshal.dumps(
        (
            FORMAT,
            __version__,
            sys.version,
            sys.executable,
            tuple(sys.path),
            os.getcwd(),
            tuple(argv),
            env,
            (os.getuid(), os.geteuid(), os.getgid(), os.getegid()),
            os.uname().machine,
            _output_mode(),
        )
    )


def _ours(path: str, directory: bool) -> bool:
    """`path` is the user's own, nobody else may write it (and is the expected kind)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    kind = st.st_mode & 0o170000
    return (
        st.st_uid == os.geteuid() and not st.st_mode & 0o022 and kind == (0o040000 if directory else 0o100000)
    )


def _user_cache() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not base or not os.path.isabs(base):
        home = os.environ.get("HOME", "")
        if not home or not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "imagegraph")


def _positional(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a in VALUE_OPTIONS:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


def _option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def cache_roots(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the directory records go to, every cache directory the planner may read or write)."""
    pos = _positional(argv)
    root = os.getcwd()
    if pos:
        first = os.path.abspath(pos[0])
        root = first if os.path.isdir(first) else os.path.dirname(first) if os.path.isfile(first) else root
    state_arg = _option(argv, "--state")
    state_dir = (
        os.path.dirname(os.path.abspath(state_arg)) if state_arg else os.path.join(root, ".imagegraph")
    )
    user = _user_cache()
    roots = [os.path.join(state_dir, "cache")] + ([user] if user else [])
    if os.path.isdir(state_dir):
        return (os.path.join(state_dir, "cache", "plans") if _ours(state_dir, True) else None), roots
    return (os.path.join(user, "plans") if user else None), roots


def _record_path(store: str, key: bytes) -> str:
    """The record's file name: a checksum of the key (the record holds the whole key, compared
    on reading: another key with the same name is a miss). zlib, not hashlib: 4 ms less."""
    import zlib

    return os.path.join(store, f"{zlib.crc32(key):08x}{zlib.adler32(key):08x}.plan")


CONTENTS, PROBE, PROBE_NOFOLLOW = 0, 1, 2  # how a path was read: opened or listed; stat; lstat


def _of(st: os.stat_result, how: int) -> tuple:
    if how != CONTENTS and st.st_mode & 0o170000 == 0o040000:
        return (st.st_dev, st.st_ino)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _sig(path: str, how: int) -> tuple | None:
    """A path's signature; None when absent. A stat probe of a directory (realpath's walk up
    /tmp, an is_dir check) depends on what it is, not on its entries: (st_dev, st_ino) only."""
    try:
        st = os.lstat(path) if how == PROBE_NOFOLLOW else os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _of(st, how)


def reuse(argv: list[str]) -> int | None:
    """Print a recorded plan and return its exit status, or None (plan normally)."""
    store, _roots = cache_roots(argv)
    if store is None:
        return None
    key = record_key(argv)
    path = _record_path(store, key)
    if not (_ours(store, True) and _ours(path, False)):
        return None
    try:
        with open(path, "rb") as f:
            rec = marshal.load(f)
        fmt, rkey, paths, hows, sigs, chunks, rc = rec
    except Exception:  # unreadable, truncated or another format: plan normally
        return None
    if fmt != FORMAT or rkey != key:
        return None
    try:
        for p, how, sig in zip(paths, hows, sigs, strict=True):
            if _sig(p, how) != sig:
                return None
    except (OSError, ValueError):
        return None
    _report("reused")
    try:
        for fd, text in chunks:
            stream = sys.stdout if fd == 1 else sys.stderr
            stream.write(text)
            stream.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return rc


def _report(line: str) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class _Tee:
    """A text stream that also keeps, in order, what was written to it."""

    def __init__(self, stream, fd: int, recorder: Recorder):
        self._stream, self._fd, self._recorder = stream, fd, recorder

    def write(self, text: str) -> int:
        if self._recorder.active:
            self._recorder.chunks.append((self._fd, text))
        try:
            return self._stream.write(text)
        except BaseException:  # a closed pipe (`| head`): the rest of the output was never made
            self._recorder.doubt("the output could not be written")
            raise

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        if name == "buffer":  # bytes written past the text layer would not be recorded
            self._recorder.doubt("stdout's buffer used")
        return getattr(self._stream, name)


class Recorder:
    """Watches one plan run (audit hook, stat wrappers, output tee) and writes its record."""

    def __init__(self, argv: list[str]):
        import time

        self.argv = argv
        self.start_ns = time.time_ns()
        self.key = record_key(argv)
        self.store, roots = cache_roots(argv)
        self.ignored = tuple(r.rstrip("/") + "/" for r in roots)
        self.ignored_dirs = frozenset(r.rstrip("/") for r in roots)
        stdlib = os.path.dirname(os.__file__)
        libs = [stdlib] + [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
        libs.append(os.path.join(sys.base_prefix, "share", "locale"))  # argparse's gettext probes
        self.libs = tuple(p.rstrip("/") + "/" for p in libs)
        self.lib_dirs = [p for p in libs if os.path.isdir(p)]
        # (absolute path, how it was read) -> what a probe saw then (contents: stat'ed at the end)
        self.inputs: dict[tuple[str, int], tuple | None] = {}
        self.chunks: list[tuple[int, str]] = []
        self.why: str | None = None if self.store else "no safe cache directory"
        self.asked_local = False
        self.active = self.why is None

    def doubt(self, why: str) -> None:
        if self.why is None:
            self.why = why

    def _add(self, path, how: int, seen: tuple | None = None) -> None:
        if isinstance(path, int):
            return  # an open descriptor (a pipe to a subprocess): its path was seen when opened
        try:
            p = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            self.doubt(f"a path of type {type(path).__name__}")
            return
        if p.startswith(self.ignored) or p in self.ignored_dirs or p.startswith(self.libs):
            # Content-keyed caches; the interpreter's and the libraries' files: keyed by
            # sys.version, sys.path and the library directories' own signatures.
            return
        if p.startswith(UNSAFE_PREFIXES) and p not in HARMLESS:
            self.doubt(f"read {p}")
        self.inputs.setdefault((p, how), seen)

    def _written(self, path) -> None:
        if isinstance(path, int):
            return
        p = os.path.abspath(os.fsdecode(path))
        if any(d.startswith(p + "/") for d in self.ignored_dirs):
            return  # a missing parent of a cache directory, made on the way there
        if not (p.startswith(self.ignored) or p in self.ignored_dirs or p in HARMLESS):
            self.doubt(f"wrote {p}")

    def hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            if (mode and any(c in mode for c in "wax+")) or (flags or 0) & (
                os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            ):
                self._written(path)
            else:
                self._add(path, CONTENTS)
        elif event in ("os.listdir", "os.scandir"):
            path = args[0]
            if isinstance(path, int):
                self.doubt("a directory listed by descriptor")
            else:
                self._add("." if path is None else path, CONTENTS)
        elif event == "sqlite3.connect":
            db = os.fsdecode(args[0])
            if db.startswith("file:"):
                db = db[5:].split("?", 1)[0]
                if "%" in db or "#" in db:  # a URI's escapes: the file is not this path
                    self.doubt(f"a database URI: {args[0]}")
            if db != ":memory:" and not os.path.isfile(db):
                self.doubt(f"a database that is not a file here: {db}")
            elif db != ":memory:":
                for suffix in ("", "-wal", "-journal"):  # -shm changes on every read (WAL read marks)
                    self._add(db + suffix, CONTENTS)
        elif event == "subprocess.Popen":
            if tuple(args[1]) == LOCAL_QUERY:
                self.asked_local = True
            else:
                self.doubt(f"ran {args[1]!r}")
        elif event.startswith(
            # A forked child reads with hooks whose records it keeps to itself.
            ("socket.", "http.", "urllib.", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.fork")
        ):
            self.doubt(event)
        elif event in (
            "os.rename",
            "os.remove",
            "os.rmdir",
            "os.mkdir",
            "os.truncate",
            "os.utime",
            "os.chmod",
        ):
            self._written(args[0])
            if event == "os.rename":
                self._written(args[1])

    def install(self) -> None:
        """Start watching: audit hook (process-wide, inert once `finish` ran), stat wrappers, tee."""
        sys.addaudithook(self.hook)
        real_stat, real_lstat = os.stat, os.lstat
        rec = self

        def probe(path, dir_fd, follow: bool) -> os.stat_result:
            how = PROBE if follow else PROBE_NOFOLLOW
            try:
                st = real_stat(path, dir_fd=dir_fd, follow_symlinks=follow)
            except (FileNotFoundError, NotADirectoryError):
                if rec.active:
                    rec._add(path, how, None)
                raise
            except OSError:
                if rec.active and not isinstance(path, int):
                    rec.doubt("a stat failed")
                raise
            if rec.active:
                if dir_fd is not None:
                    rec.doubt("stat relative to a descriptor")
                rec._add(path, how, _of(st, how))
            return st

        def stat(path, *, dir_fd=None, follow_symlinks=True):
            return probe(path, dir_fd, follow_symlinks)

        def lstat(path, *, dir_fd=None):
            return probe(path, dir_fd, False)

        self._restore = (real_stat, real_lstat, sys.stdout, sys.stderr)
        os.stat, os.lstat = stat, lstat
        sys.stdout = _Tee(sys.stdout, 1, self)
        sys.stderr = _Tee(sys.stderr, 2, self)

    def finish(self, rc: int, unknown: bool) -> None:
        """Stop watching; write the record when nothing raised a doubt."""
        if not self.active:
            return
        self.active = False
        os.stat, os.lstat, sys.stdout, sys.stderr = self._restore
        if unknown:
            self.doubt("something was unknown")
        if rc not in RECORDED_STATUSES:
            self.doubt(f"exit status {rc}")
        if self.asked_local:
            storage = storage_inputs()
            if storage is None:
                self.doubt("where local storage keeps its image list is not known for certain")
            for p in storage or ():
                self.inputs[(p, CONTENTS)] = None
        for name, mod in list(sys.modules.items()):
            if name == "imagegraph" or name.startswith("imagegraph."):
                f = getattr(mod, "__file__", None)
                if f:
                    self.inputs[(f, CONTENTS)] = None
                    self.inputs[(os.path.dirname(f), CONTENTS)] = None
        for d in self.lib_dirs:  # a package installed, removed or upgraded changes its directory
            self.inputs[(d, CONTENTS)] = None
        if self.why is None:
            self._write(rc)
        _report("recorded" if self.why is None else f"not recorded: {self.why}")

    def _write(self, rc: int) -> None:
        try:
            margin = float(os.environ.get(MARGIN_ENV, "") or DEFAULT_MARGIN)
        except ValueError:
            margin = DEFAULT_MARGIN
        limit = self.start_ns - int(max(margin, MIN_MARGIN) * 1e9)
        paths, hows, sigs = [], [], []
        for (p, how), seen in self.inputs.items():
            try:
                sig = _sig(p, how)
            except OSError as exc:
                return self.doubt(f"cannot stat {p}: {exc.strerror}")
            if how != CONTENTS and sig != seen:
                return self.doubt(f"{p} changed while planning")
            if sig is not None and len(sig) == 5 and (sig[3] >= limit or sig[4] >= limit):
                return self.doubt(f"{p} changed too recently to be told apart from a later change")
            paths.append(p)
            hows.append(how)
            sigs.append(sig)
        from .cachedir import ensure_dir

        assert self.store is not None
        try:
            ensure_dir(_path(self.store))
            if not _ours(self.store, True):
                return self.doubt("the record directory is not the user's own")
            target = _record_path(self.store, self.key)
            tmp = f"{target}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                marshal.dump((FORMAT, self.key, paths, hows, sigs, self.chunks, rc), f)
            os.replace(tmp, target)
        except OSError as exc:
            self.doubt(f"cannot write the record: {exc.strerror}")


def _path(p: str):
    from pathlib import Path

    return Path(p)


ROOT_GRAPHROOT = "/var/lib/containers/storage"  # containers/storage's built-in graph root for root
# Drivers containers/storage may pick when none is named (each keeps `<graphroot>/<driver>-images/`).
KNOWN_DRIVERS = ("overlay", "vfs", "btrfs", "zfs", "devicemapper", "aufs")


def storage_inputs() -> list[str] | None:
    """The files that say what `buildah images` would list, or None when that is not certain.

    containers-storage.conf(5): `CONTAINERS_STORAGE_CONF`, else (rootless)
    `$XDG_CONFIG_HOME/containers/storage.conf`, else /etc/containers, else
    /usr/share/containers; root without any of them (Debian's buildah ships
    none) gets containers/storage's built-in graph root. A driver not named
    (c/storage then picks one) means every known driver's image list is an
    input. Not certain, so None: a rootless user without a graph root of
    their own (a per-user default, not followed here), additional image
    stores, a separate image store, `STORAGE_OPTS`, a drop-in directory.
    """
    import tomllib

    env = os.environ
    if env.get("STORAGE_OPTS"):
        return None
    rootless = os.geteuid() != 0
    candidates: list[str] = []
    if env.get("CONTAINERS_STORAGE_CONF"):
        candidates.append(env["CONTAINERS_STORAGE_CONF"])
    else:
        if rootless:
            base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "/nonexistent"), ".config")
            candidates.append(os.path.join(base, "containers", "storage.conf"))
        candidates += ["/etc/containers/storage.conf", "/usr/share/containers/storage.conf"]
    conf = next((c for c in candidates if os.path.isfile(c)), None)
    if conf is None and (rootless or env.get("CONTAINERS_STORAGE_CONF")):
        return None
    if rootless and not env.get("CONTAINERS_STORAGE_CONF") and conf != candidates[0]:
        return None
    dropins = [c + ".d" for c in candidates]
    if any(os.path.exists(d) for d in dropins):
        return None
    storage: dict = {}
    if conf is not None:
        try:
            with open(conf, "rb") as f:
                storage = tomllib.load(f).get("storage", {})
        except (OSError, ValueError):
            return None
    driver = env.get("STORAGE_DRIVER") or storage.get("driver")
    graphroot = storage.get("graphroot") or (None if rootless else ROOT_GRAPHROOT)
    options = storage.get("options", {})
    if (
        (driver is not None and (not isinstance(driver, str) or not driver.isalnum()))
        or not isinstance(graphroot, str)
        or not os.path.isabs(graphroot)
        or storage.get("imagestore")
        or (isinstance(options, dict) and options.get("additionalimagestores"))
    ):
        return None
    inputs = [*candidates, *dropins]
    for d in [driver] if driver else KNOWN_DRIVERS:
        images = os.path.join(graphroot, f"{d}-images")
        inputs += [images, os.path.join(images, "images.json")]
    return inputs


def main() -> int:
    """The `imagegraph` program: a recorded plan when nothing changed, else the CLI (cli.main)."""
    argv = sys.argv[1:]
    recorder = None
    if eligible(argv):
        rc = reuse(argv)
        if rc is not None:
            return rc
        recorder = Recorder(argv)
        if recorder.active:
            recorder.install()
        else:
            _report(f"not recorded: {recorder.why}")
            recorder = None
    from . import cli

    try:
        rc = cli.main()
    except BaseException:
        if recorder is not None:
            recorder.why = recorder.why or "the command raised"
            recorder.finish(1, True)
        raise
    if recorder is not None:
        recorder.finish(rc, cli.plan_unknown)
    return rc


if __name__ == "__main__":
    sys.exit(main())
