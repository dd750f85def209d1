"""`berth user ...` and `berth keys rotate` against a data directory, and the first start."""

from __future__ import annotations

from pathlib import Path

import trio
from click.testing import CliRunner

from appliance import config as settings
from appliance.cli import main
from appliance.metadata.db import open_metadata
from appliance.ops import audit
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
    before = sorted((tmp_path / "d" / "keys").glob("*.pem"))
    assert "new signing key" in run("keys", "rotate", "--data-dir", data)
    assert len(sorted((tmp_path / "d" / "keys").glob("*.pem"))) == len(before) + 1
    db = open_metadata(cfg)
    try:
        actions = [e["action"] for e in db.run_sync_read(lambda tx: audit.events(tx, 20))]
    finally:
        db.close()
    assert actions[:5] == [
        "user.enable",
        "user.disable",
        "user.password",
        "user.create",
        "user.create",
    ]
