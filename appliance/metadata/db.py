"""The metadata database seam: units of work, dialects, schema versions.

A unit of work is a synchronous `fn(tx)` run in a worker thread inside one transaction:
`await db.read(fn)` for a consistent snapshot, `await db.write(fn)` for a change that commits
when `fn` returns and rolls back when it raises. SQL is portable, with `:name` parameters; only
DDL (`migrations/<dialect>/NNNN_name.sql`) and the rare statement that must differ live per
dialect. Dialects are registered in `DIALECTS`, an explicit URL-scheme → class map:

    sqlite:///path/berth.db            SqliteDatabase    (metadata/sqlite.py)
    postgresql://user@host:port/db     PostgresDatabase  (metadata/postgres.py)

Both give write transactions the same meaning: serializable. SQLite has one writer at a time;
PostgreSQL runs writes at SERIALIZABLE and re-runs a unit of work that lost a serialization
failure or a deadlock, so `fn` must have no effect outside `tx` (it may run more than once).

Errors from `sqlite3` and `psycopg` never leak past this package:

    BerthError
    ├── Unavailable        the database cannot be reached, timed out, or kept conflicting
    ├── ConfigError
    │   ├── SchemaTooNew   the database was migrated by a newer Berth
    │   └── SchemaBehind   migrations are pending and this process may not apply them
    └── MetadataError      anything else the database refused: a bug, logged as UNKNOWN

Cancellation: a unit of work that has started in its thread runs to its end (commit or
rollback); the awaiting task sees the cancellation afterwards.
"""

from __future__ import annotations

import importlib.resources
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import trio

from appliance.config import Config
from appliance.errors import BerthError, ConfigError, Unavailable
from appliance.metadata.changes import ChangeBoard

T = TypeVar("T")
Row = tuple[Any, ...]
MAX_MESSAGE = 7900  # bytes of one `publish` payload (PostgreSQL's NOTIFY takes under 8000)
Params = Mapping[str, Any]


class SchemaTooNew(ConfigError):
    pass


class SchemaBehind(ConfigError):
    pass


class MetadataError(BerthError):
    """The database refused a statement for a reason that is not a transient fault."""


class Tx(Protocol):
    """A transaction handed to a unit of work. Parameters are `:name` style, in a mapping."""

    dialect: str

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        """Run one statement; return every row it produced (none for most writes)."""
        ...

    def one(self, sql: str, params: Params | None = None) -> Row | None:
        """The first row, or None."""
        ...

    def scalar(self, sql: str, params: Params | None = None) -> Any:
        """The first column of the first row, or None."""
        ...

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run one statement once per parameter mapping."""
        ...

    def iterate(self, sql: str, params: Params | None = None, batch: int = 1000) -> Iterator[Row]:
        """Stream the rows of a query without holding them all in memory."""
        ...

    def touch(self, *topics: str) -> None:
        """Say that this transaction changes cached facts of `topics` (metadata/changes.py):
        once it commits, every process's caches of them reload."""
        ...


def ping(tx: Tx) -> None:
    """The cheapest statement: whether the database answers (health checks)."""
    tx.scalar("SELECT 1")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def kind(self) -> str:
        """'expand' (additive: the previous release still runs on the result) or 'contract'
        (removes or changes what the previous release used), from the script's header line
        `-- berth: contract`. See docs/upgrades.md."""
        for line in self.sql.splitlines():
            text = line.strip()
            if not text.startswith("--"):
                break
            if text.removeprefix("--").strip().lower() == "berth: contract":
                return "contract"
        return "expand"


