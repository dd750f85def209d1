"""The records of OpenID Connect sign-in and CI trust on both metadata dialects (SQLite and a
real PostgreSQL): a pending sign-in is taken once, only by its provider and browser, not after
it expires; trust rules are stored, found by issuer, listed and removed with their namespace."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.auth import oidc
from appliance.auth.oidc import OidcError, Pending
from appliance.metadata import citrust as records
from appliance.metadata import identity
from appliance.metadata.db import Database, open_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: Callable[[], str]
) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'm.db'}" if request.param == "sqlite" else postgres_database()
    database = open_database(url)
    database.migrate()
    try:
        yield database
    finally:
        database.close()


def finish(db: Database, provider: str, browser: str, now: float) -> tuple[Pending, str]:
    """What the callback does: take the state out (one transaction), then check it."""
    taken = db.run_sync_write(lambda tx: oidc.take(tx, "state-1"))
    return oidc.accept(taken, provider, browser, now)


def test_a_pending_sign_in_is_taken_once(db: Database) -> None:
    pending = Pending("state-1", "nonce-1", "verifier-1")
    db.run_sync_write(lambda tx: oidc.remember(tx, "corp", pending, "browser-a", "/r/x", 1000.0))
    with pytest.raises(OidcError, match="another browser"):
        finish(db, "corp", "browser-b", 1001.0)
    # Refused, and gone: a state is good once, whoever tries first.
    with pytest.raises(OidcError, match="no pending request"):
        finish(db, "corp", "browser-a", 1001.0)

    db.run_sync_write(lambda tx: oidc.remember(tx, "corp", pending, "browser-a", "/r/x", 1000.0))
    with pytest.raises(OidcError, match="no pending request"):
        finish(db, "other", "browser-a", 1001.0)

    db.run_sync_write(lambda tx: oidc.remember(tx, "corp", pending, "browser-a", "/r/x", 1000.0))
    taken, target = finish(db, "corp", "browser-a", 1001.0)
    assert (taken, target) == (pending, "/r/x")
    with pytest.raises(OidcError, match="no pending request"):
        finish(db, "corp", "browser-a", 1002.0)

    db.run_sync_write(lambda tx: oidc.remember(tx, "corp", pending, "browser-a", "/", 1000.0))
    late = 1000.0 + oidc.STATE_TTL + 1
    with pytest.raises(OidcError, match="no pending request"):
        finish(db, "corp", "browser-a", late)
    stored = db.run_sync_read(
        lambda tx: tx.execute("SELECT state_hash, binding_hash FROM oidc_states")
    )
    assert stored == []
    assert "state-1" not in str(stored)


def test_trust_rule_records(db: Database) -> None:
    def setup(tx: object) -> None:
        identity.create_namespace(tx, "team", 1.0)  # type: ignore[arg-type]
        identity.create_namespace(tx, "other", 1.0)  # type: ignore[arg-type]

    db.run_sync_write(setup)
    issuer = "https://gitlab.example.org"
    first = db.run_sync_write(
        lambda tx: records.add(
            tx,
            "team",
            issuer,
            "aud",
            {"project_path": "team/app", "ref_protected": "true"},
            "push",
            "app/**",
            jwks=None,
            template="gitlab",
            description="",
            created_by="test",
            now=2.0,
        )
    )
    assert first.claims == (("project_path", "team/app"), ("ref_protected", "true"))
    db.run_sync_write(
        lambda tx: records.add(
            tx,
            "other",
            issuer,
            "aud",
            {"project_path": "other/x"},
            "pull",
            "**",
            jwks='{"keys": []}',
            template=None,
            description="offline",
            created_by="test",
            now=3.0,
        )
    )
    found = db.run_sync_read(lambda tx: records.for_issuer(tx, issuer))
    assert [(r.namespace, r.access) for r in found] == [("team", "push"), ("other", "pull")]
    assert db.run_sync_read(lambda tx: records.for_issuer(tx, issuer + "/")) == []
    assert [r.id for r in db.run_sync_read(lambda tx: records.listed(tx, "team"))] == [first.id]
    db.run_sync_write(lambda tx: identity.delete_namespace(tx, "other"))
    assert [r.namespace for r in db.run_sync_read(records.listed)] == ["team"]
    db.run_sync_write(lambda tx: records.delete(tx, first.id))
    assert db.run_sync_read(lambda tx: records.get(tx, first.id)) is None
