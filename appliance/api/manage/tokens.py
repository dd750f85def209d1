"""Token routes of the management API: personal access tokens and refresh tokens, never their
values once made.

Everyone signed in lists, creates and revokes their own; instance admins list and revoke
anyone's. A token made with a token gets at most that token's scopes and expiry and is revoked
with it (`auth/credentials.py`).
"""

from __future__ import annotations

from quart import Response, request

from appliance.api import inputs
from appliance.api.manage.reply import error, forbidden, json_body, json_response
from appliance.api.manage.routing import N, Routes, S
from appliance.auth import accounts, credentials
from appliance.auth.credentials import MintLimits
from appliance.auth.policy import Principal
from appliance.auth.service import AccessControl
from appliance.errors import InvalidName
from appliance.metadata import identity
from appliance.metadata.db import Tx

routes: Routes[AccessControl] = Routes()


def _kind() -> str | None:
    kind = request.args.get("kind", "pat")
    if kind not in ("pat", "refresh", "all"):
        raise InvalidName("kind must be pat, refresh or all")
    return None if kind == "all" else kind


async def _list(access: AccessControl, user_id: int, kind: str | None) -> Response:
    now = access.clock()

    def fn(tx: Tx) -> list[dict[str, object]]:
        found = identity.tokens_of_user(tx, user_id, kind)
        return [credentials.token_json(tx, t, now) for t in found]

    return json_response(await access.db.read(fn))


async def _revoke(access: AccessControl, who: Principal, user_id: int, token_id: str) -> Response:
    number = inputs.path_id(token_id)
    if number is None:
        return error(404, "no such token")
    now = access.clock()

    def fn(tx: Tx) -> bool:
        record = identity.token_by_id(tx, number)
        if record is None or record.user_id != user_id or record.kind not in ("pat", "refresh"):
            return False
        accounts.revoke_token(tx, who.actor, record, now)
        return True

    if not await access.change(fn):
        return error(404, "no such token")
    return json_response({})


@routes(
    "/tokens",
    "GET",
    "The caller's tokens, never their values: ?kind=pat (default), refresh or all",
)
async def list_tokens(access: AccessControl, who: Principal) -> Response:
    if who.user_id is None:
        return forbidden()
    return await _list(access, who.user_id, _kind())


@routes(
    "/tokens",
    "POST",
    "Create a personal access token; shown once. Made with a token, it gets at most that "
    "token's scopes and expiry and is revoked with it",
    {"name": S, "scopes": {"type": "array", "items": S}, "expires_at": N},
)
async def create_token(access: AccessControl, who: Principal) -> Response:
    if who.user_id is None:
        return forbidden()
    data = await json_body()
    scopes = tuple(inputs.strings(data, "scopes"))
    now = access.clock()
    expires = inputs.number(data, "expires_at")
    record, token = await access.change(
        lambda tx: accounts.create_pat(
            tx,
            who.actor,
            access.secret,
            who.name,
            inputs.text(data, "name", "") or "",
            scopes,
            now,
            expires_at=expires,
            limits=MintLimits.of(who),
        )
    )
    return json_response({**record.as_json(), "token": token}, 201)


@routes("/tokens/{token_id}", "DELETE", "Revoke one of the caller's tokens (PAT or refresh)")
async def revoke_token(access: AccessControl, who: Principal, token_id: str) -> Response:
    if who.user_id is None:
        return forbidden()
    return await _revoke(access, who, who.user_id, token_id)


@routes(
    "/users/{name}/tokens",
    "GET",
    "A user's tokens, never their values: ?kind=pat (default), refresh or all (admins)",
)
async def user_tokens(access: AccessControl, who: Principal, name: str) -> Response:
    if not who.admin:
        return forbidden()
    user = await access.db.read(lambda tx: identity.require_user(tx, name))
    return await _list(access, user.id, _kind())


@routes("/users/{name}/tokens/{token_id}", "DELETE", "Revoke a user's token (admins)")
async def revoke_user_token(
    access: AccessControl, who: Principal, name: str, token_id: str
) -> Response:
    if not who.admin:
        return forbidden()
    user = await access.db.read(lambda tx: identity.require_user(tx, name))
    return await _revoke(access, who, user.id, token_id)