@dataclass(frozen=True)
class AppliedMigration:
    """A row of `schema_version`: which migration, when, and by which Berth (None when the
    Berth that applied it predates that record)."""

    version: int
    name: str
    applied_at: float
    berth_version: str | None


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against the migrations this Berth knows."""

    current: int
    latest: int
    pending: tuple[Migration, ...]
    applied: tuple[AppliedMigration, ...] = ()

    @property
    def too_new(self) -> bool:
        return self.current > self.latest

    @property
    def newest_by(self) -> str | None:
        """The Berth version that applied the newest migration, when recorded."""
        newest = max(self.applied, key=lambda m: m.version, default=None)
        return newest.berth_version if newest is not None else None


@dataclass(frozen=True)
class Options:
    """How to open a database (from the `metadata.*` settings)."""

    readers: int = 4
    pool_size: int = 8
    pool_timeout: float = 10.0
    statement_timeout: float = 30.0
    #: PostgreSQL: the change-stamp file the processes of this host share (None: this
    #: process's own). SQLite keeps it next to the database file.
    changes_path: Path | None = None


def migrations(dialect: str) -> tuple[Migration, ...]:
    """The ordered migrations shipped for `dialect`."""
    folder = importlib.resources.files("appliance.metadata") / "migrations" / dialect
    out = []
    for entry in folder.iterdir():
        m = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    return tuple(sorted(out, key=lambda m: m.version))


def status_of(dialect: str, current: int, applied: Sequence[AppliedMigration] = ()) -> SchemaStatus:
    known = migrations(dialect)
    latest = known[-1].version if known else 0
    pending = tuple(m for m in known if m.version > current)
    return SchemaStatus(current, latest, pending, tuple(applied))


# The schema_version table: created and extended by `migrate`, not by a migration script.
# `berth_version` was added later; a database migrated before that has NULLs (or no column).
VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT "
    "NULL, applied_at {real} NOT NULL, berth_version TEXT)"
)


def berth_version() -> str:
    """This Berth's version, as `schema_version.berth_version` records it."""
    from appliance.version import version  # noqa: PLC0415

    return version()


def too_new_error(where: str, status: SchemaStatus) -> SchemaTooNew:
    """The one line that refuses a downgrade: the schema and both Berth versions."""
    newer = status.newest_by
    by = f", applied by Berth {newer}" if newer else ""
    fix = f"install Berth {newer} or newer" if newer else "install the Berth that migrated it"
    return SchemaTooNew(
        f"the metadata database {where} is at schema version {status.current}{by}, newer "
        f"than this Berth {berth_version()} knows (up to {status.latest}): {fix}, or restore "
        "the backup taken before the upgrade"
    )


