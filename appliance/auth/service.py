"""Access control for a running Berth: sign-in, tokens, and who may do what right now.

`AccessControl` ties together the stores (`metadata.identity`), passwords (argon2id), hashed
tokens (HMAC), the JWT signer and verifier, LDAP, CI identity tokens (`auth/citrust.py`:
`docker login -u oidc -p "$ID_TOKEN"`) and the sign-in throttle. The HTTP layers
(`api/guard.py`, `api/token.py`, `api/manage/`) call it; it knows nothing of HTTP.

Every registry JWT names the credential that minted it (`auth/credentials.py`), and every
request re-checks that credential and intersects the token's grant with the holder's rights
*now*, so revoking a token, deleting a robot, disabling or demoting a user, or removing a CI
trust rule takes effect on the next request. To keep that cheap, the answers are cached per
process in `StampedCache`s validated by the `auth` change stamp (metadata/changes.py), which
every change to identity facts touches in its transaction: a cache hit costs one read of
shared memory, and a change made by any process of the host is seen by the next request (by
other hosts, on PostgreSQL, within milliseconds). The caches: successful Basic credentials,
credentials by reference, and the set of public namespaces. Entries also end when their
credential expires; a Basic sign-in checked against LDAP is re-checked after `DIRECTORY_TTL`
(the directory's changes touch no stamp).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import trio

from appliance.auth import credentials, passwords, policy
from appliance.auth.citrust import CiTrust, TokenRefused, looks_like_ci_login
from appliance.auth.ldap import DirectoryUnavailable, DirectoryUser, LdapDirectory
from appliance.auth.policy import ANONYMOUS, Principal
from appliance.auth.secrets import ServerSecret, looks_like_token, write_private
from appliance.auth.throttle import SignInThrottle
from appliance.auth.tokens import (
    Claims,
    KeyRing,
    TokenIssuer,
    TokenVerifier,
    UnknownKey,
    key_directory,
    random_password,
)
from appliance.config import Config
from appliance.errors import BerthError, Conflict, InvalidName
from appliance.metadata import audit, identity
from appliance.metadata.changes import StampedCache
from appliance.metadata.db import Database, Tx
from appliance.metadata.identity import AUTH, UserRecord
from appliance.oci.names import normalize_component
from appliance.runtime.buckets import SharedBuckets

log = logging.getLogger("berth.auth")

DIRECTORY_TTL = 30.0  # a Basic sign-in checked against LDAP is asked again after this
NEVER = float("inf")
INITIAL_PASSWORD_FILE = "initial-admin-password"  # noqa: S105 (a file name)


class SignInFailed(BerthError):
    """Wrong name, password or token; deliberately says no more than that."""

    def __init__(self) -> None:
        super().__init__("incorrect username or password")


class SignInLocked(BerthError):
    """Too many failed sign-ins for this account or address; try again later."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many failed sign-ins; try again later")
        self.retry_after = retry_after


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AccessControl:
    def __init__(
        self,
        db: Database,
        config: Config,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
        ldap: LdapDirectory | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.sleep = sleep
        self.data_dir = config.data_dir
        self.service = config["auth.service"]
        self.token_ttl = float(config["auth.token_ttl"])
        self.refresh_ttl = float(config["auth.refresh_token_ttl"])
        # The one secret every host shares; made here only where it is the default file.
        self.secret = ServerSecret.load(config.secret_path, create=not config["server.secret_file"])
        self.keys = KeyRing(db, self.secret, clock, overlap=self.token_ttl + 60)
        self.keys.import_directory(key_directory(self.data_dir))  # an older Berth's, once
        self.keys.ensure_sync()
        issuer = config["auth.issuer"]
        self.issuer = TokenIssuer(self.keys, issuer, self.service, self.token_ttl, clock)
        self.verifier = TokenVerifier(self.keys, issuer, self.service, clock)
        self.throttle = SignInThrottle(
            clock,
            threshold=config["auth.lockout_threshold"],
            window=config["auth.lockout_window"],
            lockout=config["auth.lockout_duration"],
            buckets=SharedBuckets(self.data_dir / "run" / "signin"),  # the host's, not ours
        )
        self.ldap = ldap
        self.ci = CiTrust(db, config, clock)  # CI identity tokens (`docker login -u oidc`)
        # Each entry: (good until, value), valid while the `auth` stamp is unchanged.
        self._basic: StampedCache[str, tuple[float, Principal]] = StampedCache()
        self._credentials: StampedCache[str, tuple[float, Principal | None]] = StampedCache()
        self._public: StampedCache[str, frozenset[str]] = StampedCache(1)
        self._signing_in: dict[str, trio.Lock] = {}  # Basic checks in flight, by credentials

    def invalidate(self) -> None:
        """Forget every cached answer (tests; a change needs no call: it touches the stamp)."""
        self._basic.clear()
        self._credentials.clear()
        self._public.clear()

    # -- first start -----------------------------------------------------------------------

    async def bootstrap(self, admin_password: str) -> str | None:
        """On a new install (no users), create `admin`. Returns the generated password, if one
        was generated; it is also written once to `<data_dir>/initial-admin-password` (0600)."""
        generated = None if admin_password else random_password()
        password = admin_password or generated
        assert password is not None
        digest = await trio.to_thread.run_sync(passwords.hash_password, password)
        now = self.clock()

        def fn(tx: Tx) -> bool:
            if identity.count_users(tx):
                return False
            identity.create_user(tx, "admin", now, password_hash=digest, admin=True)
            audit.record(tx, "system", "user.create", "admin", at=now, admin=True, first=True)
            return True

        if not await self.db.write(fn):
            return None
        if generated is not None:
            path = self.data_dir / INITIAL_PASSWORD_FILE
            await trio.to_thread.run_sync(write_private, path, (generated + "\n").encode())
            log.warning("created the first admin account 'admin'; its password is in %s", path)
            if sys.stdout.isatty():
                print(f"Berth: first admin account 'admin', password: {generated}", flush=True)
        else:
            log.warning(
                "created the first admin account 'admin' (password from BERTH_ADMIN_PASSWORD)"
            )
        return generated

    # -- sign-in ---------------------------------------------------------------------------

    async def authenticate(self, username: str, password: str, address: str | None) -> Principal:
        """Check a name and a password (or a PAT or robot token). Raises SignInFailed,
        SignInLocked, or DirectoryUnavailable (LDAP could not be asked)."""
        keys = self._throttle_keys(username, password, address)
        wait = self.throttle.locked_for(keys)
        if wait > 0:
            raise SignInLocked(wait)
        try:
            principal = await self._check(username, password, address)
        except SignInFailed:
            self.throttle.failure(keys)
            now = self.clock()
            await self.db.write(
                lambda tx: audit.record(
                    tx,
                    username[:100] or "-",
                    "signin.failure",
                    username[:100],
                    at=now,
                    address=address,
                )
            )
            delay = self.throttle.delay(keys)
            if delay > 0:
                await self.sleep(delay)
            raise
        self.throttle.success(keys)
        return principal

    def _throttle_keys(self, username: str, password: str, address: str | None) -> list[str]:
        """The lockout buckets a sign-in counts against: its account and its address."""
        if looks_like_ci_login(username, password):
            # Every CI job signs in as `oidc`: counting failures per account would let anyone
            # lock all of them out. Their address is counted.
            return self.throttle.keys("", address)
        return self.throttle.keys(username, address)

    async def _check(self, username: str, password: str, address: str | None) -> Principal:
        if not password or (not username and not looks_like_token(password)):
            raise SignInFailed
        if looks_like_ci_login(username, password):
            try:
                return await self.ci.authenticate(password)
            except TokenRefused as e:
                log.info("CI identity token refused: %s", str(e)[:1000])
                raise SignInFailed from None
        if looks_like_token(password):
            return await self._token_signin(username, password, address)
        if "+" in username:
            raise SignInFailed  # robots sign in with their token only
        name = username.lower()
        user = await self.db.read(lambda tx: identity.user_by_name(tx, name))
        if user is not None and user.source == "local":
            stored = user.password_hash
            ok = stored is not None and await trio.to_thread.run_sync(
                passwords.verify_password, stored, password
            )
            if not ok or user.disabled:
                raise SignInFailed
            return await self._signed_in(user, "password", address)
        if self.ldap is not None and (user is None or user.source == "ldap"):
            found = await trio.to_thread.run_sync(self.ldap.authenticate, username, password)
            if found is None:
                raise SignInFailed
            user = await self._ldap_user(found)
            if user.disabled:
                raise SignInFailed
            return await self._signed_in(user, "ldap", address)
        await trio.to_thread.run_sync(passwords.verify_dummy, password)
        raise SignInFailed

    async def _signed_in(self, user: UserRecord, via: str, address: str | None) -> Principal:
        now = self.clock()

        def fn(tx: Tx) -> Principal:
            identity.update_user(tx, user.name, last_login_at=now)
            audit.record(
                tx, user.name, "signin.success", user.name, at=now, via=via, address=address
            )
            return credentials.user_principal(tx, user, via, credentials.of_sign_in(via, user))

        principal: Principal = await self.db.write(fn)
        return principal

    async def _token_signin(self, username: str, token: str, address: str | None) -> Principal:
        digest = self.secret.digest(token)
        now = self.clock()

        def fn(tx: Tx) -> Principal | None:
            record = identity.token_by_hash(tx, digest)
            if record is None or record.kind not in ("pat", "robot"):
                return None  # refresh tokens are only for the token endpoint's refresh grant
            found = credentials.resolve_token(tx, record, now)
            if found is None:
                return None
            principal = found.principal
            if username and principal.name != username.lower():
                return None
            identity.touch_token(tx, record.id, now)
            audit.record(
                tx,
                principal.actor,
                "signin.success",
                principal.name,
                at=now,
                via=record.kind,
                token=record.id,
                address=address,
            )
            return principal

        principal = await self.db.write(fn)
        if principal is None:
            raise SignInFailed
        return principal

    def remembered(self, header: str) -> bool:
        """Whether `basic` would answer these credentials from what it remembers: a sign-in
        that costs no password check (the sign-in rate limit lets it pass)."""
        return self._remembered(self.secret.digest(header), self.db.changes.stamp(AUTH)) is not None

    def _remembered(self, key: str, stamp: int) -> Principal | None:
        """The remembered principal of credentials digested to `key`, while it holds."""
        hit = self._basic.get(key, stamp)
        return hit[1] if hit is not None and hit[0] > self.clock() else None

    async def basic(
        self, header: str, username: str, password: str, address: str | None
    ) -> Principal:
        """`authenticate`, remembering a success until a change to identity facts, the
        credential's expiry, or `DIRECTORY_TTL` for LDAP: Basic on /v2 and /api/v1, and the
        token endpoint's password sign-ins (every `docker pull` asks for a token, and argon2
        costs about 0.1 s of CPU). `header` is what the credentials are remembered by."""
        key = self.secret.digest(header)
        # A locked account or address is refused before the remembered answer is looked at:
        # otherwise, once its owner had signed in, a guesser held back by the lockout would
        # still be told when a guess was right.
        wait = self.throttle.locked_for(self._throttle_keys(username, password, address))
        if wait > 0:
            raise SignInLocked(wait)
        known = self._remembered(key, self.db.changes.stamp(AUTH))
        if known is not None:
            return known
        # One check per credentials at a time: a client opening many connections at once
        # (docker, skopeo, a load test) would otherwise run argon2 once per connection on a
        # cold process. The others wait for that check and take its cached answer.
        lock = self._signing_in.setdefault(key, trio.Lock())
        try:
            async with lock:
                stamp = self.db.changes.stamp(AUTH)
                known = self._remembered(key, stamp)
                if known is not None:
                    return known
                principal = await self.authenticate(username, password, address)
                until = principal.expires_at if principal.expires_at is not None else NEVER
                if principal.via == "ldap":
                    until = min(until, self.clock() + DIRECTORY_TTL)
                self._basic.put(key, (until, principal), stamp)
                return principal
        finally:
            if not lock.locked() and self._signing_in.get(key) is lock:
                del self._signing_in[key]

    # -- LDAP ------------------------------------------------------------------------------

    async def _ldap_user(self, found: DirectoryUser) -> UserRecord:
        """Create or update the local record of an LDAP user, and apply their group roles."""
        assert self.ldap is not None
        roles, admin = self.ldap.roles_for(found)
        name = normalize_component(found.uid)
        now = self.clock()
        has_admin_rule = any(r.role == "admin" for r in self.ldap.settings.group_roles)

        def fn(tx: Tx) -> UserRecord:
            user = identity.user_by_name(tx, name)
            if user is None:
                try:
                    user = identity.create_user(
                        tx,
                        name,
                        now,
                        source="ldap",
                        email=found.email,
                        display_name=found.display_name,
                        external_id=found.dn,
                        admin=admin and has_admin_rule,
                    )
                except Conflict:
                    raise SignInFailed from None
                audit.record(tx, "system", "user.create", name, at=now, source="ldap")
            elif user.source != "ldap":
                raise SignInFailed
            else:
                fields: dict[str, object] = {
                    "email": found.email,
                    "display_name": found.display_name,
                    "external_id": found.dn,
                }
                if has_admin_rule:
                    fields["is_admin"] = admin
                user = identity.update_user(tx, name, **fields)
            apply_ldap_roles(tx, user, roles, now)
            return user

        user: UserRecord = await self.db.write(fn)
        return user

    async def sync_ldap(self) -> int:
        """Re-read every LDAP user's groups; a user gone from the directory is disabled.
        Returns how many users were looked at."""
        if self.ldap is None:
            return 0
        ldap = self.ldap
        users = await self.db.read(lambda tx: identity.list_users(tx, "ldap"))
        has_admin_rule = any(r.role == "admin" for r in ldap.settings.group_roles)
        for user in users:
            found = await trio.to_thread.run_sync(ldap.lookup, user.name)
            now = self.clock()
            if found is None:
                roles: dict[str, str] = {}
                admin = False
            else:
                roles, admin = ldap.roles_for(found)

            def fn(  # noqa: PLR0917 (loop values bound as defaults)
                tx: Tx,
                user: UserRecord = user,
                roles: dict[str, str] = roles,
                admin: bool = admin,
                gone: bool = found is None,
                now: float = now,
            ) -> None:
                if gone and not user.disabled:
                    identity.update_user(tx, user.name, disabled=True)
                    identity.revoke_refresh_tokens(tx, user.id, now)
                    audit.record(tx, "system", "user.disable", user.name, at=now, reason="ldap")
                if has_admin_rule and user.is_admin != admin:
                    identity.update_user(tx, user.name, is_admin=admin)
                    audit.record(tx, "system", "user.admin", user.name, at=now, admin=admin)
                apply_ldap_roles(tx, user, roles, now)

            await self.db.write(fn)
        return len(users)

    # -- principals and grants ---------------------------------------------------------------

    async def public_namespaces(self) -> frozenset[str]:
        stamp = self.db.changes.stamp(AUTH)
        names = self._public.get("", stamp)
        if names is None:
            names = await self.db.read(identity.public_namespaces)
            self._public.put("", names, stamp)
        return names

    async def holder(self, credential: str) -> Principal | None:
        """Who `credential` stands for now, with their current rights; None once it no
        longer works (`credentials.resolve`). Cached until a change to identity facts or the
        credential's expiry."""
        stamp = self.db.changes.stamp(AUTH)
        hit = self._credentials.get(credential, stamp)
        now = self.clock()
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self.db.read(lambda tx: credentials.resolve(tx, credential, now))
        if found is None:
            self._credentials.put(credential, (NEVER, None), stamp)
            return None
        until = found.until if found.until is not None else NEVER
        self._credentials.put(credential, (until, found.principal), stamp)
        return found.principal if until > now else None

    async def verify(self, token: str) -> Claims:
        """`verifier.verify`, reading the signing keys again when the token names one this
        process has not read yet (a rotation on another host). Raises InvalidToken."""
        try:
            return self.verifier.verify(token)
        except UnknownKey:
            if not await self.keys.reload_for_unknown():
                raise
        return self.verifier.verify(token)

    async def principal_for_claims(self, claims: Claims) -> Principal | None:
        """The caller a verified registry token stands for now, or None when the credential
        that minted it no longer works (or the token names none: minted before Berth bound
        tokens to credentials; its client asks for a new one)."""
        if claims.subject == "anonymous":
            return ANONYMOUS
        if claims.credential is None:
            return None
        principal = await self.holder(claims.credential)
        if principal is None or principal.subject != claims.subject:
            return None
        return principal

    async def issue(self, principal: Principal, scopes: list[str]) -> dict[str, Any]:
        """A bearer token granting the requested scopes the principal may have, naming the
        credential it was minted with, and expiring no later than that credential."""
        public = await self.public_namespaces()
        await self.keys.refresh()  # a rotation on any host: sign with the current key
        granted = policy.grant(principal, policy.parse_scopes(scopes), public)
        access = [{"type": t, "name": n, "actions": sorted(a)} for t, n, a in granted]
        token, issued, ttl = self.issuer.issue(
            principal.subject,
            access,
            principal.scopes,
            credential=principal.credential,
            not_after=principal.expires_at,
        )
        return {
            "token": token,
            "access_token": token,
            "expires_in": ttl,
            "issued_at": rfc3339(issued),
        }

    async def new_refresh_token(self, principal: Principal) -> str | None:
        """A refresh token (`offline_token=true`) for a user; robots get none. It is bound to
        the credential the user signed in with (revoked with it), holds at most its scopes,
        and expires no later than it."""
        if principal.kind != "user" or principal.user_id is None or principal.credential is None:
            return None
        token, digest = self.secret.new_token("refresh")
        now = self.clock()
        scopes = tuple(sorted(principal.scopes)) if principal.scopes is not None else ()
        expires = credentials.earliest(now + self.refresh_ttl, principal.expires_at)

        def fn(tx: Tx) -> None:
            assert principal.user_id is not None
            record = identity.create_token(
                tx,
                "refresh",
                digest,
                now,
                user_id=principal.user_id,
                name="refresh",
                scopes=scopes,
                expires_at=expires,
                minted_by=principal.credential,
            )
            audit.record(
                tx,
                principal.actor,
                "token.refresh.create",
                str(record.id),
                at=now,
                minted_by=credentials.describe(principal.credential),
            )

        await self.db.write(fn)
        return token

    async def refresh(self, token: str, address: str | None) -> Principal:
        """The user a refresh token stands for; SignInFailed when it is not a valid one (or
        the credential it was minted with no longer works)."""
        digest = self.secret.digest(token)
        now = self.clock()

        def fn(tx: Tx) -> Principal | None:
            record = identity.token_by_hash(tx, digest)
            if record is None or record.kind != "refresh":
                return None
            found = credentials.resolve_token(tx, record, now)
            if found is None:
                return None
            identity.touch_token(tx, record.id, now)
            return found.principal

        principal = await self.db.write(fn)
        if principal is None:
            raise SignInFailed
        return principal

    # -- changes through this process ---------------------------------------------------------

    async def change(self, fn: Callable[[Tx], Any]) -> Any:
        """Run a change (`auth.accounts`) in a write transaction. The functions it calls
        touch the `auth` stamp themselves, so every process's caches see it."""
        return await self.db.write(fn)

    async def hash_password(self, password: str) -> str:
        passwords.check_strength(password)
        return await trio.to_thread.run_sync(passwords.hash_password, password)


def apply_ldap_roles(
    tx: Tx, user: UserRecord, roles: dict[str, str], now: float, source: str = "ldap"
) -> None:
    """Make the user's memberships from `source` (ldap, saml) exactly `roles` (manual ones
    are left alone); mapped namespaces that do not exist yet are created."""
    current = identity.memberships_from(tx, user.id, source)
    existing = identity.roles_of(tx, user.id)
    for namespace in current.keys() - roles.keys():
        identity.remove_member(tx, namespace, user.name)
        audit.record(
            tx, "system", "member.remove", f"{namespace}/{user.name}", at=now, source=source
        )
    for namespace, role in roles.items():
        if current.get(namespace) == role:
            continue
        if namespace in existing and namespace not in current:
            continue  # a manual or personal membership wins over the mapping
        if identity.namespace_by_name(tx, namespace) is None:
            try:
                identity.create_namespace(tx, namespace, now)
            except Conflict:
                continue
            audit.record(tx, "system", "namespace.create", namespace, at=now, source=source)
        identity.set_member(tx, namespace, user.name, role, now, source=source)
        audit.record(
            tx, "system", "member.set", f"{namespace}/{user.name}", at=now, role=role, source=source
        )


def ldap_from_config(config: Config) -> LdapDirectory | None:
    from appliance.auth.ldap import LdapSettings, parse_group_roles  # noqa: PLC0415

    url = config["ldap.url"]
    if not url:
        return None
    return LdapDirectory(
        LdapSettings(
            url=url,
            bind_dn=config["ldap.bind_dn"],
            bind_password=config["ldap.bind_password"],
            user_base=config["ldap.user_base"],
            user_filter=config["ldap.user_filter"],
            uid_attribute=config["ldap.uid_attribute"],
            email_attribute=config["ldap.email_attribute"],
            name_attribute=config["ldap.name_attribute"],
            group_base=config["ldap.group_base"],
            group_filter=config["ldap.group_filter"],
            start_tls=config["ldap.start_tls"],
            ca_file=config["ldap.ca_file"],
            timeout=config["ldap.timeout"],
            group_roles=parse_group_roles(config["ldap.group_roles"]),
        )
    )


async def open_access_control(
    db: Database, config: Config, clock: Callable[[], float] = time.time
) -> AccessControl:
    """Load (or make) the secret and keys, connect LDAP if configured, and on a new install
    create the first admin."""
    ldap = ldap_from_config(config)
    control = await trio.to_thread.run_sync(partial(AccessControl, db, config, clock, ldap=ldap))
    await control.bootstrap(config["admin.password"])
    return control


__all__ = [
    "AccessControl",
    "DirectoryUnavailable",
    "InvalidName",
    "SignInFailed",
    "SignInLocked",
    "open_access_control",
]
