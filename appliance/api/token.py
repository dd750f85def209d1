"""The Docker token service: `GET /token` and the OAuth2 `POST /token`.

GET (docker, podman, skopeo): optional HTTP Basic credentials (password, LDAP password, personal
access token or robot token; none means anonymous), `service`, any number of `scope`
parameters, `offline_token=true` for a refresh token. POST (the OAuth2 form docker uses with a
refresh token): `grant_type=password` (`username`, `password`) or `grant_type=refresh_token`
(`refresh_token`), `scope` space-separated, `access_type=offline` for a refresh token.

The answer is `{"token", "access_token", "expires_in", "issued_at"[, "refresh_token"]}`; the
token grants the intersection of the requested scopes and the caller's rights. A wrong name or
password is a 401 that says only that.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs

from appliance.api.asgi import Pace, Receive, Request, Scope, Send, client_address, respond
from appliance.api.codes import error_body, error_for
from appliance.api.guard import parse_basic
from appliance.auth.citrust import looks_like_ci_login
from appliance.auth.ldap import DirectoryUnavailable
from appliance.auth.policy import ANONYMOUS, Principal
from appliance.auth.service import AccessControl, SignInFailed, SignInLocked
from appliance.errors import BerthError, TooSlow

log = logging.getLogger("berth.auth")
MAX_FORM = 64 * 1024
JSON = "application/json"


class TokenEndpoint:
    """ASGI app for `/token`."""

    def __init__(self, access: AccessControl, pace: Pace | None = None) -> None:
        self.access = access
        self.pace = pace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, self.pace)
        headers = {"content-type": JSON, "cache-control": "no-store"}
        try:
            if request.method == "GET":
                body = await self._get(request)
            elif request.method == "POST":
                body = await self._post(request)
            else:
                await respond(
                    send, 405, {**headers, "allow": "GET, POST"}, error_body("UNSUPPORTED")
                )
                return
        except SignInFailed as e:
            await respond(
                send,
                401,
                {**headers, "www-authenticate": 'Basic realm="berth"'},
                _oauth_error(error_body("UNAUTHORIZED", e.message), "invalid_grant"),
            )
            return
        except SignInLocked as e:
            await respond(
                send,
                429,
                {**headers, "retry-after": str(int(e.retry_after) + 1)},
                error_body("TOOMANYREQUESTS", e.message),
            )
            return
        except DirectoryUnavailable as e:
            log.warning("sign-in: %s", e.message)
            await respond(
                send,
                503,
                headers,
                error_body("UNAVAILABLE", "the LDAP directory cannot be reached; try again later"),
            )
            return
        except BerthError as e:  # the database while signing in, a slow body: the table's answer
            mapped = error_for(e)
            if mapped is None:
                raise
            status, code, message, _ = mapped
            if status >= 500:
                log.warning("token: %s", e.message)
                message = ""  # the backend's own words stay in the log
            if isinstance(e, TooSlow):
                headers["connection"] = "close"
            await respond(send, status, headers, error_body(code.value, message or None))
            return
        await respond(send, 200, headers, json.dumps(body).encode())

    async def _get(self, request: Request) -> dict[str, object]:
        principal: Principal = ANONYMOUS
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            pair = parse_basic(credentials)
            if pair is None:
                raise SignInFailed
            principal = await self._sign_in(credentials, pair[0], pair[1], request)
        scopes = request.query.get("scope", [])
        body = await self.access.issue(principal, scopes)
        if request.arg("offline_token") == "true":
            refresh = await self.access.new_refresh_token(principal)
            if refresh is not None:
                body["refresh_token"] = refresh
        return body

    async def _sign_in(
        self, header: str, username: str, password: str, request: Request
    ) -> Principal:
        """A password sign-in, its success remembered as for Basic on /v2: a client asks for
        a token before every pull and push. A CI job's identity token is checked (and audited)
        at each use: it costs no password hash."""
        address = client_address(request.scope)
        if looks_like_ci_login(username, password):
            return await self.access.authenticate(username, password, address)
        return await self.access.basic(header, username, password, address)

    async def _post(self, request: Request) -> dict[str, object]:
        raw = await request.read(MAX_FORM)
        form = {k: v[0] for k, v in parse_qs(raw[:MAX_FORM].decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        address = client_address(request.scope)
        refresh: str | None = None
        if grant == "password":
            username, password = form.get("username", ""), form.get("password", "")
            key = json.dumps(["password-grant", username, password])  # no Basic header is this
            principal = await self._sign_in(key, username, password, request)
            if form.get("access_type") == "offline":
                refresh = await self.access.new_refresh_token(principal)
        elif grant == "refresh_token":
            refresh = form.get("refresh_token", "")
            principal = await self.access.refresh(refresh, address)
        else:
            raise SignInFailed
        body = await self.access.issue(principal, form.get("scope", "").split())
        if refresh is not None:
            body["refresh_token"] = refresh
        body["scope"] = form.get("scope", "")
        return body


def _oauth_error(body: bytes, error: str) -> bytes:
    doc = json.loads(body)
    doc["error"] = error
    return json.dumps(doc).encode()
