"""Fixtures of the lifecycle tests (see world.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.metadata.db import Database, open_database
from appliance.storage.filesystem import FilesystemStore
from tests.lifecycle.world import (
    World,
    azure_store,
    build_world,
    lifecycle_bucket,
    lifecycle_container,
    s3_store,
)

__all__ = ["lifecycle_bucket", "lifecycle_container"]

# metadata and storage combinations the byte-level tests run on
BACKENDS = ["sqlite-fs", "postgresql-fs", "sqlite-s3", "sqlite-azure"]
STORES = {"s3": s3_store, "azure": azure_store}


def _open(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> Database:
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'berth.db'}"
    else:
        url = request.getfixturevalue("postgres_database")()
    db = open_database(url)
    db.migrate()
    return db


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A registry on each backend combination."""
    dialect, storage = request.param.split("-")
    db = _open(request, tmp_path, dialect)
    make = STORES.get(storage)
    store = make(request) if make else FilesystemStore(tmp_path / "storage")
    try:
        yield build_world(db, store)
    finally:
        db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A registry on each metadata database, with filesystem storage (rules and policies)."""
    db = _open(request, tmp_path, request.param)
    try:
        yield build_world(db, FilesystemStore(tmp_path / "storage"))
    finally:
        db.close()
