"""Access control for a running Berth: sign-in, tokens, and who may do what right now.

`AccessControl` ties together the stores (`metadata.identity`), passwords (argon2id), hashed
tokens (HMAC), the JWT signer and verifier, LDAP and the sign-in throttle. The HTTP layers
(`api/guard.py`, `api/token.py`, `api/manage.py`) call it; it knows nothing of HTTP.

Caches, all short-lived and per process: verified bearer tokens (until they expire),
successful Basic credentials (`BASIC_TTL`), principals by token subject (`PRINCIPAL_TTL`) and
the set of public namespaces (`PUBLIC_TTL`). A change made through this process clears them.
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

from appliance.auth import passwords, policy
from appliance.auth.citrust import CiTrust, TokenRefused, looks_like_ci_login
from appliance.auth.ldap import DirectoryUnavailable, DirectoryUser, LdapDirectory
from appliance.auth.policy import ANONYMOUS, Principal
from appliance.auth.secrets import ServerSecret, looks_like_token, write_private
from appliance.auth.throttle import SignInThrottle
from appliance.auth.tokens import KeyRing, TokenIssuer, TokenVerifier, random_password
from appliance.config import Config
from appliance.errors import BerthError, Conflict, InvalidName
from appliance.metadata import identity
from appliance.metadata.db import Database, Tx
from appliance.metadata.identity import TokenRecord, UserRecord
from appliance.oci.names import normalize_component
from appliance.ops import audit

log = logging.getLogger("berth.auth")

BASIC_TTL = 30.0
PRINCIPAL_TTL = 10.0
PUBLIC_TTL = 5.0
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


def _principal(user: UserRecord, roles: dict[str, str], via: str, scopes: Any = None) -> Principal:
    return Principal(
        "user",
        user.name,
        user.id,
        user.is_admin,
        roles,
        None if scopes is None else frozenset(scopes),
        via,
    )


def _robot_principal(tx: Tx, robot_id: int) -> Principal | None:
    robot = identity.robot_by_id(tx, robot_id)
    if robot is None:
        return None
    return Principal(
        "robot", robot.account, None, False, {robot.namespace: robot.role}, None, "robot"
    )


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
        self.secret = ServerSecret.load_or_create(self.data_dir / "secret")
        self.keys = KeyRing(self.data_dir / "keys", clock, overlap=self.token_ttl + 60)
        self.keys.ensure()
        issuer = config["auth.issuer"]
        self.issuer = TokenIssuer(self.keys, issuer, self.service, self.token_ttl, clock)
        self.verifier = TokenVerifier(self.keys, issuer, self.service, clock)
        self.throttle = SignInThrottle(
            clock,
            threshold=config["auth.lockout_threshold"],
            window=config["auth.lockout_window"],
            lockout=config["auth.lockout_duration"],
        )
        self.ldap = ldap
        self.ci = CiTrust(db, config, clock)  # CI identity tokens (`docker login -u oidc`)
        self._basic: dict[str, tuple[float, Principal]] = {}
        self._subjects: dict[tuple[str, frozenset[str] | None], tuple[float, Principal]] = {}
        self._public: tuple[float, frozenset[str]] = (-1e18, frozenset())

    def invalidate(self) -> None:
        """Forget cached principals (after a change to users, roles or tokens)."""
        self._basic.clear()
        self._subjects.clear()
        self._public = (-1e18, frozenset())

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
        keys = self.throttle.keys(username, address)
        if looks_like_ci_login(username, password):
            # Every CI job signs in as `oidc`: counting failures per account would let anyone
            # lock all of them out. Their address is counted.
            keys = self.throttle.keys("", address)
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

        def fn(tx: Tx) -> dict[str, str]:
            identity.update_user(tx, user.name, last_login_at=now)
            audit.record(
                tx, user.name, "signin.success", user.name, at=now, via=via, address=address
            )
            return identity.roles_of(tx, user.id)

        roles = await self.db.write(fn)
        return _principal(user, roles, via)

    async def _token_signin(self, username: str, token: str, address: str | None) -> Principal:
        digest = self.secret.digest(token)
        now = self.clock()

        def fn(tx: Tx) -> Principal | None:
            record = identity.token_by_hash(tx, digest)
            if record is None or not record.usable(now):
                return None
            principal: Principal | None = None
            if record.kind == "pat" and record.user_id is not None:
                user = identity.user_by_id(tx, record.user_id)
                if user is None or user.disabled or (username and user.name != username.lower()):
                    return None
                principal = _principal(user, identity.roles_of(tx, user.id), "pat", record.scopes)
            elif record.kind == "robot" and record.robot_id is not None:
                principal = _robot_principal(tx, record.robot_id)
                if principal is None or (username and principal.name != username.lower()):
                    return None
            if principal is None:
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

    async def basic(
        self, header: str, username: str, password: str, address: str | None
    ) -> Principal:
        """`authenticate`, remembering a success for `BASIC_TTL` seconds (Basic on /v2)."""
        key = self.secret.digest(header)
        now = self.clock()
        hit = self._basic.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await self.authenticate(username, password, address)
        if len(self._basic) > 10_000:
            self._basic.clear()
        until = now + BASIC_TTL
        if principal.expires_at is not None:  # a CI job's rights end with its identity token
            until = min(until, principal.expires_at)
        self._basic[key] = (until, principal)
        return principal

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

        user = await self.db.write(fn)
        self.invalidate()
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
                    audit.record(tx, "system", "user.disable", user.name, at=now, reason="ldap")
                if has_admin_rule and user.is_admin != admin:
                    identity.update_user(tx, user.name, is_admin=admin)
                    audit.record(tx, "system", "user.admin", user.name, at=now, admin=admin)
                apply_ldap_roles(tx, user, roles, now)

            await self.db.write(fn)
        self.invalidate()
        return len(users)

    # -- principals and grants ---------------------------------------------------------------

    async def public_namespaces(self) -> frozenset[str]:
        until, names = self._public
        now = self.clock()
        if until > now:
            return names
        names = await self.db.read(identity.public_namespaces)
        self._public = (now + PUBLIC_TTL, names)
        return names

    async def principal_for_subject(self, subject: str, scopes: frozenset[str] | None) -> Principal:
        """The current rights of a token's subject (`user:alice`, `robot:ns+ci`)."""
        key = (subject, scopes)
        now = self.clock()
        hit = self._subjects.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        kind, _, name = subject.partition(":")

        def fn(tx: Tx) -> Principal:
            if kind == "user":
                user = identity.user_by_name(tx, name)
                if user is not None and not user.disabled:
                    return _principal(user, identity.roles_of(tx, user.id), "token", scopes)
            elif kind == "robot":
                namespace, _, robot_name = name.partition("+")
                robot = identity.robot(tx, namespace, robot_name)
                if robot is not None:
                    return _robot_principal(tx, robot.id) or ANONYMOUS
            return ANONYMOUS

        principal = await self.db.read(fn)
        self._subjects[key] = (now + PRINCIPAL_TTL, principal)
        return principal

    async def issue(self, principal: Principal, scopes: list[str]) -> dict[str, Any]:
        """A bearer token granting the requested scopes the principal may have."""
        public = await self.public_namespaces()
        granted = policy.grant(principal, policy.parse_scopes(scopes), public)
        access = [{"type": t, "name": n, "actions": sorted(a)} for t, n, a in granted]
        token, issued, ttl = self.issuer.issue(
            principal.subject, access, principal.scopes, expires_at=principal.expires_at
        )
        return {
            "token": token,
            "access_token": token,
            "expires_in": ttl,
            "issued_at": rfc3339(issued),
        }

    async def new_refresh_token(self, principal: Principal) -> str | None:
        """A refresh token (`offline_token=true`) for a user; robots get none."""
        if principal.kind != "user" or principal.user_id is None:
            return None
        token, digest = self.secret.new_token("refresh")
        now = self.clock()
        scopes = tuple(sorted(principal.scopes)) if principal.scopes is not None else ()

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
                expires_at=now + self.refresh_ttl,
            )
            audit.record(tx, principal.actor, "token.refresh.create", str(record.id), at=now)

        await self.db.write(fn)
        return token

    async def refresh(self, token: str, address: str | None) -> Principal:
        """The user a refresh token stands for; SignInFailed when it is not a valid one."""
        digest = self.secret.digest(token)
        now = self.clock()

        def fn(tx: Tx) -> tuple[TokenRecord, UserRecord, dict[str, str]] | None:
            record = identity.token_by_hash(tx, digest)
            if record is None or record.kind != "refresh" or not record.usable(now):
                return None
            user = identity.user_by_id(tx, record.user_id or -1)
            if user is None or user.disabled:
                return None
            identity.touch_token(tx, record.id, now)
            return record, user, identity.roles_of(tx, user.id)

        found = await self.db.write(fn)
        if found is None:
            raise SignInFailed
        record, user, roles = found
        return _principal(user, roles, "refresh", record.scopes or None)

    # -- changes through this process ---------------------------------------------------------

    async def change(self, fn: Callable[[Tx], Any]) -> Any:
        """Run a change (`auth.accounts`) in a write transaction and clear the caches."""
        try:
            return await self.db.write(fn)
        finally:
            self.invalidate()

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
