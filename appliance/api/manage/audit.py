"""The audit log route of the management API: events newest first, for instance admins,
filtered by time, actor, action and target, a page at a time (`metadata/audit.py` reads them)."""

from __future__ import annotations

from typing import Any

from quart import Response, request

from appliance.api import inputs
from appliance.api.manage.reply import forbidden, json_response
from appliance.api.manage.routing import Routes
from appliance.auth.policy import Principal
from appliance.auth.service import AccessControl
from appliance.errors import InvalidInput
from appliance.metadata import audit

MAX_PAGE = 1000

routes: Routes[AccessControl] = Routes()


@routes("/audit", "GET", "Audit events, newest first (admins); filter with query parameters")
async def audit_events(access: AccessControl, who: Principal) -> Response:
    if not who.admin:
        return forbidden("only admins read the audit log")
    args = request.args
    limit_text = args.get("limit") or "100"
    if not (limit_text.isascii() and limit_text.isdigit()) or len(limit_text) > 6:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_PAGE}")
    limit = max(1, min(int(limit_text), MAX_PAGE))
    before = inputs.path_id(args.get("before") or "")
    filters: dict[str, Any] = {
        "since": inputs.parse_time(args.get("since")),
        "until": inputs.parse_time(args.get("until")),
        "actor": args.get("actor") or None,
        "action": args.get("action") or None,
        "target": args.get("target") or None,
    }
    found = await access.db.read(
        lambda tx: audit.query(tx, limit=limit, before_id=before, **filters)
    )
    page: dict[str, Any] = {"events": found}
    if len(found) == limit:
        page["next"] = found[-1]["id"]  # pass as ?before= for the next page
    return json_response(page)
