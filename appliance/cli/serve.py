"""`berth serve`: run the registry, as one process or as the supervisor of N workers.

It imports only what the role it plays needs: the supervisor of N workers never loads the web
application, and no process loads the other commands.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click
import trio

from appliance import config as settings
from appliance.cli.common import config_option_with, data_dir_option, fail, load_config
from appliance.errors import BerthError


def setup_logging(level: str, fmt: str = "text") -> None:
    """Text or JSON lines on stderr, with request ids and without secrets (runtime/logs.py)."""
    from appliance.runtime import logs  # noqa: PLC0415

    logs.setup(level, fmt)


@click.command()
@config_option_with(
    help="TOML config file (default: ./berth.toml, then /etc/berth/berth.toml, if present)."
)
@click.option("--listen", help="HOST:PORT to listen on (server.listen).")
@data_dir_option
@click.option(
    "--workers",
    metavar="N|auto",
    help="server.workers: serving processes (default auto: one per CPU, at most 8).",
)
@click.option("--listen-fd", type=int, hidden=True)  # a worker of --workers N
@click.option("--parent-pid", type=int, hidden=True)
@click.option("--ready-fd", type=int, hidden=True)  # told once serving, then closed
def serve(  # noqa: PLR0917 (one parameter per option)
    config_path: Path | None,
    listen: str | None,
    data_dir: Path | None,
    workers: str | None,
    listen_fd: int | None,
    parent_pid: int | None,
    ready_fd: int | None,
) -> None:
    """Run the registry until SIGTERM or SIGINT."""
    if parent_pid is not None:
        from appliance.supervisor import die_with_parent  # noqa: PLC0415

        die_with_parent(parent_pid)
    try:
        config = load_config(
            config_path,
            {"server.listen": listen, "server.workers": workers},
            data_dir=data_dir,
        )
        setup_logging(config["log.level"], config["log.format"])
        if listen_fd is None:  # the supervisor or a lone process, not one of its workers
            from appliance.version import version  # noqa: PLC0415

            logging.getLogger("berth").info(
                "Berth %s starting: data in %s (config: %s); %d serving process%s "
                "(server.workers = %s; %d CPUs available)",
                version(),
                config.data_dir,
                config.source,
                config.workers,
                "" if config.workers == 1 else "es",
                config["server.workers"],
                settings.available_cpus(),
            )
            for line in config.deprecations():
                logging.getLogger("berth").warning("%s", line)
        from appliance import filemodes  # noqa: PLC0415

        filemodes.prepare(config)  # before anything is created: no data readable by others
        if config.workers > 1 and listen_fd is None:
            from appliance import supervisor  # noqa: PLC0415

            command = supervisor.child_command(
                str(config_path) if config_path else None, str(config.data_dir), listen
            )
            boss = supervisor.Supervisor(config, command, config.workers)
            sys.exit(trio.run(boss.run))
        # Imported only here: the supervisor of N workers never loads the application.
        from appliance.server import serve as run_server  # noqa: PLC0415

        trio.run(functools.partial(run_server, config, listen_fd=listen_fd, ready_fd=ready_fd))
    except BerthError as e:
        if ready_fd is not None:  # a worker that could not start: its supervisor says why, once
            from appliance.server import tell_failed  # noqa: PLC0415

            tell_failed(ready_fd, e.message)
            sys.exit(2)
        fail(e.message)
