"""The metadata conformance suite on SQLite."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest

from appliance.metadata.db import Database, Tx
from appliance.metadata.leader import LeaderLock
from appliance.metadata.sqlite import SqliteDatabase
from tests.metadata.suite import Clock, MetadataSuite


class TestSQLite(MetadataSuite):
    @pytest.fixture
    def dialect(self) -> str:
        return "sqlite"

    async def lose(self, lock: LeaderLock, clock: Clock) -> None:
        clock.now += 31  # the lease (30 s) runs out without renewal

    async def test_a_lookup_runs_on_the_calling_thread(self, database: Database) -> None:
        """On SQLite the request path's point reads take no thread hop: the hop costs a
        request more than the read (bench/RESULTS.md)."""
        threads: list[int] = []

        def where(tx: Tx) -> int:
            threads.append(threading.get_ident())
            return int(tx.scalar("SELECT COUNT(*) FROM repositories") or 0)

        assert await database.lookup(where) == 0
        assert await database.read(where) == 0
        assert threads[0] == threading.get_ident()
        assert threads[1] != threading.get_ident()

    async def test_writers_take_turns_on_the_lock_file_beside_the_database(
        self, database: Database
    ) -> None:
        """Every process's writes hold `<db>.writers` while they run, so a writer of another
        process waits in the kernel for its turn instead of SQLite's sleep-and-retry."""
        assert isinstance(database, SqliteDatabase)
        lock_file = database.path.with_name(database.path.name + ".writers")
        probe = os.open(lock_file, os.O_RDWR)
        held: list[bool] = []

        def try_lock() -> bool:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(probe, fcntl.LOCK_UN)
            return True

        def write(tx: Tx) -> None:
            held.append(not try_lock())
            tx.execute("INSERT INTO repositories (name, created_at) VALUES ('a', 0)")

        try:
            await database.write(write)
            assert held == [True], "the lock is held during a write"
            assert try_lock(), "and let go after it"
            assert oct(lock_file.stat().st_mode & 0o777) == oct(0o600)
        finally:
            os.close(probe)
