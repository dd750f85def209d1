"""Routes about the caller and the installation: who the caller is, and which Berth (and
database schema) answers."""

from __future__ import annotations

import trio
from quart import Response

from appliance.api.manage.reply import json_response
from appliance.api.manage.routing import Routes, S
from appliance.auth.policy import Principal
from appliance.auth.service import AccessControl

routes: Routes[AccessControl] = Routes()


@routes("/me", "GET", "Who the caller is")
async def me(access: AccessControl, who: Principal) -> Response:
    return json_response(
        {"name": who.name, "kind": who.kind, "admin": who.admin, "roles": dict(who.roles)}
    )


@routes(
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
async def version_info(access: AccessControl, who: Principal) -> Response:
    from appliance.omnibus.buildinfo import build_info  # noqa: PLC0415

    info = build_info()
    state = await trio.to_thread.run_sync(access.db.schema_status)
    return json_response(
        {
            "version": info["version"],
            "commit": info["commit"],
            "built": info["date"] or None,
            "python": info["python"],
            "schema": {"current": state.current, "latest": state.latest},
        }
    )
