"""The `berth` command line."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any

import click
import trio

from appliance import config as settings
from appliance.errors import BerthError

DEFAULT_CONFIG_FILES = (Path("berth.toml"), Path("/etc/berth/berth.toml"))


def setup_logging(level: str, fmt: str = "text") -> None:
    """Text or JSON lines on stderr, with request ids and without secrets (ops/logs.py)."""
    from appliance.ops import logs  # noqa: PLC0415

    logs.setup(level, fmt)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> settings.Config:
    """The settings from `path` (or the first default file that exists) and the environment."""
    if path is None:
        path = next((p for p in DEFAULT_CONFIG_FILES if p.exists()), None)
    return settings.load(path, overrides=overrides)


def fail(message: str) -> None:
    click.echo(f"berth: {message}", err=True)
    sys.exit(2)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from appliance.omnibus.buildinfo import version_text  # noqa: PLC0415

    click.echo(version_text())
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
            {
                "server.listen": listen,
                "server.data_dir": str(data_dir) if data_dir is not None else None,
                "server.workers": workers,
            },
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


# -- accounts and keys -------------------------------------------------------------------------

_config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False)
)
_data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), help="server.data_dir"
)


def _open(config_path: Path | None, data_dir: Path | None) -> tuple[settings.Config, Any]:
    from appliance.metadata.db import open_metadata  # noqa: PLC0415

    overrides = {"server.data_dir": str(data_dir) if data_dir is not None else None}
    cfg = load_config(config_path, overrides)
    return cfg, open_metadata(cfg)


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


def _user_change(config_path: Path | None, data_dir: Path | None, fn: Any, done: str) -> None:
    try:
        _, db = _open(config_path, data_dir)
        try:
            db.run_sync_write(fn)
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)
    click.echo(done)


def _read(config_path: Path | None, data_dir: Path | None, fn: Any) -> Any:
    """Run `fn(tx)` in a read transaction of the configured database; fail on BerthError."""
    try:
        _, db = _open(config_path, data_dir)
        try:
            return db.run_sync_read(fn)
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)


@main.group()
def user() -> None:
    """Manage local user accounts."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an instance admin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_config_option
