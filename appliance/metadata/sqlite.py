"""SQLite under trio: a pool of reader connections and one writer, used from worker threads.

Writes go through the single writer connection in `BEGIN IMMEDIATE` (SQLite has no row locks,
so the writer is the lock, and write transactions are serial). WAL lets readers run while the
writer writes. Several processes may share one file: `busy_timeout` makes a writer wait for
another process's write transaction. sqlite3 errors are translated here and never leak.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import ClassVar, TypeVar

import trio

from appliance.errors import ConfigError, Unavailable
from appliance.metadata.changes import ChangeBoard
from appliance.metadata.db import (
    VERSION_TABLE,
    AppliedMigration,
    Database,
    MetadataError,
    Migration,
    Options,
    Params,
    Row,
    SchemaStatus,
    Tx,
    berth_version,
    status_of,
    too_new_error,
)

T = TypeVar("T")


class SqliteTx:
    """A transaction on one sqlite3 connection."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.touched: set[str] = set()

    def touch(self, *topics: str) -> None:
        self.touched.update(topics)

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        return self._conn.execute(sql, params or {}).fetchall()

    def one(self, sql: str, params: Params | None = None) -> Row | None:
        return self._conn.execute(sql, params or {}).fetchone()  # type: ignore[no-any-return]

    def scalar(self, sql: str, params: Params | None = None) -> object:
        row = self.one(sql, params)
        return None if row is None else row[0]

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._conn.executemany(sql, rows)

    def iterate(self, sql: str, params: Params | None = None, batch: int = 1000) -> Iterator[Row]:
        cursor = self._conn.execute(sql, params or {})
        while rows := cursor.fetchmany(batch):
            yield from rows


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    # An acknowledged push must survive a power cut: every commit reaches the disk.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


