"""`berth backup create|list|verify|prune` and `berth restore`.

Each prints a line or two for people, a progress bar when standard error is a terminal, and
with `--json` one JSON document on standard output for scripts. Failures are one line on
standard error and exit status 2 (1 for a backup that `verify` finds damaged).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import trio

from appliance.cli.common import (
    config_option,
    data_dir_option,
    fail,
    load_config,
    run_with_storage,
)
from appliance.config import Config
from appliance.errors import BerthError

if TYPE_CHECKING:
    from appliance.metadata.db import Database
    from appliance.storage.base import BlobStore

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
_target_option = click.option(
    "--from",
    "target_url",
    metavar="DIR|s3://BUCKET/PREFIX|azure://CONTAINER/PREFIX",
    help="The backup target (default: backup.target, else <data_dir>/backups).",
)


def _config(config_path: Path | None, data_dir: Path | None) -> Config:
    return load_config(config_path, data_dir=data_dir)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Bar:
    """A one-line progress bar on standard error, drawn only on a terminal."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.monotonic()
        self.drawn = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.drawn < 0.1 and done < total):
            return
        self.drawn = now
        share = done / total if total else 1.0
        width = 30
        filled = int(share * width)
        rate = done / max(now - self.start, 1e-6)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {share:4.0%} "
            f"{_human(done)}/{_human(total)} {_human(rate)}/s  "
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _emit(as_json: bool, data: Any, lines: Callable[[], list[str]]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=1, sort_keys=True))
    else:
        for line in lines():
            click.echo(line)


@click.group()
def backup() -> None:
    """Take, list, verify and prune backups."""


