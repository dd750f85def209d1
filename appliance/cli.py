"""The `berth` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
import trio

from appliance import __version__
from appliance import config as settings
from appliance.errors import BerthError

DEFAULT_CONFIG_FILES = (Path("berth.toml"), Path("/etc/berth/berth.toml"))


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> settings.Config:
    """The settings from `path` (or the first default file that exists) and the environment."""
    if path is None:
        path = next((p for p in DEFAULT_CONFIG_FILES if p.exists()), None)
    return settings.load(path, overrides=overrides)


def fail(message: str) -> None:
    click.echo(f"berth: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="berth")
def main() -> None:
    """Berth: a self-hosted container registry appliance."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML config file (default: ./berth.toml, then /etc/berth/berth.toml, if present).",
)
@click.option("--listen", help="HOST:PORT to listen on (server.listen).")
@click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), help="server.data_dir"
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    default=None,
    help="Allow a non-loopback address although sign-in does not exist yet.",
)
def serve(
    config_path: Path | None,
    listen: str | None,
    data_dir: Path | None,
    insecure_no_auth: bool | None,
) -> None:
    """Run the registry until SIGTERM or SIGINT."""
    from appliance.server import serve as run_server  # noqa: PLC0415 (keeps --help fast)

    try:
        config = load_config(
            config_path,
            {
                "server.listen": listen,
                "server.data_dir": str(data_dir) if data_dir is not None else None,
                "server.insecure_no_auth": insecure_no_auth,
            },
        )
        setup_logging(config["log.level"])
        logging.getLogger("berth").info(
            "Berth %s starting: data in %s (config: %s)",
            __version__,
            config.data_dir,
            config.source,
        )
        trio.run(run_server, config)
    except BerthError as e:
        fail(e.message)


@main.group()
def config() -> None:
    """Inspect configuration."""


@config.command("show")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False))
def config_show(config_path: Path | None) -> None:
    """Print the effective settings as TOML."""
    try:
        cfg = load_config(config_path)
    except BerthError as e:
        fail(e.message)
        return
    section = None
    for setting in settings.SETTINGS:
        head, _, key = setting.key.rpartition(".")
        if head != section:
            click.echo(f"\n[{head}]")
            section = head
        value = cfg[setting.key]
        text = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        click.echo(f"# {setting.help} (env {setting.env})\n{key} = {text}")


@config.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def config_check(path: Path) -> None:
    """Validate a config file without starting."""
    try:
        settings.load(path, environ={})
    except BerthError as e:
        fail(e.message)
    click.echo(f"{path}: OK")
