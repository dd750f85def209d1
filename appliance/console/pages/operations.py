"""Operations pages: the instance's status (health, what it holds, limits, webhooks) for
admins, and each namespace's webhook endpoints for its maintainers. Changes go through
`webhooks.endpoints`, which audits them in their transaction; the audit log page is manage.py's."""

from __future__ import annotations

from typing import Any

import trio
from quart import Response

from appliance.api.inputs import path_id
from appliance.console.framework import BadRequest, NavEntry, PageContext, PageNotFound, page
from appliance.errors import BerthError
from appliance.metadata import browse, citrust, identity
from appliance.metadata.db import Tx, ping
from appliance.metadata.events import ACTIONS
from appliance.omnibus.buildinfo import build_info
from appliance.webhooks.endpoints import (
    add_endpoint,
    check_url,
    config_endpoints,
    namespace_endpoints,
    private_target,
    redact_url,
    remove_endpoint,
)
from appliance.webhooks.records import deliveries

RECENT = 20


def _cursors(tx: Tx) -> dict[str, dict[str, Any]]:
    return {
        r[0]: {
            "delivered_through": r[1],
            "failures": r[2],
            "next_attempt_at": r[3],
            "last_error": r[4],
        }
        for r in browse.webhook_cursors(tx)
    }


@page("/status", nav=NavEntry("Status", "/status", order=78, admin=True))
async def status(ctx: PageContext) -> Response:
    ctx.require_admin()
    checks: dict[str, str] = {}
    try:
        await ctx.access.db.read(ping)
        checks["database"] = "ok"
    except BerthError as e:
        checks["database"] = e.message
    try:
        await ctx.registry.store.check()
        checks["storage"] = "ok"
    except BerthError as e:
        checks["storage"] = e.message
    config = ctx.config

    def read(tx: Tx) -> dict[str, Any]:
        totals = browse.totals(tx)
        cursors = _cursors(tx)
        endpoints = []
        for e in config_endpoints(config):
            endpoints.append(
                {
                    "where": "instance",
                    "url": redact_url(e.url),
                    "actions": ", ".join(sorted(e.actions)),
                    **cursors.get(e.key, {}),
                }
            )
        for e in namespace_endpoints(tx):
            endpoints.append(
                {
                    "where": e.namespace,
                    "url": redact_url(e.url),
                    "actions": ", ".join(sorted(e.actions)),
                    **cursors.get(e.key, {}),
                }
            )
        return {
            "stored": totals["bytes"],
            "blobs": totals["blobs"],
            "repositories": totals["repositories"],
            "uploads": totals["uploads"],
            "queued": browse.queued_webhook_events(tx),
            "endpoints": endpoints,
            "deliveries": deliveries(tx, limit=RECENT),
        }

    state = await ctx.access.db.read(read)
    # Sign-in providers: each answers its discovery document (bounded: auth/jwks.py).
    oidc_providers = ctx.services.extras.get("oidc") or {}
    sign_in = [await p.status() for p in oidc_providers.values()]
    ci_rules = await ctx.access.db.read(citrust.count)
    try:
        schema = await trio.to_thread.run_sync(ctx.access.db.schema_status)
        schema_text = f"{schema.current} (this Berth knows up to {schema.latest})"
    except BerthError as e:
        schema_text = e.message
    limits = [
        (kind, config[f"ratelimit.{kind}_rate"], config[f"ratelimit.{kind}_burst"])
        for kind in ("pull", "push", "signin")
    ]
    return await ctx.render(
        "status.html",
        title="Status",
        checks=checks,
        ready=all(v == "ok" for v in checks.values()),
        state=state,
        limits=limits,
        exempt_admins=config["ratelimit.exempt_admins"],
        exempt_robots=config["ratelimit.exempt_robots"],
        metrics_enabled=config["metrics.enabled"],
        metrics_token=bool(config["metrics.token"]),
        log_format=config["log.format"],
        access_log=config["log.access"],
        retention=config["audit.retention_days"],
        workers=config.workers,
        sign_in=sign_in,
        ci_rules=int(ci_rules),
        ci_keys=ctx.access.ci.keys.status(),
        build=build_info(),
        schema=schema_text,
    )


@page("/namespaces/<ns>/webhooks", methods=("GET", "POST"))
async def namespace_webhooks(ctx: PageContext, ns: str) -> Response:
    found = await ctx.access.db.read(lambda tx: identity.namespace_by_name(tx, ns))
    if found is None:
        raise PageNotFound(f"no namespace {ns!r}")
    ctx.require_role(ns, "maintainer")
    actor = ctx.actor
    if ctx.method == "POST":
        form = await ctx.form()
        if form.get("action") == "remove":
            endpoint_id = path_id(form.get("id", ""))
            if endpoint_id is None:
                raise BadRequest("no such webhook")
            await ctx.change(lambda tx: remove_endpoint(tx, actor, ns, endpoint_id))
            return await ctx.redirect(f"/namespaces/{ns}/webhooks", "Webhook removed.")
        url = form.get("url", "").strip()
        actions = ",".join(a for a in ACTIONS if form.get(f"on_{a}") == "on")
        if not actions:
            raise BadRequest("choose at least one event: push, pull or delete")
        try:
            check_url(url)
        except BerthError as e:
            raise BadRequest(e.message) from None
        if not ctx.config["webhooks.allow_private_targets"]:
            refused = await trio.to_thread.run_sync(private_target, url)
            if refused is not None:
                raise BadRequest(f"{refused}: not allowed as a webhook target")
        _, secret = await ctx.change(lambda tx: add_endpoint(tx, actor, ns, url, actions=actions))
        return await ctx.render(
            "webhook_secret.html",
            title=f"Webhook added to {ns}",
            secret=secret,
            url=redact_url(url),
            back=f"/namespaces/{ns}/webhooks",
        )

    def read(tx: Tx) -> list[dict[str, Any]]:
        cursors = _cursors(tx)
        out = []
        for e in namespace_endpoints(tx, ns):
            out.append(
                {
                    "id": e.id,
                    "url": redact_url(e.url),
                    "actions": ", ".join(sorted(e.actions)),
                    **cursors.get(e.key, {}),
                    "deliveries": deliveries(tx, e.key, limit=5),
                }
            )
        return out

    endpoints = await ctx.access.db.read(read)
    return await ctx.render(
        "webhooks.html",
        title=f"Webhooks of {ns}",
        ns=ns,
        endpoints=endpoints,
        actions=ACTIONS,
    )
