"""`berth migrate` and `berth db copy`: the metadata database from the command line."""

from __future__ import annotations

import time
from pathlib import Path

import click

from appliance.cli.common import config_option, data_dir_option, fail, load_config
from appliance.errors import BerthError
from appliance.metadata.db import (
    Database,
    Options,
    SchemaStatus,
    dialect_of,
    migrations,
    open_database,
    redact,
    too_new_error,
)


def _url_and_options(config_path: Path | None, data_dir: Path | None) -> tuple[str, Options]:
    config = load_config(config_path, data_dir=data_dir)
    options = Options(
        readers=1,
        pool_size=2,
        pool_timeout=config["metadata.pool_timeout"],
        statement_timeout=3600.0,  # a migration may take a while
    )
    return config.metadata_url, options


@click.command()
@config_option
@data_dir_option
@click.option(
    "--status",
    is_flag=True,
    help="List applied migrations (when, by which Berth) and pending ones; change nothing.",
)
def migrate(config_path: Path | None, data_dir: Path | None, status: bool) -> None:
    """Apply pending metadata schema migrations (or list them with --status)."""
    from appliance.version import version  # noqa: PLC0415

    db: Database | None = None
    try:
        url, options = _url_and_options(config_path, data_dir)
        db = open_database(url, options)
        state = db.schema_status()
        click.echo(f"database: {redact(url)}")
        click.echo(
            f"schema version: {state.current} (this Berth {version()} knows up to {state.latest})"
        )
        if status:
            for line in status_lines(state, dialect_of(url)):
                click.echo(line)
        if state.too_new:
            raise too_new_error(db.where, state)
        if status:
            return
        applied = db.migrate()
        for m in applied:
            click.echo(f"applied: {m.version:04d} {m.name}")
        click.echo("up to date" if not applied else f"now at schema version {applied[-1].version}")
    except BerthError as e:
        fail(e.message)
    finally:
        if db is not None:
            db.close()


def status_lines(state: SchemaStatus, dialect: str) -> list[str]:
    """`berth migrate --status`: one line per applied migration, then one per pending one."""
    known = {m.version: m for m in migrations(dialect)}
    lines = []
    for m in state.applied:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.applied_at))
        by = f"Berth {m.berth_version}" if m.berth_version else "a Berth that did not record it"
        kind = known[m.version].kind if m.version in known else "unknown to this Berth"
        lines.append(f"applied: {m.version:04d} {m.name} ({kind}) at {when} UTC by {by}")
    for p in state.pending:
        lines.append(f"pending: {p.version:04d} {p.name} ({p.kind})")
    if not state.pending and not state.too_new:
        lines.append("up to date")
    return lines


@click.group()
def db() -> None:
    """Work on the metadata database."""


@db.command("copy")
@click.option("--from", "source", required=True, help="Source database URL (sqlite:///...).")
@click.option("--to", "target", required=True, help="Target database URL (postgresql://...).")
def db_copy(source: str, target: str) -> None:
    """Copy every metadata record from one database to another, empty one.

    The source must be at this Berth's schema version (`berth migrate` it first); the target is
    migrated, must hold no records, and receives everything in one transaction. Stop Berth
    first: records written to the source during the copy are not carried over. Blob bytes do
    not move: keep the same storage settings.
    """
    from appliance.metadata.copy import copy_database  # noqa: PLC0415

    src: Database | None = None
    dst: Database | None = None
    options = Options(readers=1, pool_size=2, statement_timeout=3600.0)
    try:
        src = open_database(source, options)
        dst = open_database(target, options)
        counts = copy_database(src, dst)
        for table, count in counts.items():
            click.echo(f"{table}: {count} rows")
        click.echo(f"copied {redact(source)} to {redact(target)}")
    except BerthError as e:
        fail(e.message)
    finally:
        for handle in (src, dst):
            if handle is not None:
                handle.close()
