"""The metadata conformance suite on SQLite."""

from __future__ import annotations

import threading

import pytest

from appliance.metadata.db import Database, Tx
from appliance.metadata.leader import LeaderLock
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
