"""Namespace routes of the management API: namespaces, their members and their robots.

Instance admins create and delete namespaces; a namespace's owners change its visibility,
members and robots; its readers see its members, its maintainers its robots.
"""

from __future__ import annotations

from quart import Response

from appliance.api import inputs
from appliance.api.manage.reply import error, forbidden, json_body, json_response
from appliance.api.manage.routing import B, N, Routes, S
from appliance.auth import accounts
from appliance.auth.credentials import MintLimits
from appliance.auth.policy import Principal, may_manage
from appliance.auth.service import AccessControl
from appliance.metadata import identity

routes: Routes[AccessControl] = Routes()


@routes("/namespaces", "GET", "Namespaces the caller may see")
async def namespaces(access: AccessControl, who: Principal) -> Response:
    found = await access.db.read(identity.list_namespaces)
    return json_response(
        [n.as_json() for n in found if who.admin or n.public or n.name in who.roles]
    )


@routes(
    "/namespaces",
    "POST",
    "Create a namespace (admins); the caller becomes owner",
    {"name": S, "public": B},
)
async def create_namespace(access: AccessControl, who: Principal) -> Response:
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
    return json_response(ns.as_json(), 201)


@routes("/namespaces/{ns}", "GET", "One namespace")
async def get_namespace(access: AccessControl, who: Principal, ns: str) -> Response:
    found = await access.db.read(lambda tx: identity.require_namespace(tx, ns))
    if not (who.admin or found.public or ns in who.roles):
        return error(404, f"no namespace {ns!r}")
    return json_response(found.as_json())


@routes("/namespaces/{ns}", "PATCH", "Make a namespace public or private (owners)", {"public": B})
async def patch_namespace(access: AccessControl, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "owner"):
        return forbidden()
    data = await json_body()
    now = access.clock()
    await access.change(
        lambda tx: accounts.set_public(tx, who.actor, ns, inputs.flag(data, "public"), now)
    )
    found = await access.db.read(lambda tx: identity.require_namespace(tx, ns))
    return json_response(found.as_json())


@routes("/namespaces/{ns}", "DELETE", "Delete a team namespace (admins)")
async def delete_namespace(access: AccessControl, who: Principal, ns: str) -> Response:
    if not who.admin:
        return forbidden()
    now = access.clock()
    await access.change(lambda tx: accounts.delete_namespace(tx, who.actor, ns, now))
    return json_response({}, 200)


# -- members ----------------------------------------------------------------------------------


@routes("/namespaces/{ns}/members", "GET", "Members and their roles (readers and up)")
async def list_members(access: AccessControl, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "reader"):
        return forbidden()
    return json_response(await access.db.read(lambda tx: identity.members(tx, ns)))


@routes("/namespaces/{ns}/members/{user}", "PUT", "Give a user a role (owners)", {"role": S})
async def put_member(access: AccessControl, who: Principal, ns: str, user: str) -> Response:
    if not may_manage(who, ns, "owner"):
        return forbidden()
    role = inputs.text(await json_body(), "role", "") or ""
    now = access.clock()
    await access.change(lambda tx: accounts.set_member(tx, who.actor, ns, user, role, now))
    return json_response({"user": user, "role": role})


@routes("/namespaces/{ns}/members/{user}", "DELETE", "Remove a member (owners)")
async def delete_member(access: AccessControl, who: Principal, ns: str, user: str) -> Response:
    if not may_manage(who, ns, "owner"):
        return forbidden()
    now = access.clock()
    await access.change(lambda tx: accounts.remove_member(tx, who.actor, ns, user, now))
    return json_response({})


# -- robots -----------------------------------------------------------------------------------


@routes("/namespaces/{ns}/robots", "GET", "Robot accounts (maintainers and up)")
async def list_robots(access: AccessControl, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    found = await access.db.read(lambda tx: identity.robots(tx, ns))
    return json_response([r.as_json() for r in found])


@routes(
    "/namespaces/{ns}/robots",
    "POST",
    "Create a robot; its token is shown once (owners)",
    {"name": S, "role": S, "expires_at": N},
)
async def create_robot(access: AccessControl, who: Principal, ns: str) -> Response:
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
    return json_response({**robot.as_json(), "token": token}, 201)


@routes("/namespaces/{ns}/robots/{name}", "DELETE", "Delete a robot (owners)")
async def delete_robot(access: AccessControl, who: Principal, ns: str, name: str) -> Response:
    if not may_manage(who, ns, "owner"):
        return forbidden()
    now = access.clock()
    await access.change(lambda tx: accounts.delete_robot(tx, who.actor, ns, name, now))
    return json_response({})
