"""PostgreSQL under trio: psycopg 3 (sync) with a `psycopg_pool` pool, used from worker threads.

Each unit of work borrows a connection that the pool has just checked (a dead connection left
by a database restart is replaced, not handed out), runs in one transaction and gives the
connection back. Writes run at SERIALIZABLE, so the rules SQLite gets from its single writer
hold here too; a unit of work that loses a serialization failure or a deadlock is re-run from
the start (a few times, with a jittered backoff). Reads run at REPEATABLE READ, READ ONLY: a
consistent snapshot. Every statement has a timeout. psycopg errors are translated here:

    connection refused or lost, pool exhausted, statement timeout   → Unavailable (HTTP 503)
    serialization failure, deadlock: retried, then                  → Unavailable
    anything else (a constraint, a syntax error: a bug)             → MetadataError

Migrations run under a session advisory lock, so two processes never migrate at once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

import psycopg
import psycopg.errors
import trio
from psycopg import conninfo as pg_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from appliance import backoff
from appliance.errors import ConfigError, Unavailable
from appliance.metadata.changes import CHANNEL, ChangeBoard
from appliance.metadata.db import (
    MAX_MESSAGE,
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
    redact,
    status_of,
    too_new_error,
)

T = TypeVar("T")
log = logging.getLogger("berth.metadata")

BEGIN_WRITE = "BEGIN ISOLATION LEVEL SERIALIZABLE"
BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
MAX_ATTEMPTS = 12
CONNECT_TIMEOUT = 5  # seconds for one connection attempt (libpq's connect_timeout)
_RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)

_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|::|:([A-Za-z_]\w*)|%")


@functools.lru_cache(maxsize=2048)
def to_pyformat(sql: str) -> str:
    """Portable `:name` parameters → psycopg's `%(name)s`; every `%` escaped; `::` casts and
    `:words` inside quoted strings and identifiers left alone."""

    def sub(m: re.Match[str]) -> str:
        text = m.group(0)
        if text == "%":
            return "%%"
        if m.group(1) is not None:
            return f"%({m.group(1)})s"
        return text.replace("%", "%%")  # psycopg reads `%` inside quotes too

    return _TOKEN.sub(sub, sql)


def lock_key(name: str) -> int:
    """A stable 64-bit advisory-lock key for `name`."""
    return int.from_bytes(hashlib.sha256(f"berth:{name}".encode()).digest()[:8], "big", signed=True)


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0].strip()


class PostgresTx:
    """A transaction on one psycopg connection."""

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self.touched: set[str] = set()

    def touch(self, *topics: str) -> None:
        self.touched.update(topics)

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        cur = self._conn.execute(to_pyformat(sql), dict(params or {}))
        return cur.fetchall() if cur.description is not None else []

    def one(self, sql: str, params: Params | None = None) -> Row | None:
        cur = self._conn.execute(to_pyformat(sql), dict(params or {}))
        return cur.fetchone() if cur.description is not None else None

    def scalar(self, sql: str, params: Params | None = None) -> object:
        row = self.one(sql, params)
        return None if row is None else row[0]

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(to_pyformat(sql), [dict(r) for r in rows])

    def iterate(self, sql: str, params: Params | None = None, batch: int = 1000) -> Iterator[Row]:
        # A named (server-side) cursor streams; it lives until the transaction ends.
        with self._conn.cursor(name=f"berth_iter_{random.getrandbits(32)}") as cur:
            cur.itersize = batch
            cur.execute(to_pyformat(sql), dict(params or {}))
            yield from cur


def describe(url: str) -> str:
    """`host:port/dbname` of a PostgreSQL URL, for messages."""
    try:
        info = pg_conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise ConfigError(f"invalid metadata URL {redact(url)!r}: {first_line(e)}") from e
    host = str(info.get("host") or info.get("hostaddr") or "localhost")
    port = str(info.get("port") or "5432")
    return f"{host}:{port}/{info.get('dbname') or info.get('user') or ''}"


class PostgresDatabase(Database):
    """The PostgreSQL metadata database at `url` (connected on open, not migrated)."""

    dialect: ClassVar[str] = "postgresql"

    def __init__(self, url: str, options: Options | None = None) -> None:
        options = options or Options()
        self.url = url
        self.where = f"at {describe(url)}"
        self._timeout_ms = max(1, int(options.statement_timeout * 1000))
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "berth",
            "options": f"-c statement_timeout={self._timeout_ms}",
            # A dead peer (host gone, cable cut) is noticed in seconds, not hours.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        # Probe once directly: the pool would only say "timed out", not why.
        probe = self.connect()
        probe.close()
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            kwargs=self._kwargs,
            min_size=1,
            max_size=max(1, options.pool_size),
            timeout=options.pool_timeout,
            check=ConnectionPool.check_connection,
            reconnect_timeout=3600.0,
            name="berth-metadata",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=options.pool_timeout + CONNECT_TIMEOUT)
        except PoolTimeout as e:
            self._pool.close()
            raise Unavailable(f"cannot connect to the metadata database {self.where}") from e
        self._limit = trio.CapacityLimiter(max(1, options.pool_size))
        # Untrusted until `watch_changes` listens: other hosts' writes would go unseen.
        self.changes = ChangeBoard(options.changes_path, trusted=False)
        self._handlers: dict[str, list[Callable[[str], None]]] = {}

    async def watch_changes(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """LISTEN for other processes' commits and bump their topics, until cancelled; the
        stamps are trusted only while listening (metadata/changes.py)."""
        stop = threading.Event()
        task_status.started()
        try:
            await trio.to_thread.run_sync(self._listen, stop, abandon_on_cancel=True)
        finally:
            stop.set()

    def _listen(self, stop: threading.Event) -> None:
        pause = 0.1
        while not stop.is_set():
            try:
                conn = psycopg.connect(self.url, **self._kwargs)
            except psycopg.Error as e:
                log.warning("cannot listen for changes on %s: %s", self.where, first_line(e))
                stop.wait(pause)
                pause = min(5.0, pause * 2)
                continue
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                listening: set[str] = set()
                self.changes.trust()  # bumps every stamp: what happened meanwhile is unknown
                pause = 0.1
                while not stop.is_set():
                    for channel in set(self._handlers) - listening:
                        conn.execute(f"LISTEN {channel}")  # checked by `subscribe`
                        listening.add(channel)
                    # Each note as it arrives: the generator runs for up to `timeout`, and a
                    # bump kept until it ends would leave caches stale for that long.
                    for note in conn.notifies(timeout=0.5):
                        if note.channel == CHANNEL:
                            self.changes.notice(note.payload)
                        else:
                            self._deliver(note.channel, note.payload)
            except psycopg.Error as e:
                if not stop.is_set():
                    log.warning("lost the change listener on %s: %s", self.where, first_line(e))
            finally:
                self.changes.trust(False)
                conn.close()

    def subscribe(self, channel: str, handler: Callable[[str], None]) -> None:
        if not re.fullmatch(r"[a-z_]{1,60}", channel) or channel == CHANNEL:
            raise ValueError(f"not a channel name: {channel!r}")
        self._handlers.setdefault(channel, []).append(handler)

    def _deliver(self, channel: str, payload: str) -> None:
        for handler in self._handlers.get(channel, []):
            try:
                handler(payload)
            except Exception:  # one bad message must not stop the listener
                log.exception("a message on %s could not be handled", channel)

    async def publish(self, channel: str, payload: str) -> None:
        if len(payload.encode()) > MAX_MESSAGE:
            raise ValueError(f"a message on {channel} is longer than {MAX_MESSAGE} bytes")

        def send() -> None:
            with self.translated(), self._pool.connection() as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

        async with self._limit:
            await trio.to_thread.run_sync(send)

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection of its own (not from the pool), autocommit. Raises Unavailable."""
        try:
            return psycopg.connect(self.url, **self._kwargs)
        except psycopg.Error as e:
            raise Unavailable(
                f"cannot connect to the metadata database {self.where}: {first_line(e)}"
            ) from e

    @contextmanager
    def translated(self) -> Iterator[None]:
        """psycopg and pool errors → Berth errors."""
        try:
            yield
        except PoolTimeout as e:
            raise Unavailable(f"metadata database {self.where}: no connection available") from e
        except psycopg.errors.QueryCanceled as e:
            raise Unavailable(f"metadata database {self.where}: {first_line(e)}") from e
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise Unavailable(f"metadata database {self.where}: {first_line(e)}") from e
        except psycopg.Error as e:
            raise MetadataError(f"metadata database {self.where}: {first_line(e)}") from e

    # -- units of work -------------------------------------------------------------------

    def _attempt(self, begin: str, fn: Callable[[Tx], T], durable: bool = True) -> T:
        with self._pool.connection() as conn:
            conn.execute(begin)
            if not durable:  # this transaction's commit does not wait for the WAL flush
                conn.execute("SET LOCAL synchronous_commit = off")
            tx = PostgresTx(conn)
            try:
                result = fn(tx)
                if tx.touched:  # delivered to every listener when (and only if) this commits
                    conn.execute(
                        "SELECT pg_notify(%s, %s || ' ' || topic) FROM unnest(%s::text[]) AS topic",
                        (CHANNEL, self.changes.origin, sorted(tx.touched)),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        conn.close()  # the pool discards it
                raise
        if tx.touched:
            self.changes.bump(tx.touched)
        return result

    def _run(self, begin: str, fn: Callable[[Tx], T], durable: bool = True) -> T:
        with self.translated():
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    return self._attempt(begin, fn, durable)
                except _RETRYABLE:
                    if attempt == MAX_ATTEMPTS:
                        raise
                    # Jittered exponential backoff, 2 ms doubling up to about 0.25 s.
                    jitter = random.uniform(0.5, 1.0)  # noqa: S311 (not a secret)
                    time.sleep(jitter * backoff.delay(attempt, 0.002, 0.25))
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[[Tx], T]) -> T:
        async with self._limit:
            return await trio.to_thread.run_sync(self._run, BEGIN_READ, fn)

    async def write(self, fn: Callable[[Tx], T], *, durable: bool = True) -> T:
        async with self._limit:
            return await trio.to_thread.run_sync(self._run, BEGIN_WRITE, fn, durable)

    def run_sync_read(self, fn: Callable[[Tx], T]) -> T:
        return self._run(BEGIN_READ, fn)

    def run_sync_write(self, fn: Callable[[Tx], T], *, durable: bool = True) -> T:
        return self._run(BEGIN_WRITE, fn, durable)

    # -- schema --------------------------------------------------------------------------

    @staticmethod
    def _applied(conn: psycopg.Connection[Any]) -> list[AppliedMigration]:
        names = {
            str(r[0])
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'schema_version'"
            )
        }
        if not names:
            return []
        by = "berth_version" if "berth_version" in names else "NULL"
        rows = conn.execute(
            f"SELECT version, name, applied_at, {by} FROM schema_version ORDER BY version"  # noqa: S608
        ).fetchall()
        return [AppliedMigration(int(v), str(n), float(a), b) for v, n, a, b in rows]

    def _status(self, conn: psycopg.Connection[Any]) -> SchemaStatus:
        applied = self._applied(conn)
        return status_of(self.dialect, max((m.version for m in applied), default=0), applied)

    def schema_status(self) -> SchemaStatus:
        with self.translated(), self._pool.connection() as conn:
            return self._status(conn)

    def migrate(self, up_to: int | None = None) -> list[Migration]:
        applied: list[Migration] = []
        with self.translated():
            conn = self.connect()
            try:
                conn.execute("SET statement_timeout = 0")  # a migration may rewrite a table
                # Session lock: a second process migrating at once waits here, then finds
                # nothing left to do. Released when the session ends, whatever happens.
                conn.execute("SELECT pg_advisory_lock(%s)", (lock_key("migrate"),))
                status = self._status(conn)
                if status.too_new:
                    raise too_new_error(self.where, status)
                for migration in status.pending:
                    if up_to is not None and migration.version > up_to:
                        break
                    with conn.transaction():
                        conn.execute(VERSION_TABLE.format(real="DOUBLE PRECISION").encode())
                        # A table made by a Berth before the column gains it.
                        conn.execute(
                            "ALTER TABLE schema_version ADD COLUMN IF NOT EXISTS berth_version TEXT"
                        )
                        conn.execute(migration.sql.encode())
                        conn.execute(
                            "INSERT INTO schema_version (version, name, applied_at, "
                            "berth_version) VALUES (%s, %s, %s, %s)",
                            (migration.version, migration.name, time.time(), berth_version()),
                        )
                    applied.append(migration)
            finally:
                conn.close()
        return applied

    def close(self) -> None:
        self._pool.close()
        self.changes.close()
