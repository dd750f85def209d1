"""A migrated metadata database of each dialect: a pytest plugin (listed in tests/conftest.py),
the one way tests get "the same test on SQLite and on a real PostgreSQL".

Fixtures:

- `dialect`: "sqlite" or "postgresql"; a test (or a fixture) that asks for it runs once per
  dialect. A test class pins one dialect by defining its own `dialect` fixture.
- `database_url`: a fresh, empty database of that dialect (a file under the test's tmp_path, or
  a new database on the session's PostgreSQL from tests/support/postgres.py).
- `db`: that database opened and migrated as `berth migrate` would, with its change stamps
  trusted as in a serving Berth (a PostgreSQL opens them untrusted until its listener runs);
  closed after the test.

Only the PostgreSQL runs start the server, so `-k sqlite` needs none. Without PostgreSQL
installed those runs skip, naming the Debian package; under `CI=true` they fail instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.metadata.db import DIALECTS, Database, Options, open_database


def fresh_url(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> str:
    """The URL of a new, empty database of `dialect` (each call: another one)."""
    if dialect == "sqlite":
        # a folder of its own: a test may ask for several databases
        return f"sqlite:///{Path(tempfile.mkdtemp(dir=tmp_path)) / 'berth.db'}"
    make: Callable[[], str] = request.getfixturevalue("postgres_database")
    return make()


def open_migrated(url: str, changes_path: Path | None = None) -> Database:
    """Open the database at `url` and migrate it; the caller closes it."""
    db = open_database(url, Options(changes_path=changes_path))
    try:
        db.migrate()
    except BaseException:
        db.close()
        raise
    db.changes.trust()
    return db


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    """Each metadata dialect in turn."""
    name: str = request.param
    return name


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> str:
    """A fresh, empty database of `dialect`."""
    return fresh_url(request, tmp_path, dialect)


@pytest.fixture
def db(database_url: str, tmp_path: Path) -> Iterator[Database]:
    """The database of `database_url`, migrated, with trusted change stamps."""
    database = open_migrated(database_url, tmp_path / "changes")
    try:
        yield database
    finally:
        database.close()
