"""User routes of the management API: list, create and change local users (instance admins)."""

from __future__ import annotations

from quart import Response

from appliance.api import inputs
from appliance.api.manage.reply import forbidden, json_body, json_response
from appliance.api.manage.routing import B, Routes, S
from appliance.auth import accounts
from appliance.auth.policy import Principal
from appliance.auth.service import AccessControl
from appliance.metadata import identity

routes: Routes[AccessControl] = Routes()


@routes("/users", "GET", "List users (admins)")
async def users(access: AccessControl, who: Principal) -> Response:
    if not who.admin:
        return forbidden()
    found = await access.db.read(identity.list_users)
    return json_response([u.public() for u in found])


@routes(
    "/users",
    "POST",
    "Create a local user (admins)",
    {"name": S, "password": S, "admin": B, "email": S},
)
async def create_user(access: AccessControl, who: Principal) -> Response:
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
    return json_response(user.public(), 201)


@routes(
    "/users/{name}",
    "PATCH",
    "Change a user: password, disabled, admin (admins)",
    {"password": S, "disabled": B, "admin": B},
)
async def patch_user(access: AccessControl, who: Principal, name: str) -> Response:
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
        await access.change(lambda tx: accounts.set_disabled(tx, who.actor, name, disabled, now))
    if admin is not None:
        await access.change(lambda tx: accounts.set_admin(tx, who.actor, name, admin, now))
    user = await access.db.read(lambda tx: identity.require_user(tx, name))
    return json_response(user.public())
