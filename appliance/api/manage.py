"""The JSON management API under `/api/v1` (Quart), with its OpenAPI document.

Authenticated per request by `Authorization: Bearer <personal access token>` (scope `api`) or
HTTP Basic (name and password, or name and token). Session cookies arrive with the console.
Rights: instance admins manage users and create namespaces; a namespace's owners manage its
members, robots and visibility; everyone signed in manages their own tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from appliance import __version__
from appliance.api.guard import parse_basic
from appliance.auth import accounts
from appliance.auth.ldap import DirectoryUnavailable
from appliance.auth.passwords import WeakPassword
from appliance.auth.policy import Principal, may_manage
from appliance.auth.service import AccessControl, SignInFailed, SignInLocked
from appliance.errors import BerthError, Conflict, InvalidName, NotFound
from appliance.metadata import identity

Handler = Callable[..., Awaitable[Any]]


def _error(status: int, message: str) -> Response:
    return Response(
        response=__import__("json").dumps({"error": message}),
        status=status,
        content_type="application/json",
    )


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
        address = request.remote_addr
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
                who = await caller()
                if isinstance(who, Response):
                    return who
                if who.kind != "user" or not who.has_scope("api"):
                    return _error(403, "robots and tokens without the api scope cannot use this")
                try:
                    return await fn(who, **kwargs)
                except NotFound as e:
                    return _error(404, e.message)
                except Conflict as e:
                    return _error(409, e.message)
                except (InvalidName, WeakPassword, ValueError) as e:
                    return _error(400, getattr(e, "message", str(e)))
                except BerthError as e:
                    return _error(400, e.message)

            web.add_url_rule(flask_path, f"{method} {path}", view, methods=[method])
            return view

        return decorate

    async def body() -> dict[str, Any]:
        data = await request.get_json(force=True, silent=True)
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")  # noqa: TRY004 (a 400)
        return data

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
        data = await body()
        digest = await access.hash_password(str(data.get("password", "")))
        now = access.clock()
        user = await access.change(
            lambda tx: accounts.add_user(
                tx,
                who.actor,
                str(data.get("name", "")),
                digest,
                now,
                admin=bool(data.get("admin", False)),
                email=data.get("email"),
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
        data = await body()
        now = access.clock()
        if "password" in data:
            digest = await access.hash_password(str(data["password"]))
            await access.change(lambda tx: accounts.set_password(tx, who.actor, name, digest, now))
        if "disabled" in data:
            await access.change(
                lambda tx: accounts.set_disabled(tx, who.actor, name, bool(data["disabled"]), now)
            )
        if "admin" in data:
            await access.change(
                lambda tx: accounts.set_admin(tx, who.actor, name, bool(data["admin"]), now)
            )
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
        data = await body()
        now = access.clock()
        owner = who.name if who.kind == "user" else None
        ns = await access.change(
            lambda tx: accounts.create_namespace(
                tx,
                who.actor,
                str(data.get("name", "")),
                now,
                public=bool(data.get("public", False)),
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
        data = await body()
        now = access.clock()
        await access.change(
            lambda tx: accounts.set_public(tx, who.actor, ns, bool(data.get("public")), now)
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
        role = str((await body()).get("role", ""))
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
        data = await body()
        now = access.clock()
        expires = data.get("expires_at")
        robot, token = await access.change(
            lambda tx: accounts.create_robot(
                tx,
                who.actor,
                access.secret,
                ns,
                str(data.get("name", "")),
                str(data.get("role", "developer")),
                now,
                expires_at=None if expires is None else float(expires),
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

    # -- personal access tokens -------------------------------------------------------------

    @route("/tokens", "GET", "The caller's personal access tokens (never their values)")
    async def list_tokens(who: Principal) -> Response:
        if who.user_id is None:
            return forbidden()
        uid = who.user_id
        found = await access.db.read(lambda tx: identity.tokens_of_user(tx, uid))
        return _json([t.as_json() for t in found])

    @route(
        "/tokens",
        "POST",
        "Create a personal access token; shown once",
        {"name": S, "scopes": {"type": "array", "items": S}, "expires_at": N},
    )
    async def create_token(who: Principal) -> Response:
        if who.user_id is None:
            return forbidden()
        data = await body()
        scopes = tuple(str(s) for s in data.get("scopes", []))
        now = access.clock()
        expires = data.get("expires_at")
        record, token = await access.change(
            lambda tx: accounts.create_pat(
                tx,
                who.actor,
                access.secret,
                who.name,
                str(data.get("name", "")),
                scopes,
                now,
                expires_at=None if expires is None else float(expires),
            )
        )
        return _json({**record.as_json(), "token": token}, 201)

    @route("/tokens/{token_id}", "DELETE", "Revoke one of the caller's tokens")
    async def revoke_token(who: Principal, token_id: str) -> Response:
        if who.user_id is None or not token_id.isdigit():
            return forbidden()
        now = access.clock()

        def fn(tx: Any) -> bool:
            record = identity.token_by_id(tx, int(token_id))
            if record is None or record.user_id != who.user_id or record.kind != "pat":
                return False
            accounts.revoke_token(tx, who.actor, record, now)
            return True

        if not await access.change(fn):
            return _error(404, "no such token")
        return _json({})

    return route