class Database(ABC):
    """One metadata database. Open it with `open_database(url)`; it is not migrated on open."""

    dialect: ClassVar[str]

    #: Where the database is, for messages (never with a password).
    where: str

    #: The change stamps caches of this database's facts check (metadata/changes.py).
    changes: ChangeBoard

    async def watch_changes(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep `changes` current with writes made by other hosts, until cancelled. Nothing to
        do where every writer shares this host's stamp file (SQLite)."""
        task_status.started()

    async def publish(self, channel: str, payload: str) -> None:
        """Send `payload` (text, at most `MAX_MESSAGE` bytes) to the processes of every host
        that listens on `channel` (this host's too: receivers tell their own messages apart).
        Best effort: a process not listening at that moment misses it. Nothing to do where no
        other host shares the database (SQLite). Raises Unavailable."""
        return

    def subscribe(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call `handler(payload)` for every message on `channel` while `watch_changes` runs,
        from the listener's thread (it must be quick and thread-safe). Channel names are
        lowercase words. Nothing ever arrives where no other host shares the database."""
        return

    @abstractmethod
    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a read-only transaction (a consistent snapshot)."""

    async def lookup(self, fn: Callable[[Tx], T]) -> T:
        """`read` for a point lookup on a request's path (a few rows by key, no scan): where
        the database answers from this machine's memory and disk (SQLite), it runs on the
        calling thread, because the hop to a worker thread and back costs a request more
        than the read (about 1.4 ms of latency against tens of microseconds, measured on an
        idle 2-core VM: bench/RESULTS.md). Elsewhere it is `read`."""
        return await self.read(fn)

    @abstractmethod
    async def write(self, fn: Callable[[Tx], T], *, durable: bool = True) -> T:
        """Run `fn` in a serializable write transaction; it commits when `fn` returns, and the
        commit is on disk when this returns.

        `durable=False` is for records a client redoes when they are missing (an upload
        session, how far it got): the commit skips waiting for the disk (SQLite's WAL fsync;
        PostgreSQL's `synchronous_commit`). A process crash loses nothing; a power cut or an
        OS crash may lose it (and the client starts its upload again), never an acknowledged
        blob or manifest: the write-ahead log is written in order, so the next durable commit
        makes every earlier one durable too."""

    @abstractmethod
    def run_sync_read(self, fn: Callable[[Tx], T]) -> T:
        """The same as `read`, for callers outside trio (CLI, threads)."""

    @abstractmethod
    def run_sync_write(self, fn: Callable[[Tx], T], *, durable: bool = True) -> T:
        """The same as `write`, for callers outside trio (CLI, threads)."""

    @abstractmethod
    def schema_status(self) -> SchemaStatus:
        """Current and pending schema versions (blocking)."""

    @abstractmethod
    def migrate(self, up_to: int | None = None) -> list[Migration]:
        """Apply pending migrations in order (those up to version `up_to` when given), each in
        its own transaction with its version row, which records this Berth's version; return
        those applied. Safe when several processes migrate at once: one applies, the others
        wait and find nothing left to do. Raises SchemaTooNew (blocking)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection (blocking)."""

    def prepare(self, auto_migrate: bool) -> SchemaStatus:
        """Make sure the schema is the one this Berth knows, migrating when allowed (blocking).

        Raises SchemaTooNew for a newer schema and SchemaBehind when migrations are pending and
        `auto_migrate` is false.
        """
        status = self.schema_status()
        if status.too_new:
            raise too_new_error(self.where, status)
        if status.pending:
            if not auto_migrate:
                raise SchemaBehind(
                    f"the metadata database {self.where} is at schema version "
                    f"{status.current} and this Berth needs {status.latest}: run "
                    '`berth migrate` (or set metadata.auto_migrate = "yes")'
                )
            self.migrate()
            status = self.schema_status()
        return status


def _dialects() -> dict[str, Callable[[str, Options], Database]]:
    # Imported here so that neither driver is loaded unless its dialect is used.
    def sqlite(url: str, options: Options) -> Database:
        from appliance.metadata.sqlite import SqliteDatabase  # noqa: PLC0415

        return SqliteDatabase.from_url(url, options)

    def postgresql(url: str, options: Options) -> Database:
        from appliance.metadata.postgres import PostgresDatabase  # noqa: PLC0415

        return PostgresDatabase(url, options)

    return {"sqlite": sqlite, "postgresql": postgresql, "postgres": postgresql}


DIALECTS = ("sqlite", "postgresql")


def dialect_of(url: str) -> str:
    scheme = url.partition("://")[0].lower()
    if scheme == "postgres":
        return "postgresql"
    if scheme not in DIALECTS or "://" not in url:
        raise ConfigError(
            f"unsupported metadata URL {redact(url)!r} "
            "(expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB)"
        )
    return scheme


def open_database(url: str, options: Options | None = None) -> Database:
    """Open the database at `url` (blocking). Raises ConfigError or Unavailable."""
    dialect_of(url)
    scheme = url.partition("://")[0].lower()
    return _dialects()[scheme](url, options or Options())


def redact(url: str) -> str:
    """`url` without a password."""
    return re.sub(r"(://[^/:@]*):[^@/]*@", r"\1:***@", url)


def auto_migrate_flag(value: str, dialect: str) -> bool:
    """The `metadata.auto_migrate` setting (one of the words the settings table allows): "auto"
    means yes for SQLite, no for PostgreSQL."""
    if value == "auto":
        return dialect == "sqlite"
    return value in ("yes", "true", "1", "on")


__all__ = [
    "AppliedMigration",
    "BerthError",
    "Database",
    "MetadataError",
    "Migration",
    "Options",
    "SchemaBehind",
    "SchemaStatus",
    "SchemaTooNew",
    "Tx",
    "Unavailable",
    "open_database",
    "open_metadata",
]


def open_metadata(config: Config, *, migrate: bool | None = None) -> Database:
    """Open the database `config` names and make its schema current (blocking).

    `migrate` None follows `metadata.auto_migrate`. Raises ConfigError (SchemaTooNew,
    SchemaBehind) or Unavailable, with one line naming the database.
    """
    url = config.metadata_url
    options = Options(
        readers=config["metadata.readers"],
        pool_size=config["metadata.pool_size"],
        pool_timeout=config["metadata.pool_timeout"],
        statement_timeout=config["metadata.statement_timeout"],
        changes_path=config.data_dir / "changes",
    )
    if migrate is None:
        migrate = auto_migrate_flag(config["metadata.auto_migrate"], dialect_of(url))
    db = open_database(url, options)
    try:
        db.prepare(migrate)
    except BaseException:
        db.close()
        raise
    return db
