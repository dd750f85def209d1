"""Copy every record from one metadata database to another (`berth db copy`).

The tables are read from the source's own catalog, so a table added by a later migration is
copied without a change here; they are written parents first (following foreign keys), in one
transaction on the target, from one consistent snapshot of the source. Both databases must be
at this Berth's schema version; the target must hold no records. Identity sequences on a
PostgreSQL target are moved past the copied ids afterwards.

The catalog queries are the rare statements that differ per dialect.
"""

from __future__ import annotations

from collections.abc import Callable

from appliance.errors import ConfigError
from appliance.metadata.db import Database, MetadataError, Tx

# Process state, not records: never copied.
NOT_COPIED = frozenset({"schema_version", "leader_leases", "hosts"})
BATCH = 500


def tables(tx: Tx) -> list[str]:
    if tx.dialect == "sqlite":
        rows = tx.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    else:
        rows = tx.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
    return sorted(str(r[0]) for r in rows)


def columns(tx: Tx, table: str) -> list[str]:
    if tx.dialect == "sqlite":
        rows = tx.execute("SELECT name FROM pragma_table_info(:t) ORDER BY cid", {"t": table})
    else:
        rows = tx.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = :t ORDER BY ordinal_position",
            {"t": table},
        )
    return [str(r[0]) for r in rows]


def parents(tx: Tx, table: str) -> set[str]:
    """The tables `table` has foreign keys to."""
    if tx.dialect == "sqlite":
        rows = tx.execute('SELECT "table" FROM pragma_foreign_key_list(:t)', {"t": table})
    else:
        rows = tx.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid = to_regclass(:t)",
            {"t": table},
        )
    return {str(r[0]).strip('"') for r in rows} - {table}


def ordered(tx: Tx, names: list[str]) -> list[str]:
    """`names`, every table after the tables it refers to."""
    deps = {name: parents(tx, name) & set(names) for name in names}
    out: list[str] = []
    while deps:
        ready = sorted(n for n, d in deps.items() if not d - set(out))
        if not ready:
            raise MetadataError(f"foreign keys form a cycle among {sorted(deps)}")
        out += ready
        for n in ready:
            del deps[n]
    return out


def _quote(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise MetadataError(f"unexpected table or column name {name!r}")
    return f'"{name}"'


def _reset_identities(tx: Tx) -> None:
    if tx.dialect != "postgresql":
        return
    identities = tx.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES'"
    )
    for table, column in identities:
        top = tx.scalar(f"SELECT MAX({_quote(column)}) FROM {_quote(table)}")  # noqa: S608
        if top is not None:
            tx.execute(
                "SELECT setval(pg_get_serial_sequence(:t, :c), :v)",
                {"t": table, "c": column, "v": int(top)},
            )


def copy_database(
    source: Database,
    target: Database,
    progress: Callable[[str, int], None] | None = None,
    schema: int | None = None,
) -> dict[str, int]:
    """Copy every record of `source` into the empty `target`; return rows copied per table.

    Both are at this Berth's schema version, or both at `schema` when given (a snapshot of a
    database that is behind, taken before it is migrated). Raises ConfigError when the source
    is not at that version or the target is not empty (blocking).
    """
    state = source.schema_status()
    wanted = state.latest if schema is None else schema
    if state.too_new or state.current != wanted:
        raise ConfigError(
            f"the source database {source.where} is at schema version {state.current}, not "
            f"{wanted}: run `berth migrate` on it first"
        )
    target.migrate(up_to=schema)

    def read(src: Tx) -> dict[str, int]:
        names = [t for t in tables(src) if t not in NOT_COPIED]
        order = ordered(src, names)

        def write(dst: Tx) -> dict[str, int]:
            missing = set(names) - set(tables(dst))
            if missing:
                raise ConfigError(f"the target database lacks tables {sorted(missing)}")
            for name in order:
                if dst.one(f"SELECT 1 FROM {_quote(name)} LIMIT 1") is not None:  # noqa: S608
                    raise ConfigError(
                        f"the target database {target.where} is not empty (table {name}); "
                        "copy into a new, empty database"
                    )
            counts: dict[str, int] = {}
            for name in order:
                cols = columns(src, name)
                if set(cols) != set(columns(dst, name)):
                    raise ConfigError(f"table {name} differs between the two databases")
                listed = ", ".join(_quote(c) for c in cols)
                insert = (
                    f"INSERT INTO {_quote(name)} ({listed}) "  # noqa: S608
                    f"VALUES ({', '.join(f':c{i}' for i in range(len(cols)))})"
                )
                batch: list[dict[str, object]] = []
                count = 0
                for row in src.iterate(f"SELECT {listed} FROM {_quote(name)}"):  # noqa: S608
                    batch.append({f"c{i}": value for i, value in enumerate(row)})
                    if len(batch) >= BATCH:
                        dst.executemany(insert, batch)
                        count += len(batch)
                        batch = []
                if batch:
                    dst.executemany(insert, batch)
                    count += len(batch)
                counts[name] = count
                if progress is not None:
                    progress(name, count)
            _reset_identities(dst)
            return counts

        return target.run_sync_write(write)

    return source.run_sync_read(read)


def clear_records(db: Database) -> None:
    """Delete every row of every table but `schema_version`, children first (blocking)."""

    def fn(tx: Tx) -> None:
        names = [t for t in tables(tx) if t != "schema_version"]
        for name in reversed(ordered(tx, names)):
            tx.execute(f'DELETE FROM "{name}"')  # noqa: S608 (a name from the catalog)

    db.run_sync_write(fn)


def row_counts(tx: Tx) -> dict[str, int]:
    """Rows of every table a copy carries, by table."""
    return {
        name: int(tx.scalar(f'SELECT COUNT(*) FROM "{name}"'))  # noqa: S608
        for name in tables(tx)
        if name not in NOT_COPIED
    }
