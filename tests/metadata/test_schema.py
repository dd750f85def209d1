"""Schema versions and migrations on both dialects: the same tables, columns and versions;
migrating twice at once is safe; a newer schema is refused; SQL parameters translate."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.metadata.copy import columns, tables
from appliance.metadata.db import (
    DIALECTS,
    Database,
    SchemaBehind,
    SchemaTooNew,
    Tx,
    migrations,
    open_database,
)
from appliance.metadata.postgres import to_pyformat


def test_every_dialect_has_the_same_migrations() -> None:
    listed = {d: [(m.version, m.name) for m in migrations(d)] for d in DIALECTS}
    assert listed["sqlite"] == listed["postgresql"]
    versions = [v for v, _ in listed["sqlite"]]
    assert versions == list(range(1, len(versions) + 1)), "versions must be 1, 2, 3, ..."


def _layout(db: Database) -> dict[str, list[str]]:
    def fn(tx: Tx) -> dict[str, list[str]]:
        return {t: sorted(columns(tx, t)) for t in tables(tx)}

    return db.run_sync_read(fn)


def test_both_dialects_build_the_same_tables_and_columns(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    lite = open_database(f"sqlite:///{tmp_path / 'm.db'}")
    pg = open_database(postgres_database())
    try:
        lite.migrate()
        pg.migrate()
        assert _layout(lite) == _layout(pg)
    finally:
        lite.close()
        pg.close()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_two_processes_migrating_at_once(
    dialect: str, tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if dialect == "sqlite" else postgres_database()
    dbs = [open_database(url) for _ in range(3)]
    errors: list[BaseException] = []
    applied: list[int] = []

    def run(db: Database) -> None:
        try:
            applied.extend(m.version for m in db.migrate())
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(db,)) for db in dbs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sorted(applied) == [m.version for m in migrations(dialect)]  # each once
        status = dbs[0].schema_status()
        assert (status.current, status.pending) == (status.latest, ())
    finally:
        for db in dbs:
            db.close()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_newer_schema_is_refused(
    dialect: str, tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if dialect == "sqlite" else postgres_database()
    db = open_database(url)
    try:
        db.migrate()
        db.run_sync_write(
            lambda tx: tx.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (999, 'future', 0)"
            )
        )
        with pytest.raises(SchemaTooNew, match="schema version 999, newer than this Berth"):
            db.prepare(auto_migrate=True)
        with pytest.raises(SchemaTooNew):
            db.migrate()
    finally:
        db.close()


def test_pending_migrations_without_auto_migrate_name_the_command(
    postgres_database: Callable[[], str],
) -> None:
    db = open_database(postgres_database())
    try:
        with pytest.raises(SchemaBehind, match="run `berth migrate`"):
            db.prepare(auto_migrate=False)
        assert db.prepare(auto_migrate=True).pending == ()
    finally:
        db.close()


def test_unknown_urls_are_refused() -> None:
    with pytest.raises(ConfigError, match="unsupported metadata URL 'mysql://u:\\*\\*\\*@h/db'"):
        open_database("mysql://u:secret@h/db")


@pytest.mark.parametrize(
    ("portable", "pyformat"),
    [
        (
            "SELECT * FROM t WHERE a = :a AND b > :b_2",
            "SELECT * FROM t WHERE a = %(a)s AND b > %(b_2)s",
        ),
        (
            "SELECT x::text, ':not' FROM t WHERE y = :y",
            "SELECT x::text, ':not' FROM t WHERE y = %(y)s",
        ),
        (
            "SELECT 'it''s :x', \"col:y\" WHERE z LIKE 'a%'",
            "SELECT 'it''s :x', \"col:y\" WHERE z LIKE 'a%%'",
        ),
        ("SELECT 5 % 2, :p", "SELECT 5 %% 2, %(p)s"),
    ],
)
def test_parameters_translate_to_psycopg(portable: str, pyformat: str) -> None:
    assert to_pyformat(portable) == pyformat
