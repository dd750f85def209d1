"""`berth user ...` and `berth keys rotate` against a data directory, and the first start."""

from __future__ import annotations

from pathlib import Path

import trio
from click.testing import CliRunner

from appliance import config as settings
from appliance.auth.tokens import stored_keys
from appliance.cli import main
from appliance.metadata import audit
from appliance.metadata.db import open_metadata
from appliance.server import open_services


def run(*args: str, stdin: str = "") -> str:
    result = CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def test_first_start_generates_a_private_admin_password(tmp_path: Path) -> None:
    cfg = settings.load(None, environ={}, overrides={"server.data_dir": str(tmp_path / "d")})
    services = await open_services(cfg)
    services.close()
    secret = tmp_path / "d" / "initial-admin-password"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(secret.read_text().strip()) >= 16
    services = await open_services(cfg)  # a second start creates nothing more
    services.close()


def test_user_commands_and_key_rotation(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    cfg = settings.load(
        None, environ={}, overrides={"server.data_dir": data, "admin.password": "first-admin-pw"}
    )
    trio.run(open_services, cfg).close()
    assert "created user bob (admin)" in run(
        "user",
        "add",
        "bob",
        "--admin",
        "--password-stdin",
        "--data-dir",
        data,
        stdin="bob-password-1\n",
    )
    run("user", "passwd", "bob", "--password-stdin", "--data-dir", data, stdin="bob-password-2\n")
    run("user", "disable", "bob", "--data-dir", data)
    listing = run("user", "list", "--data-dir", data)
    assert "bob\tlocal\tadmin,disabled" in listing
    assert "admin\tlocal\tadmin" in listing
    run("user", "enable", "bob", "--data-dir", data)
    short = CliRunner().invoke(
        main, ["user", "add", "eve", "--password-stdin", "--data-dir", data], input="short\n"
    )
    assert short.exit_code != 0
    assert "at least 8" in short.output
    db = open_metadata(cfg)
    try:
        before = db.run_sync_read(stored_keys)
        assert "new signing key" in run("keys", "rotate", "--data-dir", data)
        after = db.run_sync_read(stored_keys)
        actions = [e["action"] for e in db.run_sync_read(lambda tx: audit.events(tx, 20))]
    finally:
        db.close()
    assert [k for k, _, _ in after[: len(before)]] == [k for k, _, _ in before]
    assert len(after) == len(before) + 1
    assert not list((tmp_path / "d" / "keys").glob("*.pem")), "keys live in the database"
    assert actions[:6] == [
        "keys.rotate",
        "user.enable",
        "user.disable",
        "user.password",
        "user.create",
        "user.create",
    ]


def test_token_commands_list_and_revoke_refresh_tokens(tmp_path: Path) -> None:
    """`berth token list|revoke`: an admin ends a user's refresh token (a docker login)."""
    import time  # noqa: PLC0415

    from appliance.auth import accounts, credentials  # noqa: PLC0415
    from appliance.auth.secrets import ServerSecret  # noqa: PLC0415
    from appliance.metadata import identity  # noqa: PLC0415

    data = str(tmp_path / "d")
    cfg = settings.load(
        None, environ={}, overrides={"server.data_dir": data, "admin.password": "first-admin-pw"}
    )
    services = trio.run(open_services, cfg)
    secret = ServerSecret.load_or_create(tmp_path / "d" / "secret")

    def setup(tx: object) -> int:
        now = time.time()
        record, _ = accounts.create_pat(tx, "test", secret, "admin", "ci", ("read_registry",), now)  # type: ignore[arg-type]
        refresh = identity.create_token(
            tx,  # type: ignore[arg-type]
            "refresh",
            secret.new_token("refresh")[1],
            now,
            user_id=record.user_id,
            minted_by=credentials.of_token(record.id),
        )
        return refresh.id

    refresh_id = services.db.run_sync_write(setup)
    services.close()
    listing = run("token", "list", "admin", "--data-dir", data)
    assert "\tpat\tci\tread_registry\tnever\tsign-in\tactive" in listing
    assert f"{refresh_id}\trefresh\t" in listing
    assert "\ttoken 1\tactive" in listing
    assert "revoked token" in run("token", "revoke", "admin", str(refresh_id), "--data-dir", data)
    listing = run("token", "list", "admin", "--kind", "refresh", "--data-dir", data)
    assert listing.strip().endswith("revoked")
    assert "\tpat\t" not in listing
    missing = CliRunner().invoke(main, ["token", "revoke", "admin", "999", "--data-dir", data])
    assert missing.exit_code != 0
    assert "no token 999" in missing.output