@contextmanager
def _translated(where: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as e:
        raise Unavailable(f"metadata database {where}: {e}") from e
    except sqlite3.Error as e:
        raise MetadataError(f"metadata database {where}: {e}") from e


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script, one at a time."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip().strip(";").strip():
                yield buffer
            buffer = ""
    if buffer.strip() and not buffer.strip().startswith("--"):
        yield buffer


_VERSION_TABLE = VERSION_TABLE.format(real="REAL")


class SqliteDatabase(Database):
    """The SQLite metadata database at `path` (the file is created on open, not migrated)."""

    dialect: ClassVar[str] = "sqlite"

    def __init__(self, path: Path, readers: int = 4) -> None:
        self.path = path
        self.where = str(path)
        with _translated(self.where):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(str(path))
            self._writer.execute("PRAGMA journal_mode = WAL")
            self._readers = [_connect(str(path)) for _ in range(max(1, readers))]
            # For units of work run from plain threads (`run_sync_read`): a read there must
            # not wait for, or be mixed into, a write on the writer connection.
            self._sync_reader = _connect(str(path))
        # Every process that opens this file shares these stamps (metadata/changes.py).
        self.changes = ChangeBoard(path.with_name(path.name + ".changes"))
        # Writers of every process on this database take turns on this file's lock before
        # BEGIN IMMEDIATE. SQLite alone makes a writer that finds the database locked sleep
        # and retry (1, 2, 5, 10... ms): with several serving processes, two small pushes'
        # commits met and one waited several milliseconds for a lock held for a fraction of
        # one. The kernel wakes the next waiter as the lock is let go. Other programs on the
        # file (the sqlite3 shell) still meet SQLite's own lock and its busy timeout.
        self._turns = os.open(
            path.with_name(path.name + ".writers"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self._free = list(self._readers)
        self._read_limit = trio.CapacityLimiter(len(self._readers))
        self._write_lock = trio.Lock()
        # A connection runs one transaction at a time, whichever thread asks: `write` (from
        # trio) and `run_sync_write` (from any thread: the scanner's re-matching, backups,
        # operations' figures) meet on the writer connection, so it is held by a thread lock.
        # Without it a background job's BEGIN landed inside a request's transaction
        # ("cannot start a transaction within a transaction").
        self._writer_lock = threading.Lock()
        self._sync_reader_lock = threading.Lock()
        # `lookup`'s connections, one per thread that asks (the event loop's, in a server).
        self._local = threading.local()
        self._lookup_conns: list[sqlite3.Connection] = []
        self._lookup_conns_lock = threading.Lock()  # not the writer's: never wait for a write

    @classmethod
    def from_url(cls, url: str, options: Options | None = None) -> SqliteDatabase:
        if not url.startswith("sqlite:///"):
            raise ConfigError(f"unsupported metadata URL {url!r} (expected sqlite:///PATH)")
        # sqlite:////var/db/berth.db names /var/db/berth.db (not //var/...: one leading slash).
        path = "/" + url.removeprefix("sqlite://").lstrip("/")
        return cls(Path(path), (options or Options()).readers)

    # -- schema --------------------------------------------------------------------------

    def _current_version(self, conn: sqlite3.Connection) -> int:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not exists:
            return 0
        return int(
            conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        )

    @staticmethod
    def _applied(conn: sqlite3.Connection) -> list[AppliedMigration]:
        names = {r[1] for r in conn.execute("PRAGMA table_info(schema_version)")}
        if not names:
            return []
        by = "berth_version" if "berth_version" in names else "NULL"
        rows = conn.execute(
            f"SELECT version, name, applied_at, {by} FROM schema_version ORDER BY version"  # noqa: S608
        )
        return [AppliedMigration(int(v), str(n), float(a), b) for v, n, a, b in rows]

    def schema_status(self) -> SchemaStatus:
        with self._writer_lock, _translated(self.where):
            return self._status(self._writer)

    def _status(self, conn: sqlite3.Connection) -> SchemaStatus:
        applied = self._applied(conn)
        current = max((m.version for m in applied), default=0)
        return status_of(self.dialect, current, applied)

    def migrate(self, up_to: int | None = None) -> list[Migration]:
        conn = self._writer
        applied: list[Migration] = []
        with self._writer_lock, _translated(self.where):
            status = self._status(conn)
            if status.too_new:
                raise too_new_error(self.where, status)
            for migration in status.pending:
                if up_to is not None and migration.version > up_to:
                    break
                # BEGIN IMMEDIATE takes the write lock: another process migrating at the same
                # time waits here, then finds the version already applied.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(_VERSION_TABLE)
                    if self._current_version(conn) >= migration.version:
                        conn.execute("ROLLBACK")
                        continue
                    columns = {r[1] for r in conn.execute("PRAGMA table_info(schema_version)")}
                    if "berth_version" not in columns:  # made by a Berth before the column
                        conn.execute("ALTER TABLE schema_version ADD COLUMN berth_version TEXT")
                    for statement in _statements(migration.sql):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_version (version, name, applied_at, berth_version) "
                        "VALUES (?, ?, ?, ?)",
                        (migration.version, migration.name, time.time(), berth_version()),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                applied.append(migration)
        return applied

    # -- units of work -------------------------------------------------------------------

    def _run(self, conn: sqlite3.Connection, begin: str, fn: Callable[[Tx], T]) -> T:
        with _translated(self.where):
            conn.execute(begin)
            tx = SqliteTx(conn)
            try:
                result = fn(tx)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        if tx.touched:
            self.changes.bump(tx.touched)
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        async with self._read_limit:
            conn = self._free.pop()
            try:
                return await trio.to_thread.run_sync(self._run, conn, "BEGIN", fn)
            finally:
                self._free.append(conn)

    async def lookup(self, fn: Callable[[Tx], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with _translated(self.where):
                conn = _connect(str(self.path))
                # Never wait on this thread: a reader of a WAL database waits only in rare
                # moments (a crashed writer's recovery), and then the lookup goes to a worker
                # thread, which may wait.
                conn.execute("PRAGMA busy_timeout = 0")
            self._local.conn = conn
            with self._lookup_conns_lock:
                self._lookup_conns.append(conn)
        try:
            conn.execute("BEGIN")
            try:
                return fn(SqliteTx(conn))
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise Unavailable(f"metadata database {self.where}: {e}") from e
        except sqlite3.Error as e:
            raise MetadataError(f"metadata database {self.where}: {e}") from e
        return await self.read(fn)

    async def write(self, fn: Callable[[Tx], T], *, durable: bool = True) -> T:
        # The trio lock queues this process's writers without tying up worker threads.
        async with self._write_lock:
            return await trio.to_thread.run_sync(partial(self.run_sync_write, fn, durable=durable))

    def run_sync_read(self, fn: Callable[[Tx], T]) -> T:
        with self._sync_reader_lock:
            return self._run(self._sync_reader, "BEGIN", fn)

    def run_sync_write(self, fn: Callable[[Tx], T], *, durable: bool = True) -> T:
        with self._writer_lock:
            fcntl.flock(self._turns, fcntl.LOCK_EX)
            try:
                if durable:
                    return self._run(self._writer, "BEGIN IMMEDIATE", fn)
                # The WAL is not fsynced at this commit (it stays in the page cache until the
                # next FULL commit or checkpoint fsyncs the log, this commit with it).
                with _translated(self.where):
                    self._writer.execute("PRAGMA synchronous = NORMAL")
                try:
                    return self._run(self._writer, "BEGIN IMMEDIATE", fn)
                finally:
                    with _translated(self.where):
                        self._writer.execute("PRAGMA synchronous = FULL")
            finally:
                fcntl.flock(self._turns, fcntl.LOCK_UN)

    def close(self) -> None:
        for conn in [self._writer, self._sync_reader, *self._readers, *self._lookup_conns]:
            conn.close()
        os.close(self._turns)
        self.changes.close()