@_data_dir_option
def user_add(
    name: str, admin: bool, password_stdin: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Create a local user (and their personal namespace)."""
    import time  # noqa: PLC0415

    from appliance.auth import accounts  # noqa: PLC0415
    from appliance.auth.passwords import hash_password  # noqa: PLC0415

    digest = hash_password(_read_password(name, password_stdin))
    _user_change(
        config_path,
        data_dir,
        lambda tx: accounts.add_user(tx, "cli", name, digest, time.time(), admin=admin),
        f"created user {name}" + (" (admin)" if admin else ""),
    )


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_config_option
@_data_dir_option
def user_passwd(
    name: str, password_stdin: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Set a local user's password."""
    import time  # noqa: PLC0415

    from appliance.auth import accounts  # noqa: PLC0415
    from appliance.auth.passwords import hash_password  # noqa: PLC0415

    digest = hash_password(_read_password(name, password_stdin))
    _user_change(
        config_path,
        data_dir,
        lambda tx: accounts.set_password(tx, "cli", name, digest, time.time()),
        f"password of {name} changed",
    )


@user.command("disable")
@click.argument("name")
@_config_option
@_data_dir_option
def user_disable(name: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Stop a user from signing in (their tokens stop working too)."""
    import time  # noqa: PLC0415

    from appliance.auth import accounts  # noqa: PLC0415

    _user_change(
        config_path,
        data_dir,
        lambda tx: accounts.set_disabled(tx, "cli", name, True, time.time()),
        f"disabled {name}",
    )


@user.command("enable")
@click.argument("name")
@_config_option
@_data_dir_option
def user_enable(name: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Let a disabled user sign in again."""
    import time  # noqa: PLC0415

    from appliance.auth import accounts  # noqa: PLC0415

    _user_change(
        config_path,
        data_dir,
        lambda tx: accounts.set_disabled(tx, "cli", name, False, time.time()),
        f"enabled {name}",
    )


@user.command("list")
@_config_option
@_data_dir_option
def user_list(config_path: Path | None, data_dir: Path | None) -> None:
    """List users: name, source, admin, disabled."""
    from appliance.metadata import identity  # noqa: PLC0415

    users = _read(config_path, data_dir, identity.list_users)
    for u in users:
        flags = [f for f, on in (("admin", u.is_admin), ("disabled", u.disabled)) if on]
        click.echo(f"{u.name}\t{u.source}\t{','.join(flags) or '-'}")


@main.group()
def token() -> None:
    """List and revoke users' personal access tokens and refresh tokens."""


@token.command("list")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(["pat", "refresh", "all"]),
    default="all",
    show_default=True,
    help="Which tokens to list.",
)
@_config_option
@_data_dir_option
def token_list(name: str, kind: str, config_path: Path | None, data_dir: Path | None) -> None:
    """List a user's tokens: id, kind, name, scopes, expiry, what made it, state."""
    import time  # noqa: PLC0415

    from appliance.auth import credentials  # noqa: PLC0415
    from appliance.metadata import identity  # noqa: PLC0415

    now = time.time()

    def read(tx: Any) -> list[dict[str, Any]]:
        user = identity.require_user(tx, name)
        found = identity.tokens_of_user(tx, user.id, None if kind == "all" else kind)
        return [credentials.token_json(tx, t, now) for t in found]

    for row in _read(config_path, data_dir, read):
        expires = row["expires_at"]
        minted = row["minted_by"] or {"kind": "sign-in"}
        made = f"token {minted['id']}" if minted["kind"] == "token" else str(minted["kind"])
        state = "active" if row["usable"] else ("revoked" if row["revoked_at"] else "ended")
        click.echo(
            f"{row['id']}\t{row['kind']}\t{row['name'] or '-'}\t"
            f"{','.join(row['scopes']) or 'all'}\t"
            f"{'never' if expires is None else time.strftime('%Y-%m-%d', time.gmtime(expires))}"
            f"\t{made}\t{state}"
        )


@token.command("revoke")
@click.argument("name")
@click.argument("token_id", type=int)
@_config_option
@_data_dir_option
def token_revoke(name: str, token_id: int, config_path: Path | None, data_dir: Path | None) -> None:
    """Revoke one of a user's tokens (personal access or refresh token) by its id; what it
    minted stops working with it."""
    import time  # noqa: PLC0415

    from appliance.auth import accounts  # noqa: PLC0415
    from appliance.metadata import identity  # noqa: PLC0415
    from appliance.metadata.identity import TokenNotFound  # noqa: PLC0415

    def fn(tx: Any) -> None:
        user = identity.require_user(tx, name)
        record = identity.token_by_id(tx, token_id)
        if record is None or record.user_id != user.id or record.kind not in ("pat", "refresh"):
            raise TokenNotFound(f"{name} has no token {token_id}")
        accounts.revoke_token(tx, "cli", record, time.time())

    _user_change(config_path, data_dir, fn, f"revoked token {token_id} of {name}")


@main.group()
def keys() -> None:
    """Manage the keys that sign registry tokens."""


@keys.command("rotate")
@_config_option
@_data_dir_option
def keys_rotate(config_path: Path | None, data_dir: Path | None) -> None:
    """Make a new signing key (from any host: the keys live in the database); older keys keep
    verifying until their tokens expire."""
    import time  # noqa: PLC0415

    from appliance.auth.secrets import ServerSecret  # noqa: PLC0415
    from appliance.auth.tokens import PUBLISH_DELAY, KeyRing, key_directory  # noqa: PLC0415

    try:
        cfg, db = _open(config_path, data_dir)
        try:
            secret = ServerSecret.load(cfg.secret_path, create=not cfg["server.secret_file"])
            ring = KeyRing(db, secret, time.time, overlap=cfg["auth.token_ttl"] + 60)
            ring.import_directory(key_directory(cfg.data_dir))
            key = ring.rotate_sync(actor="cli")
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)
        return
    click.echo(
        f"new signing key {key.kid} (signs in {PUBLISH_DELAY:g} s, once every host has it); "
        f"{len(ring.keys)} key(s) in the database"
    )


# `berth audit ...` (reading the audit log) lives in appliance/ops/.
from appliance.ops.cli import audit_group  # noqa: E402

main.add_command(audit_group)

# `berth migrate` and `berth db ...` live in their own module.
from appliance.dbcli import db, migrate  # noqa: E402

main.add_command(migrate)
main.add_command(db)

# `berth backup ...` and `berth restore` live in appliance/backup/.
from appliance.backup.cli import backup, restore  # noqa: E402

main.add_command(backup)
main.add_command(restore)

# `berth ctl ...` (omnibus-style administration of an install) lives in appliance/omnibus/.
from appliance.omnibus.ctl import ctl  # noqa: E402

main.add_command(ctl)

# `berth mirror ...` (the pull-through cache of proxy namespaces) lives in appliance/proxy/.
from appliance.proxy.cli import mirror  # noqa: E402

main.add_command(mirror)

# `berth gc`, `fsck`, `usage`, `quota`, `immutable`, `policy` live in appliance/lifecycle/.
from appliance.lifecycle.cli import COMMANDS as LIFECYCLE_COMMANDS  # noqa: E402

for _command in LIFECYCLE_COMMANDS:
    main.add_command(_command)

# `berth scan IMAGE` and `berth vulndb ...` (vulnerability scanning) live in appliance/scan/.
from appliance.scan.cli import scan, scan_worker, vulndb  # noqa: E402

main.add_command(scan)
main.add_command(scan_worker)
main.add_command(vulndb)

# `berth import distribution|remote` (moving in from another registry) lives in appliance/importer/.
from appliance.importer.cli import import_group  # noqa: E402

main.add_command(import_group)

# `berth ci-trust ...` (CI identity tokens as registry credentials) lives in appliance/auth/.
from appliance.auth.citrust_cli import ci_trust  # noqa: E402

main.add_command(ci_trust)
