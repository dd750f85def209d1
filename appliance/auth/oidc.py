"""OpenID Connect sign-in to the console: Berth as a relying party, knowing nothing of HTTP
frameworks (the console's pages/oidc.py drives it).

- Providers are the `[oidc.NAME]` tables of the settings. Each names an issuer (its discovery
  document is fetched and checked as OpenID Provider metadata) or a discovery document file,
  a client id and, for a confidential client, a file holding the client secret.
- The authorization code flow with PKCE (S256), `state` and `nonce`. A pending sign-in is a
  row of `oidc_states`, keyed by a hash of its `state`, holding the nonce, the PKCE verifier,
  a hash of the browser's binding cookie and where to go after; the callback takes (deletes)
  it, so a state is good once, on any worker, within `STATE_TTL`, and only in the browser that
  started it (a sign-in link cannot be handed to someone else).
- The ID token from the token endpoint is checked with joserfc and Authlib: its signature
  against the provider's keys (refetched when it names an unknown key id, at most once per
  `REFRESH_INTERVAL`), `iss`, `aud` (and `azp`), `exp`/`iat` with `CLOCK_SKEW`, `nonce`, and
  `at_hash` when present. Claims missing from the ID token (many providers release profile,
  email and groups only at the userinfo endpoint) are read from userinfo, whose `sub` must be
  the ID token's.
- Accounts follow the SAML and LDAP rules: the user name from `username_claim` (else the
  email address before any '@'), normalized to the repository-name grammar; groups mapped to
  namespace roles with `group_roles`. An account is `source` `oidc:NAME` and bound to the
  provider's subject (`sub`): the second sign-in of that subject reuses it, whatever the name
  claim says then, and a name taken by anyone else is refused with a message saying so.

Authlib provides the protocol pieces (authorization URL, token request, client
authentication, discovery metadata and ID token claim checks); the HTTP requests are Berth's,
bounded like every fetch of `auth/jwks.py`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from appliance.auth import credentials, jwks, records
from appliance.auth.jwks import ForeignTokenError, IssuerKeys, KeysUnavailable
from appliance.auth.ldap import GroupRole, mapped_roles, parse_group_roles
from appliance.auth.policy import Principal
from appliance.config import Config
from appliance.errors import BerthError, ConfigError, Conflict
from appliance.metadata import audit, identity
from appliance.metadata.db import Tx
from appliance.metadata.identity import UserRecord
from appliance.oci.names import normalize_component

STATE_TTL = 600.0
CLOCK_SKEW = 60
REFRESH_INTERVAL = 10.0  # a sign-in provider's keys may be fetched again this often
KEYS_TTL = 3600.0
MAX_GROUPS = 1000


class OidcError(BerthError):
    """An OpenID Connect sign-in that cannot go on; the message is fit for the person."""


@dataclass(frozen=True)
class OidcIdentity:
    """Who a provider says signed in."""

    name: str
    email: str | None
    display_name: str | None
    groups: frozenset[str]
    subject: str


@dataclass(frozen=True)
class Pending:
    """A sign-in on its way through the provider: what the callback needs."""

    state: str
    nonce: str
    verifier: str


@dataclass(frozen=True)
class ProviderSettings:
    name: str
    label: str
    issuer: str
    discovery_file: str
    client_id: str
    client_secret: str | None
    scopes: tuple[str, ...]
    username_claim: str
    email_claim: str
    name_claim: str
    groups_claim: str
    group_roles: tuple[GroupRole, ...]
    allow_http: bool


def digest(value: str) -> str:
    """How one-use values are stored: a plain hash is enough for 256 random bits."""
    return hashlib.sha256(value.encode()).hexdigest()


class OidcProvider:
    """One configured OpenID provider."""

    def __init__(self, settings: ProviderSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.keys = IssuerKeys(
            clock,
            ttl=KEYS_TTL,
            refresh_interval=REFRESH_INTERVAL,
            full=True,
            allow_http=settings.allow_http,
        )
        if settings.discovery_file:
            try:
                document = json.loads(Path(settings.discovery_file).read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(
                    f"oidc.{settings.name}.discovery_file: cannot read "
                    f"{settings.discovery_file}: {e}"
                ) from None
            try:
                self.keys.preload(settings.issuer, document)
            except KeysUnavailable as e:
                raise ConfigError(f"oidc.{settings.name}.discovery_file: {e.message}") from None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def label(self) -> str:
        return self.settings.label

    @property
    def source(self) -> str:
        """The `source` of the accounts this provider signs in."""
        return f"oidc:{self.settings.name}"

    async def discovery(self) -> dict[str, Any]:
        try:
            return await self.keys.discovery(self.settings.issuer)
        except KeysUnavailable as e:
            raise OidcError(f"{self.label} cannot be reached: {e.message}") from None

    # -- the flow ------------------------------------------------------------------------

    async def begin(self, redirect_uri: str) -> tuple[str, Pending]:
        """(URL to send the browser to, what to remember until the callback)."""
        from authlib.oauth2.rfc6749.parameters import prepare_grant_uri  # noqa: PLC0415
        from authlib.oauth2.rfc7636 import create_s256_code_challenge  # noqa: PLC0415

        document = await self.discovery()
        pending = Pending(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        )
        endpoint = document.get("authorization_endpoint")
        if not isinstance(endpoint, str):
            raise OidcError(f"{self.label} publishes no authorization endpoint")
        url = prepare_grant_uri(
            endpoint,
            self.settings.client_id,
            "code",
            redirect_uri=redirect_uri,
            scope=" ".join(self.settings.scopes),
            state=pending.state,
            nonce=pending.nonce,
            code_challenge=create_s256_code_challenge(pending.verifier),
            code_challenge_method="S256",
        )
        return str(url), pending

    async def finish(
        self, redirect_uri: str, code: str, pending: Pending, issuer_param: str | None = None
    ) -> OidcIdentity:
        """Exchange the code, check the ID token, read userinfo; who signed in. Raises
        OidcError."""
        if issuer_param is not None and issuer_param != self.settings.issuer:
            raise OidcError("the answer names another issuer (mix-up): start again")
        document = await self.discovery()
        tokens = await self._exchange(document, redirect_uri, code, pending.verifier)
        id_token = tokens.get("id_token")
        access_token = tokens.get("access_token")
        if not isinstance(id_token, str):
            raise OidcError(f"{self.label} returned no ID token")
        claims = await self.check_id_token(
            id_token, pending.nonce, access_token if isinstance(access_token, str) else None
        )
        s = self.settings
        wanted = (s.username_claim, s.email_claim, s.name_claim, s.groups_claim)
        endpoint = document.get("userinfo_endpoint")
        if isinstance(access_token, str) and endpoint and any(c not in claims for c in wanted):
            extra = await self._userinfo(str(endpoint), access_token)
            if extra.get("sub") != claims.get("sub"):
                raise OidcError(f"{self.label}'s userinfo names another subject")
            claims = {**extra, **claims}
        return self.identity(claims)

    async def _exchange(
        self, document: dict[str, Any], redirect_uri: str, code: str, verifier: str
    ) -> dict[str, Any]:
        from authlib.oauth2.auth import ClientAuth  # noqa: PLC0415
        from authlib.oauth2.rfc6749.parameters import prepare_token_request  # noqa: PLC0415

        body = prepare_token_request(
            "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=verifier
        )
        method = "client_secret_basic" if self.settings.client_secret else "none"
        auth = ClientAuth(self.settings.client_id, self.settings.client_secret or "", method)
        headers = {"content-type": "application/x-www-form-urlencoded"}
        endpoint = document.get("token_endpoint")
        if not isinstance(endpoint, str):
            raise OidcError(f"{self.label} publishes no token endpoint")
        url, headers, body = auth.prepare("POST", endpoint, headers, body)
        try:
            async with jwks.new_client() as client:
                status, answer = await jwks.fetch_json(
                    client, url, method="POST", content=body, headers=headers
                )
        except KeysUnavailable as e:
            raise OidcError(f"{self.label}'s token endpoint failed: {e.message}") from None
        if not isinstance(answer, dict):
            raise OidcError(f"{self.label}'s token endpoint answered {status} without an object")
        if status != 200:
            error = str(answer.get("error", status))[:100]
            detail = str(answer.get("error_description", ""))[:200]
            raise OidcError(f"{self.label} refused the sign-in: {error} {detail}".strip())
        return answer

    async def _userinfo(self, endpoint: str, access_token: str) -> dict[str, Any]:
        try:
            async with jwks.new_client() as client:
                status, answer = await jwks.fetch_json(
                    client, endpoint, headers={"authorization": f"Bearer {access_token}"}
                )
        except KeysUnavailable as e:
            raise OidcError(f"{self.label}'s userinfo endpoint failed: {e.message}") from None
        if status != 200 or not isinstance(answer, dict):
            raise OidcError(f"{self.label}'s userinfo endpoint answered {status}")
        return answer

    async def check_id_token(
        self, id_token: str, nonce: str, access_token: str | None = None
    ) -> dict[str, Any]:
        """The claims of a valid ID token for this client and this nonce. Raises OidcError."""
        from authlib.oidc.core import CodeIDToken  # noqa: PLC0415
        from joserfc.errors import JoseError  # noqa: PLC0415

        try:
            kid = jwks.peek(id_token).header.get("kid")
            keys = await self.keys.keys(self.settings.issuer, kid if isinstance(kid, str) else None)
            verified = jwks.verify(id_token, keys)
        except (ForeignTokenError, KeysUnavailable) as e:
            raise OidcError(f"the ID token from {self.label} is not valid: {e.message}") from None
        claims = CodeIDToken(
            verified.claims,
            verified.header,
            options={
                "iss": {"essential": True, "value": self.settings.issuer},
                "aud": {"essential": True, "value": self.settings.client_id},
                "sub": {"essential": True},
            },
            params={
                "nonce": nonce,
                "client_id": self.settings.client_id,
                "access_token": access_token,
            },
        )
        try:
            claims.validate(now=int(self.clock()), leeway=CLOCK_SKEW)
        except JoseError as e:
            raise OidcError(
                f"the ID token from {self.label} is not valid: {e.error}: {e.description}"
            ) from None
        return dict(claims)

    def identity(self, claims: dict[str, Any]) -> OidcIdentity:
        s = self.settings

        def text(claim: str) -> str | None:
            value = claims.get(claim) if claim else None
            return str(value)[:300] if isinstance(value, str | int) and value != "" else None

        email = text(s.email_claim)
        raw = text(s.username_claim) or (email.split("@", 1)[0] if email else None)
        name = normalize_component(raw) if raw else ""
        if not name:
            raise OidcError(f"{self.label} named no user ({s.username_claim} or {s.email_claim})")
        groups = claims.get(s.groups_claim) if s.groups_claim else None
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list):
            groups = []
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise OidcError(f"{self.label} named no subject")
        return OidcIdentity(
            name,
            email,
            text(s.name_claim),
            frozenset(str(g) for g in groups[:MAX_GROUPS] if isinstance(g, str | int)),
            subject[:300],
        )

    def roles_for(self, who: OidcIdentity) -> tuple[dict[str, str], bool]:
        """(namespace → highest mapped role, admin?) for the user's groups."""
        return mapped_roles(self.settings.group_roles, who.groups)

    async def logout_url(self, post_logout_redirect_uri: str) -> str | None:
        """Where to end the session at the provider too (RP-initiated logout), if it can."""
        try:
            endpoint = (await self.discovery()).get("end_session_endpoint")
        except OidcError:
            return None
        if not isinstance(endpoint, str):
            return None
        query = urlencode(
            {
                "client_id": self.settings.client_id,
                "post_logout_redirect_uri": post_logout_redirect_uri,
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def status(self) -> dict[str, Any]:
        """What the Status page shows of this provider (fetches discovery if not yet done)."""
        out: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "issuer": self.settings.issuer,
            "from_file": bool(self.settings.discovery_file),
            "ok": False,
            "error": None,
            "end_session": False,
            "key_count": 0,
            "fetched_at": None,
        }
        try:
            document = await self.discovery()
            await self.keys.keys(self.settings.issuer)
        except (OidcError, KeysUnavailable) as e:
            out["error"] = e.message
        else:
            out["ok"] = True
            out["end_session"] = "end_session_endpoint" in document
        for entry in self.keys.status():
            out["key_count"], out["fetched_at"] = entry.keys, entry.fetched_at
            out["error"] = out["error"] or entry.error
        return out


# -- pending sign-ins (one use, in the database) -------------------------------------------------


def remember(  # noqa: PLR0917
    tx: Tx, provider: str, pending: Pending, binding: str, target: str, now: float
) -> None:
    """Remember a sign-in sent to `provider` (in `tx`); expired ones are dropped."""
    records.drop_expired_oidc_states(tx, now)
    records.insert_oidc_state(
        tx,
        {
            "state": digest(pending.state),
            "provider": provider,
            "binding": digest(binding),
            "nonce": pending.nonce,
            "verifier": pending.verifier,
            "next": target[:1000],
            "now": now,
            "exp": now + STATE_TTL,
        },
    )


@dataclass(frozen=True)
class Taken:
    """A pending sign-in as it was stored, just taken out of `oidc_states`."""

    state: str
    provider: str
    binding_hash: str
    nonce: str
    verifier: str
    target: str
    expires_at: float


def take(tx: Tx, state: str) -> Taken | None:
    """Take the pending sign-in `state` names out of the database (in `tx`): whatever is then
    found wrong with it, it is pending no more. None when there is none."""
    row = records.take_oidc_state(tx, digest(state))
    if row is None:
        return None
    provider, binding_hash, nonce, verifier, target, expires = row
    return Taken(
        state,
        str(provider),
        str(binding_hash),
        str(nonce),
        str(verifier),
        str(target),
        float(expires),
    )


def accept(taken: Taken | None, provider: str, binding: str, now: float) -> tuple[Pending, str]:
    """The pending sign-in and where it was going, if `taken` is one `provider` may finish in
    this browser now. Raises OidcError when there is none (unknown, expired, used already, for
    another provider) or it was started in another browser."""
    if taken is None or taken.provider != provider or taken.expires_at < now:
        raise OidcError("this sign-in answers no pending request (expired or used already)")
    if not secrets.compare_digest(taken.binding_hash, digest(binding)):
        raise OidcError("this sign-in was started in another browser; start again here")
    return Pending(taken.state, taken.nonce, taken.verifier), taken.target


# -- accounts ----------------------------------------------------------------------------------


def _user_by_subject(tx: Tx, source: str, subject: str) -> UserRecord | None:
    name = records.user_name_by_subject(tx, source, subject)
    return None if name is None else identity.user_by_name(tx, name)


def sign_in_user(tx: Tx, provider: OidcProvider, who: OidcIdentity, now: float) -> Principal:
    """Create or update the account of `who`, apply their group roles (in `tx`, through
    `metadata.identity`: a lost role or admin flag touches the `auth` topic and ends the
    user's other console sessions, as for LDAP and SAML), and return the signed-in user with
    a credential of this provider's own kind (`oidc:<provider>:<user id>:<generation>`).
    Raises OidcError when the name belongs to someone else or the account is disabled."""
    from appliance.auth.service import apply_ldap_roles  # noqa: PLC0415

    roles, admin = provider.roles_for(who)
    has_admin_rule = any(r.role == "admin" for r in provider.settings.group_roles)
    source = provider.source
    user = _user_by_subject(tx, source, who.subject)
    if user is None:
        taken = identity.user_by_name(tx, who.name)
        if taken is not None and taken.source == source:
            raise OidcError(
                f"the account {who.name!r} belongs to another {provider.label} identity; "
                "ask an admin"
            )
        if taken is not None:
            raise OidcError(
                f"the account {who.name!r} exists and signs in with {taken.source}, "
                f"not {provider.label}"
            )
        try:
            user = identity.create_user(
                tx,
                who.name,
                now,
                source=source,
                email=who.email,
                display_name=who.display_name,
                external_id=who.subject,
                admin=admin and has_admin_rule,
            )
        except Conflict as e:
            raise OidcError(f"cannot create the account {who.name!r}: {e.message}") from e
        audit.record(tx, "system", "user.create", who.name, at=now, source=source)
    else:
        fields: dict[str, object] = {"email": who.email, "display_name": who.display_name}
        if has_admin_rule:
            fields["is_admin"] = admin
        user = identity.update_user(tx, user.name, **fields)
    if user.disabled:
        raise OidcError(f"the account {user.name!r} is disabled")
    apply_ldap_roles(tx, user, roles, now, source=source)
    user = identity.update_user(tx, user.name, last_login_at=now)
    audit.record(tx, user.name, "signin.success", user.name, at=now, via=source)
    return credentials.user_principal(tx, user, source, credentials.of_sign_in(source, user))


# -- settings ----------------------------------------------------------------------------------


def providers_from_config(
    config: Config, clock: Callable[[], float] = time.time
) -> dict[str, OidcProvider]:
    """The `[oidc.NAME]` providers of the settings. Raises ConfigError with one clear line."""
    out: dict[str, OidcProvider] = {}
    for name in config.instances("oidc"):

        def get(key: str, name: str = name) -> Any:
            return config[f"oidc.{name}.{key}"]

        issuer = str(get("issuer")).rstrip("/")
        discovery_file = str(get("discovery_file"))
        if discovery_file and not issuer:
            try:
                issuer = str(json.loads(Path(discovery_file).read_text()).get("issuer", ""))
            except (OSError, ValueError, AttributeError) as e:
                raise ConfigError(f"oidc.{name}.discovery_file: cannot read it: {e}") from None
        if not issuer:
            raise ConfigError(f"oidc.{name}: set issuer (or discovery_file)")
        try:
            jwks.check_url(issuer, allow_http_loopback=bool(get("allow_http")), what="issuer")
        except KeysUnavailable as e:
            raise ConfigError(f"oidc.{name}.issuer: {e.message}") from None
        if not get("client_id"):
            raise ConfigError(f"oidc.{name}.client_id must be set")
        secret: str | None = None
        if get("client_secret_file"):
            try:
                secret = Path(get("client_secret_file")).read_text().strip()
            except OSError as e:
                raise ConfigError(
                    f"oidc.{name}.client_secret_file: cannot read it: {e.strerror}"
                ) from None
        try:
            group_roles = tuple(parse_group_roles(get("group_roles")))
        except ConfigError as e:
            raise ConfigError(str(e).replace("ldap.group_roles", f"oidc.{name}.group_roles")) from e
        scopes = [s for s in str(get("scopes")).split() if s]
        if "openid" not in scopes:
            scopes.insert(0, "openid")
        settings = ProviderSettings(
            name=name,
            label=str(get("label")) or name,
            issuer=issuer,
            discovery_file=discovery_file,
            client_id=str(get("client_id")),
            client_secret=secret,
            scopes=tuple(scopes),
            username_claim=str(get("username_claim")),
            email_claim=str(get("email_claim")),
            name_claim=str(get("name_claim")),
            groups_claim=str(get("groups_claim")),
            group_roles=group_roles,
            allow_http=bool(get("allow_http")),
        )
        out[name] = OidcProvider(settings, clock)
    return out
