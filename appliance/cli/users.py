"""`berth user add|passwd|disable|enable|list`: local accounts, from the server's shell."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from appliance.cli import common
from appliance.cli.common import config_option, data_dir_option, fail


def _read_password(prompt_name: str, from_stdin: bool) -> str:
    from appliance.auth.passwords import WeakPassword, check_strength  # noqa: PLC0415

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(
            f"Password for {prompt_name}", hide_input=True, confirmation_prompt=True
        )
    try:
        check_strength(password)
    except WeakPassword as e:
        fail(str(e))
    return password


@click.group()
def user() -> None:
    """Manage local user accounts."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an instance admin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_option
@data_dir_option
def user_add(
    name: str, admin: bool, password_stdin: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Create a local user (and their personal namespace)."""
    from appliance.auth import accounts  # noqa: PLC0415
    from appliance.auth.passwords import hash_password  # noqa: PLC0415

    digest = hash_password(_read_password(name, password_stdin))
    common.write(
        config_path,
        data_dir,
        lambda tx: accounts.add_user(tx, "cli", name, digest, time.time(), admin=admin),
        f"created user {name}" + (" (admin)" if admin else ""),
    )


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_option
@data_dir_option
def user_passwd(
    name: str, password_stdin: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Set a local user's password."""
    from appliance.auth import accounts  # noqa: PLC0415
    from appliance.auth.passwords import hash_password  # noqa: PLC0415

    digest = hash_password(_read_password(name, password_stdin))
    common.write(
        config_path,
        data_dir,
        lambda tx: accounts.set_password(tx, "cli", name, digest, time.time()),
        f"password of {name} changed",
    )


@user.command("disable")
@click.argument("name")
@config_option
@data_dir_option
def user_disable(name: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Stop a user from signing in (their tokens stop working too)."""
    from appliance.auth import accounts  # noqa: PLC0415

    common.write(
        config_path,
        data_dir,
        lambda tx: accounts.set_disabled(tx, "cli", name, True, time.time()),
        f"disabled {name}",
    )


@user.command("enable")
@click.argument("name")
@config_option
@data_dir_option
def user_enable(name: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Let a disabled user sign in again."""
    from appliance.auth import accounts  # noqa: PLC0415

    common.write(
        config_path,
        data_dir,
        lambda tx: accounts.set_disabled(tx, "cli", name, False, time.time()),
        f"enabled {name}",
    )


@user.command("list")
@config_option
@data_dir_option
def user_list(config_path: Path | None, data_dir: Path | None) -> None:
    """List users: name, source, admin, disabled."""
    from appliance.metadata import identity  # noqa: PLC0415

    users = common.read(config_path, data_dir, identity.list_users)
    for u in users:
        flags = [f for f, on in (("admin", u.is_admin), ("disabled", u.disabled)) if on]
        click.echo(f"{u.name}\t{u.source}\t{','.join(flags) or '-'}")
