"""The `berth` command line: the root group, and where each command lives.

One module per command group, under this package (`berth ctl` lives in omnibus/ctl.py, with the
installation's templates); they all share cli/common.py. The work itself is done by the
feature packages; these modules parse options and print. A command's module is imported when
that command runs (or when help lists it), so `berth serve` and its worker processes load no
other command.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of the command, in the order `berth --help` lists them (by name).
COMMANDS = {
    "audit": "appliance.cli.audit:audit",
    "backup": "appliance.cli.backup:backup",
    "ci-trust": "appliance.cli.citrust:ci_trust",
    "config": "appliance.cli.config:config",
    "ctl": "appliance.omnibus.ctl:ctl",
    "db": "appliance.cli.db:db",
    "fsck": "appliance.cli.lifecycle:fsck",
    "gc": "appliance.cli.lifecycle:gc",
    "immutable": "appliance.cli.lifecycle:immutable",
    "import": "appliance.cli.importer:import_group",
    "keys": "appliance.cli.keys:keys",
    "migrate": "appliance.cli.db:migrate",
    "mirror": "appliance.cli.mirror:mirror",
    "policy": "appliance.cli.lifecycle:policy",
    "quota": "appliance.cli.lifecycle:quota",
    "restore": "appliance.cli.backup:restore",
    "scan": "appliance.cli.scan:scan",
    "scan-worker": "appliance.cli.scan:scan_worker",
    "serve": "appliance.cli.serve:serve",
    "token": "appliance.cli.tokens:token",
    "usage": "appliance.cli.lifecycle:usage",
    "user": "appliance.cli.users:user",
    "vulndb": "appliance.cli.scan:vulndb",
}


class LazyGroup(click.Group):
    """A group whose commands are named here and imported on first use."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command), self.lazy[cmd_name]
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from appliance.omnibus.buildinfo import version_text  # noqa: PLC0415

    click.echo(version_text())
    ctx.exit()


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and build (commit, date, Python, glibc baseline) and exit.",
)
def main() -> None:
    """Berth: a self-hosted container registry appliance."""
