"""Operations routes of the management API (`/api/v1`): the audit log and webhooks.

Registered through `api.manage`'s `route` decorator, so they share its sign-in, its error
answers and its OpenAPI document. Admins read the whole audit log; a namespace's maintainers
manage its webhook endpoints (each change audited) and read their delivery log.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Response, request

from appliance.api import inputs
from appliance.api.manage import RouteDecorator, _error, _json, json_body
from appliance.auth.policy import Principal, may_manage
from appliance.errors import InvalidInput
from appliance.metadata import audit
from appliance.metadata.db import Database, Tx
from appliance.metadata.events import ACTIONS
from appliance.webhooks.endpoints import (
    add_endpoint,
    check_url,
    namespace_endpoints,
    private_target,
    redact_url,
    remove_endpoint,
)
from appliance.webhooks.records import deliveries

S = {"type": "string"}
MAX_PAGE = 1000


def parse_time(text: str | None) -> float | None:
    """A time filter: seconds since the epoch, or an ISO 8601 date or time (UTC if no zone)."""
    if text is None or text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise InvalidInput(f"not a time: {text[:50]!r}")
        return seconds
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"not a time: {text[:50]!r} (use seconds since the epoch or ISO 8601)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def register(route: RouteDecorator, db: Database, *, allow_private: bool = False) -> None:
    @route("/audit", "GET", "Audit events, newest first (admins); filter with query parameters")
    async def audit_events(who: Principal) -> Response:
        if not who.admin:
            return _error(403, "only admins read the audit log")
        args = request.args
        limit_text = args.get("limit") or "100"
        if not (limit_text.isascii() and limit_text.isdigit()) or len(limit_text) > 6:
            raise InvalidInput(f"limit must be a whole number from 1 to {MAX_PAGE}")
        limit = max(1, min(int(limit_text), MAX_PAGE))
        before = inputs.path_id(args.get("before") or "")
        filters: dict[str, Any] = {
            "since": parse_time(args.get("since")),
            "until": parse_time(args.get("until")),
            "actor": args.get("actor") or None,
            "action": args.get("action") or None,
            "target": args.get("target") or None,
        }
        found = await db.read(
            lambda tx: audit.query(
                tx,
                limit=limit,
                before_id=before,
                **filters,
            )
        )
        page: dict[str, Any] = {"events": found}
        if len(found) == limit:
            page["next"] = found[-1]["id"]  # pass as ?before= for the next page
        return _json(page)

    @route("/namespaces/{ns}/webhooks", "GET", "Webhook endpoints of a namespace (maintainers)")
    async def list_webhooks(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        found = await db.read(lambda tx: _endpoints(tx, ns))
        return _json(found)

    @route(
        "/namespaces/{ns}/webhooks",
        "POST",
        "Register a webhook endpoint for a namespace (maintainers); the answer holds its "
        "signing secret, shown once",
        {"url": S, "actions": S, "secret": S},
    )
    async def create_webhook(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        data = await json_body()
        inputs.required_text(data, "url")
        actions = inputs.text(data, "actions") or ",".join(ACTIONS)
        secret = inputs.text(data, "secret")
        check_url(data["url"])
        if not allow_private:
            refused = await trio.to_thread.run_sync(private_target, data["url"])
            if refused is not None:
                return _error(400, f"{refused}: not allowed as a webhook target")
        endpoint_id, key = await db.write(
            lambda tx: add_endpoint(
                tx,
                who.actor,
                ns,
                data["url"],
                actions=actions,
                secret=str(secret) if secret else None,
            )
        )
        return _json(
            {"id": endpoint_id, "url": data["url"], "actions": actions, "secret": key}, 201
        )

    @route("/namespaces/{ns}/webhooks/{webhook_id}", "DELETE", "Remove a webhook (maintainers)")
    async def delete_webhook(who: Principal, ns: str, webhook_id: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        number = inputs.path_id(webhook_id)
        if number is None:
            return _error(404, "no such webhook")
        await db.write(lambda tx: remove_endpoint(tx, who.actor, ns, number))
        return _json({})

    @route(
        "/namespaces/{ns}/webhooks/{webhook_id}/deliveries",
        "GET",
        "The delivery log of one webhook, newest first (maintainers)",
    )
    async def webhook_deliveries(who: Principal, ns: str, webhook_id: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        number = inputs.path_id(webhook_id)
        if number is None:
            return _error(404, "no such webhook")

        def fn(tx: Tx) -> list[dict[str, Any]] | None:
            if not any(e.id == number for e in namespace_endpoints(tx, ns)):
                return None
            return deliveries(tx, f"ns:{webhook_id}")

        found = await db.read(fn)
        if found is None:
            return _error(404, "no such webhook")
        return _json(found)

    @route("/webhooks/deliveries", "GET", "The delivery log of every webhook (admins)")
    async def all_deliveries(who: Principal) -> Response:
        if not who.admin:
            return _error(403, "only admins read every delivery log")
        return _json(await db.read(deliveries))


def _endpoints(tx: Tx, namespace: str) -> list[dict[str, Any]]:
    cursors = {
        r[0]: r[1:]
        for r in tx.execute(
            "SELECT endpoint, last_event_id, failures, next_attempt_at, last_error "
            "FROM webhook_cursors"
        )
    }
    out = []
    for e in namespace_endpoints(tx, namespace):
        state = cursors.get(e.key)
        out.append(
            {
                "id": e.id,
                "url": redact_url(e.url),
                "actions": ",".join(sorted(e.actions)),
                "delivered_through": state[0] if state else None,
                "failures": state[1] if state else 0,
                "next_attempt_at": state[2] if state else None,
                "last_error": state[3] if state else None,
            }
        )
    return out
