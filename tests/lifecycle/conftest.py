"""Fixtures of the lifecycle tests (see world.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.metadata.db import Database
from appliance.storage.filesystem import FilesystemStore
from tests.lifecycle.world import (
    World,
    azure_store,
    build_world,
    lifecycle_bucket,
    lifecycle_container,
    s3_store,
)
from tests.support.dialects import fresh_url, open_migrated

__all__ = ["lifecycle_bucket", "lifecycle_container"]

# metadata and storage combinations the byte-level tests run on
BACKENDS = ["sqlite-fs", "postgresql-fs", "sqlite-s3", "sqlite-azure"]
STORES = {"s3": s3_store, "azure": azure_store}


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A registry on each backend combination."""
    dialect, storage = request.param.split("-")
    db = open_migrated(fresh_url(request, tmp_path, dialect))
    make = STORES.get(storage)
    store = make(request) if make else FilesystemStore(tmp_path / "storage")
    try:
        yield build_world(db, store)
    finally:
        db.close()


@pytest.fixture
def db_world(db: Database, tmp_path: Path) -> World:
    """A registry on each metadata database (the shared `db`), with filesystem storage (rules
    and policies)."""
    return build_world(db, FilesystemStore(tmp_path / "storage"))
