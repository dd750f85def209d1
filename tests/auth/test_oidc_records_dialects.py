"""The records of OpenID Connect sign-in and CI trust on both metadata dialects (SQLite and a
real PostgreSQL): a pending sign-in is taken once, only by its provider and browser, not after
it expires; trust rules are stored, found by issuer, listed and removed with their namespace.
And the credentials both kinds of sign-in get (auth/credentials.py): a CI job's works only
while the rules it matched exist (their removal touches the `auth` stamp, and a removed rule's
id is never given to a new one); an OpenID Connect user's is of the provider's own kind and
ends like any user's, and a sign-in that lowers a mapped role ends their console sessions."""

from __future__ import annotations

import pytest

from appliance.auth import citrust, credentials, oidc
from appliance.auth.ldap import parse_group_roles
from appliance.auth.oidc import OidcError, OidcIdentity, OidcProvider, Pending, ProviderSettings
from appliance.auth.policy import repository_actions
from appliance.metadata import citrust as records
from appliance.metadata import identity
from appliance.metadata.citrust import TrustRule
from appliance.metadata.db import Database, Tx

NOW = 1_800_000_000.0


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


def _rule(db: Database, access: str, repository: str, project: str = "team/app") -> TrustRule:
    rule: TrustRule = db.run_sync_write(
        lambda tx: records.add(
            tx,
            "team",
            "https://gitlab.example.org",
            "aud",
            {"project_path": project},
            access,
            repository,
            jwks=None,
            template=None,
            description="",
            created_by="test",
            now=NOW,
        )
    )
    return rule


def test_a_ci_credential_works_while_its_rules_exist(db: Database) -> None:
    db.run_sync_write(lambda tx: identity.create_namespace(tx, "team", NOW))
    push = _rule(db, "push", "app")
    pull = _rule(db, "pull", "**")
    subject = "project_path:team/app:ref_type:branch:ref:main"
    ref = citrust.credential_of([push, pull], subject, int(NOW) + 300)
    assert ref == f"ci:{int(NOW) + 300}:{push.id},{pull.id}:{subject}"

    def holder(now: float = NOW) -> credentials.Resolved | None:
        found: credentials.Resolved | None = db.run_sync_read(
            lambda tx: credentials.resolve(tx, ref, now)
        )
        return found

    def actions(repository: str) -> frozenset[str]:
        found = holder()
        assert found is not None
        return repository_actions(found.principal, repository, False)

    found = holder()
    assert found is not None
    assert found.principal.subject == f"ci:{subject}", "the subject its registry tokens name"
    assert found.until == int(NOW) + 300, "no longer than the identity token"
    assert actions("team/app") == {"pull", "push"}
    assert actions("team/lib") == {"pull"}
    assert holder(NOW + 300) is None, "expired with the identity token"

    stamp = db.changes.stamp(identity.AUTH)
    db.run_sync_write(lambda tx: records.delete(tx, push.id))
    assert db.changes.stamp(identity.AUTH) != stamp, "every worker's caches reload"
    assert actions("team/app") == {"pull"}, "only what the remaining rule grants"
    db.run_sync_write(lambda tx: records.delete(tx, pull.id))
    assert holder() is None, "no rule left: the credential no longer works"

    # A removed rule's id is never another rule's: a credential naming it stays dead.
    stamp = db.changes.stamp(identity.AUTH)
    again = _rule(db, "push", "**", project="team/other")
    assert db.changes.stamp(identity.AUTH) != stamp, "a new rule may grant a cached job more"
    assert again.id > pull.id
    assert holder() is None
    forged = citrust.credential_of([again], subject, int(NOW) + 300)
    assert db.run_sync_read(lambda tx: credentials.resolve(tx, forged, NOW)) is not None
    for broken in ("ci:", "ci:x:1:s", f"ci:{int(NOW) + 300}:a,b:s", f"ci:{int(NOW) + 300}:1:"):
        assert db.run_sync_read(lambda tx, r=broken: credentials.resolve(tx, r, NOW)) is None


def _provider() -> OidcProvider:
    return OidcProvider(
        ProviderSettings(
            name="corp",
            label="Corp SSO",
            issuer="https://idp.example.org",
            discovery_file="",
            client_id="berth",
            client_secret=None,
            scopes=("openid",),
            username_claim="preferred_username",
            email_claim="email",
            name_claim="name",
            groups_claim="groups",
            group_roles=tuple(parse_group_roles("leads=devs:maintainer; devs=devs:developer")),
            allow_http=False,
        ),
        clock=lambda: NOW,
    )


def test_an_oidc_sign_in_has_a_credential_of_its_own_kind(db: Database) -> None:
    provider = _provider()

    def sign_in(*groups: str) -> credentials.Principal:
        who = OidcIdentity("olivia", "o@example.org", "Olivia", frozenset(groups), "sub-1")
        principal: credentials.Principal = db.run_sync_write(
            lambda tx: oidc.sign_in_user(tx, provider, who, NOW)
        )
        return principal

    first = sign_in("leads")
    assert first.via == "oidc:corp"
    assert first.credential == f"oidc:corp:{first.user_id}:0"
    assert first.roles == {"olivia": "owner", "devs": "maintainer"}, "personal and mapped"
    assert credentials.describe(first.credential) == {"kind": "oidc:corp"}
    assert first.credential is not None
    ref = first.credential
    found = db.run_sync_read(lambda tx: credentials.resolve(tx, ref, NOW))
    assert found is not None
    assert (found.principal.name, found.principal.via) == ("olivia", "oidc:corp")

    def session(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO console_sessions (id_hash, user_id, csrf, via, created_at, "
            "last_seen_at, expires_at) VALUES ('s', :uid, 'c', 'oidc:corp', :now, :now, :exp)",
            {"uid": first.user_id, "now": NOW, "exp": NOW + 3600},
        )

    def sessions(tx: Tx) -> int:
        return int(tx.scalar("SELECT COUNT(*) FROM console_sessions"))

    db.run_sync_write(session)
    stamp = db.changes.stamp(identity.AUTH)
    assert sign_in("leads").credential == ref, "the same account, the same credential"
    assert db.changes.stamp(identity.AUTH) == stamp, "an unchanged sign-in touches nothing"
    assert db.run_sync_read(sessions) == 1
    demoted = sign_in("devs")
    assert demoted.roles["devs"] == "developer"
    assert db.changes.stamp(identity.AUTH) != stamp, "every worker sees the lower role"
    assert db.run_sync_read(sessions) == 0, "a lowered role ends the console sessions"

    db.run_sync_write(lambda tx: identity.update_user(tx, "olivia", disabled=True))
    assert db.run_sync_read(lambda tx: credentials.resolve(tx, ref, NOW)) is None
    with pytest.raises(OidcError, match="disabled"):
        sign_in("devs")
