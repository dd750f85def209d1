"""`berth keys rotate`: the keys that sign registry tokens."""

from __future__ import annotations

import time
from pathlib import Path

import click

from appliance.cli.common import config_option, data_dir_option, fail, load_config
from appliance.errors import BerthError


@click.group()
def keys() -> None:
    """Manage the keys that sign registry tokens."""


@keys.command("rotate")
@config_option
@data_dir_option
def keys_rotate(config_path: Path | None, data_dir: Path | None) -> None:
    """Make a new signing key; older keys keep verifying until their tokens expire."""
    from appliance.auth.tokens import KeyRing  # noqa: PLC0415

    try:
        cfg = load_config(config_path, data_dir=data_dir)
    except BerthError as e:
        fail(e.message)
    ring = KeyRing(cfg.data_dir / "keys", time.time, overlap=cfg["auth.token_ttl"] + 60)
    key = ring.rotate()
    click.echo(f"new signing key {key.kid}; {len(ring.keys)} key(s) on disk")
