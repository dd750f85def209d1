"""The metadata conformance suite on SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.metadata.db import Database, open_database
from appliance.metadata.leader import LeaderLock
from tests.metadata.suite import Clock, MetadataSuite


class TestSQLite(MetadataSuite):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'berth.db'}"

    @pytest.fixture
    def database(self, url: str) -> Iterator[Database]:
        db = open_database(url)
        db.migrate()
        yield db
        db.close()

    @pytest.fixture
    def make_database(self, url: str) -> Callable[[], Database]:
        return lambda: open_database(url)

    async def lose(self, lock: LeaderLock, clock: Clock) -> None:
        clock.now += 31  # the lease (30 s) runs out without renewal
