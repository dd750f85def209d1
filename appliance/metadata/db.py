"""SQLite access under trio: a pool of reader connections and one writer, used from threads.

A unit of work is a synchronous `fn(tx)` run in a worker thread inside one transaction:
`await db.read(fn)` for a consistent read, `await db.write(fn)` for a change (SQLite has no row
locks, so the single writer connection with `BEGIN IMMEDIATE` is the lock). WAL lets readers run
while the writer writes. sqlite3 errors are translated here and never leak.

Cancellation: a unit of work that has started in its thread runs to its end (commit or
rollback); the awaiting task sees the cancellation afterwards.
"""

from __future__ import annotations

import importlib.resources
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from appliance.errors import BerthError, ConfigError, Unavailable

T = TypeVar("T")
Row = tuple[Any, ...]


class SchemaTooNew(ConfigError):
    pass


class Tx:
    """A transaction handed to a unit of work. Parameters are `:name` style."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: dict[str, Any] | Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: dict[str, Any] | Sequence[Any] = ()) -> Row | None:
        return self._conn.execute(sql, params).fetchone()  # type: ignore[no-any-return]

    def scalar(self, sql: str, params: dict[str, Any] | Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return None if row is None else row[0]

    def executemany(self, sql: str, rows: Sequence[dict[str, Any] | Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    # An acknowledged push must survive a power cut: every commit reaches the disk.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as e:
        raise Unavailable(f"metadata database: {e}") from e
    except sqlite3.DatabaseError as e:
        raise Unavailable(f"metadata database error: {e}") from e


def _migrations() -> list[tuple[int, str, str]]:
    folder = importlib.resources.files("appliance.metadata") / "migrations" / "sqlite"
    out = []
    for entry in folder.iterdir():
        m = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(out)


class Database:
    """The SQLite metadata database at `path` (created and migrated on open)."""

    def __init__(self, path: Path, readers: int = 4) -> None:
        self.path = path
        with _translated():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(str(path))
            self._writer.execute("PRAGMA journal_mode = WAL")
            self.migrate()
            self._readers = [_connect(str(path)) for _ in range(max(1, readers))]
        self._free = list(self._readers)
        self._read_limit = trio.CapacityLimiter(len(self._readers))
        self._write_lock = trio.Lock()

    @classmethod
    def from_url(cls, url: str, readers: int = 4) -> Database:
        if not url.startswith("sqlite:///"):
            raise ConfigError(f"unsupported metadata URL {url!r} (expected sqlite:///PATH)")
        return cls(Path(url.removeprefix("sqlite://")), readers)

    def migrate(self) -> int:
        """Apply pending migrations; return the schema version. Refuses a newer schema."""
        conn = self._writer
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        version = int(current[0])
        known = _migrations()
        latest = known[-1][0] if known else 0
        if version > latest:
            raise SchemaTooNew(
                f"the metadata database is at schema version {version}, newer than this "
                f"Berth knows ({latest}); upgrade Berth"
            )
        for number, name, sql in known:
            if number <= version:
                continue
            # One script, one transaction: the schema change and its version row land together.
            try:
                stamp = f"INSERT INTO schema_version VALUES ({number}, '{name}', {time.time()})"  # noqa: S608
                conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\n;{stamp};\nCOMMIT;")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            version = number
        return version

    def _run(self, conn: sqlite3.Connection, begin: str, fn: Callable[[Tx], T]) -> T:
        with _translated():
            conn.execute(begin)
            try:
                result = fn(Tx(conn))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a read transaction (a consistent snapshot)."""
        async with self._read_limit:
            conn = self._free.pop()
            try:
                return await trio.to_thread.run_sync(self._run, conn, "BEGIN", fn)
            finally:
                self._free.append(conn)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a write transaction; it commits when `fn` returns, else rolls back."""
        async with self._write_lock:
            return await trio.to_thread.run_sync(self._run, self._writer, "BEGIN IMMEDIATE", fn)

    def run_sync_write(self, fn: Callable[[Tx], T]) -> T:
        """The same as `write`, for the CLI outside trio."""
        return self._run(self._writer, "BEGIN IMMEDIATE", fn)

    def close(self) -> None:
        for conn in [self._writer, *self._readers]:
            conn.close()


__all__ = ["BerthError", "Database", "SchemaTooNew", "Tx"]
