"""The local state: an SQLite database beside the layers (`.imagegraph/state.db`).

It remembers, per layer, the key and key inputs of the last successful build
and the image it produced, what was published where (and under which publish
key), every build's duration (for scheduling), and every run. It is a cache
and a log, never the only truth about a remote artifact: the planner also
asks the registry and S3.

Concurrency: writes are short transactions under one process-wide lock (the
scheduler's worker threads share a `State`); SQLite's WAL mode lets `plan`
read a consistent snapshot while an `up` writes. The schema is versioned with
`PRAGMA user_version` and migrated forward on open.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ImagegraphError

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, command TEXT, started REAL, finished REAL,
    status TEXT, pid INTEGER, result TEXT
);
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, layer TEXT NOT NULL, key TEXT NOT NULL,
    inputs TEXT, image_id TEXT, image_ref TEXT, spec_file TEXT, parent_key TEXT,
    started REAL, finished REAL, duration REAL, status TEXT NOT NULL, error TEXT
);
CREATE INDEX IF NOT EXISTS builds_layer ON builds(layer, finished);
CREATE TABLE IF NOT EXISTS layers (
    layer TEXT PRIMARY KEY, key TEXT NOT NULL, inputs TEXT NOT NULL, image_id TEXT, image_ref TEXT,
    build_id INTEGER, built_at REAL, duration REAL
);
CREATE TABLE IF NOT EXISTS published (
    layer TEXT NOT NULL, target TEXT NOT NULL, key TEXT NOT NULL, publish_key TEXT,
    spec TEXT NOT NULL, locations TEXT, digest TEXT, detail TEXT, published_at REAL,
    PRIMARY KEY (layer, target)
);
CREATE TABLE IF NOT EXISTS publications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, layer TEXT NOT NULL, key TEXT NOT NULL,
    target TEXT NOT NULL, location TEXT, digest TEXT, detail TEXT, published_at REAL
);
CREATE INDEX IF NOT EXISTS publications_layer ON publications(layer, key);
"""

