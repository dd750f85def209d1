"""Sign-in state in the metadata database: the token signing keys (sealed), pending SAML
requests and OpenID Connect sign-ins (one use each), and console sessions (by the HMAC of
their id).

One named function per statement, each run in the caller's transaction (`tx`); tokens.py,
saml.py, oidc.py and console/sessions.py decide the transactions and what the rows mean.
Users, namespaces, robots and hashed tokens are identity records (metadata/identity.py).
"""

from __future__ import annotations

from appliance.metadata.db import Params, Row, Tx

# -- token signing keys (auth/tokens.py) -------------------------------------------------------


def stored_keys(tx: Tx) -> list[tuple[str, float, str]]:
    """(kid, created_at, sealed) of every signing key, oldest first."""
    rows = tx.execute("SELECT kid, created_at, sealed FROM signing_keys ORDER BY created_at, kid")
    return [(str(r[0]), float(r[1]), str(r[2])) for r in rows]


def insert_signing_key(tx: Tx, kid: str, created: float, sealed: str) -> bool:
    """Whether the key was added (False: that kid is stored already)."""
    added = tx.execute(
        "INSERT INTO signing_keys (kid, created_at, sealed) VALUES (:kid, :at, :sealed) "
        "ON CONFLICT (kid) DO NOTHING RETURNING kid",
        {"kid": kid, "at": created, "sealed": sealed},
    )
    return bool(added)


def count_signing_keys(tx: Tx) -> int:
    return int(tx.scalar("SELECT COUNT(*) FROM signing_keys"))


def delete_signing_key(tx: Tx, kid: str) -> None:
    tx.execute("DELETE FROM signing_keys WHERE kid = :kid", {"kid": kid})


# -- pending SAML requests (auth/saml.py) --------------------------------------------------------


def drop_expired_saml_requests(tx: Tx, now: float) -> None:
    tx.execute("DELETE FROM saml_requests WHERE expires_at < :now", {"now": now})


def insert_saml_request(tx: Tx, request_id: str, now: float, expires: float) -> None:
    tx.execute(
        "INSERT INTO saml_requests (request_id, created_at, expires_at) VALUES (:id, :now, :exp)",
        {"id": request_id, "now": now, "exp": expires},
    )


def take_saml_request(tx: Tx, request_id: str) -> float | None:
    """Remove a pending request; its expiry, or None when there was none."""
    gone = tx.execute(
        "DELETE FROM saml_requests WHERE request_id = :id RETURNING expires_at",
        {"id": request_id},
    )
    return float(gone[0][0]) if gone else None


# -- pending OpenID Connect sign-ins (auth/oidc.py) ----------------------------------------------


def drop_expired_oidc_states(tx: Tx, now: float) -> None:
    tx.execute("DELETE FROM oidc_states WHERE expires_at < :now", {"now": now})


def insert_oidc_state(tx: Tx, row: Params) -> None:
    """A row of state (its hash), provider, binding (its hash), nonce, verifier, next (path),
    now and exp."""
    tx.execute(
        "INSERT INTO oidc_states (state_hash, provider, binding_hash, nonce, code_verifier, "
        "next_path, created_at, expires_at) VALUES (:state, :provider, :binding, :nonce, "
        ":verifier, :next, :now, :exp)",
        row,
    )


def take_oidc_state(tx: Tx, state_hash: str) -> Row | None:
    """Remove a pending sign-in; (provider, binding hash, nonce, verifier, next path,
    expires at), or None when there was none."""
    rows = tx.execute(
        "DELETE FROM oidc_states WHERE state_hash = :state RETURNING provider, binding_hash, "
        "nonce, code_verifier, next_path, expires_at",
        {"state": state_hash},
    )
    return rows[0] if rows else None


def user_name_by_subject(tx: Tx, source: str, subject: str) -> str | None:
    """The name of the user an identity provider knows by `subject`."""
    row = tx.one(
        "SELECT name FROM users WHERE source = :source AND external_id = :sub",
        {"source": source, "sub": subject},
    )
    return None if row is None else str(row[0])


# -- console sessions (console/sessions.py) ------------------------------------------------------


def delete_session(tx: Tx, id_hash: str) -> None:
    tx.execute("DELETE FROM console_sessions WHERE id_hash = :h", {"h": id_hash})


def drop_stale_sessions(tx: Tx, now: float, idle_before: float) -> None:
    """Sessions past their expiry, or not seen since `idle_before`."""
    tx.execute(
        "DELETE FROM console_sessions WHERE expires_at < :now OR last_seen_at < :idle",
        {"now": now, "idle": idle_before},
    )


def insert_session(tx: Tx, row: Params) -> None:
    """A row of h (id hash), uid, csrf, via, now and exp."""
    tx.execute(
        "INSERT INTO console_sessions (id_hash, user_id, csrf, via, created_at, "
        "last_seen_at, expires_at) VALUES (:h, :uid, :csrf, :via, :now, :now, :exp)",
        row,
    )


def session_row(tx: Tx, id_hash: str) -> Row | None:
    """(user id, csrf, via, last seen at, expires at, notice) of a session."""
    return tx.one(
        "SELECT user_id, csrf, via, last_seen_at, expires_at, notice "
        "FROM console_sessions WHERE id_hash = :h",
        {"h": id_hash},
    )


def session_seen(tx: Tx, id_hash: str, now: float) -> None:
    """The session was used at `now`; its pending notice has been shown."""
    tx.execute(
        "UPDATE console_sessions SET last_seen_at = :now, notice = NULL WHERE id_hash = :h",
        {"now": now, "h": id_hash},
    )


def set_session_notice(tx: Tx, id_hash: str, text: str) -> None:
    tx.execute(
        "UPDATE console_sessions SET notice = :n WHERE id_hash = :h", {"n": text, "h": id_hash}
    )


def session_owner(tx: Tx, id_hash: str) -> Row | None:
    """(user name, via) of a session."""
    return tx.one(
        "SELECT u.name, s.via FROM console_sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.id_hash = :h",
        {"h": id_hash},
    )
