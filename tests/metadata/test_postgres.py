"""The metadata conformance suite on PostgreSQL (a real server, see tests/support/postgres.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import trio

from appliance.errors import Unavailable
from appliance.metadata.db import MetadataError, Options, Tx, open_database
from appliance.metadata.leader import AdvisoryLock, LeaderLock
from tests.metadata.suite import Clock, MetadataSuite


class TestPostgres(MetadataSuite):
    @pytest.fixture
    def dialect(self) -> str:
        return "postgresql"

    async def lose(self, lock: LeaderLock, clock: Clock) -> None:
        assert isinstance(lock, AdvisoryLock)
        # The leader's session ends (its process died): the server releases the lock once it
        # has noticed the closed socket, which takes a moment; wait for that backend to go.
        assert lock._conn is not None
        pid = lock._conn.info.backend_pid
        lock._conn.close()
        with lock.db.connect() as conn:
            deadline = time.monotonic() + 10
            while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, f"backend {pid} outlived its closed session"
                await trio.sleep(0.01)


# -- PostgreSQL only: the fault handling behind the suite ------------------------------------


def test_a_serialization_failure_is_retried_from_the_start(
    postgres_database: Callable[[], str],
) -> None:
    """Two read-modify-write units of work that overlap: one loses (40001), runs again from
    the start, and both increments count."""
    db = open_database(postgres_database())
    try:
        db.run_sync_write(lambda tx: tx.execute("CREATE TABLE counter (n INTEGER NOT NULL)"))
        db.run_sync_write(lambda tx: tx.execute("INSERT INTO counter VALUES (0)"))
        both_read = threading.Barrier(2, timeout=10)
        attempts: list[int] = []

        def increment(tx: Tx) -> None:
            attempts.append(1)
            n = tx.scalar("SELECT n FROM counter")
            if len(attempts) <= 2:
                both_read.wait()  # the first attempts overlap for sure
            tx.execute("UPDATE counter SET n = :n", {"n": int(n) + 1})

        threads = [threading.Thread(target=db.run_sync_write, args=(increment,)) for _ in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert db.run_sync_read(lambda tx: tx.scalar("SELECT n FROM counter")) == 2
        assert len(attempts) == 3
    finally:
        db.close()


def test_statement_timeout_is_unavailable_and_a_bug_is_a_metadata_error(
    postgres_database: Callable[[], str],
) -> None:
    db = open_database(postgres_database(), Options(statement_timeout=0.2))
    try:
        with pytest.raises(Unavailable, match="statement timeout"):
            db.run_sync_read(lambda tx: tx.execute("SELECT pg_sleep(2)"))
        with pytest.raises(MetadataError, match="syntax error"):
            db.run_sync_read(lambda tx: tx.execute("SELEKT 1"))
        assert db.run_sync_read(lambda tx: tx.scalar("SELECT 1")) == 1  # the pool recovered
    finally:
        db.close()
