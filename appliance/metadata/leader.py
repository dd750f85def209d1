"""Leader election through the metadata database, and the fencing token.

Background jobs run in one process at a time (runtime/jobs.py decides what runs; this module only
decides who). Two locks, one contract (`LeaderLock`):

* PostgreSQL: a session advisory lock, held on a dedicated connection for as long as the leader
  lives. A leader that dies or loses its connection loses the lock at once, server-side. A
  leader whose host vanishes without closing the connection (power cut, network partition)
  loses it within the lease: the session asks the server to end it after `ttl` seconds without
  a query (`idle_session_timeout`; the leader checks in every third of that) and to drop a
  peer that stops acknowledging (`tcp_user_timeout`, keepalives).
* SQLite: a lease row that the leader renews; another process takes over once it expires.

Each change of leader increments `leader_leases.generation`: the fencing token. A destructive
job passes its `Fence` to the store, which calls `check_fence` in the same transaction as the
delete, so a former leader that was paused (and has been replaced) cannot delete anything.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from appliance.errors import BerthError
from appliance.metadata.db import Database, Tx

if TYPE_CHECKING:
    import psycopg


class LeadershipLost(BerthError):
    """The fencing token is stale: another process leads now."""


@dataclass(frozen=True)
class Fence:
    """Proof of leadership: the lease `name` at `generation`."""

    name: str
    generation: int


def check_fence(tx: Tx, fence: Fence) -> None:
    """Raise LeadershipLost unless `fence` is still the current generation (inside `tx`)."""
    current = tx.scalar(
        "SELECT generation FROM leader_leases WHERE name = :name", {"name": fence.name}
    )
    if current is None or int(current) != fence.generation:
        raise LeadershipLost(
            f"leadership of {fence.name!r} moved on (generation {current}, "
            f"this process had {fence.generation})"
        )


def _bump(tx: Tx, name: str, holder: str, expires_at: float) -> int:
    row = tx.one(
        "INSERT INTO leader_leases (name, holder, generation, expires_at) "
        "VALUES (:name, :holder, 1, :exp) ON CONFLICT (name) DO UPDATE SET "
        "holder = excluded.holder, generation = leader_leases.generation + 1, "
        "expires_at = excluded.expires_at RETURNING generation",
        {"name": name, "holder": holder, "exp": expires_at},
    )
    assert row is not None
    return int(row[0])


class LeaderLock(Protocol):
    """Who leads `name`. Methods raise Unavailable when the database cannot be reached."""

    name: str

    async def acquire(self) -> Fence | None:
        """Try once to become the leader; the new fence, or None when another process leads."""
        ...

    async def keep(self) -> bool:
        """Still the leader? (Renews a lease.) False once leadership is lost."""
        ...

    async def release(self) -> None:
        """Give leadership up (idempotent), so another process can take over at once."""
        ...


class LeaseLock:
    """A lease row renewed by the leader (SQLite; works on any dialect). Uses the wall clock:
    the lease is shared between processes."""

    def __init__(
        self,
        db: Database,
        name: str,
        ttl: float,
        clock: Callable[[], float],
        holder: str | None = None,
    ) -> None:
        self.db = db
        self.name = name
        self.ttl = ttl
        self.clock = clock
        self.holder = holder or uuid.uuid4().hex
        self._fence: Fence | None = None

    async def acquire(self) -> Fence | None:
        now = self.clock()

        def fn(tx: Tx) -> int | None:
            row = tx.one(
                "SELECT holder, expires_at FROM leader_leases WHERE name = :name",
                {"name": self.name},
            )
            if row is not None and row[0] != self.holder and float(row[1]) > now:
                return None
            return _bump(tx, self.name, self.holder, now + self.ttl)

        generation = await self.db.write(fn)
        self._fence = None if generation is None else Fence(self.name, generation)
        return self._fence

    async def keep(self) -> bool:
        fence = self._fence
        if fence is None:
            return False
        now = self.clock()

        def fn(tx: Tx) -> bool:
            return bool(
                tx.execute(
                    "UPDATE leader_leases SET expires_at = :exp WHERE name = :name "
                    "AND holder = :holder AND generation = :gen AND expires_at >= :now "
                    "RETURNING generation",
                    {
                        "exp": now + self.ttl,
                        "name": self.name,
                        "holder": self.holder,
                        "gen": fence.generation,
                        "now": now,
                    },
                )
            )

        kept = await self.db.write(fn)
        if not kept:
            self._fence = None
        return kept

    async def release(self) -> None:
        fence, self._fence = self._fence, None
        if fence is None:
            return

        def fn(tx: Tx) -> None:
            tx.execute(
                "UPDATE leader_leases SET expires_at = 0 WHERE name = :name "
                "AND holder = :holder AND generation = :gen",
                {"name": self.name, "holder": self.holder, "gen": fence.generation},
            )

        await self.db.write(fn)


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a dedicated connection (PostgreSQL only)."""

    def __init__(
        self, db: Database, name: str, holder: str | None = None, *, ttl: float = 15.0
    ) -> None:
        from appliance.metadata.postgres import PostgresDatabase  # noqa: PLC0415

        if not isinstance(db, PostgresDatabase):
            raise TypeError("AdvisoryLock needs a PostgreSQL database")
        self.db: PostgresDatabase = db
        self.name = name
        self.ttl = ttl
        self.holder = holder or uuid.uuid4().hex
        self._conn: psycopg.Connection[Any] | None = None
        self._fence: Fence | None = None

    def _close(self, *, unlock: bool = False) -> None:
        conn, self._conn = self._conn, None
        self._fence = None
        if conn is None:
            return
        if unlock and not conn.closed:
            from appliance.metadata.postgres import lock_key  # noqa: PLC0415

            # Closing the session releases the lock too, but the server notices a closed
            # socket a moment later; unlocking first hands leadership over at once.
            with contextlib.suppress(Exception):
                conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(self.name),))
        conn.close()

    def _acquire(self) -> Fence | None:
        from appliance.metadata.postgres import PostgresTx, lock_key  # noqa: PLC0415

        with self.db.translated():
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self.db.connect()
                    self._bound(self._conn)
                conn = self._conn
                got = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(self.name),))
                row = got.fetchone()
                if not (row and row[0]):
                    return None
                with conn.transaction():
                    generation = _bump(PostgresTx(conn), self.name, self.holder, 0.0)
            except BaseException:
                self._close()
                raise
        self._fence = Fence(self.name, generation)
        return self._fence

    def _bound(self, conn: psycopg.Connection[Any]) -> None:
        """Have the server end this session (so release the lock) once its host has been
        silent for the lease: PostgreSQL 14's idle_session_timeout, TCP timeouts for older."""
        import psycopg.errors  # noqa: PLC0415

        millis = int(max(1.0, self.ttl) * 1000)
        probe = max(1, int(self.ttl / 3))
        for setting, value in (
            ("idle_session_timeout", millis),
            ("tcp_user_timeout", millis),
            ("tcp_keepalives_idle", probe),
            ("tcp_keepalives_interval", probe),
            ("tcp_keepalives_count", 3),
        ):
            # A server too old for one of these (or on a Unix socket) keeps its default.
            with contextlib.suppress(psycopg.errors.UndefinedObject):
                conn.execute(f"SET {setting} = {int(value)}")

    def _keep(self) -> bool:
        conn = self._conn
        if conn is None or self._fence is None:
            return False
        try:
            conn.execute("SELECT 1")
        except Exception:
            self._close()
            return False
        return True

    async def acquire(self) -> Fence | None:
        return await trio.to_thread.run_sync(self._acquire)

    async def keep(self) -> bool:
        return await trio.to_thread.run_sync(self._keep)

    async def release(self) -> None:
        await trio.to_thread.run_sync(lambda: self._close(unlock=True))


def leader_lock(db: Database, name: str, *, ttl: float, clock: Callable[[], float]) -> LeaderLock:
    """The right lock for `db`'s dialect."""
    if db.dialect == "postgresql":
        return AdvisoryLock(db, name, ttl=ttl)
    return LeaseLock(db, name, ttl, clock)
