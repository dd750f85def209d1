"""The database half of an in-place upgrade: back up, then apply the pending migrations.

`berth ctl reconfigure` (which the packages' post-install step runs) calls `upgrade_database`:

1. a database newer than this Berth is refused with one line naming its schema and the Berth
   that migrated it (a downgrade);
2. when migrations are pending on a database that holds records, a backup is taken first with
   the backup code (`backup/create.py`, into `backup.target`) unless `backup.before_upgrade` is
   false or `--no-backup` is given. An older Berth may still be serving meanwhile: the backup is
   a consistent snapshot and holds the collector where the old schema has `gc_holds`;
3. the migrations are applied (each records the version of the Berth that applied it), and the
   backup is then recorded in the now current `backups` table, audited, with trigger `upgrade`.

A failed backup stops the upgrade before anything is migrated.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import Config
from appliance.metadata.db import Database, Migration, Options, open_database, too_new_error

ACTOR = "berth ctl reconfigure"


@dataclass(frozen=True)
class Upgrade:
    """What `upgrade_database` did."""

    before: int  # schema version found
    after: int  # schema version left
    applied: tuple[Migration, ...]
    backup: dict[str, Any] | None  # the backup's summary, when one was taken


def upgrade_database(
    config: Config, *, backup: bool, echo: Callable[[str], None], owner: str | None = None
) -> Upgrade:
    """Refuse a newer schema, back up when migrations are pending, migrate (blocking).

    Raises SchemaTooNew, BackupError, ConfigError or Unavailable; nothing is migrated when the
    backup fails. `owner` is the service user that should own what the backup wrote locally.
    """
    db = open_database(
        config.metadata_url, Options(readers=1, pool_size=2, statement_timeout=3600.0)
    )
    try:
        status = db.schema_status()
        if status.too_new:
            raise too_new_error(db.where, status)
        summary: dict[str, Any] | None = None
        if status.pending and status.current > 0:
            names = ", ".join(f"{m.version:04d} {m.name}" for m in status.pending)
            echo(f"upgrading schema {status.current} -> {status.latest} ({names})")
            if backup:
                summary = take_backup(config, db)
                echo(
                    f"pre-upgrade backup {summary['id']} written to {summary['target']} "
                    f"({summary['blobs']} blobs, {summary['copied']} bytes copied)"
                )
                if owner is not None:
                    _own_tree(config, summary["target"], owner)
            else:
                echo("pre-upgrade backup skipped (--no-backup or backup.before_upgrade = false)")
        applied = db.migrate()
        if summary is not None:
            record_backup(db, summary)
        return Upgrade(status.current, db.schema_status().current, tuple(applied), summary)
    finally:
        db.close()


def take_backup(config: Config, db: Database) -> dict[str, Any]:
    """A whole backup (metadata, blobs, secrets) into `backup.target`; its summary."""
    import trio  # noqa: PLC0415

    from appliance.backup.create import create_backup  # noqa: PLC0415
    from appliance.backup.crypto import passphrase_from  # noqa: PLC0415
    from appliance.backup.target import default_target_url, open_target  # noqa: PLC0415
    from appliance.storage import open_store  # noqa: PLC0415

    target = open_target(default_target_url(config), config)
    passphrase = passphrase_from(config)
    store = open_store(config)

    async def go() -> dict[str, Any]:
        await store.check()
        _, summary = await create_backup(
            config, db, store, target, passphrase=passphrase, trigger="upgrade", actor=ACTOR
        )
        return summary

    return trio.run(go)


def record_backup(db: Database, summary: dict[str, Any]) -> None:
    """Record the pre-upgrade backup in the migrated database (it could not be before)."""
    from appliance.backup import records  # noqa: PLC0415

    def fn(tx: Any) -> None:
        records.start(
            tx,
            summary["id"],
            target=summary["target"],
            trigger="upgrade",
            actor=ACTOR,
            now=summary["created_at"],
        )
        records.succeed(tx, summary["id"], summary["finished_at"], summary, ACTOR)

    db.run_sync_write(fn)


def _own_tree(config: Config, target: str, owner: str) -> None:
    """A local backup target under the data directory goes to the service user, who prunes
    and writes it later (the upgrade runs as root)."""
    path = Path(target)
    if "://" in target or os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(owner)
        path.resolve().relative_to(config.data_dir.resolve())
    except (KeyError, ValueError):
        return
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, user.pw_uid, user.pw_gid, follow_symlinks=False)


def describe(upgrade: Upgrade) -> list[str]:
    """Lines for people: what was applied."""
    lines = [f"applied migration {m.version:04d} {m.name}" for m in upgrade.applied]
    if upgrade.applied and upgrade.before:
        lines.append(f"upgraded the schema from {upgrade.before} to {upgrade.after}")
    return lines
