"""`berth config show|check`: the effective settings, and a config file's validation."""

from __future__ import annotations

from pathlib import Path

import click

from appliance import config as settings
from appliance.cli.common import config_option, fail, load_config
from appliance.errors import BerthError


@click.group()
def config() -> None:
    """Inspect configuration."""


@config.command("show")
@config_option
def config_show(config_path: Path | None) -> None:
    """Print the effective settings as TOML."""
    try:
        cfg = load_config(config_path)
    except BerthError as e:
        fail(e.message)
    section = None
    for full_key, setting in cfg.rows():
        head, _, key = full_key.rpartition(".")
        if head != section:
            click.echo(f"\n[{head}]")
            section = head
        value = cfg[full_key]
        if setting.secret and value:
            value = "********"
        text = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        click.echo(f"# {setting.help} (env {setting.env})\n{key} = {text}")


@config.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def config_check(path: Path) -> None:
    """Validate a config file without starting."""
    from appliance.omnibus.checks import check_config  # noqa: PLC0415

    try:
        check_config(settings.load(path, environ={}))
    except BerthError as e:
        fail(e.message)
    click.echo(f"{path}: OK")
