"""Schema versions and migrations on both dialects: the same versions, tables, columns, keys,
indexes and foreign keys; migrating twice at once is safe; a newer schema is refused; SQL
parameters translate."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
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
from tests.support.dialects import fresh_url, open_migrated


def test_every_dialect_has_the_same_migrations() -> None:
    listed = {d: [(m.version, m.name) for m in migrations(d)] for d in DIALECTS}
    assert listed["sqlite"] == listed["postgresql"]
    versions = [v for v, _ in listed["sqlite"]]
    assert versions == list(range(1, len(versions) + 1)), "versions must be 1, 2, 3, ..."


# A difference between the dialects' schemas that is intended, as (what, key) -> why. Each
# entry must still be a difference (an entry that no longer applies fails the test too).
INTENDED: dict[tuple[str, str], str] = {}

_ON_DELETE = {
    "a": "NO ACTION",
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}


@dataclass(frozen=True)
class Index:
    table: str
    columns: tuple[str, ...]
    unique: bool
    predicate: str | None  # a partial index's WHERE, spaces and outer brackets normalised


@dataclass(frozen=True)
class ForeignKey:
    table: str
    columns: tuple[str, ...]
    references: str
    referenced: tuple[str, ...]
    on_delete: str


@dataclass
class Schema:
    """What a migrated database is made of, as far as both dialects can say it alike."""

    columns: dict[str, list[str]]  # table -> its columns, sorted
    primary_keys: dict[str, tuple[str, ...]]  # table -> its primary key's columns, in order
    unique: set[tuple[str, tuple[str, ...]]]  # UNIQUE constraints: (table, columns)
    indexes: dict[str, Index]  # indexes made by CREATE INDEX, by name
    foreign_keys: set[ForeignKey]


def _predicate(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    return text.lower()


def _sqlite_schema(tx: Tx, names: list[str]) -> Schema:
    schema = Schema({}, {}, set(), {}, set())
    for table in names:
        info = tx.execute("SELECT name, pk FROM pragma_table_info(:t)", {"t": table})
        keys = sorted((int(pk), str(name)) for name, pk in info if pk)
        if keys:
            schema.primary_keys[table] = tuple(name for _, name in keys)
        for name, unique, origin in tx.execute(
            'SELECT name, "unique", origin FROM pragma_index_list(:t)', {"t": table}
        ):
            cols = tuple(
                str(r[0])
                for r in tx.execute(
                    "SELECT name FROM pragma_index_info(:i) ORDER BY seqno", {"i": name}
                )
            )
            if origin == "u":
                schema.unique.add((table, cols))
            elif origin == "c":
                sql = str(tx.scalar("SELECT sql FROM sqlite_master WHERE name = :i", {"i": name}))
                where = re.split(r"\bWHERE\b", sql, maxsplit=1, flags=re.IGNORECASE)
                predicate = _predicate(where[1]) if len(where) == 2 else None
                schema.indexes[str(name)] = Index(table, cols, bool(unique), predicate)
        found: dict[int, list[tuple[str, str, str | None, str]]] = {}
        for fk_id, ref, source, target, on_delete in tx.execute(
            'SELECT id, "table", "from", "to", on_delete FROM pragma_foreign_key_list(:t) '
            "ORDER BY id, seq",
            {"t": table},
        ):
            found.setdefault(int(fk_id), []).append((str(ref), str(source), target, on_delete))
        for parts in found.values():
            ref = parts[0][0]
            referenced = tuple(str(p[2]) for p in parts)
            if parts[0][2] is None:  # REFERENCES t: its primary key
                pk = tx.execute("SELECT name, pk FROM pragma_table_info(:t)", {"t": ref})
                referenced = tuple(str(n) for k, n in sorted((int(k), n) for n, k in pk if k))
            schema.foreign_keys.add(
                ForeignKey(table, tuple(p[1] for p in parts), ref, referenced, str(parts[0][3]))
            )
    return schema


def _postgres_schema(tx: Tx) -> Schema:
    schema = Schema({}, {}, set(), {}, set())
    for table, kind, cols in tx.execute(
        "SELECT t.relname, c.contype, ARRAY(SELECT a.attname FROM unnest(c.conkey) "
        "WITH ORDINALITY k(num, n) JOIN pg_attribute a ON a.attrelid = c.conrelid "
        "AND a.attnum = k.num ORDER BY k.n) "
        "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "WHERE c.contype IN ('p', 'u') AND t.relnamespace = current_schema()::regnamespace"
    ):
        if kind == "p":
            schema.primary_keys[str(table)] = tuple(cols)
        else:
            schema.unique.add((str(table), tuple(cols)))
    for name, table, unique, predicate, cols in tx.execute(
        "SELECT c.relname, t.relname, i.indisunique, pg_get_expr(i.indpred, i.indrelid), "
        "ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true) "
        "FROM generate_series(1, i.indnatts) k) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_class t ON t.oid = i.indrelid "
        "WHERE t.relnamespace = current_schema()::regnamespace AND NOT EXISTS ("
        "SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid "
        "AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x'))"
    ):
        schema.indexes[str(name)] = Index(
            str(table), tuple(cols), bool(unique), _predicate(predicate)
        )
    for table, ref, on_delete, cols, referenced in tx.execute(
        "SELECT t.relname, r.relname, c.confdeltype, "
        "ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(num, n) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num ORDER BY k.n), "
        "ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(num, n) "
        "JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num ORDER BY k.n) "
        "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "JOIN pg_class r ON r.oid = c.confrelid "
        "WHERE c.contype = 'f' AND t.relnamespace = current_schema()::regnamespace"
    ):
        schema.foreign_keys.add(
            ForeignKey(str(table), tuple(cols), str(ref), tuple(referenced), _ON_DELETE[on_delete])
        )
    return schema


def schema_of(db: Database) -> Schema:
    def fn(tx: Tx) -> Schema:
        names = tables(tx)
        schema = _sqlite_schema(tx, names) if tx.dialect == "sqlite" else _postgres_schema(tx)
        schema.columns = {t: sorted(columns(tx, t)) for t in names}
        return schema

    return db.run_sync_read(fn)


def differences(lite: Schema, pg: Schema) -> dict[tuple[str, str], tuple[object, object]]:
    """(what, key) -> (SQLite's, PostgreSQL's) for every part that differs."""
    out: dict[tuple[str, str], tuple[object, object]] = {}

    def compare(what: str, a: dict[str, object], b: dict[str, object]) -> None:
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                out[(what, key)] = (a.get(key), b.get(key))

    compare("columns", dict(lite.columns), dict(pg.columns))
    compare("primary key", dict(lite.primary_keys), dict(pg.primary_keys))
    compare(
        "unique", {f"{t}{c}": True for t, c in lite.unique}, {f"{t}{c}": True for t, c in pg.unique}
    )
    compare("index", dict(lite.indexes), dict(pg.indexes))
    compare(
        "foreign key",
        {f"{k.table}{k.columns}": k for k in lite.foreign_keys},
        {f"{k.table}{k.columns}": k for k in pg.foreign_keys},
    )
    return out


def test_both_dialects_build_the_same_schema(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Tables, columns, primary keys, unique constraints, indexes (table, columns, uniqueness,
    a partial index's predicate) and foreign keys (columns, what they reference, ON DELETE)."""
    lite = open_migrated(fresh_url(request, tmp_path, "sqlite"))
    try:
        pg = open_migrated(fresh_url(request, tmp_path, "postgresql"))
        try:
            lite_schema, pg_schema = schema_of(lite), schema_of(pg)
        finally:
            pg.close()
    finally:
        lite.close()
    assert lite_schema.indexes, "the indexes were read"
    assert lite_schema.foreign_keys, "the foreign keys were read"
    assert any(i.predicate for i in lite_schema.indexes.values()), "and partial indexes' WHERE"
    found = differences(lite_schema, pg_schema)
    assert {k: v for k, v in found.items() if k not in INTENDED} == {}
    assert INTENDED.keys() - found.keys() == set(), "listed, but no longer different: remove"


