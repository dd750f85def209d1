"""What every `berth` command shares: the one way to fail, to load the configuration, to open
the database (or the database and blob store, or the whole set of services), and the options
that name them (`--config`, `--data-dir`).

Kept light on purpose: it imports click and the settings table only, so that `berth serve`
and a command's `--help` do not pay for the parts a command opens when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from appliance import config as settings
from appliance.errors import BerthError

if TYPE_CHECKING:  # opened when a command runs, not when the command line starts
    from appliance.metadata.db import Database, Tx
    from appliance.services import Services
    from appliance.storage.base import BlobStore

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG_FILES = (Path("berth.toml"), Path("/etc/berth/berth.toml"))


def fail(message: str) -> NoReturn:
    """Say what went wrong in one line on standard error and exit with status 2."""
    click.echo(f"berth: {message}", err=True)
    sys.exit(2)


def load_config(
    path: Path | None,
    overrides: dict[str, Any] | None = None,
    *,
    data_dir: Path | None = None,
    search: bool = True,
) -> settings.Config:
    """The settings from `path` and the environment. Without a path, the first default file
    that exists (./berth.toml, then /etc/berth/berth.toml) unless `search` is false. `data_dir`
    (`--data-dir`) overrides server.data_dir."""
    if path is None and search:
        path = next((p for p in DEFAULT_CONFIG_FILES if p.exists()), None)
    if data_dir is not None:
        overrides = {**(overrides or {}), "server.data_dir": str(data_dir)}
    return settings.load(path, overrides=overrides)


def config_option_with(**extra: Any) -> Callable[[F], F]:
    """`--config FILE` (the command gets it as `config_path`), with `extra` click settings
    (help, default)."""
    return click.option(
        "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), **extra
    )


config_option = config_option_with()
data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), help="server.data_dir"
)


def open_database(
    config_path: Path | None, data_dir: Path | None
) -> tuple[settings.Config, Database]:
    """The configuration and its metadata database (migrated as metadata.auto_migrate says).
    Raises BerthError; the caller closes the database."""
    from appliance.metadata.db import open_metadata  # noqa: PLC0415

    config = load_config(config_path, data_dir=data_dir)
    return config, open_metadata(config)


def read(config_path: Path | None, data_dir: Path | None, fn: Callable[[Tx], T]) -> T:
    """Run `fn(tx)` in a read transaction of the configured database; fail on BerthError."""
    try:
        _, db = open_database(config_path, data_dir)
        try:
            return db.run_sync_read(fn)
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)


def write(
    config_path: Path | None, data_dir: Path | None, fn: Callable[[Tx], object], done: str
) -> None:
    """Run `fn(tx)` in a write transaction of the configured database, then say `done`; fail
    on BerthError."""
    try:
        _, db = open_database(config_path, data_dir)
        try:
            db.run_sync_write(fn)
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)
    click.echo(done)


def run_with_storage(
    config: settings.Config,
    work: Callable[[Database, BlobStore], Awaitable[T]],
    *,
    migrate: bool | None = None,
) -> T:
    """Open the metadata database and the blob store of `config` (`services.open_storage`),
    and run `work(db, store)` under trio. For commands that need the data but not a serving
    Berth (backups): nothing else is opened or registered. Raises BerthError."""
    import trio  # noqa: PLC0415

    from appliance.services import open_storage  # noqa: PLC0415

    async def main() -> T:
        db, store = await open_storage(config, migrate=migrate)
        try:
            return await work(db, store)
        finally:
            db.close()

    return trio.run(main)


def run_with_services(
    config: settings.Config,
    work: Callable[[Services], Awaitable[T]],
    *,
    serving: bool = True,
    actor: str = "system",
    pace: float = 0.5,
) -> T:
    """Open the services of `config` (`services.open_services`, the one place they are
    assembled: with `serving`, all of a running Berth's; without, the database, the store,
    the registry and the lifecycle only) and run `work(services)` under trio; closes them
    after. Raises BerthError."""
    import trio  # noqa: PLC0415

    from appliance.services import open_services  # noqa: PLC0415

    async def main() -> T:
        services = await open_services(config, serving=serving, actor=actor, pace=pace)
        try:
            return await work(services)
        finally:
            await services.aclose()

    return trio.run(main)
