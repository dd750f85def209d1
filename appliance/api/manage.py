"""The JSON management API under `/api/v1` (Quart), with its OpenAPI document.

Authenticated per request by `Authorization: Bearer <personal access token>` (scope `api`) or
HTTP Basic (name and password, or name and token). Session cookies arrive with the console.
Rights: instance admins manage users and create namespaces; a namespace's owners manage its
members, robots and visibility; everyone signed in manages their own tokens (personal access
and refresh tokens), and admins anyone's. A token or robot created with a token gets at most
that token's scopes and expiry, and is revoked with it (`auth/credentials.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from appliance import __version__
from appliance.api import inputs
from appliance.api.asgi import client_address
from appliance.api.codes import status_for
from appliance.api.guard import parse_basic
from appliance.auth import accounts, credentials
from appliance.auth.credentials import MintLimits
from appliance.auth.ldap import DirectoryUnavailable
from appliance.auth.passwords import WeakPassword
from appliance.auth.policy import Principal, may_manage
from appliance.auth.service import AccessControl, SignInFailed, SignInLocked
from appliance.errors import (
    BerthError,
    BodyTooLarge,
    InvalidName,
)
from appliance.metadata import identity

log = logging.getLogger("berth.api")

Handler = Callable[..., Awaitable[Any]]


def _error(status: int, message: str) -> Response:
    return Response(
        response=__import__("json").dumps({"error": message}),
        status=status,
        content_type="application/json",
    )


_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _has_body() -> bool:
    length = request.content_length
    return bool(length) or "chunked" in request.headers.get("transfer-encoding", "").lower()


async def json_body(required: bool = True) -> dict[str, Any]:
    """The request's JSON object, read through `inputs.decode_object` (sent as JSON, at most
    `inputs.MAX_BODY` bytes, bounded depth); without a body, {} unless `required`."""
    length = request.content_length
    if length is not None and length > inputs.MAX_BODY:
        raise BodyTooLarge(f"the body is larger than {inputs.MAX_BODY} bytes")
    raw = bytearray()
    async for chunk in request.body:
        raw += chunk
        if len(raw) > inputs.MAX_BODY:
            raise BodyTooLarge(f"the body is larger than {inputs.MAX_BODY} bytes")
    if not raw and not required:
        return {}
    return inputs.decode_object(bytes(raw))


def _json(value: Any, status: int = 200) -> Response:
    return Response(
        response=__import__("json").dumps(value),
        status=status,
        content_type="application/json",
    )


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Berth management API", "version": __version__},
    "components": {
        "securitySchemes": {
            "token": {"type": "http", "scheme": "bearer", "description": "PAT with scope api"},
            "basic": {"type": "http", "scheme": "basic"},
        }
    },
    "security": [{"token": []}, {"basic": []}],
    "paths": {},
}


def _document(
    path: str,
    method: str,
    summary: str,
    body: dict[str, Any] | None = None,
    returns: dict[str, Any] | None = None,
) -> None:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK"}}}
    if returns is not None:
        op["responses"]["200"]["content"] = {
            "application/json": {"schema": {"type": "object", "properties": returns}}
        }
    params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "properties": body}}},
        }
    OPENAPI["paths"].setdefault(path, {})[method.lower()] = op


S = {"type": "string"}
B = {"type": "boolean"}
N = {"type": "number"}


RouteDecorator = Callable[..., Callable[[Handler], Handler]]


def register_management_api(web: QuartTrio, access: AccessControl) -> RouteDecorator:
    """Register the routes on `web`; returns the `route(path, method, summary, body)`
    decorator, so that other packages (ops/api.py) add routes with the same sign-in, error
    handling and OpenAPI entries."""

    async def caller() -> Principal | Response:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        address = client_address(request.scope)
        try:
            if scheme.lower() == "bearer":
                return await access.authenticate("", credentials.strip(), address)
            if scheme.lower() == "basic":
                pair = parse_basic(credentials)
                if pair is None:
                    return _error(401, "malformed Basic credentials")
                return await access.basic(credentials, pair[0], pair[1], address)
        except SignInFailed as e:
            return _error(401, e.message)
        except SignInLocked as e:
            return _error(429, e.message)
        except DirectoryUnavailable:
            return _error(503, "the LDAP directory cannot be reached")
        return _error(401, "authentication required")

    def route(
        path: str,
        method: str,
        summary: str,
        body: dict[str, Any] | None = None,
        returns: dict[str, Any] | None = None,
    ) -> Callable[[Handler], Handler]:
        _document(path, method, summary, body, returns)
        flask_path = "/api/v1" + path.replace("{", "<").replace("}", ">")

        def decorate(fn: Handler) -> Handler:
            @wraps(fn)
            async def view(**kwargs: str) -> Any:
                try:  # signing in reads the database too: its errors answer the same way
                    who = await caller()
                    if isinstance(who, Response):
                        return who
                    if who.kind != "user" or not who.has_scope("api"):
                        return _error(
                            403, "robots and tokens without the api scope cannot use this"
                        )
                    if request.method in _UNSAFE:  # what a cross-site form could send
                        inputs.check_content_type(request.headers.get("content-type"), _has_body())
                    return await fn(who, **kwargs)
                except WeakPassword as e:
                    return _error(400, str(e))  # its own words: what the password lacks
                except BerthError as e:
                    status = status_for(e)
                    if status >= 500:
                        log.error("%s %s: %s", request.method, request.path, e.message)  # noqa: TRY400 (expected: no traceback)
                        return _error(status, "a backend cannot be reached; try again")
                    return _error(status, e.message)
                except ValueError:
                    # Every value a client sends is checked and refused with a message of its
                    # own (api/inputs.py); a ValueError still reaching here is a slip in that,
                    # and its Python text is no answer to give.
                    log.exception("%s %s: unexpected bad value", request.method, request.path)
                    return _error(400, "a value in the request is not valid")
                except HTTPException:
                    raise  # Quart's own answers (a body over MAX_CONTENT_LENGTH, say)
                except Exception:
                    log.exception("%s %s: unexpected error", request.method, request.path)
                    return _error(500, "unexpected error (it is logged)")

            web.add_url_rule(flask_path, f"{method} {path}", view, methods=[method])
            return view

        return decorate

    def forbidden() -> Response:
        return _error(403, "you may not do this")

    @web.get("/api/v1/openapi.json")
    async def openapi() -> Response:
        return _json(OPENAPI)

    @route("/me", "GET", "Who the caller is")
    async def me(who: Principal) -> Response:
        return _json(
            {"name": who.name, "kind": who.kind, "admin": who.admin, "roles": dict(who.roles)}
        )

    @route(
        "/version",
        "GET",
        "This Berth's version and build, and the database's schema version",
        returns={
            "version": S,
            "commit": S,
            "built": {"type": ["string", "null"]},
            "python": S,
            "schema": {
                "type": "object",
                "properties": {"current": {"type": "integer"}, "latest": {"type": "integer"}},
            },
        },
    )
    async def version_info(who: Principal) -> Response:
        from appliance.omnibus.buildinfo import build_info  # noqa: PLC0415

        info = build_info()
        state = await trio.to_thread.run_sync(access.db.schema_status)
        return _json(
            {
                "version": info["version"],
                "commit": info["commit"],
                "built": info["date"] or None,
                "python": info["python"],
                "schema": {"current": state.current, "latest": state.latest},
            }
        )

    # -- users ------------------------------------------------------------------------------

    @route("/users", "GET", "List users (admins)")
    async def users(who: Principal) -> Response:
        if not who.admin:
            return forbidden()
        found = await access.db.read(identity.list_users)
        return _json([u.public() for u in found])

    @route(
        "/users",
        "POST",
        "Create a local user (admins)",
        {"name": S, "password": S, "admin": B, "email": S},
    )
    async def create_user(who: Principal) -> Response:
        if not who.admin:
            return forbidden()
        data = await json_body()
        digest = await access.hash_password(inputs.text(data, "password", "") or "")
        now = access.clock()
        user = await access.change(
            lambda tx: accounts.add_user(
                tx,
                who.actor,
                inputs.text(data, "name", "") or "",
                digest,
                now,
                admin=inputs.flag(data, "admin"),
                email=inputs.text(data, "email"),
            )
        )
        return _json(user.public(), 201)

    @route(
        "/users/{name}",
        "PATCH",
        "Change a user: password, disabled, admin (admins)",
        {"password": S, "disabled": B, "admin": B},
    )
    async def patch_user(who: Principal, name: str) -> Response:
        if not who.admin:
            return forbidden()
        data = await json_body()
        # Every field is checked before anything changes: a bad one changes nothing.
        password = inputs.required_text(data, "password") if "password" in data else None
        disabled = inputs.flag(data, "disabled") if "disabled" in data else None
        admin = inputs.flag(data, "admin") if "admin" in data else None
        now = access.clock()
        if password is not None:
            digest = await access.hash_password(password)
            await access.change(lambda tx: accounts.set_password(tx, who.actor, name, digest, now))
        if disabled is not None:
            await access.change(
                lambda tx: accounts.set_disabled(tx, who.actor, name, disabled, now)
            )
        if admin is not None:
            await access.change(lambda tx: accounts.set_admin(tx, who.actor, name, admin, now))
        user = await access.db.read(lambda tx: identity.require_user(tx, name))
        return _json(user.public())

    # -- namespaces -------------------------------------------------------------------------

    @route("/namespaces", "GET", "Namespaces the caller may see")
    async def namespaces(who: Principal) -> Response:
        found = await access.db.read(identity.list_namespaces)
        return _json([n.as_json() for n in found if who.admin or n.public or n.name in who.roles])

    @route(
        "/namespaces",
        "POST",
        "Create a namespace (admins); the caller becomes owner",
        {"name": S, "public": B},
    )
    async def create_namespace(who: Principal) -> Response:
        if not who.admin:
            return forbidden()
        data = await json_body()
        now = access.clock()
        owner = who.name if who.kind == "user" else None
        ns = await access.change(
            lambda tx: accounts.create_namespace(
                tx,
                who.actor,
                inputs.text(data, "name", "") or "",
                now,
                public=inputs.flag(data, "public"),
                owner=owner,
            )
        )
        return _json(ns.as_json(), 201)

    @route("/namespaces/{ns}", "GET", "One namespace")
    async def get_namespace(who: Principal, ns: str) -> Response:
        found = await access.db.read(lambda tx: identity.require_namespace(tx, ns))
        if not (who.admin or found.public or ns in who.roles):
            return _error(404, f"no namespace {ns!r}")
        return _json(found.as_json())

    @route(
        "/namespaces/{ns}", "PATCH", "Make a namespace public or private (owners)", {"public": B}
    )
    async def patch_namespace(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "owner"):
            return forbidden()
        data = await json_body()
        now = access.clock()
        await access.change(
            lambda tx: accounts.set_public(tx, who.actor, ns, inputs.flag(data, "public"), now)
        )
        found = await access.db.read(lambda tx: identity.require_namespace(tx, ns))
        return _json(found.as_json())

    @route("/namespaces/{ns}", "DELETE", "Delete a team namespace (admins)")
    async def delete_namespace(who: Principal, ns: str) -> Response:
        if not who.admin:
            return forbidden()
        now = access.clock()
        await access.change(lambda tx: accounts.delete_namespace(tx, who.actor, ns, now))
        return _json({}, 200)

    # -- members ----------------------------------------------------------------------------

    @route("/namespaces/{ns}/members", "GET", "Members and their roles (readers and up)")
    async def list_members(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "reader"):
            return forbidden()
        return _json(await access.db.read(lambda tx: identity.members(tx, ns)))

    @route("/namespaces/{ns}/members/{user}", "PUT", "Give a user a role (owners)", {"role": S})
    async def put_member(who: Principal, ns: str, user: str) -> Response:
        if not may_manage(who, ns, "owner"):
            return forbidden()
        role = inputs.text(await json_body(), "role", "") or ""
        now = access.clock()
        await access.change(lambda tx: accounts.set_member(tx, who.actor, ns, user, role, now))
        return _json({"user": user, "role": role})

    @route("/namespaces/{ns}/members/{user}", "DELETE", "Remove a member (owners)")
    async def delete_member(who: Principal, ns: str, user: str) -> Response:
        if not may_manage(who, ns, "owner"):
            return forbidden()
        now = access.clock()
        await access.change(lambda tx: accounts.remove_member(tx, who.actor, ns, user, now))
        return _json({})

    # -- robots -----------------------------------------------------------------------------

    @route("/namespaces/{ns}/robots", "GET", "Robot accounts (maintainers and up)")
    async def list_robots(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return forbidden()
        found = await access.db.read(lambda tx: identity.robots(tx, ns))
        return _json([r.as_json() for r in found])

    @route(
        "/namespaces/{ns}/robots",
        "POST",
        "Create a robot; its token is shown once (owners)",
        {"name": S, "role": S, "expires_at": N},
    )
    async def create_robot(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "owner"):
            return forbidden()
        data = await json_body()
        now = access.clock()
        expires = inputs.number(data, "expires_at")
        robot, token = await access.change(
            lambda tx: accounts.create_robot(
                tx,
                who.actor,
                access.secret,
                ns,
                inputs.text(data, "name", "") or "",
                inputs.text(data, "role", "developer") or "developer",
                now,
                expires_at=expires,
                limits=MintLimits.of(who),
            )
        )
        return _json({**robot.as_json(), "token": token}, 201)

    @route("/namespaces/{ns}/robots/{name}", "DELETE", "Delete a robot (owners)")
    async def delete_robot(who: Principal, ns: str, name: str) -> Response:
        if not may_manage(who, ns, "owner"):
            return forbidden()
        now = access.clock()
        await access.change(lambda tx: accounts.delete_robot(tx, who.actor, ns, name, now))
        return _json({})

    # -- personal access tokens and refresh tokens -------------------------------------------

    def _kind() -> str | None:
        kind = request.args.get("kind", "pat")
        if kind not in ("pat", "refresh", "all"):
            raise InvalidName("kind must be pat, refresh or all")
        return None if kind == "all" else kind

    async def _list(user_id: int, kind: str | None) -> Response:
        now = access.clock()

        def fn(tx: Any) -> list[dict[str, object]]:
            found = identity.tokens_of_user(tx, user_id, kind)
            return [credentials.token_json(tx, t, now) for t in found]

        return _json(await access.db.read(fn))

    async def _revoke(who: Principal, user_id: int, token_id: str) -> Response:
        number = inputs.path_id(token_id)
        if number is None:
            return _error(404, "no such token")
        now = access.clock()

        def fn(tx: Any) -> bool:
            record = identity.token_by_id(tx, number)
            if record is None or record.user_id != user_id or record.kind not in ("pat", "refresh"):
                return False
            accounts.revoke_token(tx, who.actor, record, now)
            return True

        if not await access.change(fn):
            return _error(404, "no such token")
        return _json({})

    @route(
        "/tokens",
        "GET",
        "The caller's tokens, never their values: ?kind=pat (default), refresh or all",
    )
    async def list_tokens(who: Principal) -> Response:
        if who.user_id is None:
            return forbidden()
        return await _list(who.user_id, _kind())

    @route(
        "/tokens",
        "POST",
        "Create a personal access token; shown once. Made with a token, it gets at most that "
        "token's scopes and expiry and is revoked with it",
        {"name": S, "scopes": {"type": "array", "items": S}, "expires_at": N},
    )
    async def create_token(who: Principal) -> Response:
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
        return _json({**record.as_json(), "token": token}, 201)

    @route("/tokens/{token_id}", "DELETE", "Revoke one of the caller's tokens (PAT or refresh)")
    async def revoke_token(who: Principal, token_id: str) -> Response:
        if who.user_id is None:
            return forbidden()
        return await _revoke(who, who.user_id, token_id)

    @route(
        "/users/{name}/tokens",
        "GET",
        "A user's tokens, never their values: ?kind=pat (default), refresh or all (admins)",
    )
    async def user_tokens(who: Principal, name: str) -> Response:
        if not who.admin:
            return forbidden()
        user = await access.db.read(lambda tx: identity.require_user(tx, name))
        return await _list(user.id, _kind())

    @route("/users/{name}/tokens/{token_id}", "DELETE", "Revoke a user's token (admins)")
    async def revoke_user_token(who: Principal, name: str, token_id: str) -> Response:
        if not who.admin:
            return forbidden()
        user = await access.db.read(lambda tx: identity.require_user(tx, name))
        return await _revoke(who, user.id, token_id)

    return route