def test_the_comparison_sees_a_changed_index_or_foreign_key(tmp_path: Path) -> None:
    """What the test above would catch: two SQLite schemas, one with an index made whole
    instead of partial, one more index, and a foreign key that no longer cascades."""
    dbs = [open_migrated(f"sqlite:///{tmp_path / f'{n}.db'}") for n in ("a", "b")]
    try:
        dbs[1].run_sync_write(
            lambda tx: [
                tx.execute("DROP INDEX manifests_subject"),
                tx.execute(
                    "CREATE INDEX manifests_subject ON manifests (repository_id, subject_digest)"
                ),
                tx.execute("CREATE UNIQUE INDEX tags_name ON tags (name)"),
            ]
        )
        before, after = schema_of(dbs[0]), schema_of(dbs[1])
    finally:
        for db in dbs:
            db.close()
    fk = next(k for k in after.foreign_keys if k.on_delete == "CASCADE")
    after.foreign_keys = (after.foreign_keys - {fk}) | {replace(fk, on_delete="NO ACTION")}
    found = differences(before, after)
    subject = found[("index", "manifests_subject")]
    assert [getattr(i, "predicate", "?") for i in subject] == ["subject_digest is not null", None]
    assert found[("index", "tags_name")] == (None, Index("tags", ("name",), True, None))
    assert found[("foreign key", f"{fk.table}{fk.columns}")] == (
        fk,
        replace(fk, on_delete="NO ACTION"),
    )
    assert len(found) == 3


def test_two_processes_migrating_at_once(dialect: str, database_url: str) -> None:
    dbs = [open_database(database_url) for _ in range(3)]
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


def test_a_newer_schema_is_refused(db: Database) -> None:
    db.run_sync_write(
        lambda tx: tx.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (999, 'future', 0)"
        )
    )
    with pytest.raises(SchemaTooNew, match="schema version 999, newer than this Berth"):
        db.prepare(auto_migrate=True)
    with pytest.raises(SchemaTooNew):
        db.migrate()


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
