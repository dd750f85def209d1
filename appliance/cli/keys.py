"""`berth keys rotate`: the keys that sign registry tokens."""

from __future__ import annotations

import time
from pathlib import Path

import click

from appliance.cli.common import config_option, data_dir_option, fail, open_database
from appliance.errors import BerthError


@click.group()
def keys() -> None:
    """Manage the keys that sign registry tokens."""


@keys.command("rotate")
@config_option
@data_dir_option
def keys_rotate(config_path: Path | None, data_dir: Path | None) -> None:
    """Make a new signing key (from any host: the keys live in the database); older keys keep
    verifying until their tokens expire."""
    from appliance.auth.secrets import ServerSecret  # noqa: PLC0415
    from appliance.auth.tokens import PUBLISH_DELAY, KeyRing, key_directory  # noqa: PLC0415

    try:
        cfg, db = open_database(config_path, data_dir)
        try:
            secret = ServerSecret.load(cfg.secret_path, create=not cfg["server.secret_file"])
            ring = KeyRing(db, secret, time.time, overlap=cfg["auth.token_ttl"] + 60)
            ring.import_directory(key_directory(cfg.data_dir))
            key = ring.rotate_sync(actor="cli")
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)
    click.echo(
        f"new signing key {key.kid} (signs in {PUBLISH_DELAY:g} s, once every host has it); "
        f"{len(ring.keys)} key(s) in the database"
    )
