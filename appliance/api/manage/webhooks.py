"""Webhook routes of the management API: a namespace's maintainers manage its endpoints (each
change audited) and read their delivery log; instance admins read every delivery log.

A target URL is checked (`webhooks/endpoints.py`), and unless `webhooks.allow_private_targets` is
on, refused when its host resolves to a private, loopback or link-local address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
from quart import Response

from appliance.api import inputs
from appliance.api.manage.reply import error, forbidden, json_body, json_response
from appliance.api.manage.routing import Routes, S
from appliance.auth.policy import Principal, may_manage
from appliance.metadata.db import Database, Tx
from appliance.metadata.events import ACTIONS
from appliance.webhooks import endpoints, records


@dataclass(frozen=True, slots=True)
class Webhooks:
    """What the webhook routes work with."""

    db: Database
    allow_private: bool  # webhooks.allow_private_targets


routes: Routes[Webhooks] = Routes()


@routes("/namespaces/{ns}/webhooks", "GET", "Webhook endpoints of a namespace (maintainers)")
async def list_webhooks(hooks: Webhooks, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    return json_response(await hooks.db.read(lambda tx: endpoints.endpoint_listing(tx, ns)))


@routes(
    "/namespaces/{ns}/webhooks",
    "POST",
    "Register a webhook endpoint for a namespace (maintainers); the answer holds its "
    "signing secret, shown once",
    {"url": S, "actions": S, "secret": S},
)
async def create_webhook(hooks: Webhooks, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    data = await json_body()
    inputs.required_text(data, "url")
    actions = inputs.text(data, "actions") or ",".join(ACTIONS)
    secret = inputs.text(data, "secret")
    endpoints.check_url(data["url"])
    if not hooks.allow_private:
        refused = await trio.to_thread.run_sync(endpoints.private_target, data["url"])
        if refused is not None:
            return error(400, f"{refused}: not allowed as a webhook target")
    endpoint_id, key = await hooks.db.write(
        lambda tx: endpoints.add_endpoint(
            tx,
            who.actor,
            ns,
            data["url"],
            actions=actions,
            secret=str(secret) if secret else None,
        )
    )
    return json_response(
        {"id": endpoint_id, "url": data["url"], "actions": actions, "secret": key}, 201
    )


@routes("/namespaces/{ns}/webhooks/{webhook_id}", "DELETE", "Remove a webhook (maintainers)")
async def delete_webhook(hooks: Webhooks, who: Principal, ns: str, webhook_id: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    number = inputs.path_id(webhook_id)
    if number is None:
        return error(404, "no such webhook")
    await hooks.db.write(lambda tx: endpoints.remove_endpoint(tx, who.actor, ns, number))
    return json_response({})


@routes(
    "/namespaces/{ns}/webhooks/{webhook_id}/deliveries",
    "GET",
    "The delivery log of one webhook, newest first (maintainers)",
)
async def webhook_deliveries(hooks: Webhooks, who: Principal, ns: str, webhook_id: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    number = inputs.path_id(webhook_id)
    if number is None:
        return error(404, "no such webhook")

    def fn(tx: Tx) -> list[dict[str, Any]] | None:
        if not any(e.id == number for e in endpoints.namespace_endpoints(tx, ns)):
            return None
        return records.deliveries(tx, f"ns:{number}")

    found = await hooks.db.read(fn)
    if found is None:
        return error(404, "no such webhook")
    return json_response(found)


@routes("/webhooks/deliveries", "GET", "The delivery log of every webhook (admins)")
async def all_deliveries(hooks: Webhooks, who: Principal) -> Response:
    if not who.admin:
        return forbidden("only admins read every delivery log")
    return json_response(await hooks.db.read(records.deliveries))