@backup.command("create")
@click.option(
    "--to",
    "target_url",
    metavar="DIR|s3://BUCKET/PREFIX|azure://CONTAINER/PREFIX",
    help="Where to write it (default: backup.target, else <data_dir>/backups).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Encrypt the secrets with the passphrase in this file (default: backup.passphrase).",
)
@config_option
@data_dir_option
@_json_option
def backup_create(
    target_url: str | None,
    passphrase_file: Path | None,
    config_path: Path | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Back up the metadata, every blob it references, the config and the keys.

    Safe while Berth serves: the snapshot is consistent, and blobs already in the target are
    not copied again.
    """
    from appliance.backup.create import create_backup  # noqa: PLC0415
    from appliance.backup.crypto import passphrase_from  # noqa: PLC0415
    from appliance.backup.target import default_target_url, open_target  # noqa: PLC0415

    bar = Bar("backup", not as_json)
    try:
        cfg = _config(config_path, data_dir)
        target = open_target(target_url or default_target_url(cfg), cfg)
        passphrase = passphrase_from(cfg, passphrase_file)

        async def go(db: Database, store: BlobStore) -> dict[str, Any]:
            _, summary = await create_backup(
                cfg, db, store, target, passphrase=passphrase, progress=bar
            )
            return summary

        try:
            summary = run_with_storage(cfg, go)
        finally:
            bar.close()
    except BerthError as e:
        fail(e.message)
    _emit(
        as_json,
        summary,
        lambda: [
            f"backup {summary['id']} written to {summary['target']}",
            f"{summary['blobs']} blobs ({summary['reused_blobs']} already there), "
            f"{_human(summary['size'])} in all, {_human(summary['copied'])} copied "
            f"in {summary['duration']:.1f} s"
            + ("" if summary["encrypted"] else "; secrets NOT encrypted (no passphrase)"),
        ],
    )


@backup.command("list")
@_target_option
@config_option
@data_dir_option
@_json_option
def backup_list(
    target_url: str | None, config_path: Path | None, data_dir: Path | None, as_json: bool
) -> None:
    """List the backups in a target, newest first (read from the target itself)."""
    from appliance.backup.target import default_target_url, open_target  # noqa: PLC0415
    from appliance.backup.verify import list_backups  # noqa: PLC0415

    try:
        cfg = _config(config_path, data_dir)
        target = open_target(target_url or default_target_url(cfg), cfg)
        found = list_backups(target)
    except BerthError as e:
        fail(e.message)

    def lines() -> list[str]:
        if not found:
            return [f"no backups in {target.url}"]
        out = []
        for b in found:
            if b["status"] != "complete":
                out.append(f"{b['id']}\t{b['status']}\t{b.get('error', '')}".rstrip())
                continue
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(b["created_at"]))
            out.append(
                f"{b['id']}\t{when} UTC\t{b['blobs']} blobs\t{_human(b['size'])}"
                + ("\tencrypted" if b["encrypted"] else "")
            )
        return out

    _emit(as_json, {"target": target.url, "backups": found}, lines)


@backup.command("verify")
@click.argument("backup_id")
@_target_option
@config_option
@data_dir_option
@_json_option
def backup_verify(
    backup_id: str,
    target_url: str | None,
    config_path: Path | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Re-hash every file of a backup; exit 1 when anything is missing or damaged."""
    from appliance.backup import records  # noqa: PLC0415
    from appliance.backup.target import default_target_url, open_target  # noqa: PLC0415
    from appliance.backup.verify import verify_backup  # noqa: PLC0415

    bar = Bar("verify", not as_json)
    try:
        cfg = _config(config_path, data_dir)
        target = open_target(target_url or default_target_url(cfg), cfg)
        with tempfile.TemporaryDirectory(prefix="berth-verify-") as work:
            try:
                result = trio.run(verify_backup, target, backup_id, Path(work), bar)
            finally:
                bar.close()
        _note_in_database(
            cfg,
            lambda tx, now: (
                records.verified(
                    tx,
                    backup_id,
                    now=now,
                    ok=result.ok,
                    error="; ".join(result.problems[:5]) or None,
                    actor="cli",
                    where=target.url,
                )
                if records.get(tx, backup_id) is not None
                else None
            ),
        )
    except BerthError as e:
        fail(e.message)
    _emit(
        as_json,
        result.as_json(),
        lambda: [
            f"backup {backup_id}: "
            + (
                f"OK, {result.files} files, {_human(result.bytes)} re-hashed"
                if result.ok
                else f"DAMAGED ({len(result.problems)} problems)"
            ),
            *[f"  {p}" for p in result.problems],
        ],
    )
    if not result.ok:
        sys.exit(1)


def _note_in_database(cfg: Config, fn: Callable[[Any, float], object]) -> None:
    """Record in this installation's database when it is there (it may not be, after a
    disaster: a target is readable on its own)."""
    from appliance.metadata.db import open_metadata  # noqa: PLC0415

    if (
        cfg.metadata_url.startswith("sqlite:///")
        and not Path(cfg.metadata_url.removeprefix("sqlite://")).exists()
    ):
        return
    try:
        db = open_metadata(cfg, migrate=False)
    except BerthError:
        return
    try:
        now = time.time()
        db.run_sync_write(lambda tx: fn(tx, now))
    finally:
        db.close()


@backup.command("prune")
@_target_option
@click.option("--keep-last", type=click.IntRange(0), help="backup.keep_last")
@click.option("--keep-daily", type=click.IntRange(0), help="backup.keep_daily")
@click.option("--keep-weekly", type=click.IntRange(0), help="backup.keep_weekly")
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
@config_option
@data_dir_option
@_json_option
def backup_prune(  # noqa: PLR0917 (one parameter per option)
    target_url: str | None,
    keep_last: int | None,
    keep_daily: int | None,
    keep_weekly: int | None,
    dry_run: bool,
    config_path: Path | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Remove backups the retention does not keep, and blobs no kept backup needs."""
    from appliance.backup import records  # noqa: PLC0415
    from appliance.backup.prune import Retention, prune  # noqa: PLC0415
    from appliance.backup.target import default_target_url, open_target  # noqa: PLC0415

    try:
        cfg = _config(config_path, data_dir)
        target = open_target(target_url or default_target_url(cfg), cfg)
        policy = Retention(
            cfg["backup.keep_last"] if keep_last is None else keep_last,
            cfg["backup.keep_daily"] if keep_daily is None else keep_daily,
            cfg["backup.keep_weekly"] if keep_weekly is None else keep_weekly,
        )
        result = prune(target, policy, dry_run=dry_run)
        gone = result.removed + result.incomplete_removed
        if gone and not dry_run:
            _note_in_database(
                cfg,
                lambda tx, now: records.pruned(tx, gone, now=now, actor="cli", where=target.url),
            )
    except BerthError as e:
        fail(e.message)
    verb = "would remove" if dry_run else "removed"
    _emit(
        as_json,
        result.as_json(),
        lambda: [
            f"kept {len(result.kept)} backups; {verb} {len(result.removed)}"
            + (
                f" and {len(result.incomplete_removed)} incomplete"
                if result.incomplete_removed
                else ""
            ),
            *[f"  {verb}: {i}" for i in result.removed + result.incomplete_removed],
            f"{verb} {result.blobs_removed} unneeded blobs ({_human(result.bytes_freed)})"
            if result.sweep_skipped is None
            else f"blobs left alone: {result.sweep_skipped}",
        ],
    )


@click.command()
@click.argument("backup_id")
@_target_option
@click.option("--force", is_flag=True, help="Replace a destination that is not empty.")
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The passphrase of an encrypted backup (default: backup.passphrase).",
)
@config_option
@data_dir_option
@_json_option
def restore(  # noqa: PLR0917 (one parameter per option)
    backup_id: str,
    target_url: str | None,
    force: bool,
    passphrase_file: Path | None,
    config_path: Path | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Restore a backup into the database, blob store and data directory of the config.

    The destination may use other backends than the source (SQLite to PostgreSQL, filesystem
    to S3). Stop Berth first. The backup is verified before anything is written.
    """
    from appliance.backup.crypto import passphrase_from  # noqa: PLC0415
    from appliance.backup.restore import restore_backup  # noqa: PLC0415
    from appliance.backup.target import default_target_url, open_target  # noqa: PLC0415

    def report(text: str) -> None:
        if not as_json:
            click.echo(text, err=True)

    try:
        cfg = _config(config_path, data_dir)
        target = open_target(target_url or default_target_url(cfg), cfg)
        passphrase = passphrase_from(cfg, passphrase_file)

        async def go() -> dict[str, Any]:
            return await restore_backup(
                cfg, target, backup_id, force=force, passphrase=passphrase, report=report
            )

        result = trio.run(go)
    except BerthError as e:
        fail(e.message)
    _emit(
        as_json,
        result,
        lambda: [
            f"restored backup {backup_id} into {result['database']} and {result['storage']}",
            "start Berth with this config; the backed-up config file, if any, is in "
            f"{cfg.data_dir / 'restored-berth.toml'}",
        ],
    )