# v2: package inventories, one per layer key (packages.Inventory.compress: zlib'd JSON).
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS inventories (
    key TEXT PRIMARY KEY, layer TEXT NOT NULL, status TEXT NOT NULL, format TEXT,
    packages INTEGER, data BLOB NOT NULL, read_at REAL
);
"""

# Each entry migrates from version N-1 to N.
MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}


class StateError(ImagegraphError):
    """The state database cannot be used (corrupt, newer schema, unwritable)."""

    exit_status = 2


def _unwritable(path: Path, exc: Exception) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return (
        f"the state database {path} cannot be written ({reason}): make {path.parent} writable, "
        "or pass --state PATH on a writable filesystem"
    )


def _writable_dir(d: Path) -> bool:
    """Whether new files can be made in `d` (False on a read-only filesystem, even for root)."""
    try:
        if os.statvfs(d).f_flag & os.ST_RDONLY:
            return False
    except OSError:
        return False
    return os.access(d, os.W_OK)


def _unreadable(path: Path, exc: Exception) -> str:
    return (
        f"the state database {path} cannot be read ({exc}). It is a cache: move it aside "
        f"(mv {path} {path}.broken) and the next run rebuilds its knowledge from the "
        "registry and S3 (layers not published anywhere are rebuilt)."
    )


@dataclass(frozen=True)
class LayerRecord:
    layer: str
    key: str
    inputs: dict
    image_id: str | None
    image_ref: str | None
    built_at: float | None
    duration: float | None


@dataclass(frozen=True)
class PublishedRecord:
    layer: str
    target: str  # registry, local, s3, dir
    key: str
    spec: dict  # the target's publish description when it was published
    locations: list
    digest: str | None
    published_at: float | None
    detail: dict = dataclasses.field(default_factory=dict)


class State:
    """Thread-safe access to the state database."""

    def __init__(self, path: Path | str, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        if readonly and not self.path.exists():
            self._conn: sqlite3.Connection | None = None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.chmod(self.path.parent, 0o700)
            except OSError:
                pass
            new = not self.path.exists()
            if new and not readonly:
                # Owner-only from the start: the state names registries and buckets.
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
        except OSError as exc:
            raise StateError(_unwritable(self.path, exc)) from exc
        uri = f"file:{self.path}?mode={'ro' if readonly else 'rwc'}"
        try:
            try:
                self._connect(uri)
            except sqlite3.OperationalError as exc:
                if not (readonly and "unable to open" in str(exc) and not _writable_dir(self.path.parent)):
                    raise
                # A WAL database in a directory this process cannot write (a read-only mount, another
                # user's state): SQLite cannot make the -shm file a reader needs. Nothing here can
                # write it either, so read the file as it is.
                self.close()
                self._connect(f"file:{self.path}?mode=ro&immutable=1")
        except StateError:
            self.close()
            raise
        except sqlite3.OperationalError as exc:
            self.close()
            if not readonly and ("readonly" in str(exc) or "unable to open" in str(exc)):
                # The file is fine; its filesystem or directory is not writable: moving it aside is no cure.
                raise StateError(_unwritable(self.path, exc)) from exc
            raise StateError(_unreadable(self.path, exc)) from exc
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StateError(_unreadable(self.path, exc)) from exc

    def _connect(self, uri: str) -> None:
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        if not self.readonly:
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._migrate()

    def _migrate(self) -> None:
        assert self._conn is not None
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"the state database {self.path} has schema version {version}, newer than this imagegraph "
                f"understands ({SCHEMA_VERSION}); upgrade imagegraph or use another --state"
            )
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            # `plan` on an older database: migrate it once through a short read-write connection
            # (SQLite transactions make that safe beside a running `up`); where it cannot be written,
            # plan as if it knew nothing rather than fail.
            self._conn.close()
            try:
                State(self.path).close()
                self._conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30
                )
                self._conn.row_factory = sqlite3.Row
            except (StateError, OSError, sqlite3.OperationalError):
                self._conn = None
            return
        with self.transaction() as c:
            indexes = []
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in _statements(MIGRATIONS[v]):
                    if stmt.upper().startswith("CREATE INDEX"):
                        indexes.append(stmt)  # after the columns they index exist
                    else:
                        c.execute(stmt)
            _add_missing_columns(c)
            for stmt in indexes:
                c.execute(stmt)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        assert self._conn is not None
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    with suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    raise
                else:
                    self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise StateError(
                    f"writing the state database {self.path} failed ({exc}). If it is damaged, move it aside"
                    f" (mv {self.path} {self.path}.broken); the next run rebuilds its knowledge from the"
                    " registry and S3."
                ) from exc

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        if self._conn is None:
            return []
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StateError(f"reading the state database {self.path} failed: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            with self._lock:
                self._conn.close()
                self._conn = None

    # ----------------------------------------------------------------- layers

    def layer(self, layer: str) -> LayerRecord | None:
        return self.layers().get(layer) if self._conn else None

    def layers(self) -> dict[str, LayerRecord]:
        out = {}
        for r in self._query("SELECT * FROM layers"):
            out[r["layer"]] = LayerRecord(
                r["layer"],
                r["key"],
                json.loads(r["inputs"]),
                r["image_id"],
                r["image_ref"],
                r["built_at"],
                r["duration"],
            )
        return out

    def durations(self) -> dict[str, float]:
        """Mean of the last few successful build durations per layer."""
        out: dict[str, list[float]] = {}
        for r in self._query(
            "SELECT layer, duration FROM builds WHERE status='ok' AND duration IS NOT NULL ORDER BY finished DESC"
        ):
            lst = out.setdefault(r["layer"], [])
            if len(lst) < 5:
                lst.append(r["duration"])
        return {k: sum(v) / len(v) for k, v in out.items()}

    def record_build(
        self,
        *,
        run_id: str,
        layer: str,
        key: str,
        inputs: dict,
        image_id: str | None,
        image_ref: str | None,
        spec_file: str,
        parent_key: str | None,
        started: float,
        finished: float,
        status: str = "ok",
        error: str | None = None,
    ) -> None:
        """One build attempt; a successful one also becomes the layer's current record, atomically."""
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO builds (run_id, layer, key, inputs, image_id, image_ref, spec_file, parent_key,"
                " started, finished, duration, status, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    layer,
                    key,
                    json.dumps(inputs, sort_keys=True),
                    image_id,
                    image_ref,
                    spec_file,
                    parent_key,
                    started,
                    finished,
                    finished - started,
                    status,
                    error,
                ),
            )
            if status == "ok":
                c.execute(
                    "INSERT OR REPLACE INTO layers (layer, key, inputs, image_id, image_ref, build_id, built_at, duration)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    (
                        layer,
                        key,
                        json.dumps(inputs, sort_keys=True),
                        image_id,
                        image_ref,
                        cur.lastrowid,
                        finished,
                        finished - started,
                    ),
                )

    def adopt_layer(
        self, layer: str, key: str, inputs: dict, image_id: str | None, image_ref: str | None
    ) -> None:
        """Record a layer found already built elsewhere (registry key tag) without a build row."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO layers (layer, key, inputs, image_id, image_ref, build_id, built_at, duration)"
                " VALUES (?,?,?,?,?,NULL,?,NULL)",
                (layer, key, json.dumps(inputs, sort_keys=True), image_id, image_ref, time.time()),
            )

    def builds(self, layer: str | None = None, limit: int = 50) -> list[dict]:
        if layer:
            rows = self._query("SELECT * FROM builds WHERE layer=? ORDER BY id DESC LIMIT ?", (layer, limit))
        else:
            rows = self._query("SELECT * FROM builds ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    # ------------------------------------------------------------ publishing

    def published(self, layer: str) -> dict[str, PublishedRecord]:
        return self.all_published(layer).get(layer, {})

    def all_published(self, layer: str | None = None) -> dict[str, dict[str, PublishedRecord]]:
        """What is published where, per layer and target (one layer's when `layer` is given)."""
        if layer is None:
            rows = self._query("SELECT * FROM published")
        else:
            rows = self._query("SELECT * FROM published WHERE layer=?", (layer,))
        out: dict[str, dict[str, PublishedRecord]] = {}
        for r in rows:
            out.setdefault(r["layer"], {})[r["target"]] = PublishedRecord(
                r["layer"],
                r["target"],
                r["key"],
                json.loads(r["spec"]),
                json.loads(r["locations"] or "[]"),
                r["digest"],
                r["published_at"],
                json.loads(r["detail"] or "{}"),
            )
        return out

    def record_publication(
        self,
        *,
        run_id: str,
        layer: str,
        key: str,
        target: str,
        spec: dict,
        locations: list,
        digest: str | None = None,
        detail: dict | None = None,
    ) -> None:
        now = time.time()
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO published"
                " (layer, target, key, publish_key, spec, locations, digest, detail, published_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    layer,
                    target,
                    key,
                    None,
                    json.dumps(spec, sort_keys=True),
                    json.dumps(locations),
                    digest,
                    json.dumps(detail or {}),
                    now,
                ),
            )
            for loc in locations:
                c.execute(
                    "INSERT INTO publications (run_id, layer, key, target, location, digest, detail, published_at)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    (run_id, layer, key, target, str(loc), digest, json.dumps(detail or {}), now),
                )

    def forget_publication(self, layer: str, target: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM published WHERE layer=? AND target=?", (layer, target))

    def record_event(
        self,
        *,
        run_id: str,
        layer: str,
        key: str,
        kind: str,
        location: str,
        digest: str | None = None,
        detail: dict | None = None,
    ) -> None:
        """A row of the publication history that is no publish target: `boot-test`, `promote`.

        Unlike `record_publication` it leaves `published` (what `plan` compares) alone.
        """
        with self.transaction() as c:
            c.execute(
                "INSERT INTO publications (run_id, layer, key, target, location, digest, detail, published_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (run_id, layer, key, kind, location, digest, json.dumps(detail or {}), time.time()),
            )

    def registry_digests(self) -> dict[str, dict[str, str]]:
        """Per layer, every manifest digest its registry publications recorded -> the key (newest wins)."""
        out: dict[str, dict[str, str]] = {}
        for r in self._query(
            "SELECT layer, key, digest FROM publications"
            " WHERE target='registry' AND digest IS NOT NULL ORDER BY id"
        ):
            out.setdefault(r["layer"], {})[r["digest"]] = r["key"]
        return out

    def events(self, layer: str, kind: str) -> list[dict]:
        """`record_event` rows of a layer, newest first, `detail` decoded."""
        rows = self._query(
            "SELECT * FROM publications WHERE layer=? AND target=? ORDER BY id DESC", (layer, kind)
        )
        return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]

    # ------------------------------------------------------------- inventories

    def record_inventory(self, layer: str, key: str, inventory: Any) -> None:
        """A key's package inventory (a `packages.Inventory`), one per key.

        A forced rebuild of a key replaces it: the key tag now names that image.
        """
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO inventories (key, layer, status, format, packages, data, read_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    key,
                    layer,
                    str(inventory.status),
                    str(inventory.format) if inventory.format else None,
                    len(inventory.packages),
                    inventory.compress(),
                    time.time(),
                ),
            )

    def inventory_blob(self, key: str) -> bytes | None:
        """The compressed inventory recorded for `key`, or None (decode with `Inventory.decompress`)."""
        rows = self._query("SELECT data FROM inventories WHERE key=?", (key,))
        return bytes(rows[0]["data"]) if rows else None

    # ------------------------------------------------------------------- runs

    def start_run(self, run_id: str, command: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO runs (run_id, command, started, status, pid) VALUES (?,?,?,?,?)",
                (run_id, command, time.time(), "running", os.getpid()),
            )

    def finish_run(self, run_id: str, status: str, result: dict) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET finished=?, status=?, result=? WHERE run_id=?",
                (time.time(), status, json.dumps(result, sort_keys=True), run_id),
            )

    def runs(self, limit: int = 10) -> list[dict]:
        return [dict(r) for r in self._query("SELECT * FROM runs ORDER BY started DESC LIMIT ?", (limit,))]


def _add_missing_columns(c: sqlite3.Connection) -> None:
    """Columns of the current schema that an older (or unversioned) database's tables lack.

    `CREATE TABLE IF NOT EXISTS` leaves an existing table as it is; this adds what it misses
    (as nullable columns: SQLite cannot add a NOT NULL column without a default).
    """
    want = sqlite3.connect(":memory:")
    try:
        for v in sorted(MIGRATIONS):
            for stmt in _statements(MIGRATIONS[v]):
                want.execute(stmt)
        tables = [r[0] for r in want.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            if table.startswith("sqlite_"):
                continue
            have = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
            for _cid, name, typ, _notnull, default, _pk in want.execute(f"PRAGMA table_info({table})"):
                if name not in have:
                    extra = f" DEFAULT {default}" if default is not None else ""
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {typ}{extra}")
    finally:
        want.close()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def default_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"


def dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
