"""Console sign-in sessions, kept in the metadata database (table `console_sessions`).

The browser holds a random session id in an HttpOnly cookie; the database holds only its
HMAC (`ServerSecret.digest`), so reading the database gives no one a session. Each session has
its own CSRF token, an absolute expiry (`console.session_lifetime`) and an idle expiry
(`console.session_idle`), checked on every request. Signing in always creates a new session
(the id is rotated) and deletes the one the browser had. Disabling a user, changing their
password, removing their admin flag or lowering a role of theirs deletes their sessions in the
transaction of the change (`metadata/identity.py`).

`last_seen_at` is written at most once a minute per session, so browsing is not one write per
page; the idle expiry is accurate to that minute.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from appliance.auth import records
from appliance.auth.policy import Principal
from appliance.auth.secrets import ServerSecret
from appliance.metadata import audit, identity
from appliance.metadata.db import Database, Tx
from appliance.metadata.identity import UserRecord

TOUCH_EVERY = 60.0


@dataclass(frozen=True)
class Session:
    """A live console session and the user behind it."""

    id_hash: str
    user: UserRecord
    roles: dict[str, str]
    csrf: str
    via: str
    notice: str | None

    @property
    def principal(self) -> Principal:
        return Principal(
            "user",
            self.user.name,
            self.user.id,
            self.user.is_admin,
            self.roles,
            None,
            f"console:{self.via}",
        )


class SessionStore:
    """Create, find, touch and end console sessions."""

    def __init__(
        self,
        db: Database,
        secret: ServerSecret,
        clock: Callable[[], float],
        *,
        idle: float,
        lifetime: float,
    ) -> None:
        self.db = db
        self.secret = secret
        self.clock = clock
        self.idle = idle
        self.lifetime = lifetime

    async def create(self, user_id: int, via: str, replaces: str | None = None) -> str:
        """A new session for `user_id`; returns the id for the cookie. `replaces` (the cookie
        the browser sent, if any) is ended in the same transaction."""
        session_id = secrets.token_urlsafe(32)
        id_hash = self.secret.digest(session_id)
        csrf = secrets.token_urlsafe(32)
        now = self.clock()
        old = None if replaces is None else self.secret.digest(replaces)

        def fn(tx: Tx) -> None:
            if old is not None:
                records.delete_session(tx, old)
            records.drop_stale_sessions(tx, now, now - self.idle)
            records.insert_session(
                tx,
                {
                    "h": id_hash,
                    "uid": user_id,
                    "csrf": csrf,
                    "via": via,
                    "now": now,
                    "exp": now + self.lifetime,
                },
            )

        await self.db.write(fn)
        return session_id

    async def find(self, session_id: str) -> Session | None:
        """The live session with this id, or None (unknown, expired, idle too long, or its
        user disabled). Pops the session's pending notice."""
        if not session_id or len(session_id) > 200:
            return None
        id_hash = self.secret.digest(session_id)
        now = self.clock()

        def read(tx: Tx) -> tuple[Session | None, float]:
            row = records.session_row(tx, id_hash)
            if row is None:
                return None, 0.0
            user_id, csrf, via, seen, expires, notice = row
            if float(expires) <= now or float(seen) + self.idle <= now:
                return None, 0.0
            user = identity.user_by_id(tx, int(user_id))
            if user is None or user.disabled:
                return None, 0.0
            roles = identity.roles_of(tx, user.id)
            return Session(id_hash, user, roles, str(csrf), str(via), notice), float(seen)

        session, seen = await self.db.read(read)
        if session is not None and (session.notice is not None or now - seen >= TOUCH_EVERY):
            await self.db.write(lambda tx: records.session_seen(tx, id_hash, now))
        return session

    async def set_notice(self, id_hash: str, text: str) -> None:
        """A one-line message shown on the session's next page ("Tag deleted")."""

        await self.db.write(lambda tx: records.set_session_notice(tx, id_hash, text[:500]))

    async def end(self, session_id: str) -> None:
        """Sign out: the session is deleted and the sign-out audited (a stale or unknown
        cookie ends nothing and records nothing)."""
        id_hash = self.secret.digest(session_id)

        def fn(tx: Tx) -> None:
            row = records.session_owner(tx, id_hash)
            if row is None:
                return
            records.delete_session(tx, id_hash)
            audit.record(tx, row[0], "signout", row[0], via=row[1])

        await self.db.write(fn)
