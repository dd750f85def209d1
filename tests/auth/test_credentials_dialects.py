"""The credential records on both metadata dialects: what a revocation, a new password, a
disabled user and a lowered role do to tokens, sessions and the `auth` change stamp, in the
change's own transaction (SQLite and PostgreSQL run the same units of work)."""

from __future__ import annotations

from pathlib import Path

from appliance.auth import accounts, credentials
from appliance.auth.secrets import ServerSecret
from appliance.metadata import identity
from appliance.metadata.db import Database, Tx

NOW = 1_800_000_000.0


def test_tokens_die_with_what_minted_them(db: Database, tmp_path: Path) -> None:
    secret = ServerSecret.load_or_create(tmp_path / "secret")

    def setup(tx: Tx) -> dict[str, int]:
        user = accounts.add_user(tx, "test", "dev", "hash", NOW)
        pat, _ = accounts.create_pat(tx, "test", secret, "dev", "ci", ("write_registry",), NOW)
        by_pat = identity.create_token(
            tx,
            "refresh",
            secret.new_token("refresh")[1],
            NOW,
            user_id=user.id,
            minted_by=credentials.of_token(pat.id),
        )
        by_password = identity.create_token(
            tx,
            "refresh",
            secret.new_token("refresh")[1],
            NOW,
            user_id=user.id,
            minted_by=credentials.of_sign_in("password", user),
        )
        tx.execute(
            "INSERT INTO console_sessions (id_hash, user_id, csrf, via, created_at, "
            "last_seen_at, expires_at) VALUES ('s', :uid, 'c', 'password', :now, :now, :exp)",
            {"uid": user.id, "now": NOW, "exp": NOW + 3600},
        )
        return {"user": user.id, "pat": pat.id, "by_pat": by_pat.id, "by_password": by_password.id}

    ids = db.run_sync_write(setup)

    def usable(tx: Tx) -> dict[str, bool]:
        return {
            name: credentials.resolve(tx, credentials.of_token(ids[name]), NOW) is not None
            for name in ("pat", "by_pat", "by_password")
        }

    assert db.run_sync_read(usable) == {"pat": True, "by_pat": True, "by_password": True}
    assert [
        t.kind for t in db.run_sync_read(lambda tx: identity.tokens_of_user(tx, ids["user"], None))
    ] == [
        "pat",
        "refresh",
        "refresh",
    ]

    stamp = db.changes.stamp(identity.AUTH)
    db.run_sync_write(lambda tx: identity.touch_token(tx, ids["pat"], NOW + 1))
    assert db.changes.stamp(identity.AUTH) == stamp, "bookkeeping touches nothing"

    db.run_sync_write(lambda tx: accounts.set_password(tx, "test", "dev", "new-hash", NOW))
    assert db.changes.stamp(identity.AUTH) != stamp
    assert db.run_sync_read(usable) == {"pat": True, "by_pat": True, "by_password": False}
    sessions = db.run_sync_read(lambda tx: tx.scalar("SELECT COUNT(*) FROM console_sessions"))
    assert sessions == 0, "a new password ends the console sessions in its transaction"

    pat = db.run_sync_read(lambda tx: identity.token_by_id(tx, ids["pat"]))
    assert pat is not None
    db.run_sync_write(lambda tx: accounts.revoke_token(tx, "test", pat, NOW))
    assert db.run_sync_read(usable) == {"pat": False, "by_pat": False, "by_password": False}


def test_disabling_revokes_refresh_tokens_and_a_lower_role_ends_sessions(
    db: Database, tmp_path: Path
) -> None:
    secret = ServerSecret.load_or_create(tmp_path / "secret")

    def setup(tx: Tx) -> int:
        user = accounts.add_user(tx, "test", "dev", "hash", NOW)
        accounts.create_namespace(tx, "test", "team", NOW)
        accounts.set_member(tx, "test", "team", "dev", "maintainer", NOW)
        identity.create_token(
            tx,
            "refresh",
            secret.new_token("refresh")[1],
            NOW,
            user_id=user.id,
            minted_by=credentials.of_sign_in("ldap", user),
        )
        return user.id

    user_id = db.run_sync_write(setup)

    def session(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO console_sessions (id_hash, user_id, csrf, via, created_at, "
            "last_seen_at, expires_at) VALUES ('s', :uid, 'c', 'ldap', :now, :now, :exp)",
            {"uid": user_id, "now": NOW, "exp": NOW + 3600},
        )

    def count(tx: Tx) -> int:
        return int(tx.scalar("SELECT COUNT(*) FROM console_sessions"))

    db.run_sync_write(session)
    db.run_sync_write(lambda tx: accounts.set_member(tx, "test", "team", "dev", "maintainer", NOW))
    assert db.run_sync_read(count) == 1, "the same role again changes nothing"
    db.run_sync_write(lambda tx: accounts.set_member(tx, "test", "team", "dev", "reader", NOW))
    assert db.run_sync_read(count) == 0

    db.run_sync_write(lambda tx: accounts.set_disabled(tx, "test", "dev", True, NOW))
    db.run_sync_write(lambda tx: accounts.set_disabled(tx, "test", "dev", False, NOW))
    refresh = db.run_sync_read(lambda tx: identity.tokens_of_user(tx, user_id, "refresh"))
    assert [t.revoked_at for t in refresh] == [NOW]
