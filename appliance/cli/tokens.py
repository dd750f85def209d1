"""`berth token list|revoke`: users' personal access tokens and refresh tokens."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from appliance.cli import common
from appliance.cli.common import config_option, data_dir_option


@click.group()
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
@config_option
@data_dir_option
def token_list(name: str, kind: str, config_path: Path | None, data_dir: Path | None) -> None:
    """List a user's tokens: id, kind, name, scopes, expiry, what made it, state."""
    from appliance.auth import credentials  # noqa: PLC0415
    from appliance.metadata import identity  # noqa: PLC0415

    now = time.time()

    def read(tx: Any) -> list[dict[str, Any]]:
        user = identity.require_user(tx, name)
        found = identity.tokens_of_user(tx, user.id, None if kind == "all" else kind)
        return [credentials.token_json(tx, t, now) for t in found]

    for row in common.read(config_path, data_dir, read):
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
@config_option
@data_dir_option
def token_revoke(name: str, token_id: int, config_path: Path | None, data_dir: Path | None) -> None:
    """Revoke one of a user's tokens (personal access or refresh token) by its id; what it
    minted stops working with it."""
    from appliance.auth import accounts  # noqa: PLC0415
    from appliance.metadata import identity  # noqa: PLC0415
    from appliance.metadata.identity import TokenNotFound  # noqa: PLC0415

    def fn(tx: Any) -> None:
        user = identity.require_user(tx, name)
        record = identity.token_by_id(tx, token_id)
        if record is None or record.user_id != user.id or record.kind not in ("pat", "refresh"):
            raise TokenNotFound(f"{name} has no token {token_id}")
        accounts.revoke_token(tx, "cli", record, time.time())

    common.write(config_path, data_dir, fn, f"revoked token {token_id} of {name}")
