"""Who may call which `/v2` route: the registry side of the Docker token flow.

Every request names what it needs: `repository:<name>:pull|push|delete` for repository routes,
`registry:catalog:*` for `_catalog`, nothing beyond being signed in for `/v2/` itself.

- `Authorization: Bearer <jwt>`: the token's signature, issuer, audience and time window are
  checked (cached per token, so the hot path is a dictionary lookup); then, on every request,
  the credential the token was minted with must still work (401 `invalid_token` once it is
  revoked, expired, its robot deleted or its user disabled), and the grant is what its
  `access` claim says *and* what the holder may do now (a demotion counts at once). Both
  answers come from caches validated by the `auth` change stamp (auth/service.py). A token
  without the needed scope gets 401 with a challenge naming that scope, which is how clients
  ask for more; if the holder could never have it, 403 DENIED.
- `Authorization: Basic`: accepted directly too (curl and simple clients), with the same
  throttling as the token endpoint; a success is remembered until identity facts change, so
  argon2 does not run per request. Rights are checked live: 403 DENIED when signed in but not
  allowed.
- No credentials: anonymous pull of a public namespace is served; anything else gets 401 with
  `WWW-Authenticate: Bearer realm="<base>/token",service="<service>",scope="<needed>"`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass

from appliance.api.asgi import Request, client_address
from appliance.auth.ldap import DirectoryUnavailable
from appliance.auth.policy import ANONYMOUS, Principal, repository_actions
from appliance.auth.service import AccessControl, SignInFailed, SignInLocked
from appliance.auth.tokens import Claims, ExpiredToken, InvalidToken
from appliance.oci.names import namespace_of, validate_name

Need = tuple[str, str, str]  # (type, name, action)

_REPOSITORY_ACTIONS: dict[str, dict[str, str]] = {
    "tags": {"GET": "pull"},
    "referrers": {"GET": "pull"},
    "manifests": {"GET": "pull", "HEAD": "pull", "PUT": "push", "DELETE": "delete"},
    "blobs": {"GET": "pull", "HEAD": "pull", "DELETE": "delete"},
    "uploads": {"POST": "push"},
    "upload": {"GET": "push", "PATCH": "push", "PUT": "push", "DELETE": "push"},
}
CATALOG: Need = ("registry", "catalog", "*")
READ_SCOPES = frozenset({"read_registry", "write_registry"})


class AuthProblem(Exception):
    """A request refused for want of credentials or rights; carries its response headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def needed(handler: str, name: str, method: str) -> Need | None:
    if handler == "catalog":
        return CATALOG
    action = _REPOSITORY_ACTIONS.get(handler, {}).get(method)
    return None if action is None else ("repository", name, action)


