"""The metadata conformance suite on SQLite."""

from __future__ import annotations

import pytest

from appliance.metadata.leader import LeaderLock
from tests.metadata.suite import Clock, MetadataSuite


class TestSQLite(MetadataSuite):
    @pytest.fixture
    def dialect(self) -> str:
        return "sqlite"

    async def lose(self, lock: LeaderLock, clock: Clock) -> None:
        clock.now += 31  # the lease (30 s) runs out without renewal