def parse_basic(value: str) -> tuple[str, str] | None:
    """(name, password) of the credentials of an `Authorization: Basic` header (the part after
    the scheme), or None when they are not base64 of UTF-8 `name:password`. The one Basic
    parser: /v2, /token, /api/v1 and the access log all read credentials through it."""
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, as far as the guard found out."""

    claims: Claims | None
    principal: Principal | None


class Guard:
    def __init__(self, access: AccessControl, public_url: str = "") -> None:
        self.access = access
        self.public_url = public_url.rstrip("/")

    def realm(self, request: Request) -> str:
        if self.public_url:
            return self.public_url + "/token"
        host = request.headers.get("host", "localhost")
        return f"{request.scope.get('scheme', 'http')}://{host}/token"

    def challenge(
        self, request: Request, need: Need | None, message: str, error: str | None = None
    ) -> AuthProblem:
        value = f'Bearer realm="{self.realm(request)}",service="{self.access.service}"'
        if need is not None:
            kind, name, action = need
            actions = "pull,push" if action == "push" else action
            value += f',scope="{kind}:{name}:{actions}"'
        if error is not None:
            value += f',error="{error}"'
        return AuthProblem(401, "UNAUTHORIZED", message, {"www-authenticate": value})

    @staticmethod
    def denied(need: Need) -> AuthProblem:
        return AuthProblem(
            403, "DENIED", f"requested access to {need[1]} ({need[2]}) is denied", {}
        )

    async def check(self, request: Request, handler: str, name: str) -> None:
        """Raise AuthProblem unless the request may go on; remember the caller in its scope."""
        need = needed(handler, name, request.method)
        if need is not None and need[0] == "repository":
            validate_name(need[1])
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            await self._bearer(request, need, credentials.strip())
        elif scheme == "basic":
            await self._basic(request, need, credentials)
        else:
            request.scope["berth.caller"] = Caller(None, ANONYMOUS)
            pull = need is not None and need[0] == "repository" and need[2] == "pull"
            if pull and need is not None and await self._public(need[1]):
                return
            raise self.challenge(request, need, "authentication required")

    async def _bearer(self, request: Request, need: Need | None, token: str) -> None:
        try:
            claims = await self.access.verify(token)
        except ExpiredToken:
            raise self.challenge(request, need, "the token has expired", "invalid_token") from None
        except InvalidToken:
            raise self.challenge(request, need, "invalid token", "invalid_token") from None
        principal = await self.access.principal_for_claims(claims)
        if principal is None:
            raise self.challenge(
                request, need, "the token's credential no longer works", "invalid_token"
            )
        request.scope["berth.caller"] = Caller(claims, principal)
        if need is None or await self._granted(claims, principal, need):
            return
        if principal.anonymous or await self._allowed(principal, need):
            raise self.challenge(request, need, "insufficient scope", "insufficient_scope")
        raise self.denied(need)

    async def _granted(self, claims: Claims, principal: Principal, need: Need) -> bool:
        """What the token grants, intersected with what its holder may do now. The catalog's
        grant needs no second look: it lists only what the caller may see."""
        if not claims.allows(*need):
            return False
        return need[0] != "repository" or await self._allowed(principal, need)

    async def _basic(self, request: Request, need: Need | None, credentials: str) -> None:
        pair = parse_basic(credentials)
        if pair is None:
            raise self.challenge(request, need, "malformed Basic credentials")
        try:
            principal = await self.access.basic(
                credentials, pair[0], pair[1], client_address(request.scope)
            )
        except SignInFailed as e:
            raise self.challenge(request, need, e.message) from None
        except SignInLocked as e:
            raise AuthProblem(
                429, "TOOMANYREQUESTS", e.message, {"retry-after": str(int(e.retry_after) + 1)}
            ) from None
        except DirectoryUnavailable:
            raise AuthProblem(
                503, "UNAVAILABLE", "the LDAP directory cannot be reached; try again later", {}
            ) from None
        request.scope["berth.caller"] = Caller(None, principal)
        if need is None or await self._allowed(principal, need):
            return
        raise self.denied(need)

    async def _public(self, name: str) -> bool:
        return namespace_of(name) in await self.access.public_namespaces()

    async def _allowed(self, principal: Principal, need: Need) -> bool:
        kind, name, action = need
        if kind == "registry":
            return not principal.anonymous
        public = namespace_of(name) in await self.access.public_namespaces()
        return action in repository_actions(principal, name, public)

    async def principal(self, request: Request) -> Principal:
        caller: Caller | None = request.scope.get("berth.caller")
        if caller is None:
            return ANONYMOUS
        return caller.principal or ANONYMOUS

    async def may(self, request: Request, name: str, action: str) -> bool:
        """Whether the caller may take `action` on another repository (a mount's source)."""
        caller: Caller | None = request.scope.get("berth.caller")
        principal = await self.principal(request)
        need: Need = ("repository", name, action)
        if caller is not None and caller.claims is not None:
            return await self._granted(caller.claims, principal, need)
        return await self._allowed(principal, need)

    async def visible(self, request: Request) -> Callable[[str], bool]:
        """A test of which repositories the caller may see (for `_catalog`)."""
        principal = await self.principal(request)
        public = await self.access.public_namespaces()
        reads = principal.scopes is None or bool(principal.scopes & READ_SCOPES)
        if principal.admin and reads:
            return lambda name: True
        allowed = (frozenset(principal.roles) if reads else frozenset()) | public

        return lambda name: namespace_of(name) in allowed
